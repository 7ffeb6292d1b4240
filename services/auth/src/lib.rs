//! Authentication: who is calling, from a bearer JWT verified with HS256 secrets
//! or RS256/ES256/EdDSA public keys (PEM or JWKS), and which tenant and scopes
//! the token gives. The gateway authenticates callers with it, the dispatcher
//! workers, and clients attach their token with [`with_token`].
//!
//! - [`config`]: the command-line block and what it builds ([`AuthConfig`]);
//! - [`keys`]: key files (secret, PEM, JWKS) and following a key file as it is
//!   rotated;
//! - [`verify`]: the [`Verifier`], the [`Caller`] it names and why a token is
//!   refused ([`Refusal`]);
//! - [`grpc`]: the server side ([`Authenticator`]) and the client side
//!   ([`Bearer`], [`AuthChannel`]);
//! - [`mint`] (feature `mint`, for the CLI and the tests): signing tokens and the
//!   dev signing key.
//!
//! No token, secret or key ever reaches a log line: [`Secret`] prints as `***`, and
//! failures are described by which check failed, never by the token itself.

pub mod config;
pub mod grpc;
pub mod keys;
#[cfg(any(test, feature = "mint"))]
pub mod mint;
pub mod verify;

#[cfg(test)]
mod tests;

pub use config::{AuthConfig, Secret, SetupError};
pub use grpc::{AuthChannel, Authenticator, Bearer, bearer, with_token};
#[cfg(any(test, feature = "mint"))]
pub use mint::{Minter, dev_key_path, ensure_dev_key};
pub use verify::{Caller, Refusal, Verifier};

/// The scopes a token may carry (space-separated `scope` claim, or a `scp` array).
pub mod scope {
    /// Submit jobs (`SubmitJob`, `POST /v1/jobs`).
    pub const SUBMIT: &str = "jobs:submit";
    /// Read jobs and tasks (`GetJob`, `ListJobs`, `CountJobs`, `WatchJob`, `ReadJobLogs`,
    /// `WatchJobs`, `ListTasks`).
    pub const READ: &str = "jobs:read";
    /// Cancel jobs (`CancelJob`).
    pub const CANCEL: &str = "jobs:cancel";
    /// Everything a tenant may do: implies submit, read and cancel.
    pub const ADMIN: &str = "admin";
    /// Connect to the dispatcher as a worker.
    pub const WORKER: &str = "worker";
    /// See the connected workers (`ListWorkers`): workers serve every tenant, so
    /// this is an operator's scope, apart from `jobs:read`.
    pub const WORKERS_READ: &str = "workers:read";
    /// The scopes of a tenant's user.
    pub const USER: [&str; 3] = [SUBMIT, READ, CANCEL];
    /// What `jobmesh dev` prints a token for: a user who also runs the machine,
    /// so may see its workers.
    pub const DEV: [&str; 4] = [SUBMIT, READ, CANCEL, WORKERS_READ];
}

/// Longest tenant name a token may carry.
pub const MAX_TENANT: usize = 128;

/// Tenant of every caller when authentication is switched off.
pub const ANONYMOUS_TENANT: &str = "default";
