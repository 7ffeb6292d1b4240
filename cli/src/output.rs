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

/// A log line as proto3 JSON would write it: `truncated` and `dropped` only when
/// set, int64 as strings.
pub(crate) fn log_entry(entry: &v1::LogEntry) -> Value {
    let mut value = json!({
        "sequence": entry.sequence.to_string(),
        "attempt": entry.attempt,
        "time": timestamp(&entry.time),
        "stream": entry.stream().as_str_name(),
        "line": entry.line,
    });
    if let Some(object) = value.as_object_mut() {
        if entry.truncated {
            object.insert("truncated".into(), Value::Bool(true));
        }
        if entry.dropped > 0 {
            object.insert("dropped".into(), Value::String(entry.dropped.to_string()));
        }
    }
    value
}

pub(crate) fn worker(worker: &v1::WorkerInfo) -> Value {
    json!({
        "workerId": worker.worker_id,
        "tasks": worker.tasks,
        "slots": worker.slots,
        "slotsInUse": worker.slots_in_use,
        "freeSlots": worker.free_slots,
        "jobIds": worker.job_ids,
        "connectTime": timestamp(&worker.connect_time),
        "lastSeenTime": timestamp(&worker.last_seen_time),
        "name": worker.name,
        "version": worker.version,
        "host": worker.host,
        "labels": worker.labels,
    })
}

/// A timestamp to the second, for tables: `2026-12-01T09:30:12Z`.
pub(crate) fn second(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "-".to_owned();
    };
    let text = t.to_string();
    match text.split_once('.') {
        Some((whole, _)) => format!("{whole}Z"),
        None => text,
    }
}

/// A span of time as a person reads it: `4s`, `2m 05s`, `3h 12m`, `2d 4h`.
pub(crate) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Time from `from` to `to` (or to now), never negative.
pub(crate) fn between(
    from: &Option<prost_types::Timestamp>,
    to: &Option<prost_types::Timestamp>,
) -> Option<Duration> {
    let from = seconds(from)?;
    let to = match to {
        Some(_) => seconds(to)?,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64(),
    };
    Some(Duration::from_secs_f64((to - from).max(0.0)))
}
