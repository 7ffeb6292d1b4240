//! jobmesh job-store: the single writer of job state. It owns the PostgreSQL
//! tables, every state transition (fenced by `(job_id, attempt)`), the outbox that
//! publishes runnable attempts to JetStream, the lease sweeper, and the job event
//! stream that watchers follow.

mod batch;
mod config;
mod convert;
mod db;
mod error;
mod events;
mod feeds;
mod grpc;
mod logs;
mod metrics;
mod model;
mod outbox;
mod page;
mod progress;
mod resync;
mod store;
mod sweeper;

use std::sync::Arc;

use jobmesh_proto::internal::job_store_service_server::JobStoreServiceServer;
use jobmesh_runtime::grpc::{MAX_MESSAGE_BYTES, incoming};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use db::{SetupError, redact};

/// Why job-store could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] SetupError),
    #[error("nats at {url}: {message}")]
    Nats { url: String, message: String },
    #[error("metrics")]
    Metrics(#[source] std::io::Error),
    #[error("grpc server")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs job-store on an already-bound listener until `shutdown` is cancelled, then
/// stops accepting calls, lets background loops finish their pass, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics_listener = jobmesh_runtime::metrics::bind(&config.metrics)
        .await
        .map_err(RunError::Metrics)?;
    let pool = db::connect(&config.database_url, config.database_pool_size).await?;
    let nats_error = |message: String| RunError::Nats {
        url: config.nats.redacted_url(),
        message,
    };
    let client = config
        .nats
        .connect("jobmesh-job-store")
        .await
        .map_err(|e| nats_error(e.to_string()))?;
    // The stream is created by the outbox relay, retried until NATS answers:
    // job-store accepts jobs while NATS is down (they wait in the outbox).
    let jetstream = async_nats::jetstream::new(client.clone());

    let wakeup = Arc::new(Notify::new());
    let events = events::Events::new(client.clone(), config.nats.clone());
    let logs = logs::Logs::new(pool.clone(), events.clone(), config.max_log_bytes_per_job);
    let store = store::Store::new(
        pool.clone(),
        events,
        Arc::clone(&wakeup),
        config.progress_interval(),
    );

    let host = jobmesh_runtime::host::Host::new(
        "job-store",
        &[jobmesh_proto::service_names::JOB_STORE_SERVICE],
        &config.shutdown,
        shutdown.clone(),
    )
    .await;
    let background = host.background();
    host.spawn(
        outbox::Relay {
            pool: pool.clone(),
            jetstream,
            nats: config.nats.clone(),
            wakeup,
            poll: config.outbox_poll(),
        }
        .run(background.clone()),
    );
    host.spawn(sweeper::run(
        store.clone(),
        config.sweep_interval(),
        config.cancel_grace(),
        background.clone(),
    ));
    host.spawn(metrics::sample(pool.clone(), background.clone()));
    host.spawn(progress::write(
        store.clone(),
        config.progress_interval(),
        background.clone(),
    ));
    host.spawn(logs::retention(
        logs.clone(),
        config.log_retention,
        background.clone(),
    ));
    // SERVING while PostgreSQL answers. NATS is reported but not required: jobs
    // are accepted into the outbox while it is away.
    let probe_pool = pool.clone();
    host.follow_health(vec![
        jobmesh_runtime::health::Dependency::new("postgres", move || {
            let pool = probe_pool.clone();
            Box::pin(async move {
                match pool.get().await {
                    Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
                    Err(_) => false,
                }
            })
        }),
        jobmesh_runtime::health::nats(client.clone()).optional(),
    ]);
    host.serve_metrics(metrics_listener);
    let writes = batch::Writes::start(&store, &background);
    let resync = resync::Resync::default();
    host.spawn(resync.clone().run(store.clone(), background.clone()));
    let service = JobStoreServiceServer::new(grpc::JobStoreGrpc {
        writes,
        store,
        logs,
        resync,
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let address = listener.local_addr().ok();
    tracing::info!(?address, database = %redact(&config.database_url), nats = %config.nats.redacted_url(), "job-store serving");
    let router = jobmesh_runtime::server::internal(&config.limits)
        .add_service(host.health_service())
        .add_service(service);
    let incoming = host.severable(incoming(listener));
    let result = host
        .serve(|stop| router.serve_with_incoming_shutdown(incoming, stop))
        .await;
    if let Err(error) = client.flush().await {
        tracing::debug!(%error, "final nats flush failed");
    }
    tracing::info!("job-store stopped");
    result.map_err(RunError::from)
}
