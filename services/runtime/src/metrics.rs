//! Prometheus metrics: one recorder per process (the `metrics` facade with the
//! Prometheus exporter), served as text at `GET /metrics` on `--metrics-listen`,
//! and the gRPC server and client metrics of every service in the
//! go-grpc-prometheus style (`grpc_{server,client}_started_total`, `_handled_total`,
//! `_msg_received_total`, `_msg_sent_total`, `_handling_seconds`, each labelled
//! with `grpc_type`, `grpc_service` and `grpc_method`), recorded by one tower
//! layer on the server and by [`MeteredChannel`] on the client.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt as _};
use http_body::Frame;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Most distinct `task` label values a process records. Task names come from
/// callers; the first this many get their own series, later ones share
/// `task="_other"`, so no caller can grow the series (and the memory behind
/// them) without bound by inventing task names.
pub const MAX_TASK_LABELS: usize = 1000;

/// The `task` label to record `task` under (see [`MAX_TASK_LABELS`]).
pub fn task_label(task: &str) -> String {
    static SEEN: OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if seen.contains(task) {
        return task.to_owned();
    }
    if seen.len() < MAX_TASK_LABELS {
        seen.insert(task.to_owned());
        return task.to_owned();
    }
    OTHER_TASKS.to_owned()
}

/// The `task` label of the tasks beyond [`MAX_TASK_LABELS`].
pub const OTHER_TASKS: &str = "_other";

/// Where a service serves `/metrics`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MetricsConfig {
    /// Address on which to serve Prometheus metrics at `/metrics` (e.g.
    /// `0.0.0.0:9464`); none by default.
    #[arg(long, env = "JOBMESH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Buckets of every histogram, in seconds: 1 ms to 1 h.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` when another recorder
/// was installed first (then nothing of ours is recorded).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// Help text of every metric jobmesh records (promtool wants it).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_started_total",
        "gRPC calls started on the server"
    );
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls completed on the server, by status code"
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "time from a call's start to its end on the server (a stream's whole life)"
    );
    describe_counter!(
        "grpc_server_msg_received_total",
        "gRPC messages received by the server (requests; a stream's every message)"
    );
    describe_counter!(
        "grpc_server_msg_sent_total",
        "gRPC messages sent by the server (responses; a stream's every message)"
    );
    describe_counter!(
        "grpc_client_started_total",
        "gRPC calls started by this service as a client"
    );
    describe_counter!(
        "grpc_client_msg_sent_total",
        "gRPC messages this service sent as a client"
    );
    describe_counter!(
        "grpc_client_msg_received_total",
        "gRPC messages this service received as a client"
    );
    describe_counter!(
        "grpc_client_handled_total",
        "gRPC calls this service made that completed, by status code"
    );
    describe_histogram!(
        "grpc_client_handling_seconds",
        Unit::Seconds,
        "time from a client call's start to its end (a stream's whole life)"
    );
    describe_counter!(
        "jobmesh_jobs_submitted_total",
        "jobs created (idempotent resubmissions not counted), by task"
    );
    describe_counter!(
        "jobmesh_jobs_finished_total",
        "jobs that reached a terminal state, by task and state"
    );
    describe_counter!(
        "jobmesh_job_retries_total",
        "attempts queued again after a retryable failure or a lost lease, by task"
    );
    describe_counter!(
        "jobmesh_job_cancellations_total",
        "jobs that ended CANCELLED, by task"
    );
    describe_counter!(
        "jobmesh_stale_reports_total",
        "reports or leases refused because their attempt is no longer current, by kind"
    );
    describe_histogram!(
        "jobmesh_job_queue_wait_seconds",
        Unit::Seconds,
        "time from submission (or schedule time) to the start of the first attempt, by task"
    );
    describe_histogram!(
        "jobmesh_job_run_seconds",
        Unit::Seconds,
        "time from a job's first start to its end, by task and state"
    );
    describe_gauge!(
        "jobmesh_gateway_connections_open",
        "connections open on the gateway's listener"
    );
    describe_counter!(
        "jobmesh_gateway_connections_refused_total",
        "connections the gateway closed at once, over --max-connections (limit=\"total\") or --max-connections-per-peer (limit=\"peer\")"
    );
    describe_counter!(
        "jobmesh_gateway_connections_idle_closed_total",
        "connections the gateway closed after --idle-timeout-ms with no request open"
    );
    describe_gauge!(
        "jobmesh_outbox_rows",
        "committed jobs not yet published to JetStream"
    );
    describe_gauge!(
        "jobmesh_outbox_lag_seconds",
        "age of the oldest committed job not yet published to JetStream"
    );
    describe_gauge!(
        "jobmesh_postgres_pool_connections",
        "PostgreSQL connections of job-store's pool, by state (open, idle, max)"
    );
    describe_gauge!(
        "jobmesh_postgres_pool_waiting",
        "requests waiting for a PostgreSQL connection"
    );
    describe_counter!(
        "jobmesh_worker_reports_refused_total",
        "worker reports the dispatcher dropped: invalid (answered with refused) or about an attempt the worker does not hold (answered with a cancellation)"
    );
    describe_gauge!(
        "jobmesh_workers_connected",
        "workers connected to this dispatcher that offer a task, by task"
    );
    describe_gauge!(
        "jobmesh_worker_slots_free",
        "free slots of the connected workers, by task"
    );
    describe_gauge!(
        "jobmesh_jetstream_pending",
        "messages waiting in JetStream for a task (the backlog an autoscaler scales on)"
    );
    describe_counter!(
        "jobmesh_worker_attempts_total",
        "attempts a worker ran, by task and outcome (succeeded, failed, timed_out, cancelled, panicked)"
    );
    describe_gauge!(
        "jobmesh_dependency_up",
        "whether a service reaches a dependency (1) or not (0), by dependency"
    );
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let _ = handle();
    let upkeep = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Some(handle) = handle() {
                            handle.run_upkeep();
                        }
                    }
                }
            }
        })
    };
    tracing::info!(address = ?listener.local_addr().ok(), "metrics serving at /metrics");
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let response = if request.uri().path() == "/metrics" {
                        let mut response =
                            http::Response::new(http_body_util::Full::new(Bytes::from(render())));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        response
                    } else {
                        let mut response = http::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"not found; metrics are at /metrics\n"),
                        ));
                        *response.status_mut() = http::StatusCode::NOT_FOUND;
                        response
                    };
                    Ok::<_, Infallible>(response)
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
        });
    }
    upkeep.abort();
}

