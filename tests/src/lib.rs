//! A mesh for tests: job-store, dispatcher, gateway and workers started in-process
//! as tokio tasks on `127.0.0.1:0`, talking real gRPC to each other, against the
//! real PostgreSQL (a fresh database per mesh) and the real NATS JetStream (a
//! unique name prefix per mesh). Nothing is mocked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jobmesh_auth::{self as auth, AuthChannel, Minter, scope};
use jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient;
use jobmesh_proto::v1::job_service_client::JobServiceClient;
use jobmesh_proto::v1::task_service_client::TaskServiceClient;
use jobmesh_proto::v1::{self, JobState};
use jobmesh_runtime::NatsConfig;
use jobmesh_runtime::client::Channel;
use jobmesh_worker::Handlers;

pub mod faults;
pub mod http;
pub mod otlp;

/// PostgreSQL server used by tests (`JOBMESH_TEST_POSTGRES`, default local).
pub fn postgres_server() -> String {
    std::env::var("JOBMESH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// NATS server used by tests (`JOBMESH_TEST_NATS`, default local).
pub fn nats_server() -> String {
    std::env::var("JOBMESH_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// One worker of a test mesh.
pub struct WorkerSpec {
    pub worker_id: String,
    pub slots: u32,
    pub handlers: Handlers,
}

impl WorkerSpec {
    /// A worker with the built-in tasks.
    pub fn builtin(worker_id: &str, slots: u32) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            slots,
            handlers: Handlers::builtin(),
        }
    }
}

/// What to start.
pub struct MeshOptions {
    pub workers: Vec<WorkerSpec>,
    /// Lease length given by the dispatcher (milliseconds).
    pub lease_ms: u64,
    /// Gateway settings applied on top of the test defaults (limits).
    pub gateway: fn(&mut jobmesh_gateway::Config),
    /// job-store settings applied on top of the test defaults (log limits).
    pub store: fn(&mut jobmesh_job_store::Config),
    /// Dispatcher settings applied on top of the test defaults.
    pub dispatcher: fn(&mut jobmesh_dispatcher::Config),
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            workers: vec![WorkerSpec::builtin("worker-1", 8)],
            lease_ms: 15_000,
            gateway: |_| {},
            store: |_| {},
            dispatcher: |_| {},
        }
    }
}

/// A running mesh.
pub struct Mesh {
    pub gateway_url: String,
    pub job_store_url: String,
    pub dispatcher_url: String,
    pub database: String,
    pub nats: NatsConfig,
    /// The services, assembled as `jobmesh dev` assembles them.
    inner: jobmesh_mesh::Mesh,
    /// HS256 key that gateway and dispatcher verify tokens with.
    pub key_file: PathBuf,
    minter: Arc<Minter>,
    leftovers: Leftovers,
}

/// What a mesh leaves behind (its database, stream and key file), removed when
/// the mesh goes: by [`Mesh::stop`], or when a failing test unwinds past it.
struct Leftovers {
    database: String,
    nats: NatsConfig,
    key_file: PathBuf,
    removed: bool,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // No runtime can be awaited in a drop: a thread of its own does it.
        let (database, nats, key_file) = (
            self.database.clone(),
            self.nats.clone(),
            self.key_file.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(cleanup(&database, &nats));
            }
            let _ = std::fs::remove_file(&key_file);
        })
        .join();
    }
}

/// Tenant of the tokens [`Mesh::jobs`] and [`Mesh::tasks`] send.
pub const TENANT: &str = "tenant-a";

