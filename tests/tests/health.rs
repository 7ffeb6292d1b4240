//! Health turns NOT_SERVING as soon as shutdown starts: a client watching the
//! gateway's health sees SERVING, then NOT_SERVING once the mesh begins to stop,
//! before its connection goes away.

use std::time::Duration;

use jobmesh_tests::{Mesh, MeshOptions};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_as_soon_as_shutdown_starts() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let channel = jobmesh_runtime::client::streaming_channel(&mesh.gateway_url)?;
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    // Dependency probes run every second; wait for the first SERVING.
    let serving = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await? {
                Some(m) if m.status() == ServingStatus::Serving => return Ok(()),
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        }
    })
    .await;
    serving.map_err(|_| anyhow::anyhow!("not SERVING within 5s"))??;

    let stopping = tokio::spawn(mesh.stop());
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .map_err(|_| anyhow::anyhow!("no health change within 2s of shutdown"))??;
    assert_eq!(
        next.map(|m| m.status()),
        Some(ServingStatus::NotServing),
        "the first change after shutdown starts"
    );
    drop(watch);
    stopping.await?;
    Ok(())
}

/// Shutdown is bounded and ordered: health turns NOT_SERVING, the listener
/// still answers for `--shutdown-pause-ms` (so load balancers see it first), and
/// a stream that never ends cannot hold the service past `--shutdown-grace-ms`:
/// the service cuts its connection and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_open_is_cut_after_the_grace_and_the_pause_comes_first() -> anyhow::Result<()>
{
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.shutdown.shutdown_pause_ms = 700;
            config.shutdown.shutdown_grace_ms = 1_500;
        },
        ..Default::default()
    })
    .await?;
    let channel = jobmesh_runtime::client::streaming_channel(&mesh.gateway_url)?;
    let mut health = HealthClient::new(channel);
    // A watch that this client never ends.
    let mut held = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = held.message().await? {
            if m.status() == ServingStatus::Serving {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("not SERVING within 5s"))??;

    let gateway = mesh.gateway_url.clone();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(mesh.stop());
    let next = tokio::time::timeout(Duration::from_secs(2), held.message())
        .await
        .map_err(|_| anyhow::anyhow!("no health change within 2s of shutdown"))??;
    assert_eq!(next.map(|m| m.status()), Some(ServingStatus::NotServing));
    // During the pause a new connection is still answered, with the truth.
    let fresh = jobmesh_runtime::client::channel(&gateway)?;
    let answer = HealthClient::new(fresh)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(answer.status(), ServingStatus::NotServing);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "the check was answered within the pause ({:?})",
        started.elapsed()
    );
    // The held stream does not hold the mesh: it stops once the grace is over.
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the mesh did not stop within 10s with a stream held open")
        })??;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700 + 1_500),
        "stopped after {took:?}: before the pause and the grace were over"
    );
    assert!(
        took < Duration::from_secs(6),
        "stopped after {took:?}: the held stream kept the gateway up past its grace"
    );
    // And its connection was cut: the stream has ended, with an error.
    let after = tokio::time::timeout(Duration::from_secs(2), held.message())
        .await
        .map_err(|_| anyhow::anyhow!("the held stream is still open after the grace"))?;
    assert!(
        !matches!(after, Ok(Some(_))),
        "the held stream still delivers after the grace: {after:?}"
    );
    Ok(())
}