/// Binds `config.metrics_listen`, if set (before slow start-up work, so a bad
/// address stops the service at once).
pub async fn bind(config: &MetricsConfig) -> std::io::Result<Option<TcpListener>> {
    let Some(address) = &config.metrics_listen else {
        return Ok(None);
    };
    TcpListener::bind(address).await.map(Some).map_err(|e| {
        std::io::Error::new(e.kind(), format!("metrics listen address {address}: {e}"))
    })
}

/// Records the gRPC server metrics of every call (gRPC requests only: REST calls
/// are recorded as the gRPC calls the shim makes for them).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        let _ = handle();
        GrpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

use crate::grpc::{HttpRequest, HttpResponse};

impl<S> tower::Service<HttpRequest> for GrpcMetrics<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let mut inner = crate::grpc::take_ready(&mut self.inner);
        if !crate::grpc::is_grpc(request.headers()) {
            return inner.call(request).boxed();
        }
        let labels = Method::of(request.uri().path());
        labels.started(Side::Server).increment(1);
        let request = Messages::count_in(request, labels.requests(Side::Server));
        // The server span of the call, a child of the caller's `traceparent`.
        // Only the public job and task APIs start traces; other calls are traced
        // only inside one (an internal call on a job's behalf). Health probes,
        // reflection, lease renewals and worker sessions would otherwise bury the
        // jobs' traces under their own.
        let parent = crate::trace::from_headers(request.headers());
        let traced = !labels.service.starts_with("grpc.")
            && (crate::trace::has_span(&parent) || starts_traces(&labels.service));
        let span = if traced {
            let transcoded = request
                .extensions()
                .get::<crate::trace::Transcoded>()
                .is_some();
            crate::trace::server_span(&labels.service, &labels.method, parent, transcoded)
        } else {
            tracing::Span::none()
        };
        let started = Instant::now();
        let call_span = span.clone();
        async move {
            let response = inner.call(request).instrument(call_span).await?;
            // A trailers-only answer (an error before any message) has its code in
            // the headers; otherwise it comes in the trailers at the end.
            Ok(MeteredBody::wrap(
                Side::Server,
                response,
                labels,
                started,
                span,
            ))
        }
        .boxed()
    }
}

/// One gRPC method's labels and metric handles, made once per process: a call
/// costs one map lookup and a few atomic increments, and the label values are
/// bounded by the methods jobmesh serves (a path it does not serve is labelled
/// `unknown`, so no caller can grow the series without bound).
struct Method {
    service: String,
    method: String,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    kind: &'static str,
    server: SideMetrics,
    client: SideMetrics,
}

