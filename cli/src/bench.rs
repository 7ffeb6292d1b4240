//! `jobmesh bench`: measures a running mesh. Phase 1 submits N jobs with C in
//! flight (submit rate), then waits until all are terminal and reads their
//! create/finish times from job-store (end-to-end throughput and latency, both by
//! the database clock). Phase 2 runs M jobs one at a time, submit → watch →
//! terminal (round trip as a client sees it).
//!
//! With `--overload-seconds`, it instead holds C submitters busy for that long
//! (C well above the gateway's in-flight cap) and reports what an overloaded
//! gateway does: accepted and refused calls per second and how fast each answer
//! came. Refusals must be fast and nothing may time out.

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
    pub(crate) round_trips: usize,
    /// Task to run (a no-op task measures the mesh itself).
    #[arg(long, default_value = "demo.echo")]
    pub(crate) task: String,
    /// Arguments of every job, as a JSON object (`--task demo.sleep --args
    /// '{"seconds": 0, "steps": 10}'` reports progress ten times).
    #[arg(long, value_parser = json_object)]
    pub(crate) args: Option<serde_json::Map<String, serde_json::Value>>,
    /// Give up waiting for the jobs after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Overload mode: keep `--concurrency` submitters busy for this many seconds
    /// and report accepted/refused rates and latencies (0: the normal bench).
    #[arg(long, default_value_t = 0)]
    overload_seconds: u64,
    /// Log-flood mode: in each of `--rounds` rounds, measure other jobs' round
    /// trips (one at a time, `--task`) alone, then while one `demo.logs` job
    /// prints this many lines as fast as it can (0: the normal bench).
    #[arg(long, default_value_t = 0)]
    log_flood: u64,
    /// Characters per line of the log flood.
    #[arg(long, default_value_t = 80)]
    log_width: u64,
    /// Rounds of the log-flood mode (figures are medians over rounds).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Abuse mode: a client's round trips and health checks alone, then while
    /// each abuse runs (comma-separated, or `all`): half-open, half-open-token,
    /// streams, slow-rest, idle, echo. Needs the dev key of `jobmesh dev` (other
    /// tenants' tokens are minted with it) and a gateway on this machine.
    #[arg(long, value_delimiter = ',')]
    pub(crate) abuse: Vec<String>,
    /// Seconds each abuse phase is measured.
    #[arg(long, default_value_t = 10)]
    pub(crate) abuse_seconds: u64,
    /// Sample the resident memory of this process (the mesh) in abuse and
    /// --hold-watches modes.
    #[arg(long)]
    pub(crate) watch_pid: Option<u32>,
    /// Memory mode: open this many watches (of queued jobs, over as many
    /// tenants as their shares need; the gateway's --max-streams must allow
    /// them) and report the resident memory of --watch-pid before and with them.
    #[arg(long, default_value_t = 0)]
    hold_watches: usize,
    /// Latency mode: time this many submits, `GetJob`s and first `ListJobs`
    /// pages, one at a time (to compare an empty table with a full one).
    #[arg(long, default_value_t = 0)]
    latency: usize,
    /// Watch every job of the throughput phase: each submitter follows its job
    /// with `WatchJob` until it ends before submitting the next, and the lag of
    /// every update it sees (from the update's time in job-store to its arrival)
    /// is reported. With `--task demo.sleep --args '{"seconds": 0, "steps": 10}'`
    /// that is ten progress updates per job.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Print the figures as one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
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
    if args.overload_seconds > 0 {
        return overload(&args).await;
    }
    if args.log_flood > 0 {
        return log_flood(&args).await;
    }
    if !args.abuse.is_empty() {
        return crate::abuse::run(&args).await;
    }
    if args.hold_watches > 0 {
        return crate::footprint::hold_watches(&args, args.hold_watches).await;
    }
    if args.latency > 0 {
        return crate::footprint::latency(&args, args.latency).await;
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
        let job_args = args.args.as_ref().map(jobmesh_proto::json::json_to_struct);
        let watch = args.watch;
        lanes.spawn(async move {
            let mut lags = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let request = v1::SubmitJobRequest {
                    task: task.clone(),
                    args: job_args.clone(),
                    labels: [("bench".to_owned(), run_id.clone())].into(),
                    ..Default::default()
                };
                let job = client.submit_job(request).await?.into_inner().job;
                if watch {
                    let job_id = job.map(|j| j.id).unwrap_or_default();
                    watch_lags(&mut client, job_id, &mut lags).await?;
                }
            }
            Ok::<_, tonic::Status>(lags)
        });
    }
    let mut lags = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        lags.extend(lane?.context("submit failed")?);
    }
    lags.sort_by(f64::total_cmp);
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
                args: args.args.as_ref().map(jobmesh_proto::json::json_to_struct),
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
        "watched": args.watch,
        "watch_updates": lags.len(),
        "watch_lag_p50_ms": percentile(&lags, 50.0),
        "watch_lag_p99_ms": percentile(&lags, 99.0),
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
        if args.watch {
            println!(
                "watch lag (update stored → seen by its watcher, {} updates)\n\
                 \x20                    p50 {:>8.1} ms   p99 {:>8.1} ms",
                lags.len(),
                percentile(&lags, 50.0),
                percentile(&lags, 99.0),
            );
        }
    }
    if succeeded != args.jobs {
        bail!("only {succeeded} of {} jobs succeeded", args.jobs);
    }
    Ok(())
}

