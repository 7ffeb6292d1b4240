//! The whole mesh in one process: job-store, the dispatcher, the gateway and
//! workers, each on a listener bound beforehand, started together and stopped in
//! reverse dependency order — the edge (gateway and workers) first, then the
//! dispatcher, job-store last, so nothing is left calling a service that is
//! gone. `jobmesh dev` runs it, and so does the test sandbox (`jobmesh-tests`).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long each group of services may take to stop before [`Mesh::stop`] goes
/// on without it.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The settings of each service. Their URLs of one another are the listeners'.
pub struct Plan {
    pub store: jobmesh_job_store::Config,
    pub dispatcher: jobmesh_dispatcher::Config,
    pub gateway: jobmesh_gateway::Config,
}

/// The listeners of the three servers, bound before anything starts (so a port
/// that is taken stops the start at once, and every URL is known).
pub struct Listeners {
    pub store: TcpListener,
    pub dispatcher: TcpListener,
    pub gateway: TcpListener,
}

impl Listeners {
    /// Binds the three addresses; the error names the one that failed.
    pub async fn bind(store: &str, dispatcher: &str, gateway: &str) -> Result<Self, BindError> {
        let bind = |address: &str, service: &'static str| {
            let address = address.to_owned();
            async move {
                TcpListener::bind(&address)
                    .await
                    .map_err(|source| BindError {
                        service,
                        address,
                        source,
                    })
            }
        };
        Ok(Self {
            store: bind(store, "job-store").await?,
            dispatcher: bind(dispatcher, "the dispatcher").await?,
            gateway: bind(gateway, "the gateway").await?,
        })
    }

    /// `http://` URLs of the three listeners.
    pub fn urls(&self) -> std::io::Result<Urls> {
        let url = |l: &TcpListener| l.local_addr().map(|a| format!("http://{a}"));
        Ok(Urls {
            store: url(&self.store)?,
            dispatcher: url(&self.dispatcher)?,
            gateway: url(&self.gateway)?,
        })
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for {service}")]
pub struct BindError {
    pub service: &'static str,
    pub address: String,
    #[source]
    pub source: std::io::Error,
}

/// Where the mesh's servers listen.
#[derive(Clone, Debug)]
pub struct Urls {
    pub store: String,
    pub dispatcher: String,
    pub gateway: String,
}

/// A running mesh.
pub struct Mesh {
    pub urls: Urls,
    /// Stops the gateway and the workers.
    edge: CancellationToken,
    /// The parent of each dispatcher's stop token.
    core: CancellationToken,
    store_stop: CancellationToken,
    store: Option<JoinHandle<Result<(), jobmesh_job_store::RunError>>>,
    dispatcher: Option<(CancellationToken, JoinHandle<()>)>,
    dispatcher_config: jobmesh_dispatcher::Config,
    /// The gateway and the workers.
    edge_tasks: Vec<JoinHandle<()>>,
}

impl Mesh {
    /// Starts job-store, the dispatcher and the gateway of `plan` on `listeners`
    /// (each service's URLs of the others are set from the listeners).
    pub fn start(mut plan: Plan, listeners: Listeners) -> std::io::Result<Self> {
        let urls = listeners.urls()?;
        plan.dispatcher.job_store_url = urls.store.clone();
        plan.gateway.job_store_url = urls.store.clone();
        plan.gateway.dispatcher_url = urls.dispatcher.clone();
        let edge = CancellationToken::new();
        let core = CancellationToken::new();
        let store_stop = CancellationToken::new();
        let store = tokio::spawn(jobmesh_job_store::run(
            plan.store,
            listeners.store,
            store_stop.clone(),
        ));
        let dispatcher_stop = core.child_token();
        let dispatcher = spawn_dispatcher(
            plan.dispatcher.clone(),
            listeners.dispatcher,
            dispatcher_stop.clone(),
        );
        let stop = edge.clone();
        let gateway = tokio::spawn(async move {
            if let Err(error) = jobmesh_gateway::run(plan.gateway, listeners.gateway, stop).await {
                tracing::error!(error = %error, "gateway failed");
            }
        });
        Ok(Self {
            urls,
            edge,
            core,
            store_stop,
            store: Some(store),
            dispatcher: Some((dispatcher_stop, dispatcher)),
            dispatcher_config: plan.dispatcher,
            edge_tasks: vec![gateway],
        })
    }

    /// Starts a worker (its dispatcher URL set to the mesh's) serving `handlers`,
    /// or the built-in tasks and its `--exec` ones; it stops with the edge.
    pub fn add_worker(
        &mut self,
        mut config: jobmesh_worker::Config,
        handlers: Option<jobmesh_worker::Handlers>,
    ) {
        config.dispatcher_url = self.urls.dispatcher.clone();
        let stop = self.edge.clone();
        self.edge_tasks.push(tokio::spawn(async move {
            let outcome = match handlers {
                Some(handlers) => jobmesh_worker::run_with(config, handlers, stop).await,
                None => jobmesh_worker::run(config, stop).await,
            };
            if let Err(error) = outcome {
                tracing::error!(error = %error, "worker failed");
            }
        }));
    }

    /// job-store's outcome, once it has ended by itself (it failed to start or
    /// stopped with an error); `None` while it runs.
    pub async fn store_ended(&mut self) -> Option<Result<(), StoreEnded>> {
        if !self.store.as_ref().is_some_and(JoinHandle::is_finished) {
            return None;
        }
        let task = self.store.take()?;
        Some(match task.await {
            Ok(result) => result.map_err(StoreEnded::Failed),
            Err(error) => Err(StoreEnded::Panicked(error.to_string())),
        })
    }

    /// Waits until job-store ends by itself (it never does while it is healthy).
    pub async fn store_exit(&mut self) -> Result<(), StoreEnded> {
        match self.store.as_mut() {
            Some(task) => {
                let outcome = task.await;
                self.store = None;
                match outcome {
                    Ok(result) => result.map_err(StoreEnded::Failed),
                    Err(error) => Err(StoreEnded::Panicked(error.to_string())),
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the dispatcher (gracefully: its workers' attempts are re-queued and
    /// their streams end), then starts a new one on the same address; workers
    /// reconnect by themselves.
    pub async fn restart_dispatcher(&mut self) -> Result<(), RestartError> {
        if let Some((stop, task)) = self.dispatcher.take() {
            stop.cancel();
            tokio::time::timeout(STOP_LIMIT, task)
                .await
                .map_err(|_| RestartError::Stop)?
                .map_err(|e| RestartError::Panicked(e.to_string()))?;
        }
        let address = self
            .urls
            .dispatcher
            .trim_start_matches("http://")
            .to_owned();
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| RestartError::Bind { address, source })?;
        let stop = self.core.child_token();
        let task = spawn_dispatcher(self.dispatcher_config.clone(), listener, stop.clone());
        self.dispatcher = Some((stop, task));
        Ok(())
    }

    /// Stops the mesh, edge first, job-store last; each group has [`STOP_LIMIT`].
    /// Returns job-store's outcome.
    pub async fn stop(mut self) -> Result<(), StoreEnded> {
        self.edge.cancel();
        let edge = futures_join(std::mem::take(&mut self.edge_tasks));
        if tokio::time::timeout(STOP_LIMIT, edge).await.is_err() {
            tracing::warn!("the gateway or a worker did not stop within 10s");
        }
        self.core.cancel();
        if let Some((_, task)) = self.dispatcher.take()
            && tokio::time::timeout(STOP_LIMIT, task).await.is_err()
        {
            tracing::warn!("the dispatcher did not stop within 10s");
        }
        self.store_stop.cancel();
        match self.store.take() {
            Some(task) => match tokio::time::timeout(STOP_LIMIT, task).await {
                Ok(Ok(result)) => result.map_err(StoreEnded::Failed),
                Ok(Err(error)) => Err(StoreEnded::Panicked(error.to_string())),
                Err(_) => Err(StoreEnded::Hung),
            },
            None => Ok(()),
        }
    }
}

/// Waits for every task, in turn.
async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

fn spawn_dispatcher(
    config: jobmesh_dispatcher::Config,
    listener: TcpListener,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = jobmesh_dispatcher::run(config, listener, stop).await {
            tracing::error!(error = %error, "dispatcher failed");
        }
    })
}

/// How job-store ended.
#[derive(Debug, thiserror::Error)]
pub enum StoreEnded {
    #[error(transparent)]
    Failed(jobmesh_job_store::RunError),
    #[error("job-store panicked: {0}")]
    Panicked(String),
    #[error("job-store did not stop within 10s")]
    Hung,
}

/// Why the dispatcher could not be restarted.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("the dispatcher did not stop within 10s")]
    Stop,
    #[error("the dispatcher panicked: {0}")]
    Panicked(String),
    #[error("re-binding the dispatcher on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Polls `check` every `every` until it says yes or `limit` has passed; returns
/// whether it said yes. The one polling loop of the dev mesh, the test sandbox
/// and the fault harness.
pub async fn wait_until<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() + every > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether the gateway at `url` answers a first-page `ListJobs` with `token`
/// within `limit` (so job-store is up and its database made).
pub async fn answers(url: &str, token: Option<&str>, limit: Duration) -> bool {
    let Ok(channel) = jobmesh_runtime::client::channel(url) else {
        return false;
    };
    let jobs = jobmesh_proto::v1::job_service_client::JobServiceClient::new(
        jobmesh_auth::with_token(channel, token),
    );
    wait_until(limit, Duration::from_millis(100), || {
        let mut jobs = jobs.clone();
        async move {
            jobs.list_jobs(jobmesh_proto::v1::ListJobsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await
}
