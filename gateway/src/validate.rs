//! Validation of public requests at the edge. Every error names the field and the
//! offending value, and maps to `INVALID_ARGUMENT`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use jobmesh_proto::internal as pb;
use jobmesh_proto::json::struct_depth;
use jobmesh_proto::v1;
use jobmesh_runtime::quote::quoted;
use prost::Message as _;
use tonic::Status;

/// Largest encoded `args`.
pub(crate) const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Deepest nesting of `args`.
pub(crate) const MAX_ARGS_DEPTH: usize = 32;
/// Most labels on a job.
pub(crate) const MAX_LABELS: usize = 64;
/// Longest label key and value.
pub(crate) const MAX_LABEL_KEY: usize = 63;
pub(crate) const MAX_LABEL_VALUE: usize = 256;
/// Longest idempotency key.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Attempts: default and bounds.
pub(crate) const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub(crate) const MAX_ATTEMPTS: i32 = 100;
/// Longest execution timeout.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Farthest schedule time.
pub(crate) const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(365 * 24 * 3600);
/// The earliest start time accepted, 2000-01-01T00:00:00Z, in seconds since
/// the Unix epoch.
const EARLIEST_SCHEDULE_SECONDS: u64 = 946_684_800;
/// Page size: default and cap.
pub(crate) const DEFAULT_PAGE_SIZE: i32 = 50;
pub(crate) const MAX_PAGE_SIZE: i32 = 1000;
/// Where each CountJobs count stops.
pub(crate) const COUNT_LIMIT: i64 = 10_000;

const NANOS_PER_SECOND: i32 = 1_000_000_000;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    crate::error::Error::invalid(field, reason).into()
}

pub(crate) fn job_id(value: &str) -> Result<String, Status> {
    if value.is_empty() {
        return Err(invalid("job_id", "required"));
    }
    uuid::Uuid::parse_str(value)
        .map(|id| id.to_string())
        .map_err(|_| {
            invalid(
                "job_id",
                format!("{} is not a job id (a UUID)", quoted(value)),
            )
        })
}

fn task(value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid("task", "required"));
    }
    if !jobmesh_runtime::names::is_task_name(value) {
        return Err(invalid(
            "task",
            format!(
                "{} is not a task name: use dot-separated segments of letters, digits, '_' or '-', each starting with a letter, at most 128 characters",
                quoted(value)
            ),
        ));
    }
    Ok(())
}