/// The handles of one side of a method, each registered on first use (a
/// service shows only the metrics of the calls it serves or makes).
#[derive(Default)]
struct SideMetrics {
    started: OnceLock<metrics::Counter>,
    requests: OnceLock<metrics::Counter>,
    responses: OnceLock<metrics::Counter>,
    handled: [OnceLock<metrics::Counter>; 17],
    seconds: OnceLock<metrics::Histogram>,
}

impl Method {
    fn new(service: &str, method: &str, kind: &'static str) -> Self {
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            kind,
            server: SideMetrics::default(),
            client: SideMetrics::default(),
        }
    }

    /// The method called at `path` (`/package.Service/Method`).
    fn of(path: &str) -> &'static Method {
        static METHODS: OnceLock<std::collections::HashMap<String, Method>> = OnceLock::new();
        static UNKNOWN: OnceLock<Method> = OnceLock::new();
        METHODS
            .get_or_init(known_methods)
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| UNKNOWN.get_or_init(|| Method::new("unknown", "unknown", "unary")))
    }

    fn side(&self, side: Side) -> &SideMetrics {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }

    fn counter<'a>(
        &self,
        cell: &'a OnceLock<metrics::Counter>,
        name: &'static str,
    ) -> &'a metrics::Counter {
        cell.get_or_init(|| {
            metrics::counter!(
                name,
                "grpc_type" => self.kind,
                "grpc_service" => self.service.clone(),
                "grpc_method" => self.method.clone()
            )
        })
    }

    fn started(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_started_total",
            Side::Client => "grpc_client_started_total",
        };
        self.counter(&self.side(side).started, name)
    }

    /// Messages of the request: received by a server, sent by a client.
    fn requests(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_msg_received_total",
            Side::Client => "grpc_client_msg_sent_total",
        };
        self.counter(&self.side(side).requests, name)
    }

    /// Messages of the response: sent by a server, received by a client.
    fn responses(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_msg_sent_total",
            Side::Client => "grpc_client_msg_received_total",
        };
        self.counter(&self.side(side).responses, name)
    }

    /// Records the end of a call with status `code` (its number) after `elapsed`.
    fn handled(&self, side: Side, code: usize, elapsed: Duration) {
        let (handled, seconds) = match side {
            Side::Server => ("grpc_server_handled_total", "grpc_server_handling_seconds"),
            Side::Client => ("grpc_client_handled_total", "grpc_client_handling_seconds"),
        };
        let metrics = self.side(side);
        let code = code.min(metrics.handled.len() - 1);
        metrics.handled[code]
            .get_or_init(|| {
                metrics::counter!(
                    handled,
                    "grpc_type" => self.kind,
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone(),
                    "grpc_code" => CODE_NAMES[code]
                )
            })
            .increment(1);
        metrics
            .seconds
            .get_or_init(|| {
                metrics::histogram!(
                    seconds,
                    "grpc_type" => self.kind,
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone()
                )
            })
            .record(elapsed.as_secs_f64());
    }
}

