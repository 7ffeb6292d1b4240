//! The edge holds under abuse: callers that open calls and never finish their
//! request bodies, with or without a token, cannot take the gateway from the
//! others; health answers SERVING throughout. Driven with raw HTTP/2 frames,
//! since a normal client cannot misbehave this way.

use std::time::{Duration, Instant};

use bytes::Bytes;
use jobmesh_proto::v1;
use jobmesh_runtime::auth::scope;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};
use tonic::Code;

/// Opens `calls` unary calls on one connection, each sending its headers and a
/// gRPC prefix promising 10 bytes that never come. Returns the response futures
/// and the senders (which keep the streams open while held).
async fn half_open_calls(
    address: &str,
    token: Option<&str>,
    calls: usize,
) -> anyhow::Result<(
    Vec<h2::client::ResponseFuture>,
    Vec<h2::SendStream<Bytes>>,
    h2::client::SendRequest<Bytes>,
)> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let (mut responses, mut senders) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let mut request =
            http::Request::post(format!("http://{address}/jobmesh.v1.JobService/ListJobs"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        client = client.ready().await?;
        let (response, mut send) = client.send_request(request.body(())?, false)?;
        send.send_data(Bytes::from_static(&[0, 0, 0, 0, 10]), false)?;
        responses.push(response);
        senders.push(send);
    }
    Ok((responses, senders, client))
}

/// The grpc-status of a response that carries it in its headers (trailers-only).
async fn status_of(response: h2::client::ResponseFuture) -> anyhow::Result<String> {
    let response = response.await?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok(status.to_str()?.to_owned());
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default())
}

async fn healthy(mesh: &Mesh) -> anyhow::Result<bool> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = jobmesh_runtime::grpc::channel(&mesh.gateway_url)?;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(2));
    let status = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner();
    Ok(status.status == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_calls_cannot_take_the_gateway() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.max_inflight = 64;
            config.body_timeout_ms = 1_500;
        },
        ..Default::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();

    // Without a token: each call is refused at once and holds nothing.
    let (responses, _senders, _client) = half_open_calls(&address, None, 200).await?;
    for response in responses {
        assert_eq!(status_of(response).await?, "16", "UNAUTHENTICATED at once");
    }
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "demo.echo".into(),
            ..Default::default()
        })
        .await?;
    mesh.finished(&job.id, Duration::from_secs(20)).await?;
    assert!(healthy(&mesh).await?);

    // With a valid token: they fill the cap, but only until the body deadline.
    let token = mesh.token(TENANT, &scope::USER);
    let started = Instant::now();
    let (responses, senders, _client) = half_open_calls(&address, Some(&token), 64).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("the cap is full while the bodies are awaited");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(healthy(&mesh).await?, "health is never behind the cap");
    for response in responses {
        assert_eq!(status_of(response).await?, "4", "DEADLINE_EXCEEDED");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_400) && waited < Duration::from_secs(10),
        "answered at the body deadline: {waited:?}"
    );
    drop(senders);
    // The places are free again.
    let again = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    assert_eq!(again.into_inner().job.map(|j| j.id), Some(job.id.clone()));
    assert!(healthy(&mesh).await?);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_rest_bodies_cannot_take_the_gateway() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.max_inflight = 16;
            config.body_timeout_ms = 1_500;
        },
        ..Default::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    // 32 callers, twice the cap, each promising a megabyte and sending one byte
    // a second: half without a token, half with one.
    let mut trickles = Vec::new();
    for n in 0..32 {
        let address = address.clone();
        let auth = if n % 2 == 0 {
            String::new()
        } else {
            format!("Authorization: {bearer}\r\n")
        };
        trickles.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.write_all(
                format!(
                    "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let mut answer = Vec::new();
            let started = Instant::now();
            loop {
                tokio::select! {
                    read = tcp.read_to_end(&mut answer) => { read?; break; }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tcp.write_all(b" ").await.is_err() {
                            let _ = tcp.read_to_end(&mut answer).await;
                            break;
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(15) {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&answer).into_owned())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A normal REST caller is served while they trickle.
    let reply = jobmesh_tests::http::request(
        &address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"task":"demo.echo"}"#,
    )
    .await?;
    assert!(
        reply.status == 200 || reply.status == 429,
        "{}",
        reply.status
    );
    assert!(healthy(&mesh).await?);
    let mut statuses = Vec::new();
    for trickle in trickles {
        let answer = trickle.await??;
        statuses.push(answer.split(' ').nth(1).unwrap_or_default().to_owned());
    }
    let unauthenticated = statuses.iter().filter(|s| *s == "401").count();
    let timed_out = statuses.iter().filter(|s| *s == "408").count();
    assert_eq!(unauthenticated, 16, "{statuses:?}");
    assert!(
        timed_out + statuses.iter().filter(|s| *s == "429").count() == 16,
        "the others were timed out (or refused while the reads were full): {statuses:?}"
    );
    // With every slow body gone, REST callers are served.
    let reply = jobmesh_tests::http::request(
        &address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"task":"demo.echo"}"#,
    )
    .await?;
    assert_eq!(reply.status, 200);
    mesh.stop().await;
    Ok(())
}