/// Installs a test log subscriber once (`RUST_LOG`, default warnings).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Mesh {
    /// Starts a mesh and waits until its gateway answers.
    pub async fn start(options: MeshOptions) -> anyhow::Result<Mesh> {
        init_logs();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("jobmesh_test_{}", &suffix[..16]);
        let nats = NatsConfig {
            url: nats_server(),
            prefix: format!("t{}", &suffix[..16]),
        };
        let listeners =
            jobmesh_mesh::Listeners::bind("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0").await?;
        let urls = listeners.urls()?;
        let key_file = std::env::temp_dir().join(format!("jobmesh-test-{suffix}.key"));
        auth::ensure_dev_key(&key_file).context("writing the mesh's signing key")?;
        let minter = Arc::new(Minter::hs256_file(&key_file)?);
        let auth_config = auth::AuthConfig::hs256_file(&key_file);

        let mut store_config = jobmesh_job_store::Config::new(
            format!("{}/{database}", postgres_server()),
            nats.clone(),
        );
        (options.store)(&mut store_config);
        let mut dispatcher_config =
            jobmesh_dispatcher::Config::new(urls.store.clone(), nats.clone());
        dispatcher_config.lease_ms = options.lease_ms;
        dispatcher_config.auth = auth_config.clone();
        (options.dispatcher)(&mut dispatcher_config);
        let mut gateway_config =
            jobmesh_gateway::Config::new(urls.store.clone(), urls.dispatcher.clone());
        gateway_config.auth = auth_config;
        (options.gateway)(&mut gateway_config);
        let inner = jobmesh_mesh::Mesh::start(
            jobmesh_mesh::Plan {
                store: store_config,
                dispatcher: dispatcher_config,
                gateway: gateway_config,
            },
            listeners,
        )?;
        let leftovers = Leftovers {
            database: database.clone(),
            nats: nats.clone(),
            key_file: key_file.clone(),
            removed: false,
        };
        let mut mesh = Mesh {
            gateway_url: urls.gateway,
            job_store_url: urls.store,
            dispatcher_url: urls.dispatcher,
            database,
            nats,
            inner,
            key_file,
            minter,
            leftovers,
        };
        for spec in options.workers {
            mesh.add_worker(spec);
        }
        mesh.wait_ready().await?;
        Ok(mesh)
    }

    /// Starts one more worker; it stops with the mesh.
    pub fn add_worker(&mut self, spec: WorkerSpec) {
        let mut config = jobmesh_worker::Config::new(self.dispatcher_url.clone());
        config.worker_id = Some(spec.worker_id);
        config.slots = spec.slots;
        config.shutdown_grace_ms = 2_000;
        config.token = Some(
            self.token_for(None, &[scope::WORKER])
                .parse()
                .unwrap_or_default(),
        );
        self.inner.add_worker(config, Some(spec.handlers));
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let token = self.token(TENANT, &scope::USER);
        tokio::select! {
            ready = jobmesh_mesh::answers(&self.gateway_url, Some(&token), Duration::from_secs(30)) => {
                anyhow::ensure!(ready, "the mesh did not become ready within 30s");
                Ok(())
            }
            ended = self.inner.store_exit() => bail!(
                "job-store did not start: {}\n(PostgreSQL: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; NATS: `nats-server -js`)",
                ended.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        }
    }

    /// A token signed with the mesh's key, valid for an hour.
    pub fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        self.token_for(Some(tenant), scopes)
    }

    /// A token signed with the mesh's key that names no tenant.
    pub fn token_without_tenant(&self, scopes: &[&str]) -> String {
        self.token_for(None, scopes)
    }

    fn token_for(&self, tenant: Option<&str>, scopes: &[&str]) -> String {
        self.minter
            .mint("test", tenant, scopes, Duration::from_secs(3600))
            .expect("minting with an HS256 key cannot fail")
    }

    /// A client of the public job API, as a user of [`TENANT`] with every user scope.
    pub fn jobs(&self) -> JobServiceClient<AuthChannel> {
        self.jobs_with(Some(&self.token(TENANT, &scope::USER)))
    }

    /// A client of the public job API sending `token` (or none).
    pub fn jobs_with(&self, token: Option<&str>) -> JobServiceClient<AuthChannel> {
        JobServiceClient::new(auth::with_token(channel(&self.gateway_url), token))
    }

    /// A client of the public task API, as a user of [`TENANT`].
    pub fn tasks(&self) -> TaskServiceClient<AuthChannel> {
        self.tasks_with(Some(&self.token(TENANT, &scope::USER)))
    }

    /// A token for [`TENANT`] that may also see the connected workers.
    pub fn operator_token(&self) -> String {
        self.token(TENANT, &[scope::READ, scope::WORKERS_READ])
    }

    /// A client of the public task API sending `token` (or none).
    pub fn tasks_with(&self, token: Option<&str>) -> TaskServiceClient<AuthChannel> {
        TaskServiceClient::new(auth::with_token(channel(&self.gateway_url), token))
    }

    /// A client of job-store's internal API (for fencing tests).
    pub fn job_store(&self) -> JobStoreServiceClient<Channel> {
        JobStoreServiceClient::new(channel(&self.job_store_url))
    }

    /// Submits a job and returns it.
    pub async fn submit(&self, request: v1::SubmitJobRequest) -> anyhow::Result<v1::Job> {
        let response = self.jobs().submit_job(request).await?;
        response.into_inner().job.context("no job in the reply")
    }

    /// Watches a job to its end and returns every event.
    pub async fn watch(&self, job_id: &str, limit: Duration) -> anyhow::Result<Vec<v1::Job>> {
        let mut stream = self
            .jobs()
            .watch_job(v1::WatchJobRequest {
                job_id: job_id.to_owned(),
            })
            .await?
            .into_inner();
        let mut events = Vec::new();
        tokio::time::timeout(limit, async {
            while let Some(event) = stream.message().await? {
                events.push(event.job.context("event without job")?);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| format!("job {job_id} not finished within {limit:?}: {events:?}"))??;
        Ok(events)
    }

    /// Waits for a job's terminal state.
    pub async fn finished(&self, job_id: &str, limit: Duration) -> anyhow::Result<v1::Job> {
        let events = self.watch(job_id, limit).await?;
        let last = events.last().cloned().context("no events")?;
        if !last.state().is_terminal() {
            bail!("watch of {job_id} ended before a terminal state: {last:?}");
        }
        Ok(last)
    }

    /// Stops the dispatcher (gracefully: its workers' attempts are re-queued and
    /// their streams end), then starts a new one on the same address; workers
    /// reconnect by themselves.
    pub async fn restart_dispatcher(&mut self) -> anyhow::Result<()> {
        Ok(self.inner.restart_dispatcher().await?)
    }

    /// Stops every service (edge first), then drops the database and the stream.
    pub async fn stop(self) {
        let Mesh {
            inner,
            database,
            nats,
            key_file,
            mut leftovers,
            ..
        } = self;
        if let Err(error) = inner.stop().await {
            tracing::warn!(%error, "job-store ended with an error");
        }
        cleanup(&database, &nats).await;
        let _ = std::fs::remove_file(&key_file);
        leftovers.removed = true;
    }
}

/// Drops a mesh's database and its stream.
async fn cleanup(database: &str, nats: &NatsConfig) {
    if let Ok((client, connection)) = tokio_postgres::connect(
        &format!("{}/postgres", postgres_server()),
        tokio_postgres::NoTls,
    )
    .await
    {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                database
            ))
            .await;
    }
    if let Ok(client) = async_nats::connect(&nats.url).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(nats.stream_name()).await;
    }
}

fn channel(url: &str) -> Channel {
    jobmesh_runtime::client::streaming_channel(url).expect("a valid loopback url")
}

/// Whether `state` is `expected`, for readable assertions.
pub fn state_of(job: &v1::Job) -> JobState {
    job.state()
}

/// Compares `actual` with the golden file `tests/golden/<name>`; with
/// `UPDATE_GOLDEN=1` in the environment, rewrites the file instead.
pub fn golden(name: &str, actual: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "golden file {} missing; run the test with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    })?;
    if expected != actual {
        bail!(
            "{} differs from the golden file (UPDATE_GOLDEN=1 rewrites it after review)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
    Ok(())
}

/// `value` with run-specific fields (ids, times, worker ids) replaced, as pretty
/// JSON, for golden files.
pub fn normalised(value: &serde_json::Value) -> String {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let volatile = matches!(key.as_str(), "id" | "workerId" | "nextPageToken")
                        || key.ends_with("Time");
                    if volatile && v.as_str().is_some_and(|s| !s.is_empty()) {
                        *v = serde_json::Value::String(format!("<{key}>"));
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = value.clone();
    walk(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}
