//! `GET /metrics` over HTTP/1: the recorder's text, on its own listener.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{handle, render};

/// Where a service serves `/metrics`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MetricsConfig {
    /// Address on which to serve Prometheus metrics at `/metrics` (e.g.
    /// `0.0.0.0:9464`); none by default.
    #[arg(long, env = "JOBMESH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let _ = handle();
    let upkeep = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Some(handle) = handle() {
                            handle.run_upkeep();
                        }
                    }
                }
            }
        })
    };
    tracing::info!(address = ?listener.local_addr().ok(), "metrics serving at /metrics");
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let response = if request.uri().path() == "/metrics" {
                        let mut response =
                            http::Response::new(http_body_util::Full::new(Bytes::from(render())));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        response
                    } else {
                        let mut response = http::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"not found; metrics are at /metrics\n"),
                        ));
                        *response.status_mut() = http::StatusCode::NOT_FOUND;
                        response
                    };
                    Ok::<_, Infallible>(response)
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
        });
    }
    upkeep.abort();
}

/// Binds `config.metrics_listen`, if set (before slow start-up work, so a bad
/// address stops the service at once).
pub async fn bind(config: &MetricsConfig) -> std::io::Result<Option<TcpListener>> {
    let Some(address) = &config.metrics_listen else {
        return Ok(None);
    };
    TcpListener::bind(address).await.map(Some).map_err(|e| {
        std::io::Error::new(e.kind(), format!("metrics listen address {address}: {e}"))
    })
}
