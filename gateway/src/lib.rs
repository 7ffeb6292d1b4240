//! jobmesh gateway: the public edge. Serves `jobmesh.v1.JobService` and
//! `jobmesh.v1.TaskService` by calling job-store and the dispatcher over gRPC,
//! validates every request, and serves `grpc.health.v1.Health` and server
//! reflection (v1 and v1alpha, for grpcurl 1.8). It never touches PostgreSQL or
//! NATS.

mod config;
mod connections;
mod error;
mod grpc;
mod limits;
mod pool;
mod rest;
mod ui;
mod validate;

use jobmesh_proto::internal::dispatcher_service_client::DispatcherServiceClient;
use jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient;
use jobmesh_proto::v1::job_service_server::JobServiceServer;
use jobmesh_proto::v1::task_service_server::TaskServiceServer;
use jobmesh_runtime::grpc::MAX_MESSAGE_BYTES;
use jobmesh_runtime::trace::services::GATEWAY;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use connections::ConnectionConfig;

/// Largest request the gateway reads (gRPC message or REST body): the largest
/// valid request, a submission with 256 KiB of args and 64 labels, is well
/// under it, and a larger one is refused from its length alone, before it is
/// read (replies may be up to [`MAX_MESSAGE_BYTES`]).
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{service} url {url:?}: {source}")]
    Url {
        service: &'static str,
        url: String,
        source: tonic::transport::Error,
    },
    #[error("authentication")]
    Auth(#[from] jobmesh_auth::SetupError),
    #[error("metrics")]
    Metrics(#[source] std::io::Error),
    #[error("REST routes: {0}")]
    Rest(String),
    #[error("{0}")]
    Config(String),
    #[error("reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the gateway on an already-bound listener until `shutdown` is cancelled;
/// in-flight calls finish before it returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let verifier = config.auth.verifier()?;
    config.auth.spawn_key_reload(verifier.as_ref(), &shutdown);
    let calls = || {
        limits::Shares::new(
            "calls in flight",
            ("--max-inflight", "--max-inflight-per-tenant"),
            config.max_inflight,
            config.max_inflight_per_tenant,
        )
    };
    let streams = limits::Shares::new(
        "open streams",
        ("--max-streams", "--max-streams-per-tenant"),
        config.max_streams,
        config.max_streams_per_tenant,
    );
    // REST bodies are read (and their reads bounded) before the call reaches the
    // in-flight cap, so the reads have shares of their own, of the same size.
    let ui = ui::Settings::new(config.ui_trace_url.as_deref()).map_err(RunError::Config)?;
    let shim = rest::Shim::new(&PUBLIC_SERVICES, calls())
        .map_err(|e| RunError::Rest(e.to_string()))?
        .with_ui(ui)
        .guarded(
            jobmesh_auth::Authenticator::new(verifier.clone()),
            config.body_timeout(),
        );
    if verifier.is_none() {
        tracing::warn!(
            "AUTHENTICATION IS OFF (--insecure-no-auth): every caller is tenant \"default\" with every scope; never expose this gateway"
        );
    }
    let url_error = |service, url: &str| {
        let url = url.to_owned();
        move |source| RunError::Url {
            service,
            url,
            source,
        }
    };
    let job_store = jobmesh_runtime::client::channel(&config.job_store_url)
        .map_err(url_error("job-store", &config.job_store_url))?
        .caller(GATEWAY);
    let job_store_streaming = pool::StreamPool::new(&config.job_store_url, config.max_streams)
        .map_err(url_error("job-store", &config.job_store_url))?;
    let dispatcher = jobmesh_runtime::client::channel(&config.dispatcher_url)
        .map_err(url_error("dispatcher", &config.dispatcher_url))?
        .caller(GATEWAY);
    let gateway = grpc::Gateway {
        job_store: JobStoreServiceClient::new(job_store)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        job_store_streaming,
        dispatcher: DispatcherServiceClient::new(dispatcher),
        shutdown: shutdown.clone(),
        auth: jobmesh_auth::Authenticator::new(verifier.clone()),
        tenant_claim: config.auth.auth_tenant_claim.clone(),
        submits: std::sync::Arc::new(limits::RateLimiter::new(
            config.submit_rate,
            config.submit_burst,
        )),
    };

    let host = jobmesh_runtime::host::Host::new(
        "gateway",
        &PUBLIC_SERVICES,
        &config.shutdown,
        shutdown.clone(),
    )
    .await;
    // SERVING only while job-store answers (nothing works without it).
    host.follow_health(vec![jobmesh_runtime::health::grpc_service(
        "job-store",
        jobmesh_runtime::client::channel(&config.job_store_url)
            .map_err(url_error("job-store", &config.job_store_url))?,
    )]);
    host.serve_metrics(
        jobmesh_runtime::metrics::bind(&config.metrics)
            .await
            .map_err(RunError::Metrics)?,
    );
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let jobs = JobServiceServer::new(gateway.clone())
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let tasks = TaskServiceServer::new(gateway)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let address = listener.local_addr().ok();
    tracing::info!(?address, job_store = %config.job_store_url, dispatcher = %config.dispatcher_url, "gateway serving");
    // The stack and why each layer sits where it does: `jobmesh_runtime::server`.
    let router = config
        .connections
        .apply(jobmesh_runtime::server::builder())
        .accept_http1(true)
        .layer(jobmesh_runtime::server::edge(
            connections::CountLayer,
            rest::RestLayer::new(shim),
            limits::InflightLayer::new(
                calls(),
                streams,
                jobmesh_auth::Authenticator::new(verifier),
                config.body_timeout(),
            ),
        ))
        .add_service(host.health_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(tasks);
    let incoming = host.severable(connections::incoming(listener, config.connections.clone()));
    host.serve(|stop| router.serve_with_incoming_shutdown(incoming, stop))
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The public services, served over gRPC and (for their annotated RPCs) REST.
const PUBLIC_SERVICES: [&str; 2] = [
    jobmesh_proto::service_names::JOB_SERVICE,
    jobmesh_proto::service_names::TASK_SERVICE,
];

/// The OpenAPI document the gateway serves at `/openapi.json`.
pub fn openapi_document() -> Result<String, RunError> {
    let pool = prost_reflect::DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| RunError::Rest(e.to_string()))?;
    let table = rest::routes::Table::build(&pool, &PUBLIC_SERVICES)
        .map_err(|e| RunError::Rest(e.to_string()))?;
    Ok(rest::openapi::document(&table))
}

/// Reflection over the services the gateway serves, and only those: the descriptor
/// set also holds the internal API, which is not served here.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jobmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So that grpcurl and other clients can show the google.rpc error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(jobmesh_proto::service_names::JOB_SERVICE)
        .with_service_name(jobmesh_proto::service_names::TASK_SERVICE)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}
