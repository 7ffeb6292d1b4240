//! The fault suite: each scenario runs the mesh as separate processes (this
//! crate's `jobmesh` binary), submits a mixed workload (instant, sleeping with
//! progress, failing, flaky, cancelled) with idempotency keys while it injects one
//! fault, then asserts the accounting: every accepted job reached exactly one
//! terminal state fitting its kind, none is stuck, no result came from a stale
//! attempt, attempts stay within max_attempts, and the stored jobs are exactly the
//! accepted ones.
//!
//! `JOBMESH_FAULT_JOBS` sets the jobs per scenario (default 2000; use more for a
//! manual run). Scenarios run one at a time.

use std::path::PathBuf;
use std::time::Duration;

use jobmesh_tests::faults::{Cluster, ClusterOptions, account, submit_workload};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE_MS: u64 = 3000;

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorker,
    TermWorker,
    TermServices,
    KillDispatcher,
    KillJobStore,
    KillGateway,
    StopWorkerPastLease,
    CutPostgres,
    RestartNats,
    CutWorkerLink,
}

async fn inject(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::KillWorker => {
            cluster.workers[0].kill9().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.workers[0].start()?;
        }
        Fault::TermWorker => {
            // Graceful: it stops taking jobs, finishes what it holds, exits 0.
            let clean = cluster.workers[0]
                .terminate(Duration::from_secs(10))
                .await?;
            anyhow::ensure!(
                clean,
                "the worker did not exit cleanly within its grace period"
            );
            cluster.workers[0].start()?;
        }
        Fault::TermServices => {
            // Each service drains and exits 0 on SIGTERM, then comes back.
            for name in ["dispatcher", "job-store", "gateway"] {
                let process = match name {
                    "dispatcher" => &mut cluster.dispatcher,
                    "job-store" => &mut cluster.job_store,
                    _ => &mut cluster.gateway,
                };
                let clean = process.terminate(Duration::from_secs(15)).await?;
                anyhow::ensure!(clean, "{name} did not exit cleanly within 15s of SIGTERM");
                process.start()?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Fault::KillDispatcher => {
            cluster.dispatcher.kill9().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.dispatcher.start()?;
        }
        Fault::KillJobStore => {
            cluster.job_store.kill9().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.job_store.start()?;
        }
        Fault::KillGateway => {
            cluster.gateway.kill9().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.gateway.start()?;
        }
        Fault::StopWorkerPastLease => {
            cluster.workers[0].signal("STOP").await?;
            tokio::time::sleep(Duration::from_millis(LEASE_MS * 2 + 2000)).await;
            cluster.workers[0].signal("CONT").await?;
        }
        Fault::CutPostgres => {
            cluster.postgres_link.cut().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster.postgres_link.restore();
        }
        Fault::RestartNats => {
            cluster.nats.kill9().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.nats.start()?;
        }
        Fault::CutWorkerLink => {
            cluster.worker_link.cut().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.worker_link.restore();
        }
    }
    Ok(())
}

async fn scenario(fault: Fault) -> anyhow::Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let jobs: usize = std::env::var("JOBMESH_FAULT_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2000);
    let mut cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 2,
        slots: 8,
        lease_ms: LEASE_MS,
    })
    .await?;
    let submit = tokio::spawn(submit_workload(
        cluster.jobs(),
        jobs,
        16,
        Duration::from_secs(120),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    inject(&mut cluster, fault).await?;
    let submitted = submit.await??;
    let result = account(&cluster, &submitted, Duration::from_secs(120)).await;
    let logs = cluster.logs();
    cluster.stop().await;
    let accounting = result?;
    eprintln!("{fault:?}: {accounting:?}");
    assert_eq!(
        accounting.accepted, jobs,
        "every submission was accepted once\n{logs}"
    );
    assert_eq!(
        accounting.succeeded + accounting.failed + accounting.cancelled,
        jobs,
        "every job ended exactly once"
    );
    // The gateway's internal calls have a 10 s deadline: no call may hang longer,
    // whatever is down.
    assert!(
        accounting.slowest_call_seconds < 12.0,
        "a submit took {:.1}s",
        accounting.slowest_call_seconds
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_worker() -> anyhow::Result<()> {
    scenario(Fault::KillWorker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_worker_drains() -> anyhow::Result<()> {
    scenario(Fault::TermWorker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_each_service_drains_and_restarts() -> anyhow::Result<()> {
    scenario(Fault::TermServices).await
}

/// Jobs committed while NATS is down cannot be published; job-store then dies
/// (`kill -9`) holding them. After both come back, every job runs, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_after_job_store_died_before_publishing() -> anyhow::Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let jobs = 300;
    let mut cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 2,
        slots: 8,
        lease_ms: LEASE_MS,
    })
    .await?;
    cluster.nats.kill9().await?;
    let submitted = submit_workload(cluster.jobs(), jobs, 16, Duration::from_secs(60)).await?;
    let unpublished = cluster.outbox_rows().await?;
    cluster.job_store.kill9().await?;
    cluster.nats.start()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.job_store.start()?;
    let result = account(&cluster, &submitted, Duration::from_secs(120)).await;
    let logs = cluster.logs();
    cluster.stop().await;
    let accounting = result.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))?;
    eprintln!("OutboxAfterCrash: {unpublished} rows unpublished at the kill; {accounting:?}");
    assert!(
        unpublished > 200,
        "the jobs were committed but not published when job-store died ({unpublished})"
    );
    assert_eq!(accounting.accepted, jobs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_dispatcher() -> anyhow::Result<()> {
    scenario(Fault::KillDispatcher).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_job_store() -> anyhow::Result<()> {
    scenario(Fault::KillJobStore).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_gateway_clients_retry_with_their_key() -> anyhow::Result<()> {
    scenario(Fault::KillGateway).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_worker_past_its_lease() -> anyhow::Result<()> {
    scenario(Fault::StopWorkerPastLease).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_for_10s() -> anyhow::Result<()> {
    scenario(Fault::CutPostgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted() -> anyhow::Result<()> {
    scenario(Fault::RestartNats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dispatcher_link_cut_and_restored() -> anyhow::Result<()> {
    scenario(Fault::CutWorkerLink).await
}
