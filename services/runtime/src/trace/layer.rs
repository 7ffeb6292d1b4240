//! The span layer: every traced gRPC call's server span, around everything the
//! server does for it (the outermost layer of [`crate::server`]'s stack, so that
//! a call refused by a layer below is traced with the code its caller sees).

use futures::future::{BoxFuture, FutureExt as _};
use tracing::Instrument as _;

use super::{SpanEnd, Transcoded, from_headers, has_span, server_span, starts_traces};
use crate::body::Watched;
use crate::call::{HttpRequest, HttpResponse, Inner, Intercept, Side, Wrapped, is_grpc};

/// Opens the server span of a gRPC call, a child of the caller's `traceparent`,
/// and ends it with the call's code when the response ends.
///
/// Only the public job and task APIs start traces; any other call is traced only
/// inside one (an internal call made on a job's behalf): health probes,
/// reflection, lease renewals and worker sessions would otherwise bury the jobs'
/// traces under their own. A REST call's gRPC call (marked [`Transcoded`]) is an
/// internal span under the REST call's HTTP span.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanLayer;

impl<S> tower::Layer<S> for SpanLayer {
    type Service = Wrapped<SpanLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(*self, inner)
    }
}

/// The service and method of a gRPC path (`/package.Service/Method`).
fn rpc_of(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?
        .split_once('/')
        .filter(|(_, method)| !method.contains('/'))
}

impl<S: Inner> Intercept<S> for SpanLayer {
    fn intercept(
        &self,
        mut inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, S::Error>> {
        let rpc = is_grpc(request.headers())
            .then(|| rpc_of(request.uri().path()))
            .flatten()
            .filter(|(service, _)| !service.starts_with("grpc."));
        let Some((service, method)) = rpc else {
            return inner.call(request).boxed();
        };
        let parent = from_headers(request.headers());
        if !has_span(&parent) && !starts_traces(service) {
            return inner.call(request).boxed();
        }
        let transcoded = request.extensions().get::<Transcoded>().is_some();
        let span = server_span(service, method, parent, transcoded);
        let end = SpanEnd {
            span: span.clone(),
            side: Side::Server,
        };
        async move {
            let response = inner.call(request).await?;
            Ok(Watched::response(response, end))
        }
        .instrument(span)
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_service_and_method() {
        assert_eq!(
            rpc_of("/jobmesh.v1.JobService/SubmitJob"),
            Some(("jobmesh.v1.JobService", "SubmitJob"))
        );
        for odd in ["", "/", "nope", "/a", "/a/b/c"] {
            assert_eq!(rpc_of(odd), None, "{odd:?}");
        }
    }
}
