//! gateway configuration.

use jobmesh_runtime::auth::AuthConfig;

/// Settings of the gateway.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of job-store's gRPC endpoint.
    #[arg(
        long,
        env = "JOBMESH_JOB_STORE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub job_store_url: String,
    /// Address of the dispatcher's gRPC endpoint.
    #[arg(
        long,
        env = "JOBMESH_DISPATCHER_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub dispatcher_url: String,
    /// How callers authenticate (JWT bearer tokens).
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Submits per second allowed to each tenant (token bucket refill rate).
    #[arg(long, env = "JOBMESH_SUBMIT_RATE", default_value_t = 5000.0)]
    pub submit_rate: f64,
    /// Submits a tenant may make at once before the rate applies (bucket size).
    #[arg(long, env = "JOBMESH_SUBMIT_BURST", default_value_t = 10_000)]
    pub submit_burst: u32,
    /// Calls (gRPC and REST, streams excepted) handled at once; more are refused
    /// at once with RESOURCE_EXHAUSTED / 429 instead of queueing.
    #[arg(long, env = "JOBMESH_MAX_INFLIGHT", default_value_t = 512)]
    pub max_inflight: usize,
    /// How long a caller has to send its whole request body (milliseconds); a
    /// call still sending after it is answered DEADLINE_EXCEEDED (REST: 408) and
    /// its place among the calls in flight is freed.
    #[arg(long, env = "JOBMESH_BODY_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_timeout_ms: u64,
    /// Watch streams (gRPC and REST) open at once.
    #[arg(long, env = "JOBMESH_MAX_WATCHES", default_value_t = 4096)]
    pub max_watches: usize,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
}

impl Config {
    /// A configuration for the two internal services, with authentication off and
    /// the default limits; set `auth` for anything but a test.
    pub fn new(job_store_url: impl Into<String>, dispatcher_url: impl Into<String>) -> Self {
        Self {
            job_store_url: job_store_url.into(),
            dispatcher_url: dispatcher_url.into(),
            auth: AuthConfig::insecure(),
            submit_rate: 5000.0,
            submit_burst: 10_000,
            max_inflight: 512,
            body_timeout_ms: 5_000,
            max_watches: 4096,
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
        }
    }

    pub(crate) fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms.max(1))
    }
}
