//! Health that tells the truth: a service is SERVING only while it reaches every
//! dependency it cannot work without, and NOT_SERVING as soon as shutdown starts.
//! Each dependency is probed every second (each probe bounded by a timeout); the
//! result also goes to `jobmesh_dependency_up{dependency}`.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often dependencies are probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest a probe may take before the dependency counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency: its name and a probe that says whether it answers.
pub struct Dependency {
    pub name: &'static str,
    pub probe: Box<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>,
    /// Whether the service cannot work without it (else it is only reported in
    /// `jobmesh_dependency_up`).
    pub required: bool,
}

impl Dependency {
    pub fn new<F>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static,
    {
        Self {
            name,
            probe: Box::new(probe),
            required: true,
        }
    }

    /// Reported, but the service keeps SERVING without it.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

/// Sets `services` (and the server as a whole, `""`) SERVING while every
/// dependency answers and NOT_SERVING otherwise, until `shutdown`, when they all
/// become NOT_SERVING for good.
pub async fn follow(
    reporter: HealthReporter,
    services: Vec<String>,
    dependencies: Vec<Dependency>,
    shutdown: CancellationToken,
) {
    let mut names = services;
    names.push(String::new());
    let mut serving: Option<bool> = None;
    let mut down: Vec<&'static str> = Vec::new();
    loop {
        let mut now_down = Vec::new();
        for dependency in &dependencies {
            let up = tokio::time::timeout(PROBE_TIMEOUT, (dependency.probe)())
                .await
                .unwrap_or(false);
            metrics::gauge!("jobmesh_dependency_up", "dependency" => dependency.name).set(if up {
                1.0
            } else {
                0.0
            });
            if !up && dependency.required {
                now_down.push(dependency.name);
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        let ok = now_down.is_empty();
        if serving != Some(ok) || now_down != down {
            if ok {
                tracing::info!("every dependency answers: SERVING");
            } else if serving.is_none() {
                // Still connecting at start-up.
                tracing::info!(unreachable = ?now_down, "waiting for dependencies: NOT_SERVING");
            } else {
                tracing::warn!(unreachable = ?now_down, "a dependency is unreachable: NOT_SERVING");
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in &names {
                reporter.set_service_status(name, status).await;
            }
            serving = Some(ok);
            down = now_down;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
    for name in &names {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}

/// A probe of a NATS connection: up while the client is connected.
pub fn nats(client: async_nats::Client) -> Dependency {
    Dependency::new("nats", move || {
        let client = client.clone();
        Box::pin(
            async move { client.connection_state() == async_nats::connection::State::Connected },
        )
    })
}

/// A probe of another jobmesh service: up while its health endpoint says SERVING.
pub fn grpc_service(name: &'static str, channel: crate::client::Channel) -> Dependency {
    Dependency::new(name, move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        Box::pin(async move {
            client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status()
                        == tonic_health::pb::health_check_response::ServingStatus::Serving
                })
        })
    })
}
