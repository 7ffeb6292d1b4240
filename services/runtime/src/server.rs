//! How every jobmesh gRPC server is built: one set of settings ([`builder`]) and
//! one middleware stack, described here outermost first — a request passes the
//! layers top to bottom, its answer bottom to top.
//!
//! [`layers`] builds it for every server and [`edge`] for the gateway, which
//! adds the layers marked *gateway* around it:
//!
//! 1. *gateway* **connections**: counts each request as open on its connection,
//!    so idle connections can be closed. Outermost: it must see every request.
//! 2. *gateway* **REST**: a request that is not gRPC is transcoded and sent
//!    in-process to the layers below as a gRPC call (the REST call's HTTP server
//!    span is opened here). It sits outside span and metrics, unlike an HTTP
//!    proxy's inbound stack, so that a REST call is traced and counted as the
//!    gRPC call it becomes (one set of `grpc_server_*` series and one span
//!    shape for both ways in) and refused like one by the layers below (an
//!    overloaded REST caller gets a JSON 429, not a gRPC frame).
//! 3. **span** ([`crate::trace::layer::SpanLayer`]): the call's server span,
//!    around everything else the server does for the call, so that a refusal
//!    below is traced with the code the caller sees and the handler's work is
//!    inside the span.
//! 4. **metrics** ([`crate::metrics::GrpcMetricsLayer`]): the call's
//!    `grpc_server_*` series. Outside everything that may refuse a call, so
//!    refusals are counted with the code the caller finally sees.
//! 5. **errors** ([`decode_errors_are_invalid_argument`]): a request tonic cannot
//!    decode answers `INVALID_ARGUMENT`, not `INTERNAL`, and every error gets its
//!    `google.rpc` details ([`crate::errors`]), whoever made it: the admission
//!    layer below, tonic, a handler. Above admission so its refusals pass it too.
//! 6. **admission**, the in-flight cap and shedding: a call over the cap is
//!    refused at once (never queued, so an overload cannot build a backlog of
//!    calls whose callers gave up). On the gateway, *gateway* `InflightLayer`
//!    also authenticates, shares the cap between tenants and bounds open
//!    streams; the internal services use [`ShedLayer`], one cap for all
//!    callers, which also bounds how long a handler may take
//!    (`--call-timeout-ms`), whatever deadline the caller sent or did not send.
//!    Innermost, so that a call holds its place only while it is handled.
//!
//! Deadlines: tonic ends a call at the caller's `grpc-timeout`; internal calls
//! carry the deadline of the call they are made for ([`crate::grpc::forward`])
//! and at most [`crate::client::INTERNAL_CALL_TIMEOUT`] without one.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::transport::Server;

use tower::layer::util::{Identity, Stack};
use tower::util::MapResponseLayer;

use crate::call::{HttpRequest, HttpResponse, Inner, Intercept, Wrapped, is_grpc};
use crate::grpc::MAX_CONCURRENT_STREAMS;
use crate::metrics::GrpcMetricsLayer;
use crate::trace::layer::SpanLayer;

/// A server builder with the settings every service uses and no layers: HTTP/2
/// keepalive so that dead peers (a worker whose machine vanished) are noticed, and
/// a bound on concurrent streams per connection.
pub fn builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
}

/// The layers every server has, outermost first: span, metrics, errors, then
/// `admission` (layer 6: what decides whether a call is taken on at all).
pub type Layers<A> =
    Stack<A, Stack<MapResponseLayer<DecodeFix>, Stack<GrpcMetricsLayer, SpanLayer>>>;

/// The stack of a server whose admission layer is `admission` (see the module
/// documentation for each layer and why it sits where it does).
pub fn layers<A>(admission: A) -> Layers<A> {
    Stack::new(
        admission,
        Stack::new(
            MapResponseLayer::new(decode_errors_are_invalid_argument as DecodeFix),
            Stack::new(GrpcMetricsLayer, SpanLayer),
        ),
    )
}

/// The gateway's stack: `connections` and `rest` (its own layers 1 and 2)
/// outside [`Layers`].
pub type EdgeLayers<C, R, A> = Stack<Layers<A>, Stack<R, C>>;

/// See [`EdgeLayers`].
pub fn edge<C, R, A>(connections: C, rest: R, admission: A) -> EdgeLayers<C, R, A> {
    Stack::new(layers(admission), Stack::new(rest, connections))
}

/// The server of an internal service (job-store, the dispatcher): [`builder`]
/// with [`Layers`], its admission at most `limits.max_inflight` calls in flight
/// each answered within `limits.call_timeout_ms` ([`ShedLayer`]).
pub fn internal(limits: &LimitConfig) -> Server<Stack<Layers<ShedLayer>, Identity>> {
    builder().layer(layers(ShedLayer::new(
        limits.max_inflight,
        Duration::from_millis(limits.call_timeout_ms),
    )))
}

