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