/// Every method jobmesh serves or calls, with its go-grpc-prometheus `grpc_type`,
/// from the descriptors of its services plus health and reflection.
fn known_methods() -> std::collections::HashMap<String, Method> {
    use prost::Message as _;
    let mut methods = std::collections::HashMap::new();
    let set = prost_types::FileDescriptorSet::decode(jobmesh_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    for file in &set.file {
        for svc in &file.service {
            let service = format!("{}.{}", file.package(), svc.name());
            for m in &svc.method {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                methods.insert(
                    format!("{service}/{}", m.name()),
                    Method::new(&service, m.name(), kind),
                );
            }
        }
    }
    for (service, method, kind) in [
        ("grpc.health.v1.Health", "Check", "unary"),
        ("grpc.health.v1.Health", "Watch", "server_stream"),
        (
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
        (
            "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
    ] {
        methods.insert(
            format!("{service}/{method}"),
            Method::new(service, method, kind),
        );
    }
    methods
}

/// Counts the gRPC messages of a body from its data frames, however they are
/// split: each message is a 5-byte prefix (a compression flag and a big-endian
/// length) and that many bytes. A message counts when its prefix is complete.
#[derive(Debug, Default)]
struct Messages {
    /// Bytes of the current prefix seen so far (0 to 4).
    prefix: usize,
    length: [u8; 4],
    /// Bytes of the current message still to come.
    left: u64,
}

impl Messages {
    /// Feeds one data frame; returns how many messages started in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[n..];
                self.left -= n as u64;
                continue;
            }
            if self.prefix > 0 {
                self.length[self.prefix - 1] = data[0];
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == 5 {
                self.prefix = 0;
                self.left = u64::from(u32::from_be_bytes(self.length));
                started += 1;
            }
        }
        started
    }

    /// `request` with its body's messages counted on `counter`.
    fn count_in(request: HttpRequest, counter: &'static metrics::Counter) -> HttpRequest {
        let (parts, body) = request.into_parts();
        let counted = CountedBody {
            inner: body,
            messages: Self::default(),
            counter,
        };
        http::Request::from_parts(parts, tonic::body::Body::new(counted))
    }
}

/// A request body whose messages are counted as they pass.
struct CountedBody {
    inner: tonic::body::Body,
    messages: Messages,
    counter: &'static metrics::Counter,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let this = &mut *self;
            this.counter.increment(this.messages.feed(data));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Services whose calls are the roots of traces (the public API a user calls).
fn starts_traces(service: &str) -> bool {
    matches!(service, "jobmesh.v1.JobService" | "jobmesh.v1.TaskService")
}

/// The gRPC code names go-grpc-prometheus uses, by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The number of a `grpc-status` value; `Unknown` (2) for anything else.
fn code_number(code: &str) -> usize {
    code.parse::<usize>()
        .ok()
        .filter(|n| *n < CODE_NAMES.len())
        .unwrap_or(2)
}

/// Which end of a call a body belongs to.
#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    Client,
}

/// Whether a call that ended with `code` marks its span as an error (OpenTelemetry's
/// gRPC conventions): on the server only the codes that are its own fault
/// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) —
/// a NOT_FOUND or INVALID_ARGUMENT is the caller's, and Jaeger would show every
/// refused request as a failure; on the client every code but OK.
fn is_span_error(side: Side, code: usize) -> bool {
    match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// A channel to another jobmesh service that records the gRPC client metrics of
/// every call (`grpc_client_started_total`, `grpc_client_handled_total`,
/// `grpc_client_handling_seconds`) and, for a call made inside a trace, its
/// client span (on behalf of `caller`, a [`crate::trace::services`] name).
#[derive(Clone, Debug)]
pub struct MeteredChannel {
    channel: tonic::transport::Channel,
    /// The server's address (the request URIs hold only the path).
    server: http::Uri,
    caller: &'static str,
}

impl MeteredChannel {
    /// A channel to `server`, of a program using jobmesh (its client spans say
    /// `jobmesh-client`); a service names itself with [`Self::caller`].
    pub fn new(channel: tonic::transport::Channel, server: http::Uri) -> Self {
        let _ = handle();
        Self {
            channel,
            server,
            caller: "jobmesh-client",
        }
    }

    /// The channel of service `caller` (a [`crate::trace::services`] name), which
    /// its client spans name as theirs.
    pub fn caller(self, caller: &'static str) -> Self {
        Self { caller, ..self }
    }
}

impl tower::Service<HttpRequest> for MeteredChannel {
    type Response = HttpResponse;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, tonic::transport::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let labels = Method::of(request.uri().path());
        labels.started(Side::Client).increment(1);
        let span = crate::trace::client_span(
            self.caller,
            &labels.service,
            &labels.method,
            &self.server,
            request.headers_mut(),
        );
        let request = Messages::count_in(request, labels.requests(Side::Client));
        let started = Instant::now();
        let call = tower::Service::call(&mut self.channel, request);
        async move {
            match call.await {
                Ok(response) => Ok(MeteredBody::wrap(
                    Side::Client,
                    response,
                    labels,
                    started,
                    span,
                )),
                Err(error) => {
                    // No answer at all: the call failed as UNAVAILABLE.
                    let mut unanswered = MeteredBody {
                        side: Side::Client,
                        inner: tonic::body::Body::empty(),
                        messages: Messages::default(),
                        labels: Some(labels),
                        started,
                        code: None,
                        span,
                    };
                    unanswered.finish("14");
                    Err(error)
                }
            }
        }
        .boxed()
    }
}

/// A response body that records the call's outcome when it ends (or is dropped:
/// the client went away).
struct MeteredBody {
    side: Side,
    inner: tonic::body::Body,
    /// The response's messages (counted on the method's response counter).
    messages: Messages,
    labels: Option<&'static Method>,
    started: Instant,
    code: Option<String>,
    span: tracing::Span,
}

impl MeteredBody {
    /// Wraps a response of a call started at `started`; `code` is the status the
    /// response head already carries (a trailers-only answer), if any.
    fn wrap(
        side: Side,
        response: HttpResponse,
        labels: &'static Method,
        started: Instant,
        span: tracing::Span,
    ) -> HttpResponse {
        let (parts, body) = response.into_parts();
        let code = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let metered = Self {
            side,
            inner: body,
            messages: Messages::default(),
            labels: Some(labels),
            started,
            code,
            span,
        };
        http::Response::from_parts(parts, tonic::body::Body::new(metered))
    }

    fn finish(&mut self, code: &str) {
        if let Some(labels) = self.labels.take() {
            let number = code_number(code);
            self.span.record("rpc.grpc.status_code", number as i64);
            if is_span_error(self.side, number) {
                self.span.record("otel.status_code", "ERROR");
            }
            labels.handled(self.side, number, self.started.elapsed());
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let this = &mut *self;
                    let started = this.messages.feed(data);
                    if let Some(labels) = this.labels {
                        labels.responses(this.side).increment(started);
                    }
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("2")
                        .to_owned();
                    self.finish(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("2"),
            Poll::Ready(None) => {
                let code = self.code.clone().unwrap_or_else(|| "0".to_owned());
                self.finish(&code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.labels.is_some() {
            let code = self.code.clone().unwrap_or_else(|| "1".to_owned());
            self.finish(&code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_their_types_come_from_the_descriptors() {
        for (path, service, method, kind) in [
            (
                "/jobmesh.v1.JobService/SubmitJob",
                "jobmesh.v1.JobService",
                "SubmitJob",
                "unary",
            ),
            (
                "/jobmesh.v1.JobService/WatchJob",
                "jobmesh.v1.JobService",
                "WatchJob",
                "server_stream",
            ),
            (
                "/jobmesh.v1.WorkerService/Connect",
                "jobmesh.v1.WorkerService",
                "Connect",
                "bidi_stream",
            ),
            (
                "/jobmesh.internal.v1.JobStoreService/LeaseJob",
                "jobmesh.internal.v1.JobStoreService",
                "LeaseJob",
                "unary",
            ),
            (
                "/grpc.health.v1.Health/Watch",
                "grpc.health.v1.Health",
                "Watch",
                "server_stream",
            ),
            // Paths jobmesh does not serve share one label set, whatever a caller sends.
            ("/jobmesh.v1.JobService/Nope", "unknown", "unknown", "unary"),
            ("/x/y/z", "unknown", "unknown", "unary"),
        ] {
            let m = Method::of(path);
            assert_eq!(
                (m.service.as_str(), m.method.as_str(), m.kind),
                (service, method, kind),
                "{path}"
            );
        }
        assert!(std::ptr::eq(Method::of("/a/b"), Method::of("/c/d")));
    }

    #[test]
    fn task_labels_are_bounded() {
        for n in 0..MAX_TASK_LABELS {
            assert_eq!(task_label(&format!("t.{n}")), format!("t.{n}"));
        }
        assert_eq!(task_label("one.more"), OTHER_TASKS);
        assert_eq!(task_label("and.another"), OTHER_TASKS);
        assert_eq!(
            task_label("t.7"),
            "t.7",
            "a task seen before keeps its label"
        );
    }

    #[test]
    fn only_server_faults_mark_server_spans_as_errors() {
        for (code, server, client) in [
            (0, false, false),
            (3, false, true),
            (5, false, true),
            (7, false, true),
            (8, false, true),
            (9, false, true),
            (2, true, true),
            (4, true, true),
            (12, true, true),
            (13, true, true),
            (14, true, true),
            (15, true, true),
        ] {
            assert_eq!(is_span_error(Side::Server, code), server, "server {code}");
            assert_eq!(is_span_error(Side::Client, code), client, "client {code}");
        }
    }

    #[test]
    fn status_codes_have_their_names() {
        assert_eq!(CODE_NAMES[code_number("0")], "OK");
        assert_eq!(CODE_NAMES[code_number("8")], "ResourceExhausted");
        assert_eq!(CODE_NAMES[code_number("16")], "Unauthenticated");
        for odd in ["17", "x", "", "-1"] {
            assert_eq!(CODE_NAMES[code_number(odd)], "Unknown", "{odd:?}");
        }
    }

    #[test]
    fn messages_are_counted_however_frames_split_them() {
        // Three messages: 3 bytes, 0 bytes, 300 bytes.
        let mut body = Vec::new();
        for len in [3u32, 0, 300] {
            body.push(0);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, len as usize));
        }
        let whole = Messages::default().feed(&body);
        assert_eq!(whole, 3);
        for chunk in [1, 2, 4, 5, 6, 64] {
            let mut messages = Messages::default();
            let counted: u64 = body.chunks(chunk).map(|c| messages.feed(c)).sum();
            assert_eq!(counted, 3, "chunks of {chunk}");
        }
    }
}
