//! `jobmesh.v1.WorkerService/Connect`: one session per worker. Reports are
//! forwarded to job-store in the order the worker sent them; a report that
//! job-store refuses as stale makes the dispatcher tell the worker to stop that
//! attempt.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::Stream;
use std::time::SystemTime;

use jobmesh_proto::internal::{
    AppendLogsRequest, CompleteJobRequest, ConfirmCancelRequest, FailJobRequest, JobAttempt,
    LogBatch, LogLine, ReportProgressRequest,
};
use jobmesh_proto::v1::{
    ConnectRequest, ConnectResponse, JobCancellation, JobLog, JobLogsStored, ReportRefused,
    WorkerDrainStarted, WorkerHello, WorkerWelcome, connect_request, connect_response,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::{Code, Request, Status, Streaming};

use jobmesh_runtime::grpc::traced_in;
use jobmesh_runtime::quote::quoted;

use crate::Dispatcher;
use crate::error::Error;
use crate::registry::{About, LastSeen, SessionId};

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
/// Longest a log line waits in its lane for more lines to share a write.
const LOG_LINGER: Duration = Duration::from_millis(5);
/// Log lines of one attempt a worker may have in flight (told in the welcome).
const LOG_WINDOW: i32 = 1024;
/// Bytes of log lines a session's lanes may hold; a worker that ignores its log
/// window waits for room here.
const SESSION_LOG_BYTES: usize = 8 * 1024 * 1024;
/// Longest progress message kept (bytes) and log line kept (characters).
const MAX_TEXT: usize = 4096;
/// Longest worker name and version, and host, in characters.
const MAX_ABOUT: usize = 128;
const MAX_HOST: usize = 256;
/// Most labels of a worker, longest key and value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;
/// Most lines and bytes forwarded to job-store in one AppendLogs call (its
/// limits); a lane's lines are sent when either would be passed.
const LOG_BATCH_LINES: usize = 1024;
const LOG_BATCH_BYTES: usize = 1024 * 1024;
/// What replaces the worker's own token in a line.
const REDACTED: &str = "[redacted jobmesh token]";

/// The stream a worker reads.
pub(crate) type ConnectStream = Pin<Box<dyn Stream<Item = Result<ConnectResponse, Status>> + Send>>;

fn validate_hello(hello: &WorkerHello) -> Result<(), Error> {
    let invalid = |field: &'static str, reason: String| Err(Error::Hello { field, reason });
    if hello.tasks.is_empty() {
        return invalid("hello.tasks", "offer at least one task".to_owned());
    }
    if hello.tasks.len() > MAX_TASKS {
        return invalid(
            "hello.tasks",
            format!(
                "{} tasks exceed the limit of {MAX_TASKS}",
                hello.tasks.len()
            ),
        );
    }
    if let Some(bad) = hello
        .tasks
        .iter()
        .find(|t| !jobmesh_runtime::names::is_task_name(t))
    {
        return invalid(
            "hello.tasks",
            format!(
                "{} is not a task name (dot-separated segments of letters, digits, '_' or '-')",
                quoted(bad)
            ),
        );
    }
    if !(1..=MAX_SLOTS).contains(&hello.slots) {
        return invalid(
            "hello.slots",
            format!("{} is not between 1 and {MAX_SLOTS}", hello.slots),
        );
    }
    for (field, value, max) in [
        ("hello.name", &hello.name, MAX_ABOUT),
        ("hello.version", &hello.version, MAX_ABOUT),
        ("hello.host", &hello.host, MAX_HOST),
    ] {
        if value.chars().count() > max {
            return invalid(
                field,
                format!(
                    "{} characters exceed the limit of {max}",
                    value.chars().count()
                ),
            );
        }
    }
    if hello.labels.len() > MAX_LABELS {
        return invalid(
            "hello.labels",
            format!(
                "{} labels exceed the limit of {MAX_LABELS}",
                hello.labels.len()
            ),
        );
    }
    for (key, value) in &hello.labels {
        let key_ok = (1..=MAX_LABEL_KEY).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !key_ok {
            return invalid(
                "hello.labels",
                format!(
                    "key {} must be 1 to {MAX_LABEL_KEY} letters, digits, '.', '_', '/' or '-'",
                    quoted(key)
                ),
            );
        }
        if value.chars().count() > MAX_LABEL_VALUE {
            return invalid(
                "hello.labels",
                format!(
                    "value of {} exceeds {MAX_LABEL_VALUE} characters",
                    quoted(key)
                ),
            );
        }
    }
    Ok(())
}

/// The bearer token a worker presented, to keep it out of the lines it sends.
fn presented_token(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    // Too short to be a token we issued; replacing it would mangle lines.
    (token.len() >= 16).then(|| token.to_owned())
}

/// Opens the session of a worker that connected (and was authenticated): reads
/// its hello, welcomes it, registers it, and serves it until it ends.
pub(crate) async fn open(
    ctx: &Arc<Dispatcher>,
    request: Request<Streaming<ConnectRequest>>,
) -> Result<ConnectStream, Error> {
    let token = presented_token(request.metadata());
    let mut inbound = request.into_inner();
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Error::NoHello(HELLO_TIMEOUT))?
        .map_err(|status| Error::StreamBroke {
            code: status.code(),
            message: status.message().to_owned(),
        })?;
    let hello = match first.and_then(|m| m.message) {
        Some(connect_request::Message::Hello(hello)) => hello,
        _ => return Err(Error::FirstNotHello),
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
            heartbeat_interval: prost_types::Duration::try_from(heartbeat_interval(ctx)).ok(),
            log_window: LOG_WINDOW,
            silence_limit: prost_types::Duration::try_from(ctx.config.lease()).ok(),
        })),
    };
    tx.send(welcome).await.map_err(|_| Error::StreamClosed)?;
    let about = About {
        name: hello.name.clone(),
        version: hello.version.clone(),
        host: hello.host.clone(),
        labels: hello.labels.clone().into_iter().collect(),
    };
    let (session, last_seen) = ctx.registry.register(
        worker_id.clone(),
        hello.tasks.clone(),
        slots,
        about,
        tx.clone(),
    );
    ctx.ensure_consumers(&hello.tasks);
    tracing::info!(worker_id, tasks = ?hello.tasks, slots, "worker connected");
    let serving = Arc::clone(ctx);
    let (end_tx, end_rx) = oneshot::channel();
    ctx.tracker.spawn(async move {
        let peer = Peer {
            session,
            last_seen,
            token,
        };
        let end = serve_session(&serving, peer, &worker_id, inbound, tx, slots).await;
        let _ = end_tx.send(end);
    });
    Ok(outgoing(rx, end_rx))
}

