//! `jobmesh.v1.WorkerService/Connect`: one session per worker. Reports are
//! forwarded to job-store in the order the worker sent them; a report that
//! job-store refuses as stale makes the dispatcher tell the worker to stop that
//! attempt.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jobmesh_proto::internal::{
    CompleteJobRequest, ConfirmCancelRequest, FailJobRequest, JobAttempt, ReportProgressRequest,
};
use jobmesh_proto::v1::worker_service_server::WorkerService;
use jobmesh_proto::v1::{
    ConnectRequest, ConnectResponse, JobCancellation, WorkerHello, WorkerWelcome, connect_request,
    connect_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use jobmesh_runtime::grpc::traced_in;

use crate::Context;
use crate::registry::SessionId;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest interval at which idle workers are asked to send a heartbeat (shorter
/// when the lease is short: a third of it).
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Most tasks one worker may offer.
const MAX_TASKS: usize = 256;
/// Most slots one worker may have.
const MAX_SLOTS: i32 = 10_000;
/// Most report lanes per worker session.
const LANES: usize = 32;
/// Reports buffered per lane before the worker's stream is read more slowly.
const LANE_BUFFER: usize = 64;
/// Longest progress message and log line kept.
const MAX_TEXT: usize = 4096;

pub(crate) struct WorkerGrpc {
    pub(crate) ctx: Arc<Context>,
    /// Workers present a token with the `worker` scope.
    pub(crate) auth: jobmesh_runtime::auth::Authenticator,
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<ConnectResponse, Status>> + Send>>;

fn validate_hello(hello: &WorkerHello) -> Result<(), Status> {
    if hello.tasks.is_empty() {
        return Err(Status::invalid_argument(
            "hello.tasks: offer at least one task",
        ));
    }
    if hello.tasks.len() > MAX_TASKS {
        return Err(Status::invalid_argument(format!(
            "hello.tasks: {} tasks exceed the limit of {MAX_TASKS}",
            hello.tasks.len()
        )));
    }
    if let Some(bad) = hello
        .tasks
        .iter()
        .find(|t| !jobmesh_runtime::names::is_task_name(t))
    {
        return Err(Status::invalid_argument(format!(
            "hello.tasks: {bad:?} is not a task name (dot-separated segments of letters, digits, '_' or '-')"
        )));
    }
    if !(1..=MAX_SLOTS).contains(&hello.slots) {
        return Err(Status::invalid_argument(format!(
            "hello.slots: {} is not between 1 and {MAX_SLOTS}",
            hello.slots
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.auth.authenticate(request.metadata())?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no hello within 10s of opening the stream")
            })??;
        let hello = match first.and_then(|m| m.message) {
            Some(connect_request::Message::Hello(hello)) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a Connect stream must be hello",
                ));
            }
        };
        validate_hello(&hello)?;
        let worker_id = if hello.worker_id.is_empty() {
            format!("worker-{}", uuid::Uuid::new_v4().simple())
        } else {
            hello.worker_id.clone()
        };
        let slots = usize::try_from(hello.slots).unwrap_or(1);
        // Room for one assignment per slot plus cancellations and the welcome.
        let (tx, rx) = mpsc::channel(slots.min(1024) * 2 + 16);
        let welcome = ConnectResponse {
            message: Some(connect_response::Message::Welcome(WorkerWelcome {
                worker_id: worker_id.clone(),
                heartbeat_interval: prost_types::Duration::try_from(heartbeat_interval(&self.ctx))
                    .ok(),
            })),
        };
        tx.send(welcome)
            .await
            .map_err(|_| Status::unavailable("worker stream closed"))?;
        let session =
            self.ctx
                .registry
                .register(worker_id.clone(), hello.tasks.clone(), slots, tx.clone());
        self.ctx.ensure_consumers(&hello.tasks);
        tracing::info!(worker_id, tasks = ?hello.tasks, slots, "worker connected");
        let ctx = Arc::clone(&self.ctx);
        self.ctx.tracker.spawn(async move {
            serve_session(&ctx, session, &worker_id, inbound, tx, slots).await;
        });
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            ReceiverStream::new(rx),
            Ok,
        ))))
    }
}