/// What one overload call ended with.
enum Outcome {
    Accepted(f64),
    Refused(f64),
    Failed(tonic::Code, String, f64),
}

async fn overload(args: &BenchArgs) -> anyhow::Result<()> {
    // HTTP/2 allows a bounded number of streams per connection: one connection
    // per 256 submitters, as many clients would have.
    let clients: Vec<_> = (0..args.concurrency.div_ceil(256))
        .map(|_| args.addr.jobs())
        .collect::<Result<_, _>>()?;
    let until = Instant::now() + Duration::from_secs(args.overload_seconds);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..args.concurrency {
        let mut client = clients[lane % clients.len()].clone();
        let task = args.task.clone();
        lanes.spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < until {
                let mut request = tonic::Request::new(v1::SubmitJobRequest {
                    task: task.clone(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(10));
                let t0 = Instant::now();
                let result = client.submit_job(request).await;
                let took = t0.elapsed().as_secs_f64();
                outcomes.push(match result {
                    Ok(_) => Outcome::Accepted(took),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        // A client honouring Retry-After would wait; the bench
                        // keeps pressing to hold the overload.
                        Outcome::Refused(took)
                    }
                    Err(s) => Outcome::Failed(s.code(), s.message().to_owned(), took),
                });
            }
            outcomes
        });
    }
    let (mut accepted, mut refused, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(lane) = lanes.join_next().await {
        for outcome in lane? {
            match outcome {
                Outcome::Accepted(t) => accepted.push(t),
                Outcome::Refused(t) => refused.push(t),
                Outcome::Failed(code, message, t) => failed.push((code, message, t)),
            }
        }
    }
    accepted.sort_by(f64::total_cmp);
    refused.sort_by(f64::total_cmp);
    let seconds = args.overload_seconds as f64;
    let timeouts = failed
        .iter()
        .filter(|(c, _, _)| *c == tonic::Code::DeadlineExceeded)
        .count();
    let figures = serde_json::json!({
        "concurrency": args.concurrency,
        "seconds": args.overload_seconds,
        "accepted_per_second": accepted.len() as f64 / seconds,
        "refused_per_second": refused.len() as f64 / seconds,
        "accepted_p50_ms": percentile(&accepted, 50.0) * 1000.0,
        "accepted_p99_ms": percentile(&accepted, 99.0) * 1000.0,
        "refused_p50_ms": percentile(&refused, 50.0) * 1000.0,
        "refused_p99_ms": percentile(&refused, 99.0) * 1000.0,
        "other_errors": failed.len(),
        "other_errors_by_code": failed.iter().fold(
            serde_json::Map::new(),
            |mut counts, (code, message, _)| {
                let entry = counts
                    .entry(format!("{code:?}"))
                    .or_insert(serde_json::json!({"count": 0, "example": message}));
                entry["count"] = serde_json::json!(entry["count"].as_u64().unwrap_or(0) + 1);
                counts
            },
        ),
        "timeouts": timeouts,
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "overload: {} submitters for {} s\n\
             accepted   {:>8.0} /s   p50 {:>8.1} ms   p99 {:>8.1} ms\n\
             refused    {:>8.0} /s   p50 {:>8.1} ms   p99 {:>8.1} ms\n\
             other errors {} (timeouts {})",
            args.concurrency,
            args.overload_seconds,
            accepted.len() as f64 / seconds,
            percentile(&accepted, 50.0) * 1000.0,
            percentile(&accepted, 99.0) * 1000.0,
            refused.len() as f64 / seconds,
            percentile(&refused, 50.0) * 1000.0,
            percentile(&refused, 99.0) * 1000.0,
            failed.len(),
            timeouts,
        );
    }
    if timeouts > 0 {
        bail!("{timeouts} calls timed out under overload");
    }
    Ok(())
}

