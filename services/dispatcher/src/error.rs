//! The dispatcher's errors and their gRPC codes: what a worker or the gateway is
//! told when a call fails or a worker session ends.

use std::time::Duration;

use tonic::Code;

/// Everything that can go wrong in the dispatcher.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A Connect stream sent nothing within the hello timeout.
    #[error("no hello within {} s of opening the stream", .0.as_secs())]
    NoHello(Duration),
    /// A Connect stream did not start with a hello.
    #[error("the first message of a Connect stream must be hello")]
    FirstNotHello,
    /// A hello field is malformed.
    #[error("{field}: {reason}")]
    Hello { field: &'static str, reason: String },
    /// The worker's stream closed before the welcome could be sent.
    #[error("worker stream closed")]
    StreamClosed,
    /// JetStream could not be asked.
    #[error("jetstream unavailable: {0}")]
    JetStream(String),
    /// The dispatcher is stopping: the session ends.
    #[error("the dispatcher is shutting down; connect again (to any dispatcher)")]
    ShuttingDown,
    /// The worker sent nothing, not even a heartbeat, for a whole lease.
    #[error(
        "the worker sent nothing for {} ms (the silence limit); send a heartbeat at least every {} ms, busy or idle",
        silence.as_millis(),
        heartbeat.as_millis()
    )]
    Silent {
        silence: Duration,
        heartbeat: Duration,
    },
    /// The worker's reports waited a whole lease for room.
    #[error(
        "the worker's reports could not be handled for {} ms (job-store unavailable, or the worker does not read its stream)",
        .0.as_millis()
    )]
    Stuck(Duration),
    /// A report lane ended (a bug: it never should).
    #[error("a report lane stopped; connect again")]
    LaneStopped,
    /// The worker's stream failed.
    #[error("the worker's stream broke: {message}")]
    StreamBroke { code: Code, message: String },
}

impl From<Error> for tonic::Status {
    /// Each with an `ErrorInfo` whose reason a program can match on
    /// (`jobmesh_runtime::errors`).
    fn from(error: Error) -> Self {
        use jobmesh_runtime::errors;
        let message = error.to_string();
        match error {
            Error::NoHello(_) => errors::error(Code::DeadlineExceeded, message, "NO_HELLO", &[]),
            Error::FirstNotHello => {
                errors::error(Code::InvalidArgument, message, "HELLO_MISSING", &[])
            }
            Error::Hello { field, reason } => errors::invalid_field(field, reason),
            Error::StreamClosed => errors::error(Code::Unavailable, message, "STREAM_CLOSED", &[]),
            Error::JetStream(_) => errors::error(
                Code::Unavailable,
                message,
                "DEPENDENCY_UNAVAILABLE",
                &[("dependency", "nats".to_owned())],
            ),
            Error::ShuttingDown => {
                errors::error(Code::Unavailable, message, "DISPATCHER_STOPPING", &[])
            }
            Error::Silent { silence, .. } => errors::error(
                Code::DeadlineExceeded,
                message,
                "WORKER_SILENT",
                &[("silence_ms", silence.as_millis().to_string())],
            ),
            Error::Stuck(_) => errors::error(Code::Unavailable, message, "REPORTS_STUCK", &[]),
            Error::LaneStopped => errors::error(Code::Internal, message, "LANE_STOPPED", &[]),
            Error::StreamBroke { code, .. } => {
                errors::error(code, message, "WORKER_STREAM_BROKE", &[])
            }
        }
    }
}
