//! Errors a program can read (AIP-193, what grpc-gateway users expect). Every
//! error status a jobmesh server sends carries `google.rpc` details in
//! `grpc-status-details-bin`: always an `ErrorInfo` (a reason, the domain
//! `jobmesh.dev`, metadata), a `BadRequest` naming the field for
//! `INVALID_ARGUMENT`, and a `RetryInfo` for `RESOURCE_EXHAUSTED` and
//! `UNAVAILABLE`.
//!
//! A status made with [`error`] carries its own reason; [`complete`] gives any
//! other the details its code implies, keeping those it has. The standard server
//! layers apply [`complete`] to every answer ([`complete_response`]), so no error
//! leaves a service without them, whoever made it (tonic, a layer, a handler).

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::BodyExt as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.domain` of every jobmesh error.
pub const DOMAIN: &str = "jobmesh.dev";

/// The reason of a request refused for its size: sending it again fails again,
/// so it gets no `RetryInfo`.
pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";

/// How long a refused caller is told to wait when nothing more precise is known.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A status with an `ErrorInfo` of `reason` (UPPER_SNAKE_CASE, stable: programs
/// match on it) and `metadata`, plus the details its code implies.
pub fn error(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let message = message.into();
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason,
        DOMAIN,
        metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<HashMap<_, _>>(),
    );
    implied(code, &message, None, &mut details);
    Status::with_error_details(code, message, details)
}

/// `RESOURCE_EXHAUSTED` with `reason`, a `RetryInfo` of `delay` and the same hint
/// as `retry-after` metadata (whole seconds, at least 1; REST answers it as the
/// `Retry-After` header).
pub fn exhausted(
    message: impl Into<String>,
    reason: &str,
    metadata: &[(&str, String)],
    delay: Duration,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason,
        DOMAIN,
        metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<HashMap<_, _>>(),
    );
    details.set_retry_info(Some(delay));
    let mut status = Status::with_error_details(Code::ResourceExhausted, message, details);
    let seconds = (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).max(1);
    if let Ok(value) = seconds.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// `INVALID_ARGUMENT` `"<field>: <description>"`, with a `BadRequest` violation
/// of `field` and the reason `INVALID_FIELD` (metadata `field`).
pub fn invalid_field(field: &str, description: impl std::fmt::Display) -> Status {
    let description = description.to_string();
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "INVALID_FIELD",
        DOMAIN,
        HashMap::from([("field".to_owned(), field.to_owned())]),
    );
    details.add_bad_request_violation(field, description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// `status` with the details every error carries, where it lacks them; what it
/// has is kept. OK statuses are returned as they are.
pub fn complete(status: Status) -> Status {
    if status.code() == Code::Ok {
        return status;
    }
    let mut details = status.get_error_details();
    let had = (
        details.error_info().is_some(),
        details.bad_request().is_some(),
        details.retry_info().is_some(),
    );
    if details.error_info().is_none() {
        details.set_error_info(reason_of(status.code()), DOMAIN, HashMap::new());
    }
    implied(
        status.code(),
        status.message(),
        retry_after(status.metadata()),
        &mut details,
    );
    let has = (
        details.error_info().is_some(),
        details.bad_request().is_some(),
        details.retry_info().is_some(),
    );
    if has == had {
        return status;
    }
    Status::with_error_details_and_metadata(
        status.code(),
        status.message(),
        details,
        status.metadata().clone(),
    )
}

/// The details a code implies: the field of an `INVALID_ARGUMENT` (our messages
/// start with it), when to retry a `RESOURCE_EXHAUSTED` or `UNAVAILABLE`.
fn implied(code: Code, message: &str, retry: Option<Duration>, details: &mut ErrorDetails) {
    if code == Code::InvalidArgument
        && details.bad_request().is_none()
        && let Some((field, description)) = field_of(message)
    {
        details.add_bad_request_violation(field, description);
    }
    let again = details
        .error_info()
        .is_none_or(|info| info.reason != REQUEST_TOO_LARGE);
    if matches!(code, Code::ResourceExhausted | Code::Unavailable)
        && details.retry_info().is_none()
        && again
    {
        details.set_retry_info(Some(retry.unwrap_or(DEFAULT_RETRY_DELAY)));
    }
}

/// The field of a message written `<field>: <description>` (`labels: …`,
/// `hello.slots: …`), if it is one.
fn field_of(message: &str) -> Option<(&str, &str)> {
    let (field, description) = message.split_once(": ")?;
    let path = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b));
    path.then_some((field, description))
}

/// `retry-after` metadata (seconds), as set by the gateway's limits.
fn retry_after(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    metadata
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The reason of an error nobody gave one: its code's name.
fn reason_of(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Completes the status in `headers` (a trailers-only answer, or a stream's
/// trailers), if it is an error.
fn complete_headers(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::Ok {
        return;
    }
    let before = status.details().to_vec();
    let completed = complete(status);
    if completed.details() == before.as_slice() {
        return;
    }
    // Only the details change: the code, message and other headers stay.
    let mut fresh = http::HeaderMap::new();
    match completed.add_header(&mut fresh) {
        Ok(()) => {
            if let Some(details) = fresh.remove(DETAILS_HEADER) {
                headers.insert(DETAILS_HEADER, details);
            }
        }
        Err(error) => tracing::warn!(%error, "error details not added"),
    }
}

/// The header (or trailer) holding a status's details.
const DETAILS_HEADER: &str = "grpc-status-details-bin";

/// Completes the error of a gRPC answer, whether it comes at once (in the
/// headers) or at the end of a stream (in the trailers).
pub fn complete_response(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    complete_headers(response.headers_mut());
    response.map(|body| {
        tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                complete_headers(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_gets_an_error_info_and_what_its_code_implies() {
        let invalid = complete(Status::invalid_argument("labels: key \"\" is empty"));
        let details = invalid.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", DOMAIN)
        );
        let violation = &details.bad_request().expect("bad request").field_violations[0];
        assert_eq!(
            (violation.field.as_str(), violation.description.as_str()),
            ("labels", "key \"\" is empty")
        );
        assert_eq!(invalid.message(), "labels: key \"\" is empty");

        let mut busy = Status::resource_exhausted("the gateway is overloaded");
        busy.metadata_mut()
            .insert("retry-after", "3".parse().expect("ascii"));
        let busy = complete(busy);
        let retry = busy
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(3)));
        assert_eq!(
            busy.metadata().get("retry-after").map(|v| v.to_str().ok()),
            Some(Some("3"))
        );
        let down = complete(Status::unavailable("job-store unavailable"));
        let retry = down
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("retry info");
        assert_eq!(retry.retry_delay, Some(DEFAULT_RETRY_DELAY));

        // A message that does not start with a field gets no violation.
        let odd = complete(Status::invalid_argument("the first message must be hello"));
        assert!(odd.get_error_details().bad_request().is_none());
        assert!(complete(Status::ok("")).details().is_empty());
    }

    #[test]
    fn details_given_at_the_source_are_kept() {
        let given = error(
            Code::NotFound,
            "job x not found",
            "JOB_NOT_FOUND",
            &[("job_id", "x".to_owned())],
        );
        let completed = complete(given.clone());
        assert_eq!(completed.details(), given.details());
        let info = completed
            .get_error_details()
            .error_info()
            .cloned()
            .expect("info");
        assert_eq!(info.reason, "JOB_NOT_FOUND");
        assert_eq!(info.metadata.get("job_id").map(String::as_str), Some("x"));
        let field = invalid_field("task", "must not be empty");
        assert_eq!(field.message(), "task: must not be empty");
        assert_eq!(
            complete(field.clone()).details(),
            field.details(),
            "nothing added to a complete error"
        );
    }

    #[test]
    fn answers_are_completed_in_headers_and_in_trailers() {
        let response = Status::not_found("job x not found").into_http::<tonic::body::Body>();
        let completed = complete_response(response);
        let status = Status::from_header_map(completed.headers()).expect("status");
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.clone()),
            Some("NOT_FOUND".to_owned())
        );
    }
}
