//! The gateway's own errors and their gRPC codes: a malformed request, a
//! dependency that cannot be reached, a relayed stream that ends early, a body
//! that does not arrive. (Refusals of the edge limits are made where the limits
//! are, `limits.rs`, with their retry hints; an answer job-store or the
//! dispatcher gave is passed on as it is.)

use std::time::Duration;

use jobmesh_runtime::errors;
use tonic::{Code, Status};

/// Everything the gateway itself answers with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// A dependency could not be reached.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },
    /// A relayed stream reached the caller's deadline (what to do is in the text).
    #[error("{0}")]
    StreamDeadline(&'static str),
    /// The gateway is shutting down: a relayed stream ends (what to do is in the
    /// text).
    #[error("{0}")]
    StreamShutdown(&'static str),
    /// A request body did not arrive in time.
    #[error("the request body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(Duration),
}

impl Error {
    /// `field` is malformed: `reason`.
    pub(crate) fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidField {
            field: field.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<Error> for Status {
    /// Each with an `ErrorInfo` whose reason a program can match on
    /// (`jobmesh_runtime::errors`).
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidField { field, reason } => errors::invalid_field(&field, reason),
            Error::Unavailable { service, .. } => errors::error(
                Code::Unavailable,
                message,
                "DEPENDENCY_UNAVAILABLE",
                &[("service", service.to_owned())],
            ),
            // The reasons documented in docs/api.md, which programs match on.
            Error::StreamDeadline(_) => {
                errors::error(Code::DeadlineExceeded, message, "DEADLINE_EXCEEDED", &[])
            }
            Error::StreamShutdown(_) => {
                errors::error(Code::Unavailable, message, "UNAVAILABLE", &[])
            }
            Error::BodyTimeout(timeout) => errors::error(
                Code::DeadlineExceeded,
                message,
                "DEADLINE_EXCEEDED",
                &[("timeout_ms", timeout.as_millis().to_string())],
            ),
        }
    }
}

/// An answer of `service` as the gateway passes it on: as it is, except that a
/// dependency that cannot be reached says which one.
pub(crate) fn upstream(service: &'static str) -> impl Fn(Status) -> Status {
    move |status| match status.code() {
        Code::Unavailable => Error::Unavailable {
            service,
            message: status.message().to_owned(),
        }
        .into(),
        _ => status,
    }
}
