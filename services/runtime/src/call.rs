//! One gRPC call as a tower layer sees it: the HTTP request and response types,
//! whether a request is gRPC at all, which side of the call a process is on, and
//! tower's cloned-service contract.

/// An HTTP request as tonic's server hands it to a layer.
pub type HttpRequest = http::Request<tonic::body::Body>;
/// An HTTP response as a layer hands it back to tonic's server.
pub type HttpResponse = http::Response<tonic::body::Body>;

/// Whether a request is gRPC (its content type is `application/grpc*`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The number of a `grpc-status` value (0 to 16); `Unknown` (2) for anything else.
pub fn code_number(code: &str) -> usize {
    code.parse::<usize>().ok().filter(|n| *n <= 16).unwrap_or(2)
}

/// The inner service a layer calls: the one `poll_ready` made ready, leaving a
/// fresh clone in its place (tower's contract for cloned services).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Which end of a call a process is: serving it or making it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// The service a server layer wraps (tonic's routes, or the layers below it):
/// every layer of the stack asks this of its inner service.
pub trait Inner:
    tower::Service<
        HttpRequest,
        Response = HttpResponse,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<
            HttpRequest,
            Response = HttpResponse,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What a layer does with one request, given the inner service (made ready, as
/// tower's contract for cloned services wants) to pass it on to. [`Wrapped`] is
/// the tower plumbing around it, written once for every layer of the stack.
pub trait Intercept<S>: Clone + Send + 'static
where
    S: tower::Service<HttpRequest, Response = HttpResponse>,
{
    fn intercept(
        &self,
        inner: S,
        request: HttpRequest,
    ) -> futures::future::BoxFuture<'static, Result<HttpResponse, S::Error>>;
}

/// The layer `L` in front of the service `S`.
#[derive(Clone, Debug)]
pub struct Wrapped<L, S> {
    layer: L,
    inner: S,
}

impl<L, S> Wrapped<L, S> {
    pub fn new(layer: L, inner: S) -> Self {
        Self { layer, inner }
    }
}

impl<L, S> tower::Service<HttpRequest> for Wrapped<L, S>
where
    L: Intercept<S>,
    S: tower::Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        self.layer.intercept(inner, request)
    }
}