/// The job a report is about, if it is about one.
fn job_of(message: &connect_request::Message) -> Option<&str> {
    use connect_request::Message as M;
    match message {
        M::Progress(p) => Some(&p.job_id),
        M::Succeeded(s) => Some(&s.job_id),
        M::Failed(f) => Some(&f.job_id),
        M::Cancelled(c) => Some(&c.job_id),
        M::Hello(_) | M::Heartbeat(_) | M::Log(_) => None,
    }
}

fn lane_of(job_id: &str, lanes: usize) -> usize {
    // FNV-1a: cheap and stable; only spreads jobs over lanes.
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

async fn serve_session(
    ctx: &Arc<Context>,
    session: SessionId,
    worker_id: &str,
    mut inbound: Streaming<ConnectRequest>,
    tx: mpsc::Sender<ConnectResponse>,
    slots: usize,
) {
    // Reports of one job are forwarded in order (same lane); reports of different
    // jobs go through up to LANES lanes at once, so one slow write does not hold
    // back every other job of the worker.
    let lanes_count = slots.clamp(1, LANES);
    let lane_tasks = tokio_util::task::TaskTracker::new();
    let mut lanes = Vec::with_capacity(lanes_count);
    for _ in 0..lanes_count {
        let (lane_tx, mut lane_rx) = mpsc::channel::<connect_request::Message>(LANE_BUFFER);
        let ctx = Arc::clone(ctx);
        let tx = tx.clone();
        lane_tasks.spawn(async move {
            while let Some(message) = lane_rx.recv().await {
                handle(&ctx, session, &tx, message).await;
            }
        });
        lanes.push(lane_tx);
    }
    lane_tasks.close();
    // A worker that sends nothing (not even heartbeats) for a whole lease is gone
    // even if its connection looks open (a stopped or frozen process): end the
    // session so its attempts are re-queued instead of renewed.
    let silence = ctx.config.lease();
    let reason = loop {
        let message = tokio::select! {
            _ = ctx.shutdown.cancelled() => break "the dispatcher is shutting down".to_owned(),
            _ = tokio::time::sleep(silence) => {
                break format!("the worker sent nothing for {}ms (lease)", silence.as_millis());
            }
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(ConnectRequest {
                message: Some(message),
            })) => match job_of(&message).map(|job| lane_of(job, lanes.len())) {
                Some(lane) => {
                    if lanes[lane].send(message).await.is_err() {
                        break "a report lane stopped".to_owned();
                    }
                }
                None => handle(ctx, session, &tx, message).await,
            },
            Ok(Some(ConnectRequest { message: None })) => {}
            Ok(None) => break "the worker closed its stream".to_owned(),
            Err(status) => break format!("the worker's stream broke: {}", status.message()),
        }
    };
    // Let the reports already received reach job-store before releasing the rest.
    drop(lanes);
    lane_tasks.wait().await;
    let held = ctx.registry.unregister(session);
    tracing::info!(worker_id, held = held.len(), reason, "worker disconnected");
    for (job_id, attempt) in held {
        let attempt = JobAttempt { job_id, attempt };
        fail_attempt(
            ctx,
            &attempt,
            &format!("worker {worker_id} disconnected: {reason}"),
        )
        .await;
    }
}

fn heartbeat_interval(ctx: &Context) -> Duration {
    (ctx.config.lease() / 3).min(MAX_HEARTBEAT_INTERVAL)
}

