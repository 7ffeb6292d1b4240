//! Domain types of job-store and how they are read from rows (proto is at the
//! edge: [`crate::convert`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The states of a job as stored in the `state` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    /// Every state, in the order of `jobmesh.v1.JobState`.
    pub(crate) const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "cancelled" => State::Cancelled,
            other => return Err(Error::Corrupt(format!("unknown state {other:?}"))),
        })
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// How failed attempts are retried.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RetryPolicy {
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after `failed_attempt` (1-based).
    pub(crate) fn backoff(&self, failed_attempt: i32) -> Duration {
        let exponent = (failed_attempt.max(1) - 1).min(64);
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let spread = self.jitter.clamp(0.0, 1.0) * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((capped * (1.0 + spread)).max(0.0))
    }
}

/// A job to create.
#[derive(Clone, Debug)]
pub(crate) struct NewJob {
    pub(crate) tenant: String,
    pub(crate) task: String,
    pub(crate) args: serde_json::Map<String, serde_json::Value>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) priority: i32,
    pub(crate) max_attempts: i32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) schedule_time: Option<SystemTime>,
    pub(crate) retry: RetryPolicy,
    /// Trace context of the creating call (`traceparent`), if traced.
    pub(crate) traceparent: Option<String>,
}

/// The failure recorded on a job.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) retryable: bool,
    pub(crate) attempt: i32,
}

/// A job as stored.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) id: Uuid,
    pub(crate) tenant: String,
    pub(crate) task: String,
    pub(crate) args: serde_json::Value,
    pub(crate) state: State,
    pub(crate) progress_percent: i32,
    pub(crate) progress_message: String,
    pub(crate) result: Option<serde_json::Value>,
    pub(crate) error: Option<Failure>,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) priority: i32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) schedule_time: Option<SystemTime>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) cancel_requested: bool,
    pub(crate) worker_id: Option<String>,
    pub(crate) create_time: SystemTime,
    pub(crate) start_time: Option<SystemTime>,
    pub(crate) finish_time: Option<SystemTime>,
    pub(crate) update_time: SystemTime,
    pub(crate) version: i64,
    /// The trace of the submitting call, when it was traced.
    pub(crate) trace_id: Option<String>,
    /// The lease of the running attempt.
    pub(crate) lease: Option<Duration>,
}

/// Columns read into a [`Job`], in one place so every query returns the same shape.
pub(crate) const JOB_COLUMNS: &str = "id, tenant, task, args, state, progress_percent, \
    progress_message, result, error_message, error_retryable, error_attempt, attempt, \
    max_attempts, labels, priority, timeout_ms, schedule_time, idempotency_key, \
    retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter, cancel_requested, \
    worker_id, create_time, start_time, finish_time, update_time, version, traceparent, lease_ms";

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl TryFrom<&Row> for Job {
    type Error = Error;

    fn try_from(row: &Row) -> Result<Self> {
        let labels: serde_json::Value = row.try_get("labels")?;
        let labels = labels
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let error = match row.try_get::<_, Option<String>>("error_message")? {
            Some(message) => Some(Failure {
                message,
                retryable: row
                    .try_get::<_, Option<bool>>("error_retryable")?
                    .unwrap_or(false),
                attempt: row.try_get::<_, Option<i32>>("error_attempt")?.unwrap_or(0),
            }),
            None => None,
        };
        Ok(Job {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            task: row.try_get("task")?,
            args: row.try_get("args")?,
            state: State::parse(row.try_get("state")?)?,
            progress_percent: row.try_get("progress_percent")?,
            progress_message: row.try_get("progress_message")?,
            result: row.try_get("result")?,
            error,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            labels,
            priority: row.try_get("priority")?,
            timeout: row.try_get::<_, Option<i64>>("timeout_ms")?.map(millis),
            schedule_time: row.try_get("schedule_time")?,
            idempotency_key: row.try_get("idempotency_key")?,
            retry: RetryPolicy {
                initial_backoff: millis(row.try_get("retry_initial_ms")?),
                max_backoff: millis(row.try_get("retry_max_ms")?),
                multiplier: row.try_get("retry_multiplier")?,
                jitter: row.try_get("retry_jitter")?,
            },
            cancel_requested: row.try_get("cancel_requested")?,
            worker_id: row.try_get("worker_id")?,
            create_time: row.try_get("create_time")?,
            start_time: row.try_get("start_time")?,
            finish_time: row.try_get("finish_time")?,
            update_time: row.try_get("update_time")?,
            version: row.try_get("version")?,
            trace_id: row
                .try_get::<_, Option<String>>("traceparent")?
                .as_deref()
                .and_then(trace_id_of),
            lease: row.try_get::<_, Option<i64>>("lease_ms")?.map(millis),
        })
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), when
/// it is one.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let valid = id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0');
    valid.then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_the_traceparent() {
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.backoff(1), Duration::from_secs(1));
        assert_eq!(policy.backoff(2), Duration::from_secs(2));
        assert_eq!(policy.backoff(4), Duration::from_secs(8));
        assert_eq!(policy.backoff(30), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = RetryPolicy::default();
        for _ in 0..1000 {
            let d = policy.backoff(2).as_secs_f64();
            assert!((1.6..=2.4).contains(&d), "{d}");
        }
    }
}
