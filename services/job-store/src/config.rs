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
    /// How often the newest progress of each running job is written
    /// (milliseconds): reports in between reach watchers at once and PostgreSQL
    /// with the next write. 0 writes every report before answering it.
    #[arg(long, env = "JOBMESH_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    pub progress_interval_ms: u64,
    /// How often the outbox relay polls for rows it was not told about, such as
    /// delayed retries and rows left by a crashed replica (milliseconds).
    #[arg(long, env = "JOBMESH_OUTBOX_POLL_MS", default_value_t = 500)]
    pub outbox_poll_ms: u64,
    /// Bytes of log lines kept per job; past it the oldest lines are dropped (and
    /// readers are told how many).
    #[arg(long, env = "JOBMESH_MAX_LOG_BYTES_PER_JOB", default_value_t = 16 * 1024 * 1024)]
    pub max_log_bytes_per_job: u64,
    /// How long a job's logs are kept after the job ended, e.g. `7d`, `12h`,
    /// `30m`, `90s`.
    #[arg(long, env = "JOBMESH_LOG_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub log_retention: Duration,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
    #[command(flatten)]
    pub shutdown: jobmesh_runtime::host::ShutdownConfig,
    #[command(flatten)]
    pub limits: jobmesh_runtime::server::LimitConfig,
}

/// A duration written as a number and a unit: `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. 7d, 12h, 30m or 90s"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(seconds)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} must be more than zero and less than a few billion years"))
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
            progress_interval_ms: 250,
            max_log_bytes_per_job: 16 * 1024 * 1024,
            log_retention: Duration::from_secs(7 * 86_400),
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
            shutdown: jobmesh_runtime::host::ShutdownConfig::default(),
            limits: jobmesh_runtime::server::LimitConfig::default(),
        }
    }

    pub(crate) fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    pub(crate) fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }

    pub(crate) fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }

    pub(crate) fn outbox_poll(&self) -> Duration {
        Duration::from_millis(self.outbox_poll_ms.max(10))
    }
}