fn key(job_id: &str, attempt: i32) -> (String, i32) {
    (job_id.to_owned(), attempt)
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

async fn handle(
    ctx: &Context,
    session: SessionId,
    tx: &mpsc::Sender<ConnectResponse>,
    message: connect_request::Message,
) {
    use connect_request::Message as M;
    let (job_id, attempt, outcome) = match message {
        M::Hello(_) => {
            tracing::warn!("ignoring a second hello on a worker stream");
            return;
        }
        M::Heartbeat(_) => return,
        M::Log(log) => {
            if ctx.registry.holds(session, &key(&log.job_id, log.attempt)) {
                tracing::info!(job_id = %log.job_id, attempt = log.attempt, line = %truncate(log.line), "job log");
            }
            return;
        }
        M::Progress(p) => {
            let request = ReportProgressRequest {
                attempt: Some(JobAttempt {
                    job_id: p.job_id.clone(),
                    attempt: p.attempt,
                }),
                percent: p.percent,
                message: truncate(p.message),
            };
            let traced = traced_in(&ctx.trace_of(&p.job_id, p.attempt), request);
            let result = ctx.job_store().report_progress(traced).await.map(|_| ());
            (p.job_id, p.attempt, Report::Progress(result))
        }
        M::Succeeded(s) => {
            let request = CompleteJobRequest {
                attempt: Some(JobAttempt {
                    job_id: s.job_id.clone(),
                    attempt: s.attempt,
                }),
                result: s.result,
            };
            let traced = traced_in(&ctx.trace_of(&s.job_id, s.attempt), request);
            let result = ctx.job_store().complete_job(traced).await.map(|_| ());
            (s.job_id, s.attempt, Report::Outcome(result))
        }
        M::Failed(f) => {
            let request = FailJobRequest {
                attempt: Some(JobAttempt {
                    job_id: f.job_id.clone(),
                    attempt: f.attempt,
                }),
                message: truncate(f.message),
                retryable: f.retryable,
            };
            let traced = traced_in(&ctx.trace_of(&f.job_id, f.attempt), request);
            let result = ctx.job_store().fail_job(traced).await.map(|_| ());
            (f.job_id, f.attempt, Report::Outcome(result))
        }
        M::Cancelled(c) => {
            let request = ConfirmCancelRequest {
                attempt: Some(JobAttempt {
                    job_id: c.job_id.clone(),
                    attempt: c.attempt,
                }),
            };
            let traced = traced_in(&ctx.trace_of(&c.job_id, c.attempt), request);
            let result = ctx.job_store().confirm_cancel(traced).await.map(|_| ());
            (c.job_id, c.attempt, Report::Outcome(result))
        }
    };
    let attempt_key = key(&job_id, attempt);
    if matches!(outcome, Report::Outcome(_)) {
        ctx.forget_trace(&job_id, attempt);
    }
    match outcome {
        Report::Progress(Ok(())) => {}
        Report::Outcome(Ok(())) => ctx.registry.release(session, &attempt_key),
        Report::Progress(Err(status)) | Report::Outcome(Err(status)) if is_rejection(&status) => {
            // The attempt is not the job's live attempt any more: stop it.
            tracing::warn!(
                job_id,
                attempt,
                reason = status.message(),
                "report rejected"
            );
            ctx.registry.release(session, &attempt_key);
            let _ = tx.try_send(cancellation(&job_id, attempt, status.message()));
        }
        Report::Progress(Err(status)) => {
            tracing::warn!(job_id, attempt, %status, "progress not recorded");
        }
        Report::Outcome(Err(status)) => {
            // job-store unreachable: the outcome is lost, and the attempt is re-run
            // once its lease, no longer renewed, expires.
            tracing::warn!(job_id, attempt, %status, "outcome not recorded; the job re-runs after its lease");
            ctx.registry.release(session, &attempt_key);
        }
    }
}

fn is_rejection(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
    )
}

enum Report {
    Progress(Result<(), Status>),
    Outcome(Result<(), Status>),
}

pub(crate) fn cancellation(job_id: &str, attempt: i32, reason: &str) -> ConnectResponse {
    ConnectResponse {
        message: Some(connect_response::Message::Cancellation(JobCancellation {
            job_id: job_id.to_owned(),
            attempt,
            reason: reason.to_owned(),
        })),
    }
}

/// Fails an attempt as retryable on behalf of a worker that can no longer report.
pub(crate) async fn fail_attempt(ctx: &Context, attempt: &JobAttempt, message: &str) {
    let request = FailJobRequest {
        attempt: Some(attempt.clone()),
        message: message.to_owned(),
        retryable: true,
    };
    let traced = traced_in(&ctx.trace_of(&attempt.job_id, attempt.attempt), request);
    ctx.forget_trace(&attempt.job_id, attempt.attempt);
    if let Err(status) = ctx.job_store().fail_job(traced).await {
        tracing::debug!(job_id = %attempt.job_id, attempt = attempt.attempt, %status, "attempt not failed; its lease will expire");
    }
}
