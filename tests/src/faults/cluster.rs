//! The mesh as separate processes: PostgreSQL database, nats-server, job-store,
//! dispatcher, gateway and workers, each its own `jobmesh` process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jobmesh_auth::AuthChannel;
use jobmesh_proto::v1::job_service_client::JobServiceClient;
use jobmesh_proto::v1::{self};
use tokio::net::TcpStream;

use super::ports::free_port;
use super::process::Proc;
use super::proxy::Proxy;

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
    let listening = jobmesh_mesh::wait_until(limit, Duration::from_millis(50), || async move {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    ensure!(
        listening,
        "nothing listens on 127.0.0.1:{port} after {limit:?}"
    );
    Ok(())
}