fn label_key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn labels(field: &str, labels: &HashMap<String, String>) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            field,
            format!("{} labels exceed the limit of {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if !label_key_ok(key) {
            return Err(invalid(
                field,
                format!(
                    "key {} must be 1-{MAX_LABEL_KEY} letters, digits, '.', '_', '-' or '/'",
                    quoted(key)
                ),
            ));
        }
        if value.contains('\0') {
            return Err(invalid(
                field,
                format!("value of {} contains a NUL character", quoted(key)),
            ));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(invalid(
                field,
                format!(
                    "value of {} is {} bytes, over the limit of {MAX_LABEL_VALUE}",
                    quoted(key),
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, Status> {
    let Some(value) = value else { return Ok(None) };
    // A well-formed Duration keeps nanos within a second (and of the sign of
    // seconds); the conversion would quietly carry them into seconds.
    if !(0..NANOS_PER_SECOND).contains(&value.nanos) {
        return Err(invalid(
            field,
            format!(
                "nanos {} is outside 0 to 999999999 (seconds and nanos of a non-negative duration)",
                value.nanos
            ),
        ));
    }
    let d =
        Duration::try_from(value).map_err(|_| invalid(field, "must be a non-negative duration"))?;
    if d > max {
        return Err(invalid(
            field,
            format!("{:?} exceeds the limit of {:?}", d, max),
        ));
    }
    Ok(Some(d))
}

fn retry_policy(value: Option<v1::RetryPolicy>) -> Result<Option<v1::RetryPolicy>, Status> {
    let Some(p) = value else { return Ok(None) };
    let day = Duration::from_secs(24 * 3600);
    let initial = duration("retry_policy.initial_backoff", p.initial_backoff, day)?;
    let max = duration("retry_policy.max_backoff", p.max_backoff, day)?;
    if let (Some(initial), Some(max)) = (initial, max)
        && max < initial
    {
        return Err(invalid(
            "retry_policy.max_backoff",
            format!("{max:?} is shorter than initial_backoff {initial:?}"),
        ));
    }
    if p.multiplier != 0.0 && !(1.0..=100.0).contains(&p.multiplier) {
        return Err(invalid(
            "retry_policy.multiplier",
            format!("{} is not between 1 and 100", p.multiplier),
        ));
    }
    if !(0.0..=1.0).contains(&p.jitter) {
        return Err(invalid(
            "retry_policy.jitter",
            format!("{} is not between 0 and 1", p.jitter),
        ));
    }
    Ok(Some(p))
}

/// A SubmitJob request turned into job-store's CreateJob for `tenant`.
pub(crate) fn submit(
    tenant: &str,
    r: v1::SubmitJobRequest,
) -> Result<pb::CreateJobRequest, Status> {
    task(&r.task)?;
    let args = r.args.unwrap_or_default();
    let size = args.encoded_len();
    if size > MAX_ARGS_BYTES {
        return Err(invalid(
            "args",
            format!("{size} bytes exceed the limit of {MAX_ARGS_BYTES}"),
        ));
    }
    if let Some(problem) = unstorable_in_struct(&args, "args") {
        return Err(invalid("args", problem));
    }
    let depth = struct_depth(&args);
    if depth > MAX_ARGS_DEPTH {
        return Err(invalid(
            "args",
            format!("nested {depth} levels deep, over the limit of {MAX_ARGS_DEPTH}"),
        ));
    }
    if r.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid(
            "idempotency_key",
            format!(
                "{} characters exceed the limit of {MAX_IDEMPOTENCY_KEY}",
                r.idempotency_key.len()
            ),
        ));
    }
    if r.idempotency_key.contains('\0') {
        return Err(invalid("idempotency_key", "contains a NUL character"));
    }
    labels("labels", &r.labels)?;
    if !(-1000..=1000).contains(&r.priority) {
        return Err(invalid(
            "priority",
            format!("{} is not between -1000 and 1000", r.priority),
        ));
    }
    let max_attempts = match r.max_attempts {
        0 => DEFAULT_MAX_ATTEMPTS,
        n if (1..=MAX_ATTEMPTS).contains(&n) => n,
        n => {
            return Err(invalid(
                "max_attempts",
                format!(
                    "{n} is not between 1 and {MAX_ATTEMPTS} (0 means the default, {DEFAULT_MAX_ATTEMPTS})"
                ),
            ));
        }
    };
    let timeout = duration("timeout", r.timeout, MAX_TIMEOUT)?;
    if timeout == Some(Duration::ZERO) {
        return Err(invalid(
            "timeout",
            "must be positive (leave it unset for no timeout)",
        ));
    }
    if let Some(at) = r.schedule_time {
        if !(0..NANOS_PER_SECOND).contains(&at.nanos) {
            return Err(invalid(
                "schedule_time",
                format!("nanos {} is outside 0 to 999999999", at.nanos),
            ));
        }
        let when = SystemTime::try_from(at)
            .map_err(|_| invalid("schedule_time", "not a valid timestamp"))?;
        if when > SystemTime::now() + MAX_SCHEDULE_AHEAD {
            return Err(invalid("schedule_time", "more than 365 days ahead"));
        }
        // A time in the past means "now"; one before 2000 is a client's
        // mistake (an unset timestamp some languages send as the epoch).
        if when < SystemTime::UNIX_EPOCH + Duration::from_secs(EARLIEST_SCHEDULE_SECONDS) {
            return Err(invalid(
                "schedule_time",
                "is before 2000-01-01, probably an unset timestamp sent as a value; leave it unset to run as soon as possible",
            ));
        }
    }
    Ok(pb::CreateJobRequest {
        tenant: tenant.to_owned(),
        task: r.task,
        args: Some(args),
        idempotency_key: r.idempotency_key,
        labels: r.labels,
        priority: r.priority,
        max_attempts,
        timeout: r.timeout,
        schedule_time: r.schedule_time,
        retry_policy: retry_policy(r.retry_policy)?,
    })
}

/// The path of the first string (key or value) in `value` holding a NUL
/// character, e.g. `args.a[2]`.
/// The first value in `value` that cannot be stored as it was sent, said with
/// its path: a NUL character (PostgreSQL's JSON text cannot hold one) or a
/// number that is not finite (NaN, ±Infinity: JSON has no text for them, and
/// changing them to null would change the job's args).
fn unstorable_in_struct(value: &prost_types::Struct, path: &str) -> Option<String> {
    value.fields.iter().find_map(|(key, v)| {
        if key.contains('\0') {
            return Some(format!("{path} (a key) {NUL}"));
        }
        unstorable_in_value(v, &format!("{path}.{key}"))
    })
}

const NUL: &str = "contains a NUL character, which JSON text in PostgreSQL cannot hold";

fn unstorable_in_value(value: &prost_types::Value, path: &str) -> Option<String> {
    use prost_types::value::Kind;
    match value.kind.as_ref()? {
        Kind::StringValue(s) if s.contains('\0') => Some(format!("{path} {NUL}")),
        Kind::NumberValue(n) if !n.is_finite() => Some(format!(
            "{path} is {n}, which JSON cannot represent; send a finite number (or a string)"
        )),
        Kind::StructValue(s) => unstorable_in_struct(s, path),
        Kind::ListValue(list) => list
            .values
            .iter()
            .enumerate()
            .find_map(|(i, v)| unstorable_in_value(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// `key=value` label filters as a map, each checked like a job's labels.
fn label_filter(entries: &[String]) -> Result<HashMap<String, String>, Status> {
    let mut filter = HashMap::with_capacity(entries.len());
    for entry in entries {
        let (key, value) = entry.split_once('=').ok_or_else(|| {
            invalid(
                "labels",
                format!("{} is not written key=value", quoted(entry)),
            )
        })?;
        filter.insert(key.to_owned(), value.to_owned());
    }
    labels("labels", &filter)?;
    Ok(filter)
}

fn state_filter(state: i32) -> Result<(), Status> {
    if v1::JobState::try_from(state).is_err() {
        return Err(invalid("state", format!("{state} is not a JobState")));
    }
    Ok(())
}

/// A ReadJobLogs request turned into job-store's for `tenant`.
pub(crate) fn read_logs(
    tenant: &str,
    r: v1::ReadJobLogsRequest,
) -> Result<pb::ReadJobLogsRequest, Status> {
    let job_id = job_id(&r.job_id)?;
    if r.attempt < 0 {
        return Err(invalid(
            "attempt",
            format!("{} is negative; use 0 for every attempt", r.attempt),
        ));
    }
    if r.after_sequence < 0 {
        return Err(invalid(
            "after_sequence",
            format!(
                "{} is negative; use 0 to read from the first line",
                r.after_sequence
            ),
        ));
    }
    Ok(pb::ReadJobLogsRequest {
        tenant: tenant.to_owned(),
        job_id,
        attempt: r.attempt,
        after_sequence: r.after_sequence,
        follow: r.follow,
    })
}

/// A WatchJobs request turned into job-store's for `tenant`.
pub(crate) fn watch_jobs(
    tenant: &str,
    r: v1::WatchJobsRequest,
) -> Result<pb::WatchJobsRequest, Status> {
    if !r.task.is_empty() {
        task(&r.task)?;
    }
    state_filter(r.state)?;
    Ok(pb::WatchJobsRequest {
        tenant: tenant.to_owned(),
        labels: label_filter(&r.labels)?,
        task: r.task,
        state: r.state,
    })
}

/// A ListJobs request turned into job-store's ListJobs for `tenant`.
pub(crate) fn list(tenant: &str, r: v1::ListJobsRequest) -> Result<pb::ListJobsRequest, Status> {
    let page_size = match r.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => return Err(invalid("page_size", format!("{n} is negative"))),
        n => n.min(MAX_PAGE_SIZE),
    };
    if !r.task.is_empty() {
        task(&r.task)?;
    }
    state_filter(r.state)?;
    let filter = label_filter(&r.labels)?;
    Ok(pb::ListJobsRequest {
        tenant: tenant.to_owned(),
        page_size,
        page_token: r.page_token,
        task: r.task,
        state: r.state,
        labels: filter,
    })
}

/// A CountJobs request turned into job-store's CountJobs for `tenant`.
pub(crate) fn count(tenant: &str, r: v1::CountJobsRequest) -> Result<pb::CountJobsRequest, Status> {
    if !r.task.is_empty() {
        task(&r.task)?;
    }
    Ok(pb::CountJobsRequest {
        tenant: tenant.to_owned(),
        labels: label_filter(&r.labels)?,
        task: r.task,
        limit: COUNT_LIMIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(task: &str) -> v1::SubmitJobRequest {
        v1::SubmitJobRequest {
            task: task.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn nul_characters_are_refused_where_they_would_reach_postgres() {
        let mut r = request("demo.echo");
        let args = serde_json::json!({"a": {"b": ["ok", "bad\u{0}"]}});
        r.args = args.as_object().map(jobmesh_proto::json::json_to_struct);
        let status = submit("t", r).expect_err("NUL in args");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("args: args.a.b[1] contains a NUL"),
            "{}",
            status.message()
        );
        let mut r = request("demo.echo");
        r.idempotency_key = "k\0".into();
        assert_eq!(
            submit("t", r).expect_err("NUL in key").message(),
            "idempotency_key: contains a NUL character"
        );
        let mut r = request("demo.echo");
        r.labels.insert("team".into(), "a\0".into());
        assert!(submit("t", r).is_err());
        let list = v1::ListJobsRequest {
            labels: vec!["team=a\0".into()],
            ..Default::default()
        };
        assert!(super::list("t", list).is_err());
        let mut r = request("demo.echo");
        r.schedule_time = Some(prost_types::Timestamp {
            seconds: -62_000_000_000,
            nanos: 0,
        });
        assert_eq!(
            submit("t", r).expect_err("year 5").message(),
            "schedule_time: is before 2000-01-01, probably an unset timestamp sent as a value; leave it unset to run as soon as possible"
        );
        let mut r = request("demo.echo");
        r.schedule_time = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        });
        assert!(submit("t", r).is_err(), "the epoch is refused");
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut r = request("demo.echo");
            let inner = prost_types::Struct {
                fields: [(
                    "x".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(n)),
                    },
                )]
                .into(),
            };
            r.args = Some(prost_types::Struct {
                fields: [(
                    "a".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(
                            prost_types::ListValue {
                                values: vec![prost_types::Value {
                                    kind: Some(prost_types::value::Kind::StructValue(inner)),
                                }],
                            },
                        )),
                    },
                )]
                .into(),
            });
            let refused = submit("t", r).expect_err("not finite");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                refused.message(),
                format!(
                    "args: args.a[0].x is {n}, which JSON cannot represent; send a finite number (or a string)"
                )
            );
        }
    }

    #[test]
    fn out_of_range_nanos_are_refused_not_carried() {
        let mut r = request("demo.echo");
        r.timeout = Some(prost_types::Duration {
            seconds: 1,
            nanos: 2_000_000_000,
        });
        let e = submit("t", r).expect_err("nanos past a second");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("timeout: nanos 2000000000"),
            "{}",
            e.message()
        );
        let mut r = request("demo.echo");
        r.schedule_time = Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: -1,
        });
        let e = submit("t", r).expect_err("negative nanos");
        assert!(
            e.message().starts_with("schedule_time: nanos -1"),
            "{}",
            e.message()
        );
        let mut r = request("demo.echo");
        r.retry_policy = Some(v1::RetryPolicy {
            initial_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000_000,
            }),
            ..Default::default()
        });
        assert!(submit("t", r).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let e = submit("t", request("bad task")).expect_err("bad task");
        assert!(e.message().starts_with("task: "), "{}", e.message());
        let mut r = request("ok");
        r.max_attempts = 101;
        assert!(
            submit("t", r)
                .expect_err("attempts")
                .message()
                .starts_with("max_attempts: ")
        );
        let mut r = request("ok");
        r.labels.insert("bad key".into(), "v".into());
        assert!(
            submit("t", r)
                .expect_err("labels")
                .message()
                .starts_with("labels: ")
        );
        assert_eq!(
            submit("t", request("ok")).expect("valid").max_attempts,
            DEFAULT_MAX_ATTEMPTS
        );
    }
}
