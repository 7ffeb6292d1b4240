//! jobmesh worker runtime: connects to the dispatcher over one bidirectional gRPC
//! stream, offers its tasks and slots, runs assignments concurrently up to its
//! slots, streams progress and outcomes, and reconnects with backoff when the
//! stream drops. Ships the built-in `demo.*` tasks; custom handlers are registered
//! with [`Handlers::register`].

mod builtin;
mod config;
mod error;
mod exec;
mod handler;
mod outbound;

use std::collections::HashMap;
use std::time::Duration;
use tracing::Instrument as _;

use jobmesh_proto::json::{json_to_struct, struct_to_json};
use jobmesh_proto::v1::worker_service_client::WorkerServiceClient;
use jobmesh_proto::v1::{
    ConnectRequest, JobAssignment, JobCancelled, JobFailed, JobSucceeded, WorkerDrain,
    WorkerHeartbeat, WorkerHello, connect_request, connect_response,
};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use config::Config;
pub use error::RunError;
pub use exec::{parse as parse_exec, register as register_exec};
pub use handler::{Handler, Handlers, JobContext, TaskError};
pub use jobmesh_proto::v1::LogStream;

/// Outbound reports buffered per session; a full queue slows handlers down.
const OUTBOUND_BUFFER: usize = 1024;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a cancelled handler may take to return before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How long a worker that closed its side waits for the dispatcher to end the
/// session (so the reports it sent last are read before the call goes).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs a worker with the `--exec` commands (and the built-in demo tasks when
/// it has none, or with `--demo-tasks`) until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    // An --exec worker offers what it was given; the demo tasks only when asked.
    let mut handlers = if config.exec.is_empty() || config.demo_tasks {
        Handlers::builtin()
    } else {
        Handlers::new()
    };
    for spec in &config.exec {
        let (task, command) = exec::parse(spec).map_err(RunError::Config)?;
        exec::register(&mut handlers, &task, &command);
    }
    run_with(config, handlers, shutdown).await
}

