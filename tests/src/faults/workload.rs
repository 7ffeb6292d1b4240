//! The mixed workload of a scenario and the accounting it asserts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jobmesh_auth::AuthChannel;
use jobmesh_proto::json::json_to_struct;
use jobmesh_proto::v1::job_service_client::JobServiceClient;
use jobmesh_proto::v1::{self};
use serde_json::json;
use tokio::sync::Mutex;
use tonic::Code;

use super::cluster::Cluster;

/// What a job of the workload is meant to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Instant,
    Sleeping,
    Failing,
    Flaky,
    Cancelled,
}

impl Kind {
    fn of(n: usize) -> Self {
        match n % 10 {
            0..=3 => Kind::Instant,
            4..=6 => Kind::Sleeping,
            7 => Kind::Failing,
            8 => Kind::Flaky,
            _ => Kind::Cancelled,
        }
    }

    fn request(self, run: &str, n: usize) -> v1::SubmitJobRequest {
        let (task, args, max_attempts) = match self {
            Kind::Instant => ("demo.echo", json!({"n": n}), 5),
            Kind::Sleeping => (
                "demo.sleep",
                json!({"seconds": 0.2 + (n % 3) as f64 * 0.15, "steps": 4}),
                5,
            ),
            Kind::Failing => ("demo.fail", json!({"message": format!("job {n} fails")}), 3),
            Kind::Flaky => (
                "demo.fail",
                json!({"message": "flaky", "retryable": true}),
                2,
            ),
            Kind::Cancelled => ("demo.sleep", json!({"seconds": 30, "steps": 30}), 5),
        };
        v1::SubmitJobRequest {
            task: task.to_owned(),
            args: Some(json_to_struct(args.as_object().expect("object"))),
            idempotency_key: format!("{run}-{n}"),
            labels: [
                ("run".to_owned(), run.to_owned()),
                ("kind".to_owned(), format!("{self:?}")),
            ]
            .into(),
            max_attempts,
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// What the client saw: accepted jobs by index.
pub struct Submitted {
    pub run: String,
    pub accepted: HashMap<usize, (String, Kind)>,
    pub retries: usize,
    /// The longest single submit call, failed or not: outages must not make
    /// calls hang past their deadline.
    pub slowest_call: Duration,
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// Submits `jobs` jobs with `concurrency` in flight, retrying each with its
/// idempotency key until accepted (as a client whose reply got lost would);
/// cancels the `Cancelled` ones shortly after.
pub async fn submit_workload(
    client: JobServiceClient<AuthChannel>,
    jobs: usize,
    concurrency: usize,
    limit: Duration,
) -> anyhow::Result<Submitted> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(HashMap::new()));
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let deadline = Instant::now() + limit;
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, results, retries, run) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&results),
            Arc::clone(&retries),
            run.clone(),
        );
        let slowest = Arc::clone(&slowest);
        lanes.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= jobs {
                    return Ok::<_, anyhow::Error>(());
                }
                let kind = Kind::of(n);
                let request = kind.request(&run, n);
                let id = loop {
                    let call = Instant::now();
                    let outcome = client.clone().submit_job(request.clone()).await;
                    let took = call.elapsed();
                    {
                        let mut slowest = slowest.lock().await;
                        *slowest = (*slowest).max(took);
                    }
                    match outcome {
                        Ok(reply) => break reply.into_inner().job.context("no job")?.id,
                        Err(status) if retryable(status.code()) && Instant::now() < deadline => {
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => bail!("submit {n} failed: {status:?}"),
                    }
                };
                if kind == Kind::Cancelled {
                    let (client, id, retries) = (client.clone(), id.clone(), Arc::clone(&retries));
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        loop {
                            match client
                                .clone()
                                .cancel_job(v1::CancelJobRequest { job_id: id.clone() })
                                .await
                            {
                                Err(status)
                                    if retryable(status.code()) && Instant::now() < deadline =>
                                {
                                    retries.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                _ => break,
                            }
                        }
                    });
                }
                results.lock().await.insert(n, (id, kind));
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    let accepted = std::mem::take(&mut *results.lock().await);
    let slowest_call = *slowest.lock().await;
    Ok(Submitted {
        run,
        accepted,
        retries: retries.load(Ordering::SeqCst),
        slowest_call,
    })
}

/// The accounting of a scenario.
#[derive(Debug, Default)]
pub struct Accounting {
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub retried: usize,
    pub client_retries: usize,
    pub slowest_call_seconds: f64,
    pub seconds_to_settle: f64,
}

