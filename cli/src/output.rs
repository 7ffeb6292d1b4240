//! Jobs as JSON for the terminal, in proto3 JSON style (lowerCamelCase, enum names,
//! RFC 3339 timestamps).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobmesh_proto::json::struct_to_json;
use jobmesh_proto::v1;
use serde_json::{Value, json};

fn timestamp(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.to_string()),
        None => Value::Null,
    }
}

/// Seconds since the epoch of a timestamp, for latency arithmetic.
pub(crate) fn seconds(t: &Option<prost_types::Timestamp>) -> Option<f64> {
    let t = t.as_ref()?;
    let at = SystemTime::try_from(*t).ok()?;
    Some(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64(),
    )
}

pub(crate) fn job(job: &v1::Job) -> Value {
    let mut value = json!({
        "id": job.id,
        "task": job.task,
        "state": job.state().as_str_name(),
        "attempt": job.attempt,
        "maxAttempts": job.max_attempts,
        "args": job.args.as_ref().map(|a| Value::Object(struct_to_json(a))).unwrap_or(Value::Null),
        "progress": job.progress.as_ref().map(|p| json!({"percent": p.percent, "message": p.message})).unwrap_or(Value::Null),
        "createTime": timestamp(&job.create_time),
        "startTime": timestamp(&job.start_time),
        "finishTime": timestamp(&job.finish_time),
        "version": job.version.to_string(),
    });
    if let Some(object) = value.as_object_mut() {
        if let Some(result) = &job.result {
            object.insert("result".into(), Value::Object(struct_to_json(result)));
        }
        if let Some(error) = &job.error {
            object.insert(
                "error".into(),
                json!({"message": error.message, "retryable": error.retryable, "attempt": error.attempt}),
            );
        }
        if !job.labels.is_empty() {
            object.insert("labels".into(), json!(job.labels));
        }
        if job.cancel_requested {
            object.insert("cancelRequested".into(), Value::Bool(true));
        }
        if !job.worker_id.is_empty() {
            object.insert("workerId".into(), Value::String(job.worker_id.clone()));
        }
    }
    value
}
