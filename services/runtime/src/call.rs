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