/// The stream a worker reads: every message sent to it, then, when its session
/// ends, the status that says why (none: OK). Messages already queued when the
/// session ends go first.
fn outgoing(
    rx: mpsc::Receiver<ConnectResponse>,
    end: oneshot::Receiver<Option<Status>>,
) -> ConnectStream {
    struct State {
        rx: mpsc::Receiver<ConnectResponse>,
        end: Option<oneshot::Receiver<Option<Status>>>,
        last: Option<Status>,
        ending: bool,
    }
    let state = State {
        rx,
        end: Some(end),
        last: None,
        ending: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.ending {
                // What was queued before the end, then the end's status.
                return match state.rx.try_recv() {
                    Ok(message) => Some((Ok(message), state)),
                    Err(_) => state.last.take().map(|status| (Err(status), state)),
                };
            }
            let Some(mut end) = state.end.take() else {
                return state.rx.recv().await.map(|message| (Ok(message), state));
            };
            enum Next {
                Message(Option<ConnectResponse>),
                Ended(Option<Status>),
            }
            let next = tokio::select! {
                biased;
                message = state.rx.recv() => Next::Message(message),
                ended = &mut end => Next::Ended(ended.ok().flatten()),
            };
            match next {
                Next::Message(Some(message)) => {
                    state.end = Some(end);
                    return Some((Ok(message), state));
                }
                // Every sender is gone: the end's status is on its way.
                Next::Message(None) => {
                    state.last = end.await.ok().flatten();
                    state.ending = true;
                }
                Next::Ended(status) => {
                    state.last = status;
                    state.ending = true;
                }
            }
        }
    }))
}

