//! Channels to other jobmesh services: lazily connecting, with the settings every
//! service uses, and recording each call's client metrics and (inside a trace)
//! its client span.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt as _};
use tonic::transport::Endpoint;

use crate::body::{Watch as _, Watched};
use crate::call::{HttpRequest, HttpResponse, Side};
use crate::metrics::body::Metered;
use crate::metrics::handle;
use crate::metrics::rpc::Method;
use crate::trace::SpanEnd;

/// Default deadline of an internal call when the caller gives none.
pub const INTERNAL_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily-connecting channel to another jobmesh service (`http://host:port`).
/// Connection failures surface as `UNAVAILABLE` on each call, and the channel
/// reconnects by itself.
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(url)?.timeout(INTERNAL_CALL_TIMEOUT);
    Ok(Channel::new(
        endpoint.connect_lazy(),
        endpoint.uri().clone(),
    ))
}

/// A channel without a per-call timeout, for long-lived streams (watch, worker
/// sessions).
pub fn streaming_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(url)?;
    Ok(Channel::new(
        endpoint.connect_lazy(),
        endpoint.uri().clone(),
    ))
}

/// The endpoint settings of every channel: HTTP/2 keepalive (a peer that
/// vanished is noticed), no Nagle delay, a bounded connect.
fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(normalise_url(url))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// Accepts `host:port` as well as `http://host:port`.
pub fn normalise_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// A channel to another jobmesh service that records the gRPC client metrics of
/// every call (`grpc_client_started_total`, `grpc_client_handled_total`,
/// `grpc_client_handling_seconds`) and, for a call made inside a trace, its
/// client span (on behalf of `caller`, a [`crate::trace::services`] name).
#[derive(Clone, Debug)]
pub struct Channel {
    channel: tonic::transport::Channel,
    /// The server's address (the request URIs hold only the path).
    server: http::Uri,
    caller: &'static str,
}

impl Channel {
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

impl tower::Service<HttpRequest> for Channel {
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
        let request = Metered::request(request, labels.requests(Side::Client));
        let started = Instant::now();
        let call = tower::Service::call(&mut self.channel, request);
        async move {
            let mut outcome = (
                Metered::response(Side::Client, labels, started),
                SpanEnd {
                    span,
                    side: Side::Client,
                },
            );
            match call.await {
                Ok(response) => Ok(Watched::response(response, outcome)),
                Err(error) => {
                    // No answer at all: the call failed as UNAVAILABLE.
                    outcome.end("14");
                    Err(error)
                }
            }
        }
        .boxed()
    }
}