/// One job submitted, watched to its end: the client's round trip in seconds.
/// Follows job `job_id` until it ends, adding the lag of every update after
/// the first (the first is the state the watch starts from, not news) to `lags`
/// in ms: the arrival time less the update's time in job-store (one machine's
/// clock).
async fn watch_lags(
    client: &mut v1::job_service_client::JobServiceClient<jobmesh_auth::AuthChannel>,
    job_id: String,
    lags: &mut Vec<f64>,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .watch_job(v1::WatchJobRequest { job_id })
        .await?
        .into_inner();
    let mut first = true;
    while let Some(event) = stream.message().await? {
        let Some(job) = event.job else { continue };
        let arrived = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        if !first && let Some(updated) = seconds(&job.update_time) {
            lags.push((arrived - updated).max(0.0) * 1000.0);
        }
        first = false;
        if job.state().is_terminal() {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn round_trip(
    client: &mut v1::job_service_client::JobServiceClient<jobmesh_auth::AuthChannel>,
    task: &str,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let job = client
        .submit_job(v1::SubmitJobRequest {
            task: task.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    let mut stream = client
        .watch_job(v1::WatchJobRequest { job_id: job.id })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event.job.is_some_and(|j| j.state().is_terminal()) {
            break;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

/// Other jobs' round trips alone and beside a job printing `--log-flood` lines.
async fn log_flood(args: &BenchArgs) -> anyhow::Result<()> {
    let mut client = args.addr.jobs()?;
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        // Alone: as many round trips as the flood round will have, at least 50.
        let mut alone = Vec::new();
        for _ in 0..args.round_trips.max(50) {
            alone.push(round_trip(&mut client, &args.task).await?);
        }
        let flood = client
            .submit_job(v1::SubmitJobRequest {
                task: "demo.logs".to_owned(),
                args: serde_json::json!({"lines": args.log_flood, "width": args.log_width})
                    .as_object()
                    .map(jobmesh_proto::json::json_to_struct),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        let t0 = Instant::now();
        let mut beside = Vec::new();
        let finished = loop {
            beside.push(round_trip(&mut client, &args.task).await?);
            let now = client
                .get_job(v1::GetJobRequest {
                    job_id: flood.id.clone(),
                })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            if now.state().is_terminal() {
                break now;
            }
            if t0.elapsed() > Duration::from_secs(args.timeout_seconds) {
                bail!("the flood job did not end within {}s", args.timeout_seconds);
            }
        };
        let flood_seconds = match (
            seconds(&finished.start_time),
            seconds(&finished.finish_time),
        ) {
            (Some(s), Some(f)) => f - s,
            _ => f64::NAN,
        };
        // Read the whole log back: how many lines were kept, and how fast.
        let t_read = Instant::now();
        let mut logs = client
            .read_job_logs(v1::ReadJobLogsRequest {
                job_id: flood.id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let (mut kept, mut dropped) = (0u64, 0i64);
        while let Some(message) = logs.message().await? {
            if let Some(entry) = message.entry {
                kept += 1;
                dropped += entry.dropped;
            }
        }
        let read_seconds = t_read.elapsed().as_secs_f64();
        alone.sort_by(f64::total_cmp);
        beside.sort_by(f64::total_cmp);
        rounds.push(serde_json::json!({
            "alone_p50_ms": percentile(&alone, 50.0) * 1000.0,
            "alone_p99_ms": percentile(&alone, 99.0) * 1000.0,
            "beside_p50_ms": percentile(&beside, 50.0) * 1000.0,
            "beside_p99_ms": percentile(&beside, 99.0) * 1000.0,
            "beside_jobs": beside.len(),
            "flood_state": finished.state().as_str_name(),
            "flood_seconds": flood_seconds,
            "flood_lines_per_second": args.log_flood as f64 / flood_seconds,
            "lines_kept": kept,
            "lines_dropped": dropped,
            "read_lines_per_second": kept as f64 / read_seconds,
        }));
    }
    let med = |key: &str| median(rounds.iter().filter_map(|r| r[key].as_f64()).collect());
    let figures = serde_json::json!({
        "log_flood_lines": args.log_flood,
        "log_width": args.log_width,
        "task": args.task,
        "rounds": rounds,
        "median": {
            "alone_p50_ms": med("alone_p50_ms"),
            "beside_p50_ms": med("beside_p50_ms"),
            "alone_p99_ms": med("alone_p99_ms"),
            "beside_p99_ms": med("beside_p99_ms"),
            "flood_lines_per_second": med("flood_lines_per_second"),
            "read_lines_per_second": med("read_lines_per_second"),
        },
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "log flood: {} lines of {} characters, {} rounds (medians)\n\
             other jobs ({}) alone        p50 {:>7.1} ms   p99 {:>7.1} ms\n\
             beside the flood             p50 {:>7.1} ms   p99 {:>7.1} ms\n\
             flood stored at {:>9.0} lines/s; read back at {:>9.0} lines/s",
            args.log_flood,
            args.log_width,
            rounds.len(),
            args.task,
            med("alone_p50_ms"),
            med("alone_p99_ms"),
            med("beside_p50_ms"),
            med("beside_p99_ms"),
            med("flood_lines_per_second"),
            med("read_lines_per_second"),
        );
        for (n, round) in rounds.iter().enumerate() {
            println!("round {}: {round}", n + 1);
        }
    }
    Ok(())
}
