//! The fault harness: every service of the mesh as its own process (the `jobmesh`
//! binary's service modes), an own `nats-server` process, TCP proxies that can cut
//! the job-store ↔ PostgreSQL and worker ↔ dispatcher links, a mixed workload that
//! retries with idempotency keys, and the accounting that every scenario asserts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jobmesh_auth::AuthChannel;
use jobmesh_proto::json::json_to_struct;
use jobmesh_proto::v1::job_service_client::JobServiceClient;
use jobmesh_proto::v1::{self};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// A loopback port for a service of a test cluster: free now, outside the
/// kernel's ephemeral range and never handed out twice by this process.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = service_ports();
    let mut handed_out = HANDED_OUT
        .lock()
        .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
    let span = u64::from(high - low);
    // Where to start looking: differs between runs and between test binaries.
    let start = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or_default();
    for step in 0..span {
        let port = low + u16::try_from((start + step) % span)?;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    bail!("no free port in {low}..{high}")
}

/// Ports for the services of a cluster: below the kernel's ephemeral range (or
/// above it when that starts low), so that no outgoing connection and no
/// `bind(0)` takes one between the choice and the service binding it, or while
/// the service is down for a restart. (A range that leaves no room on either
/// side falls back to 20000..32000, inside it.)
fn service_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        });
    match range {
        Some((first, _)) if first >= 12_000 => (10_000, first),
        Some((_, last)) if last <= 55_000 => (last + 1, 65_000),
        _ => (20_000, 32_000),
    }
}