/// The job a report is about, if it is about one.
fn job_of(message: &connect_request::Message) -> Option<&str> {
    use connect_request::Message as M;
    match message {
        M::Progress(p) => Some(&p.job_id),
        M::Succeeded(s) => Some(&s.job_id),
        M::Failed(f) => Some(&f.job_id),
        M::Cancelled(c) => Some(&c.job_id),
        M::Log(l) => Some(&l.job_id),
        M::Hello(_) | M::Heartbeat(_) | M::Drain(_) => None,
    }
}

fn lane_of(job_id: &str, lanes: usize) -> usize {
    // FNV-1a: cheap and stable; only spreads jobs over lanes.
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

/// One worker session as its reports are handled.
struct Peer {
    session: SessionId,
    last_seen: LastSeen,
    /// The worker's bearer token, replaced in its log lines.
    token: Option<String>,
}

async fn serve_session(
    ctx: &Arc<Dispatcher>,
    peer: Peer,
    worker_id: &str,
    mut inbound: Streaming<ConnectRequest>,
    tx: mpsc::Sender<ConnectResponse>,
    slots: usize,
) -> Option<Status> {
    // Reports of one job are forwarded in order (same lane); reports of different
    // jobs go through up to LANES lanes at once, so one slow write does not hold
    // back every other job of the worker.
    let session = peer.session;
    let token: Option<Arc<str>> = peer.token.map(Arc::from);
    let lanes_count = slots.clamp(1, LANES);
    // What the lanes may hold, as permits taken by the reader before it hands a
    // message over and returned once the message is handled: reports by count,
    // log lines by bytes. A worker within its log window never exhausts the log
    // budget, so the reader never waits behind a chatty job's lines; one that
    // ignores the window is read at the pace its lines are stored.
    let reports_budget = Arc::new(Semaphore::new(lanes_count * LANE_BUFFER));
    let pacer = Arc::new(LogPacer::default());
    let logs_budget = Arc::new(Semaphore::new(SESSION_LOG_BYTES));
    let lane_tasks = tokio_util::task::TaskTracker::new();
    let mut lanes = Vec::with_capacity(lanes_count);
    for _ in 0..lanes_count {
        let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<LaneItem>();
        let ctx = Arc::clone(ctx);
        let tx = tx.clone();
        let mut logs = LogBuffer::new(token.clone(), Arc::clone(&pacer));
        lane_tasks.spawn(async move {
            // Log lines waiting in the lane go to job-store together; a job's
            // lines are stored before any later report of the job is handled, so
            // its last lines are in before its outcome ends it.
            // Lines wait up to LOG_LINGER for more to share their write (a job
            // printing steadily costs a write per batch, not per line); any
            // other report of the lane sends them at once.
            'lane: while let Some(first) = lane_rx.recv().await {
                let mut next = Some(first);
                loop {
                    while let Some(item) = next.take() {
                        match item.message {
                            connect_request::Message::Log(log) => {
                                if !logs.fits(&log) {
                                    logs.flush(&ctx, session, &tx).await;
                                }
                                logs.push(&ctx, session, log, item.received, item.permit);
                            }
                            other => {
                                logs.flush(&ctx, session, &tx).await;
                                handle(&ctx, session, &tx, other).await;
                                drop(item.permit);
                            }
                        }
                        next = lane_rx.try_recv().ok();
                    }
                    let Some(left) = logs.linger_left() else {
                        break;
                    };
                    match tokio::time::timeout(left, lane_rx.recv()).await {
                        Ok(Some(item)) => next = Some(item),
                        Ok(None) => {
                            logs.flush(&ctx, session, &tx).await;
                            break 'lane;
                        }
                        Err(_) => {
                            logs.flush(&ctx, session, &tx).await;
                            break;
                        }
                    }
                }
            }
        });
        lanes.push(lane_tx);
    }
    lane_tasks.close();
    // A worker that sends nothing (not even heartbeats) for a whole lease is gone
    // even if its connection looks open (a stopped or frozen process): end the
    // session so its attempts are re-queued instead of renewed.
    let silence = ctx.config.lease();
    let end = loop {
        let message = tokio::select! {
            _ = ctx.shutdown.cancelled() => break Some(Error::ShuttingDown),
            _ = tokio::time::sleep(silence) => {
                break Some(Error::Silent {
                    silence,
                    heartbeat: heartbeat_interval(ctx),
                });
            }
            message = inbound.message() => message,
        };
        if matches!(message, Ok(Some(_))) {
            peer.last_seen.touch();
        }
        match message {
            Ok(Some(ConnectRequest {
                message: Some(message),
            })) => match job_of(&message).map(|job| lane_of(job, lanes.len())) {
                Some(lane) => {
                    let received = SystemTime::now();
                    let permit = match &message {
                        connect_request::Message::Log(log) => {
                            let bytes = u32::try_from(log.line.len().clamp(1, SESSION_LOG_BYTES))
                                .unwrap_or(u32::MAX);
                            tokio::time::timeout(
                                silence,
                                Arc::clone(&logs_budget).acquire_many_owned(bytes),
                            )
                            .await
                        }
                        _ => {
                            tokio::time::timeout(
                                silence,
                                Arc::clone(&reports_budget).acquire_owned(),
                            )
                            .await
                        }
                    };
                    // The lanes stay full only while job-store does not answer or
                    // the worker does not read its own stream (acknowledgements
                    // wait for it): past a lease, the session ends like a silent one.
                    let Ok(Ok(permit)) = permit else {
                        break Some(Error::Stuck(silence));
                    };
                    let item = LaneItem {
                        message,
                        received,
                        permit,
                    };
                    if lanes[lane].send(item).is_err() {
                        break Some(Error::LaneStopped);
                    }
                }
                None => match message {
                    connect_request::Message::Drain(_) => {
                        tracing::info!(worker_id, "worker draining: assigning it nothing more");
                        if let Some(tx) = ctx.registry.drain(session) {
                            let _ = tx.send(drain_started()).await;
                        }
                    }
                    other => handle(ctx, session, &tx, other).await,
                },
            },
            Ok(Some(ConnectRequest { message: None })) => {}
            Ok(None) => break None,
            Err(status) => {
                break Some(Error::StreamBroke {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    };
    let reason = end.as_ref().map_or_else(
        || "the worker closed its stream".to_owned(),
        Error::to_string,
    );
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
    end.map(Status::from)
}

/// The answer to a worker's drain.
pub(crate) fn drain_started() -> ConnectResponse {
    ConnectResponse {
        message: Some(connect_response::Message::DrainStarted(
            WorkerDrainStarted {},
        )),
    }
}

/// Tells a worker one of its reports was dropped, and counts it.
fn refuse(
    tx: &mpsc::Sender<ConnectResponse>,
    report: &'static str,
    job_id: &str,
    attempt: i32,
    reason: String,
) {
    tracing::warn!(job_id, attempt, report, reason, "worker report refused");
    crate::metrics::report_refused(report, "invalid");
    let _ = tx.try_send(ConnectResponse {
        message: Some(connect_response::Message::Refused(ReportRefused {
            job_id: job_id.to_owned(),
            attempt,
            report: report.to_owned(),
            reason,
        })),
    });
}

/// What is wrong with a report before it goes anywhere, if anything.
fn invalid(message: &connect_request::Message) -> Option<String> {
    use connect_request::Message as M;
    match message {
        M::Progress(p) if !(0..=100).contains(&p.percent) => Some(format!(
            "progress.percent: {} is not between 0 and 100",
            p.percent
        )),
        M::Progress(p) if p.message.len() > MAX_TEXT => Some(format!(
            "progress.message: {} bytes exceed the limit of {MAX_TEXT}",
            p.message.len()
        )),
        _ => None,
    }
}

fn report_name(message: &connect_request::Message) -> &'static str {
    use connect_request::Message as M;
    match message {
        M::Hello(_) => "hello",
        M::Progress(_) => "progress",
        M::Log(_) => "log",
        M::Succeeded(_) => "succeeded",
        M::Failed(_) => "failed",
        M::Cancelled(_) => "cancelled",
        M::Heartbeat(_) => "heartbeat",
        M::Drain(_) => "drain",
    }
}

fn attempt_of(message: &connect_request::Message) -> i32 {
    use connect_request::Message as M;
    match message {
        M::Progress(p) => p.attempt,
        M::Succeeded(s) => s.attempt,
        M::Failed(f) => f.attempt,
        M::Cancelled(c) => c.attempt,
        M::Log(l) => l.attempt,
        M::Hello(_) | M::Heartbeat(_) | M::Drain(_) => 0,
    }
}

fn heartbeat_interval(ctx: &Dispatcher) -> Duration {
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
    ctx: &Dispatcher,
    session: SessionId,
    tx: &mpsc::Sender<ConnectResponse>,
    message: connect_request::Message,
) {
    use connect_request::Message as M;
    let report = report_name(&message);
    if let M::Hello(_) = message {
        refuse(
            tx,
            report,
            "",
            0,
            "hello: a session has one hello, its first message; this one was ignored".to_owned(),
        );
        return;
    }
    if let Some(job_id) = job_of(&message) {
        let attempt = attempt_of(&message);
        if let Some(reason) = invalid(&message) {
            refuse(tx, report, job_id, attempt, reason);
            return;
        }
        // A worker speaks only for the attempts it holds; anything else is not
        // forwarded (job-store fences by attempt, not by worker), and the worker
        // is told to stop running it.
        if !matches!(message, M::Log(_)) && !ctx.registry.holds(session, &key(job_id, attempt)) {
            crate::metrics::report_refused(report, "not_held");
            tracing::warn!(
                job_id,
                attempt,
                report,
                "report about an attempt this worker does not hold"
            );
            let reason = format!(
                "this worker does not hold attempt {attempt} of job {job_id} (never assigned to it, no longer its job's attempt, or its outcome was already reported); its {report} report was dropped"
            );
            let _ = tx.try_send(cancellation(job_id, attempt, &reason));
            return;
        }
    }
    let (job_id, attempt, outcome) = match message {
        M::Hello(_) | M::Heartbeat(_) | M::Log(_) | M::Drain(_) => return,
        M::Progress(p) => {
            let request = ReportProgressRequest {
                attempt: Some(JobAttempt {
                    job_id: p.job_id.clone(),
                    attempt: p.attempt,
                }),
                percent: p.percent,
                message: p.message,
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
        Report::Progress(Err(status)) | Report::Outcome(Err(status))
            if status.code() == Code::InvalidArgument =>
        {
            // The report itself is wrong: say so, and change nothing else.
            refuse(tx, report, &job_id, attempt, status.message().to_owned());
        }
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

/// Paces each attempt's log lines to the configured rate: the acknowledgement of
/// lines beyond it is sent late, which holds the worker's window shut.
#[derive(Default)]
struct LogPacer {
    /// Per attempt: tokens (lines that may go now; negative is a debt) and when
    /// they were counted.
    buckets: Mutex<HashMap<(String, i32), (f64, Instant)>>,
}

impl LogPacer {
    /// How long to hold back the acknowledgement of `lines` lines of `attempt`.
    fn delay(&self, attempt: &(String, i32), lines: i32, rate: u32) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let (rate, burst) = (f64::from(rate), f64::from(2 * LOG_WINDOW));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: attempts of this session only; forgotten wholesale past a size
        // no set of slots reaches (a forgotten attempt starts with a full burst).
        if buckets.len() > 4 * MAX_SLOTS as usize {
            buckets.clear();
        }
        let (tokens, at) = buckets.entry(attempt.clone()).or_insert((burst, now));
        *tokens = (*tokens + rate * now.duration_since(*at).as_secs_f64()).min(burst);
        *at = now;
        *tokens -= f64::from(lines);
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    fn forget(&self, attempt: &(String, i32)) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(attempt);
    }
}

/// A message handed from the session's reader to a lane, with the budget it
/// takes until it is handled.
struct LaneItem {
    message: connect_request::Message,
    received: SystemTime,
    permit: OwnedSemaphorePermit,
}

/// Log lines of one lane waiting to go to job-store, grouped by attempt in the
/// order they arrived.
struct LogBuffer {
    batches: Vec<LogBatch>,
    lines: usize,
    bytes: usize,
    token: Option<Arc<str>>,
    /// Lines received per attempt since the last flush (stored, refused or not
    /// held alike), acknowledged to the worker after the flush.
    received: Vec<((String, i32), i32)>,
    /// The budget the waiting lines take, returned once they are handled.
    permits: Vec<OwnedSemaphorePermit>,
    pacer: Arc<LogPacer>,
    /// When the oldest waiting line arrived.
    since: Option<Instant>,
}

impl LogBuffer {
    fn new(token: Option<Arc<str>>, pacer: Arc<LogPacer>) -> Self {
        Self {
            batches: Vec::new(),
            lines: 0,
            bytes: 0,
            token,
            received: Vec::new(),
            permits: Vec::new(),
            pacer,
            since: None,
        }
    }

    /// How much longer the waiting lines may wait for company; `None` when no
    /// line waits.
    fn linger_left(&self) -> Option<Duration> {
        self.since
            .map(|since| LOG_LINGER.saturating_sub(since.elapsed()))
    }

    /// Whether one more line fits in this call's limits.
    fn fits(&self, log: &JobLog) -> bool {
        self.lines < LOG_BATCH_LINES
            && self.bytes + log.line.len().min(4 * MAX_TEXT) <= LOG_BATCH_BYTES
    }

    /// Adds a line of an attempt the worker holds; other lines are dropped (and
    /// counted): a worker speaks only for what it was given.
    fn push(
        &mut self,
        ctx: &Dispatcher,
        session: SessionId,
        log: JobLog,
        received: SystemTime,
        permit: OwnedSemaphorePermit,
    ) {
        self.permits.push(permit);
        self.since.get_or_insert_with(Instant::now);
        match self.received.last_mut() {
            Some((attempt, count)) if attempt.0 == log.job_id && attempt.1 == log.attempt => {
                *count += 1;
            }
            _ => self.received.push((key(&log.job_id, log.attempt), 1)),
        }
        if !ctx.registry.holds(session, &key(&log.job_id, log.attempt)) {
            crate::metrics::log_lines_refused("not_held", 1);
            return;
        }
        let stream = log.stream;
        let (text, truncated) = clean_line(log.line, self.token.as_deref());
        self.lines += 1;
        self.bytes += text.len();
        let line = LogLine {
            time: Some(received.into()),
            stream,
            line: text,
            truncated,
        };
        match self.batches.last_mut() {
            Some(batch)
                if batch
                    .attempt
                    .as_ref()
                    .is_some_and(|a| a.job_id == log.job_id && a.attempt == log.attempt) =>
            {
                batch.lines.push(line);
            }
            _ => self.batches.push(LogBatch {
                attempt: Some(JobAttempt {
                    job_id: log.job_id,
                    attempt: log.attempt,
                }),
                lines: vec![line],
            }),
        }
    }

    /// Stores the waiting lines. Lines job-store refuses belong to an attempt
    /// that is no longer running: the worker is told to stop it, as for any
    /// other stale report.
    async fn flush(
        &mut self,
        ctx: &Dispatcher,
        session: SessionId,
        tx: &mpsc::Sender<ConnectResponse>,
    ) {
        self.since = None;
        self.store(ctx, session, tx).await;
        self.permits.clear();
        // Acknowledged after they are handled, so the worker's window reopens for
        // exactly those lines; a worker that left ignores the rest.
        let mut acks: Vec<((String, i32), i32)> = Vec::new();
        for (attempt, count) in self.received.drain(..) {
            match acks.iter_mut().find(|(a, _)| *a == attempt) {
                Some((_, total)) => *total += count,
                None => acks.push((attempt, count)),
            }
        }
        for (attempt, lines) in acks {
            let delay = self
                .pacer
                .delay(&attempt, lines, ctx.config.max_log_lines_per_second);
            if !ctx.registry.holds(session, &attempt) {
                self.pacer.forget(&attempt);
            }
            let ack = ConnectResponse {
                message: Some(connect_response::Message::LogsStored(JobLogsStored {
                    job_id: attempt.0,
                    attempt: attempt.1,
                    lines,
                })),
            };
            // A worker that does not read its stream for a lease loses the
            // acknowledgement; its session ends (the reader gives up waiting).
            let lease = ctx.config.lease();
            if delay.is_zero() {
                let sent = tokio::time::timeout(lease, tx.send(ack)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            } else {
                // Late, without holding up the lane's other jobs.
                let tx = tx.clone();
                ctx.tracker.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tokio::time::timeout(lease, tx.send(ack)).await;
                });
            }
        }
    }

    async fn store(
        &mut self,
        ctx: &Dispatcher,
        session: SessionId,
        tx: &mpsc::Sender<ConnectResponse>,
    ) {
        if self.batches.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.batches);
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        match ctx
            .job_store()
            .append_logs(AppendLogsRequest { batches })
            .await
        {
            Ok(response) => {
                for refused in response.into_inner().refused {
                    let attempt_key = key(&refused.job_id, refused.attempt);
                    if ctx.registry.holds(session, &attempt_key) {
                        tracing::warn!(job_id = %refused.job_id, attempt = refused.attempt, "log lines of a stale attempt refused");
                        ctx.registry.release(session, &attempt_key);
                        let _ = tx.try_send(cancellation(
                            &refused.job_id,
                            refused.attempt,
                            "the attempt is no longer running; its log lines were refused",
                        ));
                    }
                }
            }
            Err(status) => {
                crate::metrics::log_lines_refused("unavailable", lines as u64);
                tracing::warn!(lines, %status, "log lines not stored");
            }
        }
    }
}

/// A line as stored: without its line break, at most `MAX_TEXT` characters
/// (and whether it was cut), with the worker's own token replaced.
fn clean_line(mut line: String, token: Option<&str>) -> (String, bool) {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    if let Some(token) = token
        && line.contains(token)
    {
        line = line.replace(token, REDACTED);
    }
    match line.char_indices().nth(MAX_TEXT) {
        Some((end, _)) => {
            line.truncate(end);
            (line, true)
        }
        None => (line, false),
    }
}

/// job-store's answer that the attempt is not (or no longer) the job's running
/// attempt.
fn is_rejection(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
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
pub(crate) async fn fail_attempt(ctx: &Dispatcher, attempt: &JobAttempt, message: &str) {
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
