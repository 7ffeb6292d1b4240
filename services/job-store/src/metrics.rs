//! job-store's metrics: what happened to jobs (recorded at each transition), and
//! the outbox and connection pool (sampled).

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use jobmesh_runtime::metrics::task_label;

use crate::model::{Job, State};

/// Counts a job created by a submit (not an idempotent resubmission).
pub(crate) fn submitted(job: &Job) {
    metrics::counter!("jobmesh_jobs_submitted_total", "task" => task_label(&job.task)).increment(1);
}

/// Records a job's first attempt starting: how long it waited.
pub(crate) fn leased(job: &Job) {
    if job.attempt != 1 {
        return;
    }
    let ready = job
        .schedule_time
        .map_or(job.create_time, |s| s.max(job.create_time));
    if let Some(started) = job.start_time
        && let Ok(wait) = started.duration_since(ready)
    {
        metrics::histogram!("jobmesh_job_queue_wait_seconds", "task" => task_label(&job.task))
            .record(wait.as_secs_f64());
    }
}

/// Records a transition's outcome: retries and terminal states.
pub(crate) fn transitioned(job: &Job) {
    let task = task_label(&job.task);
    match job.state {
        State::Queued if job.attempt > 1 => {
            metrics::counter!("jobmesh_job_retries_total", "task" => task).increment(1);
        }
        state if state.is_terminal() => {
            let name = state.as_str();
            metrics::counter!("jobmesh_jobs_finished_total", "task" => task.clone(), "state" => name)
                .increment(1);
            if state == State::Cancelled {
                metrics::counter!("jobmesh_job_cancellations_total", "task" => task.clone())
                    .increment(1);
            }
            if let (Some(start), Some(finish)) = (job.start_time, job.finish_time)
                && let Ok(run) = finish.duration_since(start)
            {
                metrics::histogram!("jobmesh_job_run_seconds", "task" => task, "state" => name)
                    .record(run.as_secs_f64());
            }
        }
        _ => {}
    }
}

/// Counts a refused stale report (`report`) or lease (`lease`).
pub(crate) fn stale(kind: &'static str) {
    metrics::counter!("jobmesh_stale_reports_total", "kind" => kind).increment(1);
}

/// Counts a progress report held for the next coalesced write.
pub(crate) fn progress_held() {
    metrics::counter!("jobmesh_progress_reports_total", "path" => "coalesced").increment(1);
}

/// Counts a progress report written before its answer.
pub(crate) fn progress_direct() {
    metrics::counter!("jobmesh_progress_reports_total", "path" => "direct").increment(1);
}

/// Counts log lines stored and refused (their attempt was not running).
pub(crate) fn log_lines(stored: u64, refused: u64) {
    metrics::counter!("jobmesh_log_lines_total", "outcome" => "stored").increment(stored);
    if refused > 0 {
        metrics::counter!("jobmesh_log_lines_total", "outcome" => "refused").increment(refused);
    }
}

/// Counts a trim of a job's log (its oldest chunks dropped for the size limit).
pub(crate) fn log_trimmed() {
    metrics::counter!("jobmesh_log_trims_total").increment(1);
}

/// Samples the outbox and the pool every few seconds until `shutdown`.
pub(crate) async fn sample(pool: Pool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = pool.status();
        for (state, value) in [
            ("open", status.size),
            ("idle", status.available),
            ("max", status.max_size),
        ] {
            metrics::gauge!("jobmesh_postgres_pool_connections", "state" => state)
                .set(value as f64);
        }
        metrics::gauge!("jobmesh_postgres_pool_waiting").set(status.waiting as f64);
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), pool.get()).await else {
            continue;
        };
        let query = client.query_one(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(available_at)), 0)::float8
             FROM outbox WHERE available_at <= now()",
            &[],
        );
        if let Ok(Ok(row)) = tokio::time::timeout(Duration::from_secs(2), query).await {
            let rows: i64 = row.try_get(0).unwrap_or(0);
            let lag: f64 = row.try_get(1).unwrap_or(0.0);
            metrics::gauge!("jobmesh_outbox_rows").set(rows as f64);
            metrics::gauge!("jobmesh_outbox_lag_seconds").set(lag.max(0.0));
        }
    }
}
