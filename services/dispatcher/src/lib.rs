//! jobmesh dispatcher: JetStream consumers (one durable pull consumer per task),
//! leases of queued attempts to connected workers with free slots, lease renewal,
//! delivery of cancellations, and the `WorkerService/Connect` sessions. It never
//! writes PostgreSQL: every change goes through job-store.

mod config;
mod consumer;
mod error;
mod grpc;
mod keeper;
mod metrics;
mod registry;
mod session;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use jobmesh_auth::{Authenticator, scope};
use jobmesh_proto::internal::dispatcher_service_server::DispatcherServiceServer;
use jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient;
use jobmesh_proto::v1::worker_service_server::WorkerServiceServer;
use jobmesh_runtime::client::Channel;
use jobmesh_runtime::grpc::{MAX_MESSAGE_BYTES, incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    #[error("worker authentication")]
    Auth(#[from] jobmesh_auth::SetupError),
    #[error("metrics")]
    Metrics(#[source] std::io::Error),
    #[error("grpc server")]
    Serve(#[from] tonic::transport::Error),
}

/// Most attempts whose trace context a dispatcher keeps.
const MAX_TRACED_ATTEMPTS: usize = 100_000;

/// The dispatcher itself, as its parts (consumers, worker sessions, the lease
/// keeper, its RPCs) share it: its settings, the registry of connected workers,
/// its NATS and job-store connections, the tasks it runs, the consumers it
/// started and the trace contexts of the attempts it delivered.
pub(crate) struct Dispatcher {
    config: Config,
    registry: registry::Registry,
    nats: async_nats::Client,
    jetstream: jetstream::Context,
    job_store: JobStoreServiceClient<Channel>,
    tracker: TaskTracker,
    consumers: Mutex<HashSet<String>>,
    /// Trace context of each attempt this dispatcher delivered, for the calls it
    /// makes on the attempt's behalf (its outcome) to join the job's trace.
    traces: Mutex<std::collections::HashMap<(String, i32), opentelemetry::Context>>,
    /// Cancelled when the dispatcher starts to shut down.
    shutdown: CancellationToken,
}

impl Dispatcher {
    fn job_store(&self) -> JobStoreServiceClient<Channel> {
        self.job_store.clone()
    }

    /// Remembers the trace context of a delivered attempt (bounded: the map is
    /// emptied if it ever holds more than any set of workers could run).
    fn remember_trace(&self, job_id: &str, attempt: i32, context: opentelemetry::Context) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        if traces.len() >= MAX_TRACED_ATTEMPTS {
            traces.clear();
        }
        traces.insert((job_id.to_owned(), attempt), context);
    }

    /// The trace context of an attempt (empty if unknown).
    fn trace_of(&self, job_id: &str, attempt: i32) -> opentelemetry::Context {
        self.traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(job_id.to_owned(), attempt))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets an attempt's trace context once its outcome is recorded.
    fn forget_trace(&self, job_id: &str, attempt: i32) {
        self.traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(job_id.to_owned(), attempt));
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
    let worker_verifier = config.auth.verifier()?;
    config
        .auth
        .spawn_key_reload(worker_verifier.as_ref(), &shutdown);
    let metrics_listener = jobmesh_runtime::metrics::bind(&config.metrics)
        .await
        .map_err(RunError::Metrics)?;
    if worker_verifier.is_none() {
        tracing::warn!(
            "worker authentication is OFF (--insecure-no-auth): any client can connect as a worker"
        );
    }
    let nats = config
        .nats
        .connect("jobmesh-dispatcher")
        .await
        .map_err(|e| RunError::Nats {
            url: config.nats.redacted_url(),
            message: e.to_string(),
        })?;
    let jetstream = jetstream::new(nats.clone());
    let channel = jobmesh_runtime::client::channel(&config.job_store_url)
        .map_err(|source| RunError::JobStoreUrl {
            url: config.job_store_url.clone(),
            source,
        })?
        .caller(jobmesh_runtime::trace::services::DISPATCHER);
    let job_store = JobStoreServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let host = jobmesh_runtime::host::Host::new(
        "dispatcher",
        &[
            jobmesh_proto::service_names::WORKER_SERVICE,
            jobmesh_proto::service_names::DISPATCHER_SERVICE,
        ],
        &config.shutdown,
        shutdown.clone(),
    )
    .await;
    // SERVING only while NATS and job-store answer.
    let store_probe =
        jobmesh_runtime::client::channel(&config.job_store_url).map_err(|source| {
            RunError::JobStoreUrl {
                url: config.job_store_url.clone(),
                source,
            }
        })?;
    let ctx = Arc::new(Dispatcher {
        config,
        registry: registry::Registry::default(),
        nats: nats.clone(),
        jetstream,
        job_store,
        tracker: host.tracker(),
        consumers: Mutex::new(HashSet::new()),
        traces: Mutex::new(std::collections::HashMap::new()),
        shutdown: shutdown.clone(),
    });
    host.spawn(keeper::renew_leases(Arc::clone(&ctx), shutdown.clone()));
    host.spawn(keeper::cancellations(Arc::clone(&ctx), shutdown.clone()));
    host.spawn(metrics::sample(Arc::clone(&ctx), shutdown.clone()));
    host.serve_metrics(metrics_listener);
    host.follow_health(vec![
        jobmesh_runtime::health::nats(ctx.nats.clone()),
        jobmesh_runtime::health::grpc_service("job-store", store_probe),
    ]);
    let workers = WorkerServiceServer::new(grpc::WorkerGrpc {
        ctx: Arc::clone(&ctx),
        auth: Authenticator::new(worker_verifier).requiring(scope::WORKER),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let internal = DispatcherServiceServer::new(grpc::DispatcherGrpc {
        ctx: Arc::clone(&ctx),
    });
    let address = listener.local_addr().ok();
    tracing::info!(?address, job_store = %ctx.config.job_store_url, nats = %ctx.config.nats.redacted_url(), "dispatcher serving");
    let router = jobmesh_runtime::server::internal(&ctx.config.limits)
        .add_service(host.health_service())
        .add_service(workers)
        .add_service(internal);
    let incoming = host.severable(incoming(listener));
    let result = host
        .serve(|stop| router.serve_with_incoming_shutdown(incoming, stop))
        .await;
    let _ = nats.flush().await;
    tracing::info!(sessions = ctx.registry.sessions(), "dispatcher stopped");
    result.map_err(RunError::from)
}
