//! gateway configuration.

use jobmesh_auth::AuthConfig;

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
    /// Of those, the most one tenant may hold at once (capped at
    /// --max-inflight), so that one tenant cannot take them all.
    #[arg(long, env = "JOBMESH_MAX_INFLIGHT_PER_TENANT", default_value_t = 128)]
    pub max_inflight_per_tenant: usize,
    /// How long a caller has to send its whole request body (milliseconds); a
    /// call still sending after it is answered DEADLINE_EXCEEDED (REST: 408) and
    /// its place among the calls in flight is freed.
    #[arg(long, env = "JOBMESH_BODY_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_timeout_ms: u64,
    /// Streams (WatchJob, WatchJobs, ReadJobLogs; gRPC and REST) open at once;
    /// more are refused at once with RESOURCE_EXHAUSTED / 429. Counted apart
    /// from --max-inflight.
    #[arg(
        long,
        alias = "max-watches",
        env = "JOBMESH_MAX_STREAMS",
        default_value_t = 4096
    )]
    pub max_streams: usize,
    /// Of those, the most one tenant may hold open at once (capped at
    /// --max-streams).
    #[arg(long, env = "JOBMESH_MAX_STREAMS_PER_TENANT", default_value_t = 1024)]
    pub max_streams_per_tenant: usize,
    /// Where the dashboard links a job's trace, with `{trace_id}` in it, e.g.
    /// `http://localhost:16686/trace/{trace_id}` (Jaeger); unset: no link.
    #[arg(long, env = "JOBMESH_UI_TRACE_URL")]
    pub ui_trace_url: Option<String>,
    /// Connections, limits and timeouts of the listener.
    #[command(flatten)]
    pub connections: crate::connections::ConnectionConfig,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
    #[command(flatten)]
    pub shutdown: jobmesh_runtime::host::ShutdownConfig,
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
            max_inflight_per_tenant: 128,
            body_timeout_ms: 5_000,
            max_streams: 4096,
            max_streams_per_tenant: 1024,
            ui_trace_url: None,
            connections: crate::connections::ConnectionConfig::default(),
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
            shutdown: jobmesh_runtime::host::ShutdownConfig::default(),
        }
    }

    pub(crate) fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms.max(1))
    }
}
