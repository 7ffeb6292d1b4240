//! The gateway's listener, bounded: at most `--max-connections` connections at
//! once and `--max-connections-per-peer` from one address (beyond them a new
//! connection is closed as soon as it is accepted), a connection with no call or
//! stream for `--idle-timeout-ms` is closed, and HTTP/2 keepalive pings find
//! peers that vanished (see [`ConnectionConfig::apply`]).
//!
//! A connection is idle when no request is open on it: [`CountLayer`], the
//! outermost layer, counts each request from its arrival until its response
//! body is dropped, on the [`Open`] connection tonic hands it as the request's
//! connect info.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::{BoxFuture, FutureExt as _};
use jobmesh_runtime::call::{HttpRequest, HttpResponse, Inner, Intercept, Wrapped};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Connection limits and timeouts.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectionConfig {
    /// Connections open at once; a connection beyond it is closed at once.
    #[arg(long, env = "JOBMESH_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once from one peer address (0: no such limit). Behind
    /// a proxy that does not keep client addresses every caller is one peer:
    /// raise it or set 0 there.
    #[arg(long, env = "JOBMESH_MAX_CONNECTIONS_PER_PEER", default_value_t = 512)]
    pub max_connections_per_peer: usize,
    /// A connection with no call or stream open for this long is closed
    /// (milliseconds); clients reconnect when they next call.
    #[arg(long, env = "JOBMESH_IDLE_TIMEOUT_MS", default_value_t = 120_000)]
    pub idle_timeout_ms: u64,
    /// An HTTP/2 ping goes to a connection silent for this long (milliseconds).
    #[arg(long, env = "JOBMESH_KEEPALIVE_INTERVAL_MS", default_value_t = 10_000)]
    pub keepalive_interval_ms: u64,
    /// A connection whose ping is not answered within this is closed, and its
    /// calls and streams with it (milliseconds).
    #[arg(long, env = "JOBMESH_KEEPALIVE_TIMEOUT_MS", default_value_t = 5_000)]
    pub keepalive_timeout_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_peer: 512,
            idle_timeout_ms: 120_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 5_000,
        }
    }
}

impl ConnectionConfig {
    /// `server` with this configuration's HTTP/2 keepalive.
    pub(crate) fn apply<L>(
        &self,
        server: tonic::transport::Server<L>,
    ) -> tonic::transport::Server<L> {
        server
            .http2_keepalive_interval(Some(Duration::from_millis(
                self.keepalive_interval_ms.max(1),
            )))
            .http2_keepalive_timeout(Some(Duration::from_millis(
                self.keepalive_timeout_ms.max(1),
            )))
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }
}

/// Connections open now, in all and per peer address.
struct Registry {
    limits: ConnectionConfig,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug)]
enum Over {
    Total,
    Peer,
}

impl Registry {
    fn admit(&self, peer: IpAddr) -> Result<(), Over> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.limits.max_connections.max(1) {
            return Err(Over::Total);
        }
        let from_peer = open.1.get(&peer).copied().unwrap_or(0);
        if self.limits.max_connections_per_peer > 0
            && from_peer >= self.limits.max_connections_per_peer
        {
            return Err(Over::Peer);
        }
        open.0 += 1;
        open.1.insert(peer, from_peer + 1);
        metrics::gauge!("jobmesh_gateway_connections_open").set(open.0 as f64);
        Ok(())
    }

    fn leave(&self, peer: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&peer);
            }
        }
        metrics::gauge!("jobmesh_gateway_connections_open").set(open.0 as f64);
    }
}

/// The accepted connections of `listener`, within `limits`. Accept errors (out
/// of file descriptors, a peer gone before accept) are logged and the loop goes
/// on after a short pause: the listener never stops.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ConnectionConfig,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let registry = Arc::new(Registry {
        limits,
        open: Mutex::new((0, HashMap::new())),
    });
    futures::stream::unfold((listener, registry), |(listener, registry)| async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; going on");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(over) = registry.admit(peer.ip()) {
                let reason = match over {
                    Over::Total => "total",
                    Over::Peer => "peer",
                };
                metrics::counter!("jobmesh_gateway_connections_refused_total", "limit" => reason)
                    .increment(1);
                tracing::debug!(%peer, limit = reason, "connection over the limit closed");
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let idle = registry.limits.idle_timeout();
            let conn = Conn {
                tcp,
                open: Open {
                    peer,
                    state: Arc::new(State {
                        requests: AtomicUsize::new(0),
                        quiet_since: Mutex::new(Instant::now()),
                    }),
                },
                idle,
                timer: Box::pin(tokio::time::sleep(idle)),
                registry: Arc::clone(&registry),
            };
            return Some((Ok(conn), (listener, registry)));
        }
    })
}

/// What is open on one connection.
struct State {
    requests: AtomicUsize,
    /// When the last request ended (or the connection opened).
    quiet_since: Mutex<Instant>,
}

/// A connection's connect info: its peer and what is open on it.
#[derive(Clone)]
pub(crate) struct Open {
    peer: SocketAddr,
    state: Arc<State>,
}

/// One accepted connection: closed (end of input) once idle for `idle`, and
/// counted among the open connections until dropped.
pub(crate) struct Conn {
    tcp: TcpStream,
    open: Open,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    registry: Arc<Registry>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.leave(self.open.peer.ip());
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Open;
    fn connect_info(&self) -> Open {
        self.open.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(read) = Pin::new(&mut this.tcp).poll_read(cx, buf) {
            return Poll::Ready(read);
        }
        // Nothing to read: is the connection idle for long enough to close?
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let next = if this.open.state.requests.load(Ordering::Acquire) > 0 {
                now + this.idle
            } else {
                let quiet_since = *this
                    .open
                    .state
                    .quiet_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if now >= quiet_since + this.idle {
                    tracing::debug!(peer = %this.open.peer, "idle connection closed");
                    metrics::counter!("jobmesh_gateway_connections_idle_closed_total").increment(1);
                    // End of input: the server closes the connection.
                    return Poll::Ready(Ok(()));
                }
                quiet_since + this.idle
            };
            this.timer.as_mut().reset(next);
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Counts each request as open on its connection from its arrival until its
/// response body is dropped (the outermost layer, so REST and gRPC alike).
#[derive(Clone)]
pub(crate) struct CountLayer;

impl<S> tower::Layer<S> for CountLayer {
    type Service = Wrapped<CountLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(self.clone(), inner)
    }
}

/// A request open on a connection, until dropped.
struct Request(Arc<State>);

impl Drop for Request {
    fn drop(&mut self) {
        *self.0.quiet_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: Inner> Intercept<S> for CountLayer {
    fn intercept(
        &self,
        mut inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, S::Error>> {
        let open = request.extensions().get::<Open>().map(|open| {
            open.state.requests.fetch_add(1, Ordering::AcqRel);
            Request(Arc::clone(&open.state))
        });
        let call = inner.call(request);
        async move {
            let response = call.await?;
            Ok(match open {
                Some(open) => response.map(|body| crate::limits::hold(body, open)),
                None => response,
            })
        }
        .boxed()
    }
}
