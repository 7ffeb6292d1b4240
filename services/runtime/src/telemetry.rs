//! Logging set-up. Human-readable lines by default, JSON with `JOBMESH_LOG_FORMAT=json`;
//! the level comes from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber for a service or command. Safe to call
/// more than once (later calls are ignored), which tests rely on.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("JOBMESH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let result = if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .with_current_span(true)
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