/// One child process that can be killed, stopped, continued and restarted with the
/// same command line.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Adds environment variables.
    pub fn with_env(mut self, extra: &[(&str, String)]) -> Self {
        self.envs
            .extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        self
    }

    /// Starts the process, its output appended to `<dir>/<name>.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("JOBMESH_FAULT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) with kill(1).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// `kill -9`, then reaps the process.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// `kill -TERM` and waits (at most `grace`) for the process to exit.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<bool> {
        self.signal("TERM").await?;
        self.exited(grace).await
    }

    /// Waits (at most `limit`) for the process to exit; whether it exited 0 in
    /// time (if not, it is killed).
    pub async fn exited(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("(cannot read {}: {error})", self.log.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A TCP proxy whose link can be cut (open connections reset, new ones refused)
/// and restored.
pub struct Proxy {
    pub address: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (open2, cut2, stop2) = (Arc::clone(&open), Arc::clone(&cut), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if !open2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = cut2.lock().await.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self {
            address,
            open,
            cut,
            stop,
        })
    }

    /// Resets every open connection and refuses new ones.
    pub async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut token = self.cut.lock().await;
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Settings of a fault cluster.
pub struct ClusterOptions {
    /// The `jobmesh` binary.
    pub binary: PathBuf,
    pub workers: usize,
    pub slots: u32,
    pub lease_ms: u64,
    /// OTLP endpoint the services export traces to (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
}

/// The mesh as separate processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub database: String,
    pub gateway_url: String,
    pub job_store_url: String,
    pub dispatcher_url: String,
    pub nats: Proc,
    pub job_store: Proc,
    pub dispatcher: Proc,
    pub gateway: Proc,
    pub workers: Vec<Proc>,
    /// job-store → PostgreSQL.
    pub postgres_link: Proxy,
    /// workers → dispatcher.
    pub worker_link: Proxy,
    /// A user token of the cluster's signing key.
    pub token: String,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        crate::init_logs();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = std::env::temp_dir().join(format!("jobmesh-faults-{id}"));
        std::fs::create_dir_all(&dir)?;
        let database = format!("jobmesh_faults_{id}");
        let nats_port = free_port()?;
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let nats_bin = which("nats-server")?;
        let mut nats = Proc::new(
            "nats",
            &nats_bin,
            &[
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                nats_port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.join("nats").display().to_string(),
            ],
            &[],
            &dir,
        );
        nats.start()?;
        wait_port(nats_port, Duration::from_secs(10))
            .await
            .context("nats-server did not start")?;

        let postgres: SocketAddr = "127.0.0.1:5432".parse()?;
        let postgres_link = Proxy::start(postgres).await?;
        let database_url = format!("postgres://postgres@{}/{database}", postgres_link.address);
        let (store_port, dispatcher_port, gateway_port) =
            (free_port()?, free_port()?, free_port()?);
        let worker_link = Proxy::start(format!("127.0.0.1:{dispatcher_port}").parse()?).await?;
        let key_file = dir.join("signing.key");
        jobmesh_auth::ensure_dev_key(&key_file)?;
        let minter = jobmesh_auth::Minter::hs256_file(&key_file)?;
        let mint = |tenant: Option<&str>, scopes: &[&str]| {
            minter.mint("faults", tenant, scopes, Duration::from_secs(24 * 3600))
        };
        let token = mint(Some("faults"), &jobmesh_auth::scope::USER)?;
        let worker_token = mint(None, &[jobmesh_auth::scope::WORKER])?;
        let key_env = (
            "JOBMESH_AUTH_HS256_SECRET_FILE",
            key_file.display().to_string(),
        );
        let common = [
            ("JOBMESH_NATS_URL", nats_url.clone()),
            ("JOBMESH_NATS_PREFIX", "faults".to_owned()),
        ];
        let binary = &options.binary;
        let otel: Vec<(&str, String)> = match &options.otlp_endpoint {
            Some(endpoint) => vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ],
            None => Vec::new(),
        };
        let mut job_store = Proc::new(
            "job-store",
            binary,
            &args(&[
                "job-store",
                "--listen",
                &format!("127.0.0.1:{store_port}"),
                "--sweep-interval-ms",
                "200",
                "--cancel-grace-ms",
                "5000",
            ]),
            &[&common[..], &[("JOBMESH_DATABASE_URL", database_url)]].concat(),
            &dir,
        )
        .with_env(&otel);
        let job_store_url = format!("http://127.0.0.1:{store_port}");
        let mut dispatcher = Proc::new(
            "dispatcher",
            binary,
            &args(&[
                "dispatcher",
                "--listen",
                &format!("127.0.0.1:{dispatcher_port}"),
                "--lease-ms",
                &options.lease_ms.to_string(),
                "--ack-wait-ms",
                "5000",
            ]),
            &[
                &common[..],
                &[
                    ("JOBMESH_JOB_STORE_URL", job_store_url.clone()),
                    key_env.clone(),
                ],
            ]
            .concat(),
            &dir,
        )
        .with_env(&otel);
        let mut gateway = Proc::new(
            "gateway",
            binary,
            &args(&["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")]),
            &[
                ("JOBMESH_JOB_STORE_URL", job_store_url),
                (
                    "JOBMESH_DISPATCHER_URL",
                    format!("http://127.0.0.1:{dispatcher_port}"),
                ),
                key_env,
            ],
            &dir,
        )
        .with_env(&otel);
        let mut workers = Vec::new();
        for n in 0..options.workers {
            workers.push(
                Proc::new(
                    &format!("worker-{n}"),
                    binary,
                    &args(&[
                        "worker",
                        "--worker-id",
                        &format!("worker-{n}"),
                        "--slots",
                        &options.slots.to_string(),
                        "--shutdown-grace-ms",
                        "5000",
                    ]),
                    &[
                        (
                            "JOBMESH_DISPATCHER_URL",
                            format!("http://{}", worker_link.address),
                        ),
                        ("JOBMESH_WORKER_TOKEN", worker_token.clone()),
                    ],
                    &dir,
                )
                .with_env(&otel),
            );
        }
        job_store.start()?;
        wait_port(store_port, Duration::from_secs(30))
            .await
            .with_context(|| format!("job-store did not start:\n{}", job_store.log_tail(20)))?;
        dispatcher.start()?;
        gateway.start()?;
        for worker in &mut workers {
            worker.start()?;
        }
        wait_port(gateway_port, Duration::from_secs(30))
            .await
            .context("gateway did not start")?;
        let cluster = Self {
            dir,
            database,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            job_store_url: format!("http://127.0.0.1:{store_port}"),
            dispatcher_url: format!("http://127.0.0.1:{dispatcher_port}"),
            nats,
            job_store,
            dispatcher,
            gateway,
            workers,
            postgres_link,
            worker_link,
            token,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until a job submitted through the gateway has run: every service and
    /// a worker are up.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        // Generous: a cluster that runs nothing within this is broken, not slow.
        const READY_WITHIN: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + READY_WITHIN;
        let probe = v1::SubmitJobRequest {
            task: "demo.echo".to_owned(),
            ..Default::default()
        };
        let mut jobs = self.jobs();
        let id = loop {
            match jobs.submit_job(probe.clone()).await {
                Ok(reply) => break reply.into_inner().job.context("no job")?.id,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(status) => bail!(
                    "the cluster did not accept a job: {status:?}\n{}",
                    self.logs()
                ),
            }
        };
        loop {
            let job = jobs
                .get_job(v1::GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner()
                .job
                .context("no job")?;
            if job.state() == v1::JobState::Succeeded {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the probe job did not run within {READY_WITHIN:?}: {job:?}\ntasks: {}\n{}",
                    self.tasks().await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the gateway says of workers, free slots and backlog, for failure
    /// messages.
    pub async fn tasks(&self) -> String {
        let mut tasks = v1::task_service_client::TaskServiceClient::new(jobmesh_auth::with_token(
            jobmesh_runtime::client::channel(&self.gateway_url).expect("loopback url"),
            Some(&self.token),
        ));
        match tasks.list_tasks(v1::ListTasksRequest {}).await {
            Ok(reply) => format!("{:?}", reply.into_inner().tasks),
            Err(status) => format!("ListTasks failed: {status:?}"),
        }
    }

    pub fn jobs(&self) -> JobServiceClient<AuthChannel> {
        JobServiceClient::new(jobmesh_auth::with_token(
            jobmesh_runtime::client::channel(&self.gateway_url).expect("loopback url"),
            Some(&self.token),
        ))
    }

    /// Rows waiting in job-store's outbox (committed, not yet in JetStream).
    pub async fn outbox_rows(&self) -> anyhow::Result<i64> {
        let (client, connection) = tokio_postgres::connect(
            &format!("{}/{}", crate::postgres_server(), self.database),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await?
            .get(0))
    }

    /// The logs of every process, last lines, for a failing scenario.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.nats, &self.job_store, &self.dispatcher, &self.gateway]
            .into_iter()
            .chain(self.workers.iter())
        {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_tail(15)));
        }
        out
    }

    /// Stops everything and drops the database.
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            let _ = worker.kill9().await;
        }
        for p in [
            &mut self.gateway,
            &mut self.dispatcher,
            &mut self.job_store,
            &mut self.nats,
        ] {
            let _ = p.kill9().await;
        }
        if let Ok((client, connection)) = tokio_postgres::connect(
            &format!("{}/postgres", crate::postgres_server()),
            tokio_postgres::NoTls,
        )
        .await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .await;
        }
        if std::env::var_os("JOBMESH_FAULT_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{program} not found on PATH (apt-get install nats-server)")
}

async fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on 127.0.0.1:{port} after {limit:?}")
}

/// What a job of the workload is meant to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Instant,
    Sleeping,
    Failing,
    Flaky,
    Cancelled,
}

impl Kind {
    fn of(n: usize) -> Self {
        match n % 10 {
            0..=3 => Kind::Instant,
            4..=6 => Kind::Sleeping,
            7 => Kind::Failing,
            8 => Kind::Flaky,
            _ => Kind::Cancelled,
        }
    }

    fn request(self, run: &str, n: usize) -> v1::SubmitJobRequest {
        let (task, args, max_attempts) = match self {
            Kind::Instant => ("demo.echo", json!({"n": n}), 5),
            Kind::Sleeping => (
                "demo.sleep",
                json!({"seconds": 0.2 + (n % 3) as f64 * 0.15, "steps": 4}),
                5,
            ),
            Kind::Failing => ("demo.fail", json!({"message": format!("job {n} fails")}), 3),
            Kind::Flaky => (
                "demo.fail",
                json!({"message": "flaky", "retryable": true}),
                2,
            ),
            Kind::Cancelled => ("demo.sleep", json!({"seconds": 30, "steps": 30}), 5),
        };
        v1::SubmitJobRequest {
            task: task.to_owned(),
            args: Some(json_to_struct(args.as_object().expect("object"))),
            idempotency_key: format!("{run}-{n}"),
            labels: [
                ("run".to_owned(), run.to_owned()),
                ("kind".to_owned(), format!("{self:?}")),
            ]
            .into(),
            max_attempts,
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// What the client saw: accepted jobs by index.
pub struct Submitted {
    pub run: String,
    pub accepted: HashMap<usize, (String, Kind)>,
    pub retries: usize,
    /// The longest single submit call, failed or not: outages must not make
    /// calls hang past their deadline.
    pub slowest_call: Duration,
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// Submits `jobs` jobs with `concurrency` in flight, retrying each with its
/// idempotency key until accepted (as a client whose reply got lost would);
/// cancels the `Cancelled` ones shortly after.
pub async fn submit_workload(
    client: JobServiceClient<AuthChannel>,
    jobs: usize,
    concurrency: usize,
    limit: Duration,
) -> anyhow::Result<Submitted> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(HashMap::new()));
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let deadline = Instant::now() + limit;
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, results, retries, run) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&results),
            Arc::clone(&retries),
            run.clone(),
        );
        let slowest = Arc::clone(&slowest);
        lanes.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= jobs {
                    return Ok::<_, anyhow::Error>(());
                }
                let kind = Kind::of(n);
                let request = kind.request(&run, n);
                let id = loop {
                    let call = Instant::now();
                    let outcome = client.clone().submit_job(request.clone()).await;
                    let took = call.elapsed();
                    {
                        let mut slowest = slowest.lock().await;
                        *slowest = (*slowest).max(took);
                    }
                    match outcome {
                        Ok(reply) => break reply.into_inner().job.context("no job")?.id,
                        Err(status) if retryable(status.code()) && Instant::now() < deadline => {
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => bail!("submit {n} failed: {status:?}"),
                    }
                };
                if kind == Kind::Cancelled {
                    let (client, id, retries) = (client.clone(), id.clone(), Arc::clone(&retries));
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        loop {
                            match client
                                .clone()
                                .cancel_job(v1::CancelJobRequest { job_id: id.clone() })
                                .await
                            {
                                Err(status)
                                    if retryable(status.code()) && Instant::now() < deadline =>
                                {
                                    retries.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                _ => break,
                            }
                        }
                    });
                }
                results.lock().await.insert(n, (id, kind));
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    let accepted = std::mem::take(&mut *results.lock().await);
    let slowest_call = *slowest.lock().await;
    Ok(Submitted {
        run,
        accepted,
        retries: retries.load(Ordering::SeqCst),
        slowest_call,
    })
}

