//! `jobmesh bench`: measures a running mesh. Phase 1 submits N jobs with C in
//! flight (submit rate), then waits until all are terminal and reads their
//! create/finish times from job-store (end-to-end throughput and latency, both by
//! the database clock). Phase 2 runs M jobs one at a time, submit → watch →
//! terminal (round trip as a client sees it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jobmesh_proto::v1::{self, JobState};

use crate::client::GatewayAddr;
use crate::output::seconds;

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Jobs submitted in the throughput phase.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Jobs run one at a time in the round-trip phase.
    #[arg(long, default_value_t = 100)]
    round_trips: usize,
    /// Task to run (a no-op task measures the mesh itself).
    #[arg(long, default_value = "demo.echo")]
    task: String,
    /// Give up waiting for the jobs after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Print the figures as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    addr: GatewayAddr,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.jobs == 0 || args.concurrency == 0 {
        bail!("--jobs and --concurrency must be at least 1");
    }
    let client = args.addr.jobs()?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let label = format!("bench={run_id}");

    // Phase 1: submit N with C in flight.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.jobs) {
        let mut client = client.clone();
        let next = Arc::clone(&next);
        let (jobs, task, run_id) = (args.jobs, args.task.clone(), run_id.clone());
        lanes.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let request = v1::SubmitJobRequest {
                    task: task.clone(),
                    labels: [("bench".to_owned(), run_id.clone())].into(),
                    ..Default::default()
                };
                client.submit_job(request).await?;
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane?.context("submit failed")?;
    }
    let submit_seconds = started.elapsed().as_secs_f64();

    // Wait until no job of the run is queued or running.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        let mut pending = 0;
        for state in [JobState::Queued, JobState::Running] {
            let page = client
                .clone()
                .list_jobs(v1::ListJobsRequest {
                    page_size: 1,
                    state: state as i32,
                    labels: vec![label.clone()],
                    ..Default::default()
                })
                .await?
                .into_inner();
            pending += page.jobs.len();
        }
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("jobs still pending after {}s", args.timeout_seconds);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_seconds = started.elapsed().as_secs_f64();

    // Read every job of the run back for its database timestamps.
    let mut latencies = Vec::with_capacity(args.jobs);
    let (mut first_create, mut last_finish) = (f64::MAX, f64::MIN);
    let mut succeeded = 0usize;
    let mut token = String::new();
    loop {
        let page = client
            .clone()
            .list_jobs(v1::ListJobsRequest {
                page_size: 1000,
                page_token: token.clone(),
                labels: vec![label.clone()],
                ..Default::default()
            })
            .await?
            .into_inner();
        for job in &page.jobs {
            if job.state() == JobState::Succeeded {
                succeeded += 1;
            }
            if let (Some(c), Some(f)) = (seconds(&job.create_time), seconds(&job.finish_time)) {
                latencies.push(f - c);
                first_create = first_create.min(c);
                last_finish = last_finish.max(f);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    latencies.sort_by(f64::total_cmp);
    let e2e_seconds = (last_finish - first_create).max(f64::EPSILON);

    // Phase 2: one job at a time, as a client sees it.
    let mut round_trips = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips {
        let t0 = Instant::now();
        let job = client
            .clone()
            .submit_job(v1::SubmitJobRequest {
                task: args.task.clone(),
                labels: [("bench".to_owned(), format!("{run_id}-rt"))].into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        let mut stream = client
            .clone()
            .watch_job(v1::WatchJobRequest { job_id: job.id })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            if event.job.is_some_and(|j| j.state().is_terminal()) {
                break;
            }
        }
        round_trips.push(t0.elapsed().as_secs_f64());
    }
    round_trips.sort_by(f64::total_cmp);

    let figures = serde_json::json!({
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "task": args.task,
        "succeeded": succeeded,
        "submit_per_second": args.jobs as f64 / submit_seconds,
        "e2e_jobs_per_second": latencies.len() as f64 / e2e_seconds,
        "drained_seconds": drained_seconds,
        "latency_p50_ms": percentile(&latencies, 50.0) * 1000.0,
        "latency_p99_ms": percentile(&latencies, 99.0) * 1000.0,
        "round_trips": args.round_trips,
        "round_trip_p50_ms": percentile(&round_trips, 50.0) * 1000.0,
        "round_trip_p99_ms": percentile(&round_trips, 99.0) * 1000.0,
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "jobs {} ({} succeeded), concurrency {}, task {}\n\
             submit rate          {:>10.0} jobs/s\n\
             end-to-end           {:>10.0} jobs/s (first create → last finish, database clock)\n\
             submit → finished    p50 {:>8.1} ms   p99 {:>8.1} ms\n\
             round trip (1 at a time, submit → watch → terminal over {} jobs)\n\
             \x20                    p50 {:>8.1} ms   p99 {:>8.1} ms",
            args.jobs,
            succeeded,
            args.concurrency,
            args.task,
            args.jobs as f64 / submit_seconds,
            latencies.len() as f64 / e2e_seconds,
            percentile(&latencies, 50.0) * 1000.0,
            percentile(&latencies, 99.0) * 1000.0,
            args.round_trips,
            percentile(&round_trips, 50.0) * 1000.0,
            percentile(&round_trips, 99.0) * 1000.0,
        );
    }
    if succeeded != args.jobs {
        bail!("only {succeeded} of {} jobs succeeded", args.jobs);
    }
    Ok(())
}
