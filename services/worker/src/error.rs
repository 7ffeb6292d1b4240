//! Why a worker cannot run. (What a task's function returns when it fails is
//! `TaskError`, in `handler.rs`; the dispatcher's refusals reach the worker as
//! the `google.rpc` details of the session's status.)

/// Why a worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("worker configuration: {0}")]
    Config(String),
}
