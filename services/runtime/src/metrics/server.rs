//! The server layer: every gRPC call's metrics and its server span.

use std::convert::Infallible;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt as _};
use tracing::Instrument as _;

use super::body::{Call, MeteredBody};
use super::handle;
use super::rpc::Method;
use crate::call::{HttpRequest, HttpResponse, Intercept, Side, Wrapped, is_grpc};

/// Records the gRPC server metrics of every call (gRPC requests only: REST calls
/// are recorded as the gRPC calls the shim makes for them).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = Wrapped<GrpcMetricsLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        let _ = handle();
        Wrapped::new(*self, inner)
    }
}

impl<S> Intercept<S> for GrpcMetricsLayer
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn intercept(
        &self,
        mut inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, S::Error>> {
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
