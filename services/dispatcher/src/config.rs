//! dispatcher configuration.

use std::time::Duration;

use jobmesh_runtime::NatsConfig;

/// Settings of the dispatcher service.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of job-store's gRPC endpoint.
    #[arg(
        long,
        env = "JOBMESH_JOB_STORE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub job_store_url: String,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsConfig,
    /// Lease of an attempt handed to a worker (milliseconds). The dispatcher
    /// renews it while the worker's stream is alive; if nobody renews it, job-store
    /// re-queues the job when it expires.
    #[arg(long, env = "JOBMESH_LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: u64,
    /// Log lines per second one attempt may send, on average (bursts of twice
    /// the log window go at once): a worker keeping to its log window is paced
    /// by when its lines are acknowledged, so one job printing as fast as it can
    /// does not take the machine from the others. 0: no limit.
    #[arg(
        long,
        env = "JOBMESH_MAX_LOG_LINES_PER_SECOND",
        default_value_t = 10_000
    )]
    pub max_log_lines_per_second: u32,
    /// How long JetStream waits for a pulled message to be acked before it delivers
    /// it again (milliseconds): the delay after which the queue messages held by a
    /// dispatcher that died are handed to another.
    #[arg(long, env = "JOBMESH_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// How workers authenticate: a JWT with the `worker` scope, verified with these keys.
    #[command(flatten)]
    pub auth: jobmesh_auth::AuthConfig,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
    #[command(flatten)]
    pub shutdown: jobmesh_runtime::host::ShutdownConfig,
    #[command(flatten)]
    pub limits: jobmesh_runtime::server::LimitConfig,
}

impl Config {
    /// A configuration for a job-store URL and NATS settings, other values default.
    pub fn new(job_store_url: impl Into<String>, nats: NatsConfig) -> Self {
        Self {
            job_store_url: job_store_url.into(),
            nats,
            lease_ms: 15_000,
            max_log_lines_per_second: 10_000,
            ack_wait_ms: 30_000,
            auth: jobmesh_auth::AuthConfig::insecure(),
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
            shutdown: jobmesh_runtime::host::ShutdownConfig::default(),
            limits: jobmesh_runtime::server::LimitConfig::default(),
        }
    }

    pub(crate) fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.max(1000))
    }

    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.max(1000))
    }
}