/// The response mapper of layer 5.
pub type DecodeFix = fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// tonic answers a request it cannot decode (bad wire format, nesting past prost's
/// recursion limit) with `INTERNAL`; the fault is the caller's, so the answer is
/// `INVALID_ARGUMENT`. Layer 5 of every server ([`layers`]).
///
/// It then gives every error its details ([`crate::errors::complete_response`]).
pub fn decode_errors_are_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let decode = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.starts_with("failed%20to%20decode"));
    if internal && decode {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    crate::errors::complete_response(response)
}

/// How much an internal service takes on at once, and for how long.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitConfig {
    /// Calls this service handles at once; a call beyond them is refused at once
    /// with UNAVAILABLE (and a RetryInfo), never queued.
    #[arg(long, env = "JOBMESH_MAX_INFLIGHT", default_value_t = 4096)]
    pub max_inflight: usize,
    /// Longest a call's handler may take to answer (a stream: to start) before
    /// the call ends with DEADLINE_EXCEEDED (in ms).
    #[arg(long, env = "JOBMESH_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub call_timeout_ms: u64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_inflight: 4096,
            call_timeout_ms: 30_000,
        }
    }
}

/// Layer 6 of an internal service: at most `max` gRPC calls in flight (from the
/// request to the response's head: a stream holds a place while its handler
/// starts it, not for its whole life); the next is refused at once. A handler
/// that has not answered within `timeout` ends its call with DEADLINE_EXCEEDED.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl ShedLayer {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            timeout,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Wrapped<ShedLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(self.clone(), inner)
    }
}

impl<S: Inner> Intercept<S> for ShedLayer {
    fn intercept(
        &self,
        mut inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, S::Error>> {
        if !is_grpc(request.headers()) {
            return inner.call(request).boxed();
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let refused = crate::errors::error(
                Code::Unavailable,
                format!(
                    "this service is handling its limit of {} calls (--max-inflight); retry shortly",
                    self.max
                ),
                "SERVICE_OVERLOADED",
                &[("limit", self.max.to_string())],
            );
            return futures::future::ready(Ok(refused.into_http())).boxed();
        };
        let timeout = self.timeout;
        async move {
            let response = tokio::time::timeout(timeout, inner.call(request))
                .await
                .unwrap_or_else(|_| {
                    Ok(crate::errors::error(
                        Code::DeadlineExceeded,
                        format!(
                            "the call was not answered within {} ms (--call-timeout-ms)",
                            timeout.as_millis()
                        ),
                        "CALL_TIMEOUT",
                        &[("timeout_ms", timeout.as_millis().to_string())],
                    )
                    .into_http())
                });
            drop(permit);
            response
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    fn grpc_request() -> HttpRequest {
        http::Request::builder()
            .uri("/jobmesh.internal.v1.JobStoreService/GetJob")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn a_call_over_the_cap_is_refused_at_once_and_the_next_after_one_ends_passes() {
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_request: HttpRequest| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut service = ShedLayer::new(2, Duration::from_secs(30)).layer(inner);
        let first = service.ready().await.expect("ready").call(grpc_request());
        let second = service.ready().await.expect("ready").call(grpc_request());
        let (first, second) = (tokio::spawn(first), tokio::spawn(second));
        tokio::task::yield_now().await;
        // The cap is taken: the third is refused without waiting.
        let refused = tokio::time::timeout(
            Duration::from_secs(1),
            service.ready().await.expect("ready").call(grpc_request()),
        )
        .await
        .expect("refused at once")
        .expect("infallible");
        let status = tonic::Status::from_header_map(refused.headers()).expect("a status");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("--max-inflight"),
            "{}",
            status.message()
        );
        release.send(true).expect("release");
        first.await.expect("join").expect("first");
        second.await.expect("join").expect("second");
        let passed = service
            .ready()
            .await
            .expect("ready")
            .call(grpc_request())
            .await
            .expect("infallible");
        assert!(passed.headers().get("grpc-status").is_none(), "passed");
    }

    #[tokio::test]
    async fn a_handler_that_does_not_answer_in_time_ends_its_call_and_frees_its_place() {
        let inner = tower::service_fn(|_request: HttpRequest| async {
            std::future::pending::<Result<HttpResponse, Infallible>>().await
        });
        let mut service = ShedLayer::new(1, Duration::from_millis(50)).layer(inner);
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let answer = service
                .ready()
                .await
                .expect("ready")
                .call(grpc_request())
                .await
                .expect("infallible");
            let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
            assert_eq!(
                status.code(),
                Code::DeadlineExceeded,
                "{}",
                status.message()
            );
            assert!(
                status.message().contains("--call-timeout-ms"),
                "{}",
                status.message()
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
}
