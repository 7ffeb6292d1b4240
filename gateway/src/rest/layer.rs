//! The tower layer that puts the shim in front of the gRPC routes: gRPC requests
//! pass, every other request is served as REST.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt as _};
use jobmesh_runtime::call::{HttpRequest, HttpResponse, Inner, Intercept, Wrapped};
use tonic::Status;

use super::errors::status_response;
use super::{Shim, deadline, serve};

/// Installs the shim in front of the gRPC routes.
#[derive(Clone)]
pub(crate) struct RestLayer(Arc<Shim>);

impl RestLayer {
    pub(crate) fn new(shim: Shim) -> Self {
        Self(Arc::new(shim))
    }
}

impl<S> tower::Layer<S> for RestLayer {
    type Service = Wrapped<RestLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(self.clone(), inner)
    }
}

impl<S: Inner> Intercept<S> for RestLayer {
    fn intercept(
        &self,
        inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, Infallible>> {
        if jobmesh_runtime::call::is_grpc(request.headers()) {
            let mut inner = inner;
            return inner.call(request).boxed();
        }
        let shim = Arc::clone(&self.0);
        let limit = deadline::answer_within(request.headers());
        async move {
            let handling = serve::handle(&shim, inner, request);
            Ok(match limit {
                Some(limit) => tokio::time::timeout(limit, handling)
                    .await
                    .unwrap_or_else(|_| {
                        status_response(&Status::deadline_exceeded(
                            "the call did not finish within its Grpc-Timeout",
                        ))
                    }),
                None => handling.await,
            })
        }
        .boxed()
    }
}
