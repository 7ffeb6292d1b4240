//! Server reflection v1 (grpcurl ≥ 1.9, Postman, grpcui) and health over plain
//! tonic clients. v1alpha is exercised by the grpcurl test.

use jobmesh_tests::{Mesh, MeshOptions};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_services_and_health_reports_them() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let channel = jobmesh_runtime::client::channel(&mesh.gateway_url)?;

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "jobmesh.v1.JobService",
        "jobmesh.v1.TaskService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("jobmesh.internal")),
        "internal services are not served by the gateway: {names:?}"
    );

    let mut health = HealthClient::new(channel);
    for service in ["", "jobmesh.v1.JobService", "jobmesh.v1.TaskService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    mesh.stop().await;
    Ok(())
}
