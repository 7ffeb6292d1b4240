//! The server layer: every gRPC call's metrics and its server span.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt as _};
use tracing::Instrument as _;

use super::body::{Call, MeteredBody};
use super::handle;
use super::rpc::Method;
use crate::call::{HttpRequest, HttpResponse, Side, is_grpc, take_ready};

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
        let mut inner = take_ready(&mut self.inner);
        if !is_grpc(request.headers()) {
            return inner.call(request).boxed();
        }
        let labels = Method::of(request.uri().path());
        labels.started(Side::Server).increment(1);
        let request = MeteredBody::request(request, labels.requests(Side::Server));
        // The server span of the call, a child of the caller's `traceparent`.
        // Only the public job and task APIs start traces; other calls are traced
        // only inside one (an internal call on a job's behalf). Health probes,
        // reflection, lease renewals and worker sessions would otherwise bury the
        // jobs' traces under their own.
        let parent = crate::trace::from_headers(request.headers());
        let traced = !labels.service.starts_with("grpc.")
            && (crate::trace::has_span(&parent) || crate::trace::starts_traces(&labels.service));
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
            Ok(MeteredBody::response(
                response,
                Call::new(Side::Server, labels, started, span),
            ))
        }
        .boxed()
    }
}
