//! Errors as grpc-gateway shows them: its HTTP status for each gRPC code, its
//! body (`code`, `message`, `details` with their `@type`), and the refusals of
//! the shim itself.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use jobmesh_runtime::call::HttpResponse;
use tonic::{Code, Status};

use crate::limits::RETRY_AFTER;

/// A refusal of the shim itself (before any RPC ran), with its HTTP status.
pub(super) struct Refusal {
    pub(super) http: StatusCode,
    code: Code,
    message: String,
    /// The `ErrorInfo` reason, when more precise than the code's.
    reason: Option<&'static str>,
}

impl Refusal {
    pub(super) fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            http,
            code,
            message: message.into(),
            reason: None,
        }
    }

    pub(super) fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }
}

/// grpc-gateway's HTTP status for a gRPC code.
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"code": <grpc code>, "message": "...", "details": [...]}` for a refusal of
/// the shim itself (no gRPC call made): the details its code implies.
fn error_body_of(code: Code, message: &str) -> String {
    error_body(&jobmesh_runtime::errors::complete(Status::new(
        code, message,
    )))
}

/// grpc-gateway's error body: the code, the message and the status's
/// `google.rpc` details, each with its `@type` (ErrorInfo, BadRequest,
/// RetryInfo, as `grpc-status-details-bin` carries them).
pub(super) fn error_body(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    // The shim's own errors (a deadline it enforced) get their details here.
    let status = &jobmesh_runtime::errors::complete(status.clone());
    let found = status.get_error_details();
    let mut details = Vec::new();
    if let Some(info) = found.error_info() {
        let metadata: serde_json::Map<String, serde_json::Value> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": metadata,
        }));
    }
    if let Some(bad) = found.bad_request() {
        let violations: Vec<serde_json::Value> = bad
            .field_violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = found.retry_info().and_then(|r| r.retry_delay) {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
    .to_string()
}

fn json_error(http: StatusCode, body: String) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(body),
    )));
    *response.status_mut() = http;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn status_response(status: &Status) -> HttpResponse {
    let mut response = json_error(http_status(status.code()), error_body(status));
    if status.code() == Code::Unauthenticated {
        // RFC 6750: say how to authenticate.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"jobmesh\""),
        );
    }
    if let Some(retry) = status.metadata().get(RETRY_AFTER)
        && let Ok(value) = HeaderValue::from_bytes(retry.as_encoded_bytes())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub(super) fn refusal(refused: Refusal) -> HttpResponse {
    let body = match refused.reason {
        Some(reason) => error_body(&jobmesh_runtime::errors::error(
            refused.code,
            refused.message,
            reason,
            &[],
        )),
        None => error_body_of(refused.code, &refused.message),
    };
    json_error(refused.http, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_grpc_gateway_statuses() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn error_bodies_have_grpc_gateway_shape() {
        let body = error_body_of(Code::NotFound, "job \"x\" not found");
        assert_eq!(
            body,
            r#"{"code":5,"message":"job \"x\" not found","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"NOT_FOUND","domain":"jobmesh.dev","metadata":{}}]}"#
        );
    }
}
