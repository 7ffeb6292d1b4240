//! worker configuration.

use std::time::Duration;

/// Settings of a worker.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the dispatcher's gRPC endpoint.
    #[arg(
        long,
        env = "JOBMESH_DISPATCHER_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub dispatcher_url: String,
    /// Name of this worker; defaults to `<hostname>-<pid>`.
    #[arg(long, env = "JOBMESH_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How many jobs this worker runs at once.
    #[arg(long, env = "JOBMESH_WORKER_SLOTS", default_value_t = 8)]
    pub slots: u32,
    /// Tasks to offer (comma-separated); defaults to every task the worker has a
    /// handler for.
    #[arg(long, env = "JOBMESH_WORKER_TASKS", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// On shutdown, how long running jobs may take to finish before they are
    /// stopped and handed back for another attempt (milliseconds).
    #[arg(long, env = "JOBMESH_WORKER_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// Address on which to serve grpc.health.v1 (SERVING while connected to a
    /// dispatcher), for container and Kubernetes probes; none by default.
    #[arg(long, env = "JOBMESH_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// Bearer token (a JWT with the `worker` scope) presented to the dispatcher.
    #[arg(long, env = "JOBMESH_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<jobmesh_auth::Secret>,
    /// File holding the bearer token instead (re-read at every connection, so a
    /// rotated token is picked up on reconnect).
    #[arg(long, env = "JOBMESH_WORKER_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Run a command per job of a task: `TASK=COMMAND` (repeatable; in the
    /// environment, one per line: a command may hold `;`). The command runs as `sh -c COMMAND` with the
    /// job's args as JSON on stdin; JSON lines on stdout report progress
    /// (`{"progress": 50, "message": "…"}`), the result (`{"result": {…}}`) or an
    /// error (`{"error": "…", "retryable": false}`).
    #[arg(
        long = "exec",
        env = "JOBMESH_WORKER_EXEC",
        value_delimiter = '\n',
        value_name = "TASK=COMMAND"
    )]
    pub exec: Vec<String>,
    /// Offer the built-in demo tasks (`demo.*`) beside the `--exec` commands; a
    /// worker without `--exec` always offers them.
    #[arg(long, env = "JOBMESH_WORKER_DEMO_TASKS")]
    pub demo_tasks: bool,
    /// A label the worker shows in ListWorkers, `KEY=VALUE` (repeatable; in the
    /// environment, separated by `,`), e.g. `gpu=a100`.
    #[arg(
        long = "label",
        env = "JOBMESH_WORKER_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
    /// Where Prometheus metrics are served.
    #[command(flatten)]
    pub metrics: jobmesh_runtime::metrics::MetricsConfig,
}

impl Config {
    /// A configuration for a dispatcher URL, other values default.
    pub fn new(dispatcher_url: impl Into<String>) -> Self {
        Self {
            dispatcher_url: dispatcher_url.into(),
            worker_id: None,
            slots: 8,
            tasks: Vec::new(),
            shutdown_grace_ms: 30_000,
            health_listen: None,
            token: None,
            token_file: None,
            metrics: jobmesh_runtime::metrics::MetricsConfig::default(),
            exec: Vec::new(),
            demo_tasks: false,
            labels: Vec::new(),
        }
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub(crate) fn worker_id(&self) -> String {
        self.worker_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host(), std::process::id()))
    }

    /// The labels as a map; a label that is not `KEY=VALUE` is refused.
    pub(crate) fn label_map(&self) -> Result<std::collections::HashMap<String, String>, String> {
        self.labels
            .iter()
            .map(|label| {
                label
                    .split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| format!("--label {label:?} is not KEY=VALUE"))
            })
            .collect()
    }
}

/// This machine's host name.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned())
}
