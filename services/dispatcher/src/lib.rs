//! jobmesh dispatcher: JetStream consumers (one durable pull consumer per task),
//! leases of queued attempts to connected workers with free slots, lease renewal,
//! delivery of cancellations, and the `WorkerService/Connect` sessions. It never
//! writes PostgreSQL: every change goes through job-store.

mod config;
mod consumer;
mod grpc;
mod keeper;
mod registry;
mod session;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use jobmesh_proto::internal::dispatcher_service_server::DispatcherServiceServer;
use jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient;
use jobmesh_proto::v1::worker_service_server::WorkerServiceServer;
use jobmesh_runtime::grpc::{MAX_MESSAGE_BYTES, incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

pub use config::Config;

/// Why the dispatcher could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("nats at {url}: {message}")]
    Nats { url: String, message: String },
    #[error("job-store url {url:?}: {source}")]
    JobStoreUrl {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the dispatcher's parts share.
pub(crate) struct Context {
    config: Config,
    registry: registry::Registry,
    nats: async_nats::Client,
    jetstream: jetstream::Context,
    job_store: JobStoreServiceClient<Channel>,
    tracker: TaskTracker,
    consumers: Mutex<HashSet<String>>,
    /// Cancelled when the dispatcher starts to shut down.
    shutdown: CancellationToken,
}

impl Context {
    fn job_store(&self) -> JobStoreServiceClient<Channel> {
        self.job_store.clone()
    }

    /// Starts the pull loop of every task not consumed yet.
    fn ensure_consumers(self: &Arc<Self>, tasks: &[String]) {
        let mut started = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        for task in tasks {
            if started.insert(task.clone()) {
                self.tracker.spawn(consumer::run(
                    task.clone(),
                    Arc::clone(self),
                    self.shutdown.clone(),
                ));
            }
        }
    }
}

/// Runs the dispatcher on an already-bound listener until `shutdown` is cancelled.
/// On shutdown it stops pulling, ends worker sessions (their attempts are
/// re-queued) and waits for in-flight deliveries.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let nats = config
        .nats
        .connect("jobmesh-dispatcher")
        .await
        .map_err(|e| RunError::Nats {
            url: config.nats.url.clone(),
            message: e.to_string(),
        })?;
    let jetstream = jetstream::new(nats.clone());
    let channel = jobmesh_runtime::grpc::channel(&config.job_store_url).map_err(|source| {
        RunError::JobStoreUrl {
            url: config.job_store_url.clone(),
            source,
        }
    })?;
    let job_store = JobStoreServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Context {
        config,
        registry: registry::Registry::default(),
        nats: nats.clone(),
        jetstream,
        job_store,
        tracker: tracker.clone(),
        consumers: Mutex::new(HashSet::new()),
        shutdown: shutdown.clone(),
    });
    tracker.spawn(keeper::renew_leases(Arc::clone(&ctx), shutdown.clone()));
    tracker.spawn(keeper::cancellations(Arc::clone(&ctx), shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<WorkerServiceServer<session::WorkerGrpc>>()
        .await;
    health
        .set_serving::<DispatcherServiceServer<grpc::DispatcherGrpc>>()
        .await;
    let workers = WorkerServiceServer::new(session::WorkerGrpc {
        ctx: Arc::clone(&ctx),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let internal = DispatcherServiceServer::new(grpc::DispatcherGrpc {
        ctx: Arc::clone(&ctx),
    });
    let address = listener.local_addr().ok();
    tracing::info!(?address, job_store = %ctx.config.job_store_url, nats = %ctx.config.nats.url, "dispatcher serving");
    let stopping = shutdown.clone();
    let result = jobmesh_runtime::grpc::server()
        .add_service(health_service)
        .add_service(workers)
        .add_service(internal)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            stopping.cancelled().await;
            health
                .set_not_serving::<WorkerServiceServer<session::WorkerGrpc>>()
                .await;
        })
        .await;
    tracker.close();
    tracker.wait().await;
    let _ = nats.flush().await;
    tracing::info!(sessions = ctx.registry.sessions(), "dispatcher stopped");
    result.map_err(RunError::from)
}