/// The accounting of a scenario.
#[derive(Debug, Default)]
pub struct Accounting {
    pub accepted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub retried: usize,
    pub client_retries: usize,
    pub slowest_call_seconds: f64,
    pub seconds_to_settle: f64,
}

/// Waits (at most `limit`) until every accepted job is terminal, then checks every
/// promise: exactly the accepted jobs exist, each in one terminal state fitting its
/// kind, attempts within bounds, every result from the job's last attempt, nothing
/// left in the outbox.
pub async fn account(
    cluster: &Cluster,
    submitted: &Submitted,
    limit: Duration,
) -> anyhow::Result<Accounting> {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/{}", crate::postgres_server(), cluster.database),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let started = Instant::now();
    let label = serde_json::json!({ "run": submitted.run });
    loop {
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) FROM jobs WHERE labels @> $1", &[&label])
            .await?;
        let pending: i64 = row.get(0);
        if pending == 0 {
            break;
        }
        if started.elapsed() > limit {
            let stuck = client
                .query("SELECT id::text, state, attempt, worker_id FROM jobs WHERE labels @> $1 AND state IN ('queued','running') LIMIT 5", &[&label])
                .await?;
            let stuck: Vec<String> = stuck
                .iter()
                .map(|r| {
                    format!(
                        "{} {} attempt {} worker {:?}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i32>(2),
                        r.get::<_, Option<String>>(3)
                    )
                })
                .collect();
            bail!(
                "{pending} jobs still pending after {limit:?}, e.g. {stuck:#?}\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle = started.elapsed().as_secs_f64();
    let rows = client
        .query(
            "SELECT id::text, state, attempt, max_attempts, result, error_message, finish_time IS NOT NULL FROM jobs WHERE labels @> $1",
            &[&label],
        )
        .await?;
    let by_id: HashMap<String, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, String>(0), r)).collect();
    ensure!(
        rows.len() == submitted.accepted.len(),
        "{} jobs stored for {} accepted submissions (idempotency broken or a job lost)",
        rows.len(),
        submitted.accepted.len()
    );
    let mut acc = Accounting {
        accepted: rows.len(),
        client_retries: submitted.retries,
        slowest_call_seconds: submitted.slowest_call.as_secs_f64(),
        seconds_to_settle: settle,
        ..Default::default()
    };
    for (n, (id, kind)) in &submitted.accepted {
        let row = by_id
            .get(id)
            .with_context(|| format!("accepted job {n} ({id}) is not stored"))?;
        let state: String = row.get(1);
        let attempt: i32 = row.get(2);
        let max_attempts: i32 = row.get(3);
        let result: Option<serde_json::Value> = row.get(4);
        let error: Option<String> = row.get(5);
        let finished: bool = row.get(6);
        ensure!(finished, "job {id} is {state} without a finish time");
        ensure!(
            (1..=max_attempts).contains(&attempt),
            "job {id}: attempt {attempt} outside 1..={max_attempts}"
        );
        if attempt > 1 {
            acc.retried += 1;
        }
        match state.as_str() {
            "succeeded" => {
                acc.succeeded += 1;
                ensure!(
                    matches!(kind, Kind::Instant | Kind::Sleeping | Kind::Cancelled),
                    "job {id} ({kind:?}) succeeded"
                );
                let result =
                    result.with_context(|| format!("job {id} succeeded without a result"))?;
                if let Some(by) = result.get("attempt") {
                    ensure!(
                        by.as_f64() == Some(f64::from(attempt)),
                        "job {id}: result of attempt {by} accepted for attempt {attempt}"
                    );
                }
            }
            "failed" => {
                acc.failed += 1;
                let error = error.unwrap_or_default();
                match kind {
                    // A fault may have ended an earlier attempt (retryable); the
                    // handler's own failure is not retried.
                    Kind::Failing => ensure!(
                        error.ends_with("fails"),
                        "job {id}: {error:?} at attempt {attempt}"
                    ),
                    // Its last attempt may have been ended by a fault rather than
                    // by its own failure; either way it used every attempt.
                    Kind::Flaky => ensure!(
                        attempt == max_attempts,
                        "job {id}: {error:?} at attempt {attempt}"
                    ),
                    // Infrastructure faults may exhaust a job's attempts, never silently.
                    _ => ensure!(
                        attempt == max_attempts,
                        "job {id} ({kind:?}) failed at attempt {attempt}: {error}"
                    ),
                }
            }
            "cancelled" => {
                acc.cancelled += 1;
                ensure!(*kind == Kind::Cancelled, "job {id} ({kind:?}) cancelled");
            }
            other => bail!("job {id} ended in {other}"),
        }
    }
    let outbox: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    ensure!(
        outbox == 0,
        "{outbox} outbox rows left after every job ended"
    );
    Ok(acc)
}
