//! `jobmesh bench --hold-watches N` and `--latency N`: what a mesh costs at
//! rest rather than how fast it goes. The first opens N watches (spread over
//! tenants, each within its share of the gateway) and reports the resident
//! memory of `--watch-pid` before and with them open; the second times N
//! submits, `GetJob`s and first `ListJobs` pages one at a time, to compare an
//! empty table with a full one.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jobmesh_auth::scope;
use jobmesh_proto::v1;
use tokio::task::JoinSet;

use crate::bench::{BenchArgs, percentile};

/// Watches one tenant opens (the gateway's default share is 1024).
const PER_TENANT: usize = 1000;
/// Watches per connection (HTTP/2 streams on one connection).
const PER_CONNECTION: usize = 250;
/// Task no worker offers: its jobs stay queued, so their watches stay open.
const IDLE_TASK: &str = "bench.nobody";

/// Resident memory of `pid`, in KiB.
pub(crate) fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens `count` watches and holds them while the memory is read.
pub(crate) async fn hold_watches(args: &BenchArgs, count: usize) -> anyhow::Result<()> {
    let pid = args
        .watch_pid
        .context("--hold-watches reads the memory of --watch-pid <mesh process>")?;
    let before = resident_kib(pid).context("cannot read the memory of --watch-pid")?;
    let mut openers = JoinSet::new();
    let mut left = count;
    let mut tenant = 0;
    while left > 0 {
        let share = left.min(PER_TENANT);
        let token = crate::token::dev_token(&format!("watcher-{tenant}"), &scope::USER).context(
            "--hold-watches mints other tenants' tokens with the dev key of `jobmesh dev`; run it next to `jobmesh dev`",
        )?;
        let channel = jobmesh_runtime::client::channel(&args.addr.gateway)?;
        let mut jobs = v1::job_service_client::JobServiceClient::new(jobmesh_auth::with_token(
            channel,
            Some(&token),
        ));
        let job = jobs
            .submit_job(v1::SubmitJobRequest {
                task: IDLE_TASK.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        let mut opened = 0;
        while opened < share {
            let n = (share - opened).min(PER_CONNECTION);
            // A connection of its own for each group of streams.
            let channel = jobmesh_runtime::client::channel(&args.addr.gateway)?;
            let jobs = v1::job_service_client::JobServiceClient::new(jobmesh_auth::with_token(
                channel,
                Some(&token),
            ));
            let id = job.id.clone();
            openers.spawn(open(jobs, id, n));
            opened += n;
        }
        left -= share;
        tenant += 1;
    }
    let mut held = Vec::with_capacity(count);
    while let Some(streams) = openers.join_next().await {
        held.extend(streams??);
    }
    // Let the mesh settle (its tasks started, its buffers filled) before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = resident_kib(pid).context("cannot read the memory of --watch-pid")?;
    let figures = serde_json::json!({
        "watches": held.len(),
        "tenants": tenant,
        "rss_before_mib": mib(before),
        "rss_with_watches_mib": mib(with),
        "kib_per_watch": (with.saturating_sub(before)) as f64 / held.len().max(1) as f64,
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "{} watches open over {tenant} tenants: mesh resident {:.1} MiB → {:.1} MiB ({:.1} KiB per watch)",
            held.len(),
            mib(before),
            mib(with),
            figures["kib_per_watch"].as_f64().unwrap_or(0.0)
        );
    }
    if held.len() < count {
        bail!("only {} of {count} watches opened", held.len());
    }
    Ok(())
}

/// Opens `n` watches of `job_id`, each past its first message.
async fn open(
    mut jobs: crate::client::JobClient,
    job_id: String,
    n: usize,
) -> anyhow::Result<Vec<tonic::Streaming<v1::WatchJobResponse>>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = jobs
            .watch_job(v1::WatchJobRequest {
                job_id: job_id.clone(),
            })
            .await
            .context("a watch was refused")?
            .into_inner();
        stream.message().await?.context("a watch ended at once")?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Times `count` submits, `GetJob`s and first `ListJobs` pages, one at a time.
pub(crate) async fn latency(args: &BenchArgs, count: usize) -> anyhow::Result<()> {
    let mut client = args.addr.jobs()?;
    let time = |t0: Instant| t0.elapsed().as_secs_f64() * 1000.0;
    let (mut submits, mut gets, mut lists) = (Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let job = client
            .submit_job(v1::SubmitJobRequest {
                task: IDLE_TASK.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        submits.push(time(t0));
        ids.push(job.id);
    }
    for id in ids {
        let t0 = Instant::now();
        client.get_job(v1::GetJobRequest { job_id: id }).await?;
        gets.push(time(t0));
    }
    for _ in 0..count {
        let t0 = Instant::now();
        let page = client
            .list_jobs(v1::ListJobsRequest::default())
            .await?
            .into_inner();
        lists.push(time(t0));
        if page.jobs.is_empty() {
            bail!("the first page was empty");
        }
    }
    for v in [&mut submits, &mut gets, &mut lists] {
        v.sort_by(f64::total_cmp);
    }
    let figures = serde_json::json!({
        "probes": count,
        "submit_p50_ms": percentile(&submits, 50.0),
        "submit_p99_ms": percentile(&submits, 99.0),
        "get_p50_ms": percentile(&gets, 50.0),
        "get_p99_ms": percentile(&gets, 99.0),
        "list_p50_ms": percentile(&lists, 50.0),
        "list_p99_ms": percentile(&lists, 99.0),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "{count} of each, one at a time (ms)\n\
             submit          p50 {:>7.2}   p99 {:>7.2}\n\
             get             p50 {:>7.2}   p99 {:>7.2}\n\
             list (1st page) p50 {:>7.2}   p99 {:>7.2}",
            percentile(&submits, 50.0),
            percentile(&submits, 99.0),
            percentile(&gets, 50.0),
            percentile(&gets, 99.0),
            percentile(&lists, 50.0),
            percentile(&lists, 99.0),
        );
    }
    Ok(())
}
