//! What a task handler sees and returns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use jobmesh_proto::v1::{ConnectRequest, JobLog, JobProgress, LogStream, connect_request};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A failure returned by a handler.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    /// What went wrong, shown to the user.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl TaskError {
    /// A failure worth retrying (network hiccup, busy resource).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will happen again (bad input, missing file).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// One attempt as the handler sees it.
pub struct JobContext {
    /// Job identifier.
    pub job_id: String,
    /// Attempt number (1 for the first run).
    pub attempt: i32,
    /// Task name.
    pub task: String,
    /// Arguments, a JSON object.
    pub args: serde_json::Value,
    /// Labels of the job.
    pub labels: HashMap<String, String>,
    pub(crate) cancel: CancellationToken,
    pub(crate) out: crate::outbound::Outbound,
    /// The attempt's log window: one permit per line in flight, given back when
    /// the dispatcher says the lines were handled (`None`: no window).
    pub(crate) log_credit: Option<Arc<Semaphore>>,
    /// Lines this attempt queued, so that its outcome goes after them.
    pub(crate) lines: Arc<AtomicU64>,
}

/// Longest progress message the protocol carries, in bytes.
const MAX_PROGRESS_MESSAGE: usize = 4096;

impl JobContext {
    /// Reports progress (0–100 and a message). Waits when the worker's outbound
    /// queue is full, which slows a handler that reports faster than the mesh
    /// can carry.
    /// The percent is kept between 0 and 100 and the message cut to 4096 bytes
    /// (the protocol's limits: the dispatcher refuses reports past them).
    pub async fn progress(&self, percent: i32, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_PROGRESS_MESSAGE {
            let mut end = MAX_PROGRESS_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let percent = percent.clamp(0, 100);
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            tracing::Span::current().add_event(
                "progress",
                vec![
                    opentelemetry::KeyValue::new("jobmesh.progress.percent", i64::from(percent)),
                    opentelemetry::KeyValue::new("jobmesh.progress.message", message.clone()),
                ],
            );
        }
        let report = connect_request::Message::Progress(JobProgress {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            percent,
            message,
        });
        let _ = self
            .out
            .send(ConnectRequest {
                message: Some(report),
            })
            .await;
    }

    /// Sends a log line of this attempt: stored with the job, in order, and
    /// readable with `jobmesh logs` (lines longer than 4096 characters are cut).
    /// Waits when the outbound queue is full, like [`JobContext::progress`].
    pub async fn log(&self, line: impl Into<String>) {
        self.log_to(LogStream::Unspecified, line).await;
    }

    /// Sends a log line that came from a given output stream (stdout, stderr).
    /// Waits while the attempt's log window is full (its earlier lines are still
    /// being stored), so a chatty handler slows itself, not the other jobs.
    pub async fn log_to(&self, stream: LogStream, line: impl Into<String>) {
        if let Some(credit) = &self.log_credit
            && let Ok(permit) = credit.acquire().await
        {
            // Given back by the dispatcher's acknowledgement, not by this call.
            permit.forget();
        }
        let report = connect_request::Message::Log(JobLog {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            line: line.into(),
            stream: stream as i32,
        });
        let message = ConnectRequest {
            message: Some(report),
        };
        if self
            .out
            .log((self.job_id.clone(), self.attempt), message)
            .await
            .is_ok()
        {
            self.lines.fetch_add(1, Ordering::Release);
        }
    }

    /// Resolves when the attempt is cancelled (by a user, a lost lease or a
    /// timeout); long handlers select on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the attempt has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// A task handler.
pub type Handler = Arc<
    dyn Fn(JobContext) -> BoxFuture<'static, Result<serde_json::Value, TaskError>> + Send + Sync,
>;

/// The handlers of a worker, by task name.
#[derive(Clone, Default)]
pub struct Handlers {
    pub(crate) by_task: HashMap<String, Handler>,
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in `demo.*` tasks.
    pub fn builtin() -> Self {
        let mut handlers = Self::new();
        crate::builtin::register(&mut handlers);
        handlers
    }

    /// Adds (or replaces) the handler of a task.
    pub fn register<F, Fut>(&mut self, task: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, TaskError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.by_task.insert(task.into(), handler);
        self
    }

    /// Task names, sorted.
    pub fn tasks(&self) -> Vec<String> {
        let mut tasks: Vec<String> = self.by_task.keys().cloned().collect();
        tasks.sort();
        tasks
    }
}
