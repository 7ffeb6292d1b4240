//! `jobmesh dev`: the whole mesh in one process, each service on its own loopback
//! port and talking real gRPC to the others, against the local PostgreSQL and NATS.

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use jobmesh_auth as auth;
use jobmesh_runtime::NatsConfig;

#[derive(clap::Args, Debug)]
pub(crate) struct DevArgs {
    /// Gateway address (the public API).
    #[arg(long, env = "JOBMESH_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// job-store address.
    #[arg(
        long,
        env = "JOBMESH_JOB_STORE_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    job_store_listen: String,
    /// Dispatcher address.
    #[arg(
        long,
        env = "JOBMESH_DISPATCHER_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    dispatcher_listen: String,
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "JOBMESH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/jobmesh"
    )]
    database_url: String,
    #[command(flatten)]
    nats: NatsConfig,
    /// Slots of the built-in worker.
    #[arg(long, env = "JOBMESH_WORKER_SLOTS", default_value_t = 16)]
    worker_slots: u32,
    /// Let the built-in worker run a command per job of a task, to try your own
    /// script: `TASK=COMMAND` (repeatable; in the environment, one per line: a command may hold `;`), as
    /// on `jobmesh worker --exec`. The command runs as `sh -c COMMAND` with the
    /// job's args as JSON on stdin; JSON lines on stdout report progress
    /// (`{"progress": 50, "message": "…"}`), the result (`{"result": {…}}`) or an
    /// error (`{"error": "…", "retryable": false}`); other lines are its log.
    #[arg(
        long = "exec",
        env = "JOBMESH_WORKER_EXEC",
        value_delimiter = '\n',
        value_name = "TASK=COMMAND"
    )]
    exec: Vec<String>,
    /// Where the mesh's Prometheus metrics are served (all services of this
    /// process on one endpoint, `/metrics`).
    #[arg(long, env = "JOBMESH_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Log lines per second one job may print on average (0: no limit); past
    /// it the job's log calls wait, so a chatty job does not slow the others.
    #[arg(
        long,
        env = "JOBMESH_MAX_LOG_LINES_PER_SECOND",
        default_value_t = 10_000
    )]
    max_log_lines_per_second: u32,
    /// Calls the gateway handles at once before refusing more (load shedding).
    #[arg(long, env = "JOBMESH_MAX_INFLIGHT", default_value_t = 512)]
    max_inflight: usize,
    /// Streams (watches, log follows) the gateway holds open at once, and
    /// the most one tenant may hold.
    #[arg(long, env = "JOBMESH_MAX_STREAMS", default_value_t = 4096)]
    max_streams: usize,
    #[arg(long, env = "JOBMESH_MAX_STREAMS_PER_TENANT", default_value_t = 1024)]
    max_streams_per_tenant: usize,
    /// How often the newest progress of each running job is written
    /// (milliseconds); reports in between reach watchers at once. 0 writes
    /// every report before answering it.
    #[arg(long, env = "JOBMESH_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    progress_interval_ms: u64,
    /// Where the dashboard links a job's trace, with `{trace_id}` in it, e.g.
    /// `http://localhost:16686/trace/{trace_id}` (Jaeger).
    #[arg(long, env = "JOBMESH_UI_TRACE_URL")]
    ui_trace_url: Option<String>,
    /// Run without authentication (every caller is tenant "default" with every
    /// scope). Without it, the dev signing key is used and a token printed.
    #[arg(long)]
    insecure_no_auth: bool,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let exec = args
        .exec
        .iter()
        .map(|spec| jobmesh_worker::parse_exec(spec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let _telemetry = jobmesh_runtime::telemetry::init_mesh("jobmesh-dev");
    let shutdown = jobmesh_runtime::shutdown::on_signal();
    let listeners = jobmesh_mesh::Listeners::bind(
        &args.job_store_listen,
        &args.dispatcher_listen,
        &args.listen,
    )
    .await
    .context("another jobmesh running? change the --*-listen flags")?;
    let urls = listeners.urls()?;
    let job_store_url = urls.store.clone();
    let dispatcher_url = urls.dispatcher.clone();
    let gateway_addr = listeners.gateway.local_addr()?;

    // Authentication: the dev key (created on first use) unless switched off.
    let key_path = auth::dev_key_path();
    let (auth_config, user_token, worker_token) = if args.insecure_no_auth {
        tracing::warn!(
            "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches these ports can submit and read jobs"
        );
        (auth::AuthConfig::insecure(), None, None)
    } else {
        if auth::ensure_dev_key(&key_path)
            .with_context(|| format!("creating the dev signing key {}", key_path.display()))?
        {
            tracing::info!(path = %key_path.display(), "created the dev signing key");
        }
        let minter = auth::Minter::hs256_file(&key_path)?;
        let user = minter.mint(
            "jobmesh-dev",
            Some(crate::token::DEV_TENANT),
            &auth::scope::DEV,
            Duration::from_secs(30 * 24 * 3600),
        )?;
        let worker = minter.mint(
            "jobmesh-dev-worker",
            None,
            &[auth::scope::WORKER],
            Duration::from_secs(365 * 24 * 3600),
        )?;
        (
            auth::AuthConfig::hs256_file(&key_path),
            Some(user),
            Some(worker),
        )
    };

    let mut dispatcher_config =
        jobmesh_dispatcher::Config::new(job_store_url.clone(), args.nats.clone());
    dispatcher_config.auth = auth_config.clone();
    dispatcher_config.max_log_lines_per_second = args.max_log_lines_per_second;
    let mut gateway_config =
        jobmesh_gateway::Config::new(job_store_url.clone(), dispatcher_url.clone());
    gateway_config.auth = auth_config;
    gateway_config.max_inflight = args.max_inflight;
    gateway_config.max_streams = args.max_streams;
    gateway_config.max_streams_per_tenant = args.max_streams_per_tenant;
    gateway_config.ui_trace_url = args.ui_trace_url.clone();
    // One endpoint for the whole process: the recorder is shared by its services.
    match TcpListener::bind(&args.metrics_listen).await {
        Ok(listener) => {
            tokio::spawn(jobmesh_runtime::metrics::serve(listener, shutdown.clone()));
        }
        Err(error) => {
            tracing::warn!(address = %args.metrics_listen, %error, "metrics not served: cannot listen");
        }
    }
    let mut store_config =
        jobmesh_job_store::Config::new(args.database_url.clone(), args.nats.clone());
    store_config.progress_interval_ms = args.progress_interval_ms;
    let mut mesh = jobmesh_mesh::Mesh::start(
        jobmesh_mesh::Plan {
            store: store_config,
            dispatcher: dispatcher_config,
            gateway: gateway_config,
        },
        listeners,
    )?;
    let mut worker_config = jobmesh_worker::Config::new(dispatcher_url.clone());
    worker_config.slots = args.worker_slots;
    worker_config.worker_id = Some(format!("dev-worker-{}", std::process::id()));
    worker_config.shutdown_grace_ms = 5_000;
    worker_config.token = worker_token.as_deref().and_then(|t| t.parse().ok());
    worker_config.exec = args.exec.clone();
    // The dev mesh is a playground: its worker runs the demo tasks too.
    worker_config.demo_tasks = true;
    mesh.add_worker(worker_config, None);

    let auth_lines = match &user_token {
        Some(token) => format!(
            "  auth        JWT (HS256 dev key {}); a token for tenant \"dev\" with scopes {}, valid 30 days:\n\n  export JOBMESH_TOKEN={token}\n",
            key_path.display(),
            auth::scope::DEV.join(" "),
        ),
        None => "  auth        OFF (--insecure-no-auth): every caller is tenant \"default\"\n"
            .to_owned(),
    };
    let header = if user_token.is_some() {
        " -H \"authorization: Bearer $JOBMESH_TOKEN\""
    } else {
        ""
    };
    // The token goes in the fragment: browsers never send it to the server.
    let dashboard = match &user_token {
        Some(token) => format!("http://{gateway_addr}/ui/#token={token}"),
        None => format!("http://{gateway_addr}/ui/"),
    };
    let mut tasks = jobmesh_worker::Handlers::builtin().tasks();
    tasks.extend(exec.iter().map(|(task, _)| task.clone()));
    tasks.sort();
    tasks.dedup();
    let exec_lines: String = exec
        .iter()
        .map(|(task, command)| format!("  exec        {task}: {command}\n"))
        .collect();
    let banner = format!(
        "jobmesh dev mesh is up\n  gateway     {gateway_addr}   (gRPC: jobmesh.v1.JobService, TaskService, health, reflection; REST: /v1/..., /openapi.json)\n  dashboard   {dashboard}\n  metrics     http://{}/metrics\n  job-store   {job_store_url}\n  dispatcher  {dispatcher_url}\n  worker      {} slots, tasks {}\n{exec_lines}  postgres    {}\n  nats        {} (prefix {})\n{auth_lines}\ntry:\n  grpcurl -plaintext{header} -d '{{\"task\":\"demo.sleep\",\"args\":{{\"seconds\":3,\"steps\":5}}}}' {gateway_addr} jobmesh.v1.JobService/SubmitJob\n  curl -s{header} -H 'Content-Type: application/json' -d '{{\"task\":\"demo.sleep\",\"args\":{{\"seconds\":3}}}}' http://{gateway_addr}/v1/jobs\n  curl -sN{header} http://{gateway_addr}/v1/jobs/<id>:watch\n  jobmesh submit demo.sleep --args '{{\"seconds\":3}}' --watch --logs\n  jobmesh logs -f <id>\n\nCtrl-C stops the mesh.",
        args.metrics_listen,
        args.worker_slots,
        tasks.join(", "),
        jobmesh_job_store::redact(&args.database_url),
        args.nats.redacted_url(),
        args.nats.prefix,
    );
    // Show the banner once the mesh answers (job-store creates the database and
    // the stream first); a store that fails to start ends the command instead.
    let gateway_url = format!("http://{gateway_addr}");
    let failed = tokio::select! {
        ready = jobmesh_mesh::answers(&gateway_url, user_token.as_deref(), Duration::from_secs(30)) => {
            if ready {
                println!("{banner}");
            } else {
                tracing::warn!("the mesh did not answer within 30s; still waiting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => None,
                result = mesh.store_exit() => Some(result),
            }
        }
        result = mesh.store_exit() => Some(result),
    };
    let stopped = mesh.stop().await;
    failed.unwrap_or(stopped).context("job-store")?;
    Ok(())
}