/// Runs a worker with the given handlers until `shutdown`. On shutdown it stops
/// taking jobs, lets running ones finish within the grace period, then cancels
/// the rest (they are re-queued) and returns.
pub async fn run_with(
    config: Config,
    handlers: Handlers,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let tasks = if config.tasks.is_empty() {
        handlers.tasks()
    } else {
        config.tasks.clone()
    };
    if let Some(missing) = tasks.iter().find(|t| !handlers.by_task.contains_key(*t)) {
        return Err(RunError::Config(format!(
            "no handler for task {missing:?} (known: {})",
            handlers.tasks().join(", ")
        )));
    }
    if tasks.is_empty() {
        return Err(RunError::Config("no tasks to offer".to_owned()));
    }
    config.label_map().map_err(RunError::Config)?;
    if config.slots == 0 {
        return Err(RunError::Config("slots must be at least 1".to_owned()));
    }
    let worker_id = config.worker_id();
    if let Some(listener) = jobmesh_runtime::metrics::bind(&config.metrics)
        .await
        .map_err(|e| RunError::Config(e.to_string()))?
    {
        tokio::spawn(jobmesh_runtime::metrics::serve(listener, shutdown.clone()));
    }
    let health = match &config.health_listen {
        Some(address) => Some(serve_health(address, shutdown.clone()).await?),
        None => None,
    };
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match session(
            &config,
            &handlers,
            &tasks,
            &worker_id,
            &shutdown,
            health.as_ref(),
        )
        .await
        {
            Ok(()) => break,
            Err(Failure { welcomed, message }) => {
                if welcomed {
                    backoff = Duration::from_millis(100);
                }
                let delay = backoff.mul_f64(0.5 + fastrand::f64());
                tracing::warn!(dispatcher = %config.dispatcher_url, error = %message, retry_in_ms = delay.as_millis() as u64, "worker session ended");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(worker_id, "worker stopped");
    Ok(())
}

/// Why the dispatcher refused the session, with what to do when the worker
/// came without a credential.
fn refusal(status: &tonic::Status, has_token: bool) -> String {
    if status.code() == tonic::Code::Unauthenticated && !has_token {
        format!(
            "{status}: this worker has no credential; give it a token with the worker scope (--token, JOBMESH_WORKER_TOKEN or --token-file; `jobmesh token --scope worker` mints one with the dev key of `jobmesh dev`)"
        )
    } else {
        status.to_string()
    }
}

struct Failure {
    welcomed: bool,
    message: String,
}

/// One connection to the dispatcher. Returns `Ok` after a graceful shutdown.
async fn session(
    config: &Config,
    handlers: &Handlers,
    tasks: &[String],
    worker_id: &str,
    shutdown: &CancellationToken,
    health: Option<&HealthReporter>,
) -> Result<(), Failure> {
    let fail = |welcomed, message: String| Failure { welcomed, message };
    let channel = jobmesh_runtime::client::streaming_channel(&config.dispatcher_url)
        .map_err(|e| fail(false, e.to_string()))?
        .caller(jobmesh_runtime::trace::services::WORKER);
    let token = match (&config.token, &config.token_file) {
        (Some(token), _) => Some(token.expose().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| fail(false, format!("worker token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let token = token.as_deref();
    let mut client =
        WorkerServiceClient::with_interceptor(channel, jobmesh_auth::Bearer::new(token));
    let (out, outbound) = outbound::Outbound::new(OUTBOUND_BUFFER);
    let hello = ConnectRequest {
        message: Some(connect_request::Message::Hello(WorkerHello {
            worker_id: worker_id.to_owned(),
            tasks: tasks.to_vec(),
            slots: i32::try_from(config.slots).unwrap_or(i32::MAX),
            name: "jobmesh-worker".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: config::host(),
            labels: config.label_map().map_err(|e| fail(false, e))?,
        })),
    };
    out.send(hello)
        .await
        .map_err(|_| fail(false, "outbound queue closed".to_owned()))?;
    let mut inbound = client
        .connect(outbound)
        .await
        .map_err(|s| fail(false, refusal(&s, token.is_some())))?
        .into_inner();
    let (heartbeat, log_window) = match inbound.message().await {
        Ok(Some(message)) => match message.message {
            Some(connect_response::Message::Welcome(welcome)) => (
                welcome
                    .heartbeat_interval
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(Duration::from_secs(5)),
                usize::try_from(welcome.log_window).unwrap_or(0),
            ),
            _ => {
                return Err(fail(
                    false,
                    "the dispatcher did not welcome the worker".to_owned(),
                ));
            }
        },
        Ok(None) => return Err(fail(false, "the dispatcher closed the stream".to_owned())),
        Err(status) => return Err(fail(false, refusal(&status, token.is_some()))),
    };
    tracing::info!(worker_id, tasks = ?tasks, slots = config.slots, "connected to dispatcher");
    if let Some(health) = health {
        health.set_service_status("", ServingStatus::Serving).await;
    }

    let running = TaskTracker::new();
    let mut tokens: HashMap<(String, i32), CancellationToken> = HashMap::new();
    // The log window of each running attempt (see `JobContext::log_to`).
    let mut credits: HashMap<(String, i32), Arc<Semaphore>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, i32)>();
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // On shutdown the worker drains: it asks for nothing more, finishes what it
    // holds within the grace period (then cancels the rest), and closes once the
    // dispatcher said no assignment follows (`drain_started`) and nothing runs.
    let mut draining = false;
    let mut drain_started = false;
    let mut grace_over = false;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    let outcome = loop {
        if draining && tokens.is_empty() && (drain_started || grace_over) {
            break Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                tracing::info!(
                    running = tokens.len(),
                    grace_ms = config.shutdown_grace().as_millis() as u64,
                    "draining"
                );
                if let Some(health) = health {
                    health.set_service_status("", ServingStatus::NotServing).await;
                }
                let drain = ConnectRequest { message: Some(connect_request::Message::Drain(WorkerDrain {})) };
                if out.send(drain).await.is_err() {
                    break Err(fail(true, "outbound queue closed".to_owned()));
                }
                grace.as_mut().reset(tokio::time::Instant::now() + config.shutdown_grace());
            }
            _ = &mut grace, if draining && !grace_over => {
                grace_over = true;
                if !tokens.is_empty() {
                    tracing::warn!(running = tokens.len(), "grace period over: cancelling what still runs");
                }
                for token in tokens.values() {
                    token.cancel();
                }
            }
            Some(key) = done_rx.recv() => {
                tokens.remove(&key);
                if let Some(credit) = credits.remove(&key) {
                    credit.close();
                }
            }
            _ = ticker.tick() => {
                let beat = ConnectRequest { message: Some(connect_request::Message::Heartbeat(WorkerHeartbeat {})) };
                if !out.try_send(beat) {
                    tracing::debug!("outbound queue full, heartbeat skipped");
                }
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.message {
                    Some(connect_response::Message::Assignment(assignment)) => {
                        let key = (assignment.job_id.clone(), assignment.attempt);
                        let token = CancellationToken::new();
                        tokens.insert(key.clone(), token.clone());
                        let credit = (log_window > 0).then(|| {
                            let credit = Arc::new(Semaphore::new(log_window));
                            credits.insert(key.clone(), Arc::clone(&credit));
                            credit
                        });
                        let handler = handlers.by_task.get(&assignment.task).cloned();
                        let out = out.clone();
                        let done = done_tx.clone();
                        // The execution joins the job's trace (its context came
                        // with the assignment); progress reports become its events.
                        // Only a traced job's executions are traced.
                        let span = if assignment.traceparent.is_empty() {
                            tracing::Span::none()
                        } else {
                            tracing::info_span!(
                            "job.execute",
                            otel.name = %format!("{} execute", assignment.task),
                            otel.kind = "consumer",
                            otel.status_code = tracing::field::Empty,
                            jobmesh.job_id = %assignment.job_id,
                            jobmesh.task = %assignment.task,
                            jobmesh.attempt = assignment.attempt,
                            jobmesh.worker_id = %worker_id,
                            jobmesh.service = jobmesh_runtime::trace::services::WORKER,
                            trace_id = tracing::field::Empty,
                            span_id = tracing::field::Empty,
                        )
                        };
                        if !assignment.traceparent.is_empty() {
                            jobmesh_runtime::trace::adopt(
                                &span,
                                jobmesh_runtime::trace::from_traceparent(&assignment.traceparent),
                            );
                        }
                        running.spawn(async move {
                            execute(assignment, handler, token, out, credit).instrument(span).await;
                            let _ = done.send(key);
                        });
                    }
                    Some(connect_response::Message::Cancellation(c)) => {
                        if let Some(token) = tokens.get(&(c.job_id.clone(), c.attempt)) {
                            tracing::info!(job_id = %c.job_id, attempt = c.attempt, reason = %c.reason, "cancelling attempt");
                            token.cancel();
                        }
                    }
                    Some(connect_response::Message::LogsStored(stored)) => {
                        if let Some(credit) = credits.get(&(stored.job_id, stored.attempt)) {
                            credit.add_permits(usize::try_from(stored.lines).unwrap_or(0));
                        }
                    }
                    Some(connect_response::Message::Refused(refused)) => {
                        // A report of ours was wrong; the attempt goes on. An
                        // outcome refused would leave it running: fail it, saying why.
                        tracing::warn!(job_id = %refused.job_id, attempt = refused.attempt, report = %refused.report, reason = %refused.reason, "the dispatcher refused a report");
                        if refused.report == "succeeded" {
                            let failed = ConnectRequest {
                                message: Some(connect_request::Message::Failed(JobFailed {
                                    job_id: refused.job_id,
                                    attempt: refused.attempt,
                                    message: format!("the result was refused: {}", refused.reason),
                                    retryable: false,
                                })),
                            };
                            let _ = out.send(failed).await;
                        }
                    }
                    Some(connect_response::Message::DrainStarted(_)) => drain_started = true,
                    Some(connect_response::Message::Welcome(_)) | None => {}
                },
                Ok(None) => break Err(fail(true, "the dispatcher closed the stream".to_owned())),
                Err(status) => break Err(fail(true, status.to_string())),
            },
        }
    };
    running.close();
    // Handlers waiting for log room stop waiting: the session is over.
    for credit in credits.values() {
        credit.close();
    }
    if let Some(health) = health {
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
    match outcome {
        Ok(()) => {
            // Drained: every outcome is queued. Close our side and read until the
            // dispatcher ends the session, so it reads them all first.
            running.wait().await;
            drop(out);
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            tracing::info!(worker_id, "drained: every job this worker held has ended");
            Ok(())
        }
        Err(failure) => {
            // The dispatcher re-queues what we held; stop it here so no work runs
            // twice at once.
            for token in tokens.values() {
                token.cancel();
            }
            running.wait().await;
            Err(failure)
        }
    }
}

/// Serves grpc.health.v1 on `address` until `shutdown`; NOT_SERVING until the
/// worker is connected to a dispatcher.
async fn serve_health(
    address: &str,
    shutdown: CancellationToken,
) -> Result<HealthReporter, RunError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| RunError::Config(format!("cannot listen on {address} for health: {e}")))?;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                jobmesh_runtime::grpc::incoming(listener),
                shutdown.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "worker health endpoint stopped");
        }
    });
    Ok(reporter)
}

