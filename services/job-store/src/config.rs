//! job-store configuration.

use std::time::Duration;

use jobmesh_runtime::NatsConfig;

/// Settings of the job-store service.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "JOBMESH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/jobmesh"
    )]
    pub database_url: String,
    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "JOBMESH_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsConfig,
    /// How often the lease sweeper looks for expired leases and overdue
    /// cancellations (milliseconds).
    #[arg(long, env = "JOBMESH_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// How long a running attempt may ignore a cancellation before its lease is
    /// revoked and the job ends CANCELLED anyway (milliseconds).
    #[arg(long, env = "JOBMESH_CANCEL_GRACE_MS", default_value_t = 30_000)]
    pub cancel_grace_ms: u64,
    /// How often the outbox relay polls for rows it was not told about, such as
    /// delayed retries and rows left by a crashed replica (milliseconds).
    #[arg(long, env = "JOBMESH_OUTBOX_POLL_MS", default_value_t = 500)]
    pub outbox_poll_ms: u64,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
}

impl Config {
    /// A configuration for a database URL and NATS settings, other values default.
    pub fn new(database_url: impl Into<String>, nats: NatsConfig) -> Self {
        Self {
            database_url: database_url.into(),
            database_pool_size: 16,
            nats,
            sweep_interval_ms: 1000,
            cancel_grace_ms: 30_000,
            outbox_poll_ms: 500,
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
        }
    }

    pub(crate) fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    pub(crate) fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }

    pub(crate) fn outbox_poll(&self) -> Duration {
        Duration::from_millis(self.outbox_poll_ms.max(10))
    }
}
