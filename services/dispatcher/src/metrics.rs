//! The dispatcher's gauges, sampled: connected workers and free slots per task,
//! and the JetStream backlog per task (what an autoscaler scales workers on).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Dispatcher;

/// How often the gauges are refreshed.
const EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn sample(ctx: Arc<Dispatcher>, shutdown: CancellationToken) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(tasks) = crate::grpc::snapshot(&ctx).await else {
            continue;
        };
        // Summed per label: tasks beyond the label limit share `_other`.
        let mut by_label: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
        for task in &tasks {
            let sums = by_label
                .entry(jobmesh_runtime::metrics::task_label(&task.name))
                .or_default();
            sums.0 += f64::from(task.workers);
            sums.1 += f64::from(task.free_slots);
            sums.2 += task.queue_depth as f64;
        }
        let now: BTreeSet<String> = by_label.keys().cloned().collect();
        // A task that vanished (no workers, no backlog) reads zero, not its last value.
        for gone in seen.difference(&now) {
            for name in [
                "jobmesh_workers_connected",
                "jobmesh_worker_slots_free",
                "jobmesh_jetstream_pending",
            ] {
                metrics::gauge!(name, "task" => gone.clone()).set(0.0);
            }
        }
        for (label, (workers, free, pending)) in by_label {
            metrics::gauge!("jobmesh_workers_connected", "task" => label.clone()).set(workers);
            metrics::gauge!("jobmesh_worker_slots_free", "task" => label.clone()).set(free);
            metrics::gauge!("jobmesh_jetstream_pending", "task" => label).set(pending);
        }
        seen = now;
    }
}

/// Counts log lines a worker sent that were not stored: for an attempt it does
/// not hold (`not_held`), or while job-store was unreachable (`unavailable`).
pub(crate) fn log_lines_refused(reason: &'static str, lines: u64) {
    metrics::counter!("jobmesh_log_lines_dropped_total", "reason" => reason).increment(lines);
}

/// Counts worker reports that were dropped: invalid (`invalid`, answered with
/// `refused`) or about an attempt the worker does not hold (`not_held`, answered
/// with a cancellation), by report (`progress`, `succeeded`, …).
pub(crate) fn report_refused(report: &'static str, reason: &'static str) {
    metrics::counter!("jobmesh_worker_reports_refused_total", "report" => report, "reason" => reason)
        .increment(1);
}
