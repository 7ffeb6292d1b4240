//! The host of a service: how every jobmesh service runs its server and its
//! background loops, and how it stops. On shutdown, in this order:
//!
//! 1. health turns NOT_SERVING (every service the host reports, and `""`);
//! 2. a pause (`--shutdown-pause-ms`), so that load balancers and readiness
//!    probes see it before the listener closes;
//! 3. the listener closes and in-flight calls drain, for at most
//!    `--shutdown-grace-ms`; the connections still open then are cut (those
//!    the server accepted through [`Host::severable`]), ending their calls;
//! 4. background loops are told to stop and are waited for (within the same
//!    bound), then the host returns and the service flushes what it holds.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, TryStreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How a service stops.
#[derive(clap::Args, Clone, Debug)]
pub struct ShutdownConfig {
    /// After a shutdown signal, how long health reports NOT_SERVING before the
    /// listener closes, so load balancers stop sending calls first (in ms).
    #[arg(long, env = "JOBMESH_SHUTDOWN_PAUSE_MS", default_value_t = 0)]
    pub shutdown_pause_ms: u64,
    /// How long in-flight calls, then background loops, may take to finish after
    /// the listener closed; what is still open then is not waited for (in ms).
    #[arg(long, env = "JOBMESH_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            shutdown_pause_ms: 0,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl ShutdownConfig {
    fn pause(&self) -> Duration {
        Duration::from_millis(self.shutdown_pause_ms)
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// One service's server, health and background tasks.
pub struct Host {
    name: &'static str,
    config: ShutdownConfig,
    shutdown: CancellationToken,
    /// Cancelled once the server has drained: background loops stop then, so
    /// that calls still draining have what they need.
    background: CancellationToken,
    /// Cancelled when the grace is over: the connections still open are cut.
    cut: CancellationToken,
    tasks: TaskTracker,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    /// The gRPC services whose health the host reports.
    services: Vec<String>,
}

impl Host {
    /// The host of service `name` (for logs), reporting the health of `services`
    /// (SERVING from now on), stopping when `shutdown` is cancelled.
    pub async fn new(
        name: &'static str,
        services: &[&str],
        config: &ShutdownConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        for service in services {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        Self {
            name,
            config: config.clone(),
            background: CancellationToken::new(),
            cut: CancellationToken::new(),
            shutdown,
            tasks: TaskTracker::new(),
            health,
            health_service,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Cancelled when shutdown starts: the server stops taking work.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancelled once the server has drained: background loops stop on it.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// The connections of `incoming`, each cut when the shutdown grace is over
    /// (step 3): give the server these rather than `incoming` itself.
    pub fn severable<S, IO, E>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = Result<Severable<IO>, E>> + use<S, IO, E>
    where
        S: Stream<Item = Result<IO, E>>,
    {
        let cut = self.cut.clone();
        incoming.map_ok(move |io| Severable {
            io,
            cut: Box::pin(cut.clone().cancelled_owned()),
        })
    }

    /// Runs `task` as one of the host's, waited for before the host returns.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// The host's task tracker, for tasks started later (sessions, consumers):
    /// they too are waited for before the host returns.
    pub fn tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// The health service to add to the server.
    pub fn health_service(&self) -> HealthServer<HealthService> {
        self.health_service.clone()
    }

    /// Keeps health SERVING only while `dependencies` answer
    /// ([`crate::health::follow`]).
    pub fn follow_health(&self, dependencies: Vec<crate::health::Dependency>) {
        self.spawn(crate::health::follow(
            self.health.clone(),
            self.services.clone(),
            dependencies,
            self.shutdown.clone(),
        ));
    }

    /// Serves `/metrics` on `listener`, when there is one, until shutdown.
    pub fn serve_metrics(&self, listener: Option<TcpListener>) {
        if let Some(listener) = listener {
            self.spawn(crate::metrics::serve(listener, self.shutdown.clone()));
        }
    }

    /// Runs the server `serve` builds from the stop signal it is given (tonic's
    /// `serve_with_incoming_shutdown`) until shutdown, then stops as the module
    /// says. Returns the server's own outcome.
    pub async fn serve<F, E>(self, serve: impl FnOnce(BoxFuture<'static, ()>) -> F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let (closing, closed) = tokio::sync::oneshot::channel::<()>();
        let signal = {
            let shutdown = self.shutdown.clone();
            let health = self.health.clone();
            let mut services = self.services.clone();
            services.push(String::new());
            let pause = self.config.pause();
            let name = self.name;
            Box::pin(async move {
                shutdown.cancelled().await;
                for service in &services {
                    health
                        .set_service_status(service, ServingStatus::NotServing)
                        .await;
                }
                tracing::info!(
                    service = name,
                    pause_ms = pause.as_millis() as u64,
                    "stopping: health is NOT_SERVING; the listener closes after the pause"
                );
                tokio::time::sleep(pause).await;
                let _ = closing.send(());
            })
        };
        let grace = self.config.grace();
        let cut = async {
            if closed.await.is_err() {
                // The server ended by itself: nothing to bound.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        let server = serve(signal);
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = cut => {
                tracing::warn!(
                    service = self.name,
                    grace_ms = grace.as_millis() as u64,
                    "calls still open after --shutdown-grace-ms: cutting their connections"
                );
                self.cut.cancel();
                Ok(())
            }
        };
        self.background.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.name,
                "background tasks still running after --shutdown-grace-ms: leaving them"
            );
        }
        result
    }
}

/// A server's connection that fails every read and write once its host's grace
/// is over (its calls then end at once; see [`Host::severable`]).
pub struct Severable<IO> {
    io: IO,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<IO> Severable<IO> {
    /// An error once the connection is cut (registering the task to be woken
    /// when it is, so that a connection waiting for input is cut too).
    fn is_cut(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.cut.as_mut().poll(cx).is_ready().then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the service stopped: its --shutdown-grace-ms is over",
            )
        })
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for Severable<IO>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Severable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(cut) = self.is_cut(cx) {
            return Poll::Ready(Err(cut));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Severable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(cut) = self.is_cut(cx) {
            return Poll::Ready(Err(cut));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(cut) = self.is_cut(cx) {
            return Poll::Ready(Err(cut));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
