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
use std::time::{Duration, Instant};

use jobmesh_proto::v1;

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
        otlp_endpoint: None,
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

/// SIGTERM to a worker process drains it through the protocol: it asks for
/// nothing more, the job it runs finishes on its first attempt, a job submitted
/// meanwhile is not sent to it (so it is not re-queued for a second attempt when
/// the worker leaves), and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_worker_finishes_its_job_and_is_sent_nothing_more() -> anyhow::Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 1,
        slots: 4,
        lease_ms: LEASE_MS,
        otlp_endpoint: None,
    })
    .await?;
    let result = async {
        let mut jobs = cluster.jobs();
        let submit = |task: &str, args: serde_json::Value| v1::SubmitJobRequest {
            task: task.to_owned(),
            args: args.as_object().map(jobmesh_proto::json::json_to_struct),
            ..Default::default()
        };
        let get = |id: String| v1::GetJobRequest { job_id: id };
        let long = jobs
            .submit_job(submit(
                "demo.sleep",
                serde_json::json!({"seconds": 3, "steps": 3}),
            ))
            .await?
            .into_inner()
            .job
            .expect("job");
        let until = Instant::now() + Duration::from_secs(20);
        while jobs
            .get_job(get(long.id.clone()))
            .await?
            .into_inner()
            .job
            .expect("job")
            .state()
            != v1::JobState::Running
        {
            anyhow::ensure!(Instant::now() < until, "the job never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.workers[0].signal("TERM").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = jobs
            .submit_job(submit("demo.echo", serde_json::json!({"n": 1})))
            .await?
            .into_inner()
            .job
            .expect("job");
        let clean = cluster.workers[0].exited(Duration::from_secs(20)).await?;
        anyhow::ensure!(clean, "the worker did not exit 0 after draining");
        let long = jobs
            .get_job(get(long.id))
            .await?
            .into_inner()
            .job
            .expect("job");
        assert_eq!((long.state(), long.attempt), (v1::JobState::Succeeded, 1));
        let waiting = jobs
            .get_job(get(later.id.clone()))
            .await?
            .into_inner()
            .job
            .expect("job");
        assert_eq!(
            (waiting.state(), waiting.attempt),
            (v1::JobState::Queued, 1),
            "the job submitted during the drain was not sent to the draining worker"
        );
        cluster.workers[0].start()?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let job = jobs
                .get_job(get(later.id.clone()))
                .await?
                .into_inner()
                .job
                .expect("job");
            if job.state() == v1::JobState::Succeeded {
                assert_eq!(job.attempt, 1);
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "the job never ran after the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    }
    .await;
    let logs = cluster.logs();
    cluster.stop().await;
    result.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))
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
        otlp_endpoint: None,
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

/// Whether the service at `url` says SERVING (for the whole server, `""`).
async fn serving(url: &str) -> bool {
    let Ok(channel) = jobmesh_runtime::client::channel(url) else {
        return false;
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        })
}

/// Waits until every `(name, url)` is (or is not) SERVING; fails after `limit`.
async fn wait_health(
    services: &[(&str, &str)],
    want: bool,
    limit: Duration,
    why: &str,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + limit;
    loop {
        let mut wrong = Vec::new();
        for (name, url) in services {
            if serving(url).await != want {
                wrong.push(*name);
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            anyhow::bail!(
                "{why}: {wrong:?} not {} within {limit:?}",
                if want { "SERVING" } else { "NOT_SERVING" }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Health tells the truth: job-store (and the services that need it) report
/// NOT_SERVING while PostgreSQL is unreachable, the dispatcher while NATS is, and
/// SERVING again after (job-store keeps serving without NATS: its outbox holds
/// the jobs);
/// `jobmesh healthcheck` exits non-zero meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_postgres_and_nats() -> anyhow::Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 1,
        slots: 2,
        lease_ms: LEASE_MS,
        otlp_endpoint: None,
    })
    .await?;
    let (store, dispatcher, gateway) = (
        cluster.job_store_url.clone(),
        cluster.dispatcher_url.clone(),
        cluster.gateway_url.clone(),
    );
    let all = [
        ("job-store", store.as_str()),
        ("dispatcher", dispatcher.as_str()),
        ("gateway", gateway.as_str()),
    ];
    let result = async {
        wait_health(&all, true, Duration::from_secs(10), "at start").await?;

        cluster.postgres_link.cut().await;
        wait_health(
            &[("job-store", store.as_str()), ("gateway", gateway.as_str())],
            false,
            Duration::from_secs(10),
            "PostgreSQL cut",
        )
        .await?;
        let probe = std::process::Command::new(env!("CARGO_BIN_EXE_jobmesh"))
            .args(["healthcheck", "--addr", store.trim_start_matches("http://")])
            .output()?;
        anyhow::ensure!(
            !probe.status.success(),
            "jobmesh healthcheck passed while PostgreSQL was cut"
        );
        anyhow::ensure!(
            String::from_utf8_lossy(&probe.stderr).contains("NOT_SERVING"),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        cluster.postgres_link.restore();
        wait_health(&all, true, Duration::from_secs(15), "PostgreSQL restored").await?;

        cluster.nats.kill9().await?;
        wait_health(
            &[("dispatcher", dispatcher.as_str())],
            false,
            Duration::from_secs(10),
            "NATS killed",
        )
        .await?;
        // job-store keeps taking jobs (into its outbox) while NATS is away.
        anyhow::ensure!(
            serving(&store).await && serving(&gateway).await,
            "job-store and the gateway must keep serving while NATS is down"
        );
        cluster.nats.start()?;
        wait_health(&all, true, Duration::from_secs(30), "NATS restarted").await?;
        anyhow::Ok(())
    }
    .await;
    let logs = cluster.logs();
    cluster.stop().await;
    result.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))
}
