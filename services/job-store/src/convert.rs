//! Proto ⇄ domain, at job-store's edge: requests into the domain types of
//! [`crate::model`] (a malformed field refused with its path), and the domain
//! types back into proto. The domain knows nothing of proto.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use jobmesh_proto::internal::{self as pb, JobAttempt};
use jobmesh_proto::json::{json_to_struct, struct_to_json};
use jobmesh_proto::v1;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{Job, NewJob, RetryPolicy, State};

/// The state a request filters on; `None` for `JOB_STATE_UNSPECIFIED` (any).
pub(crate) fn state_of(state: v1::JobState) -> Option<State> {
    match state {
        v1::JobState::Unspecified => None,
        v1::JobState::Queued => Some(State::Queued),
        v1::JobState::Running => Some(State::Running),
        v1::JobState::Succeeded => Some(State::Succeeded),
        v1::JobState::Failed => Some(State::Failed),
        v1::JobState::Cancelled => Some(State::Cancelled),
    }
}

impl From<State> for v1::JobState {
    fn from(state: State) -> Self {
        match state {
            State::Queued => v1::JobState::Queued,
            State::Running => v1::JobState::Running,
            State::Succeeded => v1::JobState::Succeeded,
            State::Failed => v1::JobState::Failed,
            State::Cancelled => v1::JobState::Cancelled,
        }
    }
}

/// The job id in `field`, or `INVALID_ARGUMENT` naming the field.
pub(crate) fn job_id(field: &'static str, value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value).map_err(|_| Error::InvalidArgument {
        field,
        reason: format!(
            "{} is not a job id (a UUID)",
            jobmesh_runtime::quote::quoted(value)
        ),
    })
}

/// The job and attempt number a report is about (`attempt.job_id` checked),
/// recorded on the call's span.
pub(crate) fn attempt(value: Option<JobAttempt>) -> Result<(Uuid, i32), Error> {
    let value = value.ok_or(Error::InvalidArgument {
        field: "attempt",
        reason: "missing".to_owned(),
    })?;
    let id = job_id("attempt.job_id", &value.job_id)?;
    jobmesh_runtime::trace::record_job(&value.job_id, None, Some(value.attempt));
    Ok((id, value.attempt))
}

pub(crate) fn duration(value: Option<prost_types::Duration>) -> Option<Duration> {
    value.and_then(|d| Duration::try_from(d).ok())
}

/// A request's retry policy, the defaults where it gives none.
pub(crate) fn retry_policy(p: Option<v1::RetryPolicy>) -> RetryPolicy {
    let default = RetryPolicy::default();
    let Some(p) = p else { return default };
    RetryPolicy {
        initial_backoff: duration(p.initial_backoff).unwrap_or(default.initial_backoff),
        max_backoff: duration(p.max_backoff).unwrap_or(default.max_backoff),
        multiplier: if p.multiplier > 0.0 {
            p.multiplier
        } else {
            default.multiplier
        },
        jitter: p.jitter.clamp(0.0, 1.0),
    }
}

impl From<pb::CreateJobRequest> for NewJob {
    /// The job a CreateJob asks for (its trace context is the call's, set by the
    /// handler).
    fn from(r: pb::CreateJobRequest) -> Self {
        NewJob {
            tenant: r.tenant,
            task: r.task,
            args: r.args.as_ref().map(struct_to_json).unwrap_or_default(),
            idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
            priority: r.priority,
            max_attempts: r.max_attempts.max(1),
            timeout: duration(r.timeout),
            schedule_time: r.schedule_time.and_then(|t| SystemTime::try_from(t).ok()),
            retry: retry_policy(r.retry_policy),
            traceparent: None,
        }
    }
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn object(value: &serde_json::Value) -> prost_types::Struct {
    match value {
        serde_json::Value::Object(map) => json_to_struct(map),
        _ => prost_types::Struct::default(),
    }
}

impl From<&Job> for v1::Job {
    fn from(job: &Job) -> Self {
        v1::Job {
            id: job.id.to_string(),
            task: job.task.clone(),
            args: Some(object(&job.args)),
            state: v1::JobState::from(job.state) as i32,
            progress: Some(v1::Progress {
                percent: job.progress_percent,
                message: job.progress_message.clone(),
            }),
            result: job.result.as_ref().map(object),
            error: job.error.as_ref().map(|e| v1::JobError {
                message: e.message.clone(),
                retryable: e.retryable,
                attempt: e.attempt,
            }),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            labels: job
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cancel_requested: job.cancel_requested,
            create_time: Some(job.create_time.into()),
            start_time: job.start_time.map(Into::into),
            finish_time: job.finish_time.map(Into::into),
            version: job.version,
            priority: job.priority,
            timeout: job.timeout.map(duration_to_proto),
            schedule_time: job.schedule_time.map(Into::into),
            idempotency_key: job.idempotency_key.clone().unwrap_or_default(),
            update_time: Some(job.update_time.into()),
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(duration_to_proto(job.retry.initial_backoff)),
                max_backoff: Some(duration_to_proto(job.retry.max_backoff)),
                multiplier: job.retry.multiplier,
                jitter: job.retry.jitter,
            }),
            worker_id: job.worker_id.clone().unwrap_or_default(),
            trace_id: job.trace_id.clone().unwrap_or_default(),
        }
    }
}