/// Runs one attempt and reports its outcome.
async fn execute(
    assignment: JobAssignment,
    handler: Option<Handler>,
    cancel: CancellationToken,
    out: outbound::Outbound,
    log_credit: Option<Arc<Semaphore>>,
) {
    let job_id = assignment.job_id.clone();
    let attempt = assignment.attempt;
    let report = |message| ConnectRequest {
        message: Some(message),
    };
    let failed = |message: String, retryable| {
        report(connect_request::Message::Failed(JobFailed {
            job_id: job_id.clone(),
            attempt,
            message,
            retryable,
        }))
    };
    let Some(handler) = handler else {
        let message = format!("this worker has no handler for task {:?}", assignment.task);
        let _ = out.send(failed(message, true)).await;
        return;
    };
    let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ctx = JobContext {
        job_id: job_id.clone(),
        attempt,
        task: assignment.task.clone(),
        args: serde_json::Value::Object(
            assignment
                .args
                .as_ref()
                .map(struct_to_json)
                .unwrap_or_default(),
        ),
        labels: assignment.labels.clone(),
        cancel: cancel.clone(),
        out: out.clone(),
        log_credit,
        lines: Arc::clone(&lines),
    };
    let timeout = assignment.timeout.and_then(|t| Duration::try_from(t).ok());
    tracing::debug!(job_id, attempt, task = %assignment.task, "running");
    let mut handle = tokio::spawn(handler(ctx).instrument(tracing::Span::current()));
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum End {
        Returned(Result<Result<serde_json::Value, TaskError>, tokio::task::JoinError>),
        Cancelled,
        TimedOut,
    }
    let end = tokio::select! {
        result = &mut handle => End::Returned(result),
        _ = cancel.cancelled() => End::Cancelled,
        _ = deadline => End::TimedOut,
    };
    let returned = matches!(end, End::Returned(_));
    // A handler that returned an error because it saw its cancellation token was
    // cancelled, not failed.
    let end = match end {
        End::Returned(Ok(Err(_))) if cancel.is_cancelled() => End::Cancelled,
        other => other,
    };
    if !returned {
        // Give the handler a moment to notice the token, then abort it.
        cancel.cancel();
        if tokio::time::timeout(CANCEL_GRACE, &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
    let outcome = match &end {
        End::Cancelled => "cancelled",
        End::TimedOut => "timed_out",
        End::Returned(Ok(Ok(_))) => "succeeded",
        End::Returned(Ok(Err(_))) => "failed",
        End::Returned(Err(_)) => "panicked",
    };
    if outcome != "succeeded" {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    metrics::counter!(
        "jobmesh_worker_attempts_total",
        "task" => assignment.task.clone(),
        "outcome" => outcome
    )
    .increment(1);
    let message = match end {
        End::Cancelled => report(connect_request::Message::Cancelled(JobCancelled {
            job_id: job_id.clone(),
            attempt,
        })),
        End::TimedOut => failed(
            format!(
                "timed out after {:.1}s",
                timeout.unwrap_or_default().as_secs_f64()
            ),
            true,
        ),
        End::Returned(Ok(Ok(value))) => {
            let result = match value {
                serde_json::Value::Object(map) => map,
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("value".to_owned(), other);
                    map
                }
            };
            report(connect_request::Message::Succeeded(JobSucceeded {
                job_id: job_id.clone(),
                attempt,
                result: Some(json_to_struct(&result)),
            }))
        }
        End::Returned(Ok(Err(error))) => failed(error.message, error.retryable),
        End::Returned(Err(join)) => {
            let detail = if join.is_panic() {
                let panic = join.into_panic();
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned())
            } else {
                "aborted".to_owned()
            };
            tracing::error!(job_id, attempt, detail, "handler panicked");
            failed(format!("the handler panicked: {detail}"), true)
        }
    };
    // After every line the attempt queued: they are stored before it ends.
    let queued = lines.load(std::sync::atomic::Ordering::Acquire);
    if out
        .send_after(message, (job_id.clone(), attempt), queued)
        .await
        .is_err()
    {
        tracing::warn!(
            job_id,
            attempt,
            "outcome not sent: the session ended; the job will be re-run"
        );
    }
}
