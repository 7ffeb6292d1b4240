//! job-store errors and their gRPC codes.

use uuid::Uuid;

/// Everything that can go wrong in job-store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// No job with this id for this tenant (or at all).
    #[error("job {job_id} not found")]
    NotFound { job_id: String },
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// A report or lease for an attempt that is not the job's current running (or
    /// queued) attempt.
    #[error("attempt {attempt} of job {job_id} is stale: the job is {state} at attempt {current}")]
    StaleAttempt {
        job_id: Uuid,
        attempt: i32,
        current: i32,
        state: &'static str,
    },
    /// An idempotency key given again with another task or other args.
    #[error(
        "idempotency key {} was used for job {job_id} with another task or other args; send the same request to get that job, or use a new key for a new job",
        jobmesh_runtime::quote::quoted(key)
    )]
    KeyReused { key: String, job_id: Uuid },
    /// The job already reached a terminal state.
    #[error("job {job_id} already {state}")]
    AlreadyFinished { job_id: Uuid, state: &'static str },
    /// No PostgreSQL connection could be had.
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// NATS could not be reached.
    #[error("nats unavailable: {0}")]
    Nats(String),
    /// Stored data that job-store itself cannot read back.
    #[error("corrupt job row: {0}")]
    Corrupt(String),
}

/// Result with job-store's error.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    /// Each with an `ErrorInfo` whose reason a program can match on, and the ids
    /// it is about in its metadata (`jobmesh_runtime::errors`).
    fn from(error: Error) -> Self {
        use jobmesh_runtime::errors;
        use tonic::Code;
        let message = error.to_string();
        match error {
            Error::NotFound { job_id } => errors::error(
                Code::NotFound,
                message,
                "JOB_NOT_FOUND",
                &[("job_id", job_id)],
            ),
            Error::InvalidArgument { field, reason } => errors::invalid_field(field, reason),
            Error::KeyReused { key, job_id } => errors::error(
                Code::AlreadyExists,
                message,
                "IDEMPOTENCY_KEY_REUSED",
                &[("idempotency_key", key), ("job_id", job_id.to_string())],
            ),
            Error::StaleAttempt {
                job_id,
                attempt,
                current,
                state,
            } => errors::error(
                Code::FailedPrecondition,
                message,
                "STALE_ATTEMPT",
                &[
                    ("job_id", job_id.to_string()),
                    ("attempt", attempt.to_string()),
                    ("current_attempt", current.to_string()),
                    ("state", state.to_owned()),
                ],
            ),
            Error::AlreadyFinished { job_id, state } => errors::error(
                Code::FailedPrecondition,
                message,
                "JOB_ALREADY_FINISHED",
                &[("job_id", job_id.to_string()), ("state", state.to_owned())],
            ),
            Error::Pool(_) | Error::Nats(_) => {
                errors::error(Code::Unavailable, message, "DEPENDENCY_UNAVAILABLE", &[])
            }
            Error::Database(ref db) => {
                if db.is_closed() || db.as_db_error().is_none() {
                    errors::error(Code::Unavailable, message, "DEPENDENCY_UNAVAILABLE", &[])
                } else {
                    tracing::error!(%message, "database query failed");
                    tonic::Status::internal("job-store database query failed, see job-store logs")
                }
            }
            Error::Corrupt(_) => {
                tracing::error!(%message, "corrupt job row");
                tonic::Status::internal(message)
            }
        }
    }
}
