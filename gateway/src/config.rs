//! gateway configuration.

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
}

impl Config {
    /// A configuration for the two internal services.
    pub fn new(job_store_url: impl Into<String>, dispatcher_url: impl Into<String>) -> Self {
        Self {
            job_store_url: job_store_url.into(),
            dispatcher_url: dispatcher_url.into(),
        }
    }
}