/// Waits (at most `limit`) until every accepted job is terminal, then checks every
/// promise: exactly the accepted jobs exist, each in one terminal state fitting its
/// kind, attempts within bounds, every result from the job's last attempt, nothing
/// left in the outbox.
pub async fn account(
    cluster: &Cluster,
    submitted: &Submitted,
    limit: Duration,
) -> anyhow::Result<Accounting> {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/{}", crate::postgres_server(), cluster.database),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let started = Instant::now();
    let label = serde_json::json!({ "run": submitted.run });
    loop {
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) FROM jobs WHERE labels @> $1", &[&label])
            .await?;
        let pending: i64 = row.get(0);
        if pending == 0 {
            break;
        }
        if started.elapsed() > limit {
            let stuck = client
                .query("SELECT id::text, state, attempt, worker_id FROM jobs WHERE labels @> $1 AND state IN ('queued','running') LIMIT 5", &[&label])
                .await?;
            let stuck: Vec<String> = stuck
                .iter()
                .map(|r| {
                    format!(
                        "{} {} attempt {} worker {:?}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i32>(2),
                        r.get::<_, Option<String>>(3)
                    )
                })
                .collect();
            bail!(
                "{pending} jobs still pending after {limit:?}, e.g. {stuck:#?}\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle = started.elapsed().as_secs_f64();
    let rows = client
        .query(
            "SELECT id::text, state, attempt, max_attempts, result, error_message, finish_time IS NOT NULL FROM jobs WHERE labels @> $1",
            &[&label],
        )
        .await?;
    let by_id: HashMap<String, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, String>(0), r)).collect();
    ensure!(
        rows.len() == submitted.accepted.len(),
        "{} jobs stored for {} accepted submissions (idempotency broken or a job lost)",
        rows.len(),
        submitted.accepted.len()
    );
    let mut acc = Accounting {
        accepted: rows.len(),
        client_retries: submitted.retries,
        slowest_call_seconds: submitted.slowest_call.as_secs_f64(),
        seconds_to_settle: settle,
        ..Default::default()
    };
    for (n, (id, kind)) in &submitted.accepted {
        let row = by_id
            .get(id)
            .with_context(|| format!("accepted job {n} ({id}) is not stored"))?;
        let state: String = row.get(1);
        let attempt: i32 = row.get(2);
        let max_attempts: i32 = row.get(3);
        let result: Option<serde_json::Value> = row.get(4);
        let error: Option<String> = row.get(5);
        let finished: bool = row.get(6);
        ensure!(finished, "job {id} is {state} without a finish time");
        ensure!(
            (1..=max_attempts).contains(&attempt),
            "job {id}: attempt {attempt} outside 1..={max_attempts}"
        );
        if attempt > 1 {
            acc.retried += 1;
        }
        match state.as_str() {
            "succeeded" => {
                acc.succeeded += 1;
                ensure!(
                    matches!(kind, Kind::Instant | Kind::Sleeping | Kind::Cancelled),
                    "job {id} ({kind:?}) succeeded"
                );
                let result =
                    result.with_context(|| format!("job {id} succeeded without a result"))?;
                if let Some(by) = result.get("attempt") {
                    ensure!(
                        by.as_f64() == Some(f64::from(attempt)),
                        "job {id}: result of attempt {by} accepted for attempt {attempt}"
                    );
                }
            }
            "failed" => {
                acc.failed += 1;
                let error = error.unwrap_or_default();
                match kind {
                    // A fault may have ended an earlier attempt (retryable); the
                    // handler's own failure is not retried.
                    Kind::Failing => ensure!(
                        error.ends_with("fails"),
                        "job {id}: {error:?} at attempt {attempt}"
                    ),
                    // Its last attempt may have been ended by a fault rather than
                    // by its own failure; either way it used every attempt.
                    Kind::Flaky => ensure!(
                        attempt == max_attempts,
                        "job {id}: {error:?} at attempt {attempt}"
                    ),
                    // Infrastructure faults may exhaust a job's attempts, never silently.
                    _ => ensure!(
                        attempt == max_attempts,
                        "job {id} ({kind:?}) failed at attempt {attempt}: {error}"
                    ),
                }
            }
            "cancelled" => {
                acc.cancelled += 1;
                ensure!(*kind == Kind::Cancelled, "job {id} ({kind:?}) cancelled");
            }
            other => bail!("job {id} ended in {other}"),
        }
    }
    let outbox: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    ensure!(
        outbox == 0,
        "{outbox} outbox rows left after every job ended"
    );
    Ok(acc)
}
