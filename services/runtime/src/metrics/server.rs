//! The metrics layer: every gRPC call's `grpc_server_*` metrics.

use std::time::Instant;

use futures::future::{BoxFuture, FutureExt as _};

use super::body::Metered;
use super::handle;
use super::rpc::Method;
use crate::body::Watched;
use crate::call::{HttpRequest, HttpResponse, Inner, Intercept, Side, Wrapped, is_grpc};

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

impl<S: Inner> Intercept<S> for GrpcMetricsLayer {
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
        let request = Metered::request(request, labels.requests(Side::Server));
        let started = Instant::now();
        async move {
            let answer = inner.call(request).await?;
            Ok(Watched::response(
                answer,
                Metered::response(Side::Server, labels, started),
            ))
        }
        .boxed()
    }
}
