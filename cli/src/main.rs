//! The `jobmesh` binary: `jobmesh dev` starts the whole mesh on this machine; the
//! service modes run one service each; the client commands talk to a gateway.

mod abuse;
mod bench;
mod client;
mod dev;
mod footprint;
mod logs;
mod output;
mod token;
mod watch;
mod workers;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jobmesh_runtime::trace::services;
use tokio::net::TcpListener;

/// jobmesh: run long jobs with live progress over gRPC, on PostgreSQL and NATS
/// JetStream.
#[derive(Parser, Debug)]
#[command(name = "jobmesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the whole mesh on this machine (job-store, dispatcher, gateway and one
    /// worker) against the local PostgreSQL and NATS.
    Dev(dev::DevArgs),
    /// Run the gateway (public gRPC API).
    Gateway(GatewayArgs),
    /// Run job-store (PostgreSQL, outbox, events).
    JobStore(JobStoreArgs),
    /// Run the dispatcher (JetStream consumers, worker sessions).
    Dispatcher(DispatcherArgs),
    /// Run a worker with the built-in tasks.
    Worker(WorkerArgs),
    /// Submit a job.
    Submit(client::SubmitArgs),
    /// Show a job.
    Get(client::JobArgs),
    /// List jobs, newest first (with --watch: follow every change of them).
    #[command(alias = "jobs")]
    List(client::ListArgs),
    /// Cancel a job.
    Cancel(client::JobArgs),
    /// Follow a job until it ends: a live progress bar on a terminal, one JSON line
    /// per change otherwise (or with --json). Ctrl-C stops watching, not the job.
    Watch(watch::WatchArgs),
    /// Print the lines a job printed (with -f, follow them until the job ends).
    Logs(logs::LogsArgs),
    /// List tasks with their workers, free slots and queue depth.
    Tasks(client::GatewayAddr),
    /// List the connected workers: their tasks, slots and the jobs they hold.
    Workers(workers::WorkersArgs),
    /// Mint a bearer token with the mesh's signing key (the dev key by default),
    /// to try tenants and scopes by hand.
    Token(token::TokenArgs),
    /// Create an HS256 signing key file (if missing) and, optionally, token files
    /// for workers and a first user: what a deployment needs before it starts.
    Keygen(token::KeygenArgs),
    /// Measure a running mesh: submit rate, end-to-end throughput and latency.
    Bench(bench::BenchArgs),
    /// Probe a service's grpc.health.v1 endpoint: exit 0 when SERVING, 1 otherwise
    /// (for container and Kubernetes probes).
    Healthcheck(HealthcheckArgs),
}

#[derive(clap::Args, Debug)]
struct HealthcheckArgs {
    /// Address of the service to probe.
    #[arg(
        long,
        env = "JOBMESH_HEALTHCHECK_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    addr: String,
    /// Service name to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = jobmesh_runtime::client::channel(&args.addr)?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: args.service.clone(),
    });
    request.set_timeout(std::time::Duration::from_millis(args.timeout_ms));
    let status = client
        .check(request)
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "{} {:?}: {:?}: {}",
                args.addr,
                args.service,
                s.code(),
                s.message()
            )
        })?
        .into_inner()
        .status();
    if status != ServingStatus::Serving {
        anyhow::bail!(
            "{} {:?} is {}",
            args.addr,
            args.service,
            status.as_str_name()
        );
    }
    println!("{} {:?} is SERVING", args.addr, args.service);
    Ok(())
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "JOBMESH_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    #[command(flatten)]
    config: jobmesh_gateway::Config,
}

#[derive(clap::Args, Debug)]
struct JobStoreArgs {
    /// Address to listen on.
    #[arg(long, env = "JOBMESH_LISTEN", default_value = "127.0.0.1:50052")]
    listen: String,
    #[command(flatten)]
    config: jobmesh_job_store::Config,
}

#[derive(clap::Args, Debug)]
struct DispatcherArgs {
    /// Address to listen on.
    #[arg(long, env = "JOBMESH_LISTEN", default_value = "127.0.0.1:50053")]
    listen: String,
    #[command(flatten)]
    config: jobmesh_dispatcher::Config,
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    #[command(flatten)]
    config: jobmesh_worker::Config,
}

async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address} (is another jobmesh running? pass --listen)")
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader went away (`jobmesh list | head`): nothing more to say.
        Err(error) if broken_pipe(&error) => std::process::ExitCode::SUCCESS,
        Err(error) if error.is::<watch::Interrupted>() => {
            eprintln!("{error}");
            // What a shell reports for a command stopped by SIGINT.
            std::process::ExitCode::from(130)
        }
        Err(error) => {
            // One line a person can act on, with the chain of causes.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `error` is a write to a pipe whose reader has closed it.
fn broken_pipe(error: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == pipe
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Gateway(args) => {
            let _telemetry = jobmesh_runtime::telemetry::init(services::GATEWAY);
            let listener = bind(&args.listen).await?;
            jobmesh_gateway::run(
                args.config,
                listener,
                jobmesh_runtime::shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        Command::JobStore(args) => {
            let _telemetry = jobmesh_runtime::telemetry::init(services::JOB_STORE);
            let listener = bind(&args.listen).await?;
            jobmesh_job_store::run(
                args.config,
                listener,
                jobmesh_runtime::shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Dispatcher(args) => {
            let _telemetry = jobmesh_runtime::telemetry::init(services::DISPATCHER);
            let listener = bind(&args.listen).await?;
            jobmesh_dispatcher::run(
                args.config,
                listener,
                jobmesh_runtime::shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Worker(mut args) => {
            let _telemetry = jobmesh_runtime::telemetry::init(services::WORKER);
            // Like the client commands: without a credential, a worker token
            // minted with the dev key of `jobmesh dev`, when that key is here.
            if args.config.token.is_none()
                && args.config.token_file.is_none()
                && let Some(token) = token::dev_worker_token()
            {
                tracing::info!(key = %jobmesh_auth::dev_key_path().display(), "no worker token given: using one minted with the dev key");
                args.config.token = token.parse().ok();
            }
            jobmesh_worker::run(args.config, jobmesh_runtime::shutdown::on_signal()).await?;
            Ok(())
        }
        Command::Token(args) => token::run(args),
        Command::Keygen(args) => token::keygen(args),
        Command::Submit(args) => client::submit(args).await,
        Command::Get(args) => client::get(args).await,
        Command::List(args) => client::list(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Watch(args) => watch::watch(args).await,
        Command::Logs(args) => logs::logs(args).await,
        Command::Workers(args) => workers::workers(args).await,
        Command::Tasks(args) => client::tasks(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Healthcheck(args) => healthcheck(args).await,
    }
}
