//! The edge holds under abuse: callers that open calls and never finish their
//! request bodies, with or without a token, cannot take the gateway from the
//! others; health answers SERVING throughout. Driven with raw HTTP/2 frames,
//! since a normal client cannot misbehave this way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobmesh_auth::scope;
use jobmesh_proto::v1;
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
    let channel = jobmesh_runtime::client::channel(&mesh.gateway_url)?;
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
            config.max_inflight_per_tenant = 32;
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

    // With a valid token: they fill the tenant's share of the cap, but only
    // until the body deadline; the other tenants are served throughout.
    let token = mesh.token(TENANT, &scope::USER);
    let started = Instant::now();
    let (responses, senders, _client) = half_open_calls(&address, Some(&token), 32).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("the tenant's share is full while the bodies are awaited");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("its share of the gateway (--max-inflight-per-tenant)"),
        "{}",
        refused.message()
    );
    let other = mesh.token("other-tenant", &scope::USER);
    let theirs = mesh
        .jobs_with(Some(&other))
        .submit_job(v1::SubmitJobRequest {
            task: "demo.echo".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .expect("a job");
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
    let theirs = mesh
        .jobs_with(Some(&other))
        .get_job(v1::GetJobRequest { job_id: theirs.id })
        .await?;
    assert!(theirs.into_inner().job.is_some());
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

/// A job no worker runs: it stays QUEUED, so watches of it stay open.
async fn queued(mesh: &Mesh, token: &str) -> anyhow::Result<v1::Job> {
    let job = mesh
        .jobs_with(Some(token))
        .submit_job(v1::SubmitJobRequest {
            task: "nobody.runs.this".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job;
    job.ok_or_else(|| anyhow::anyhow!("no job in the reply"))
}

/// Opens a watch of `job_id` and waits for its first message (the snapshot).
async fn watching(
    jobs: &mut v1::job_service_client::JobServiceClient<jobmesh_auth::AuthChannel>,
    job_id: &str,
) -> Result<tonic::Streaming<v1::WatchJobResponse>, tonic::Status> {
    let mut stream = jobs
        .watch_job(v1::WatchJobRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner();
    match stream.message().await? {
        Some(_) => Ok(stream),
        None => Err(tonic::Status::internal(
            "the watch ended before its snapshot",
        )),
    }
}

fn retry_hint(status: &tonic::Status) -> Option<&str> {
    status.metadata().get("retry-after")?.to_str().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_counted_apart_from_calls_per_tenant_and_in_all() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.max_inflight = 8;
            config.max_streams = 48;
            config.max_streams_per_tenant = 32;
        },
        ..Default::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let mine = mesh.token(TENANT, &scope::USER);
    let theirs = mesh.token("other-tenant", &scope::USER);
    let job = queued(&mesh, &mine).await?;
    let mut jobs = mesh.jobs();
    // Four times the in-flight cap: streams do not take its places.
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(watching(&mut jobs, &job.id).await?);
    }
    let started = Instant::now();
    let refused = watching(&mut jobs, &job.id)
        .await
        .expect_err("the tenant's share of streams is full");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("tenant \"tenant-a\" has 32 open streams, its share of the gateway (--max-streams-per-tenant)"),
        "{}",
        refused.message()
    );
    assert_eq!(retry_hint(&refused), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    // Log follows and WatchJobs count among the same streams.
    let logs = jobs
        .read_job_logs(v1::ReadJobLogsRequest {
            job_id: job.id.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect_err("a log follow is a stream too");
    assert_eq!(logs.code(), Code::ResourceExhausted);
    let all = jobs
        .watch_jobs(v1::WatchJobsRequest::default())
        .await
        .expect_err("WatchJobs is a stream too");
    assert_eq!(all.code(), Code::ResourceExhausted);
    // Over REST: 429 with Retry-After, at once.
    let bearer = format!("Bearer {mine}");
    let reply = jobmesh_tests::http::request(
        &address,
        "GET",
        &format!("/v1/jobs/{}:watch", job.id),
        &[("Authorization", &bearer)],
        b"",
    )
    .await?;
    assert_eq!(
        reply.status,
        429,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Unary calls go on, the tenant's own included.
    let got = jobs
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    assert_eq!(got.into_inner().job.map(|j| j.id), Some(job.id.clone()));
    assert!(healthy(&mesh).await?);

    // Another tenant has the rest of the total, and no more.
    let their_job = queued(&mesh, &theirs).await?;
    let mut their_jobs = mesh.jobs_with(Some(&theirs));
    let mut their_held = Vec::new();
    for _ in 0..16 {
        their_held.push(watching(&mut their_jobs, &their_job.id).await?);
    }
    let full = watching(&mut their_jobs, &their_job.id)
        .await
        .expect_err("the gateway's streams are all open");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message()
            .contains("the gateway is overloaded (48 open streams, its limit --max-streams)"),
        "{}",
        full.message()
    );
    assert_eq!(retry_hint(&full), Some("1"));

    // A closed stream gives its place back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watching(&mut their_jobs, &their_job.id).await {
            Ok(stream) => {
                their_held.push(stream);
                break;
            }
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => anyhow::bail!("places never came back: {status}"),
        }
    }
    assert!(watching(&mut jobs, &job.id).await.is_ok());
    drop(their_held);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_upstream_connection_carries_all_start() -> anyhow::Result<()> {
    // job-store lets one connection carry 1024 streams; the gateway's limit is
    // above it, and every stream up to the limit starts.
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.max_streams = 1_100;
            config.max_streams_per_tenant = 1_100;
        },
        ..Default::default()
    })
    .await?;
    let mine = mesh.token(TENANT, &scope::USER);
    let job = queued(&mesh, &mine).await?;
    // Two client connections: the gateway too lets one carry 1024 streams.
    let mut opened = Vec::new();
    for _ in 0..2 {
        let jobs = mesh.jobs();
        for _ in 0..550 {
            let mut jobs = jobs.clone();
            let id = job.id.clone();
            opened.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(30), watching(&mut jobs, &id)).await
            }));
        }
    }
    let mut held = Vec::new();
    for stream in opened {
        held.push(
            stream
                .await?
                .map_err(|_| anyhow::anyhow!("a watch never started"))??,
        );
    }
    assert_eq!(held.len(), 1_100);
    let refused = watching(&mut mesh.jobs(), &job.id)
        .await
        .expect_err("the limit is reached");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let got = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    assert!(got.into_inner().job.is_some(), "unary calls go on");
    assert!(healthy(&mesh).await?);
    drop(held);
    mesh.stop().await;
    Ok(())
}

/// A connection from `source` (a loopback address) to `address`.
async fn connect_from(source: &str, address: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(address.parse()?).await?)
}

/// Whether the peer closes `tcp` within `within` (end of input or reset).
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = [0u8; 256];
    let read = async {
        loop {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.connections.max_connections = 10;
            config.connections.max_connections_per_peer = 8;
            config.connections.idle_timeout_ms = 1_500;
        },
        ..Default::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "demo.echo".into(),
            ..Default::default()
        })
        .await?;
    let mut jobs = mesh.jobs();
    let get = v1::GetJobRequest {
        job_id: job.id.clone(),
    };
    jobs.get_job(get.clone()).await?;

    // One peer (127.0.0.2) opens connections and sends nothing: 8 are kept,
    // the 9th is closed at once.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect_from("127.0.0.2", &address).await?);
    }
    let mut ninth = connect_from("127.0.0.2", &address).await?;
    assert!(
        closed_within(&mut ninth, Duration::from_millis(500)).await,
        "over the per-peer limit: closed at once"
    );
    // Another peer has the rest of the total (the client above holds one).
    let mut tenth = connect_from("127.0.0.3", &address).await?;
    let mut eleventh = connect_from("127.0.0.3", &address).await?;
    assert!(
        closed_within(&mut eleventh, Duration::from_millis(500)).await,
        "over the total: closed at once"
    );
    // The well-behaved client, on its open connection, is served.
    jobs.get_job(get.clone()).await?;
    // The idle ones are closed after the idle timeout.
    let started = Instant::now();
    for tcp in idle.iter_mut().chain(std::iter::once(&mut tenth)) {
        assert!(
            closed_within(tcp, Duration::from_secs(5)).await,
            "an idle connection was left open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed by the idle timeout, not at once: {:?}",
        started.elapsed()
    );
    // New connections are accepted again, and a connection with an open stream
    // is not idle however long it stays quiet.
    let mine = mesh.token(TENANT, &scope::USER);
    let queued_job = queued(&mesh, &mine).await?;
    let mut watcher = mesh.jobs();
    let mut stream = watching(&mut watcher, &queued_job.id).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    mesh.jobs()
        .cancel_job(v1::CancelJobRequest {
            job_id: queued_job.id.clone(),
        })
        .await?;
    let change = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await??
        .and_then(|m| m.job)
        .expect("the watch goes on");
    assert_eq!(change.id, queued_job.id);
    assert!(healthy(&mesh).await?);
    mesh.stop().await;
    Ok(())
}

/// A TCP link that can go silent: after `freeze`, it forwards nothing either
/// way and answers nothing, as a peer whose machine vanished. `upstream_closed`
/// is set when the far side closes its end.
struct SilentLink {
    address: String,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    upstream_closed: Arc<tokio::sync::Notify>,
}

impl SilentLink {
    async fn start(target: String) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream_closed = Arc::new(tokio::sync::Notify::new());
        let (frozen2, closed2) = (Arc::clone(&frozen), Arc::clone(&upstream_closed));
        tokio::spawn(async move {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            let frozen_up = Arc::clone(&frozen2);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                while let Ok(n) = in_read.read(&mut buffer).await {
                    if n == 0 || frozen_up.load(Ordering::SeqCst) {
                        break;
                    }
                    if out_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                // Keep the upstream's write side open: silence, not a close.
                futures::future::pending::<()>().await;
                drop(out_write);
            });
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match out_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        closed2.notify_one();
                        futures::future::pending::<()>().await;
                    }
                    Ok(n) => {
                        if !frozen2.load(Ordering::SeqCst) {
                            let _ = in_write.write_all(&buffer[..n]).await;
                        }
                    }
                }
            }
        });
        Ok(Self {
            address,
            frozen,
            upstream_closed,
        })
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_loses_its_connection_and_stream() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.max_streams_per_tenant = 1;
            config.connections.keepalive_interval_ms = 500;
            config.connections.keepalive_timeout_ms = 500;
        },
        ..Default::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let mine = mesh.token(TENANT, &scope::USER);
    let job = queued(&mesh, &mine).await?;
    let link = SilentLink::start(address).await?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", link.address))?;
    let mut through_link = v1::job_service_client::JobServiceClient::new(jobmesh_auth::with_token(
        jobmesh_runtime::client::Channel::new(endpoint.connect_lazy(), endpoint.uri().clone()),
        Some(&mine),
    ));
    let _stream = watching(&mut through_link, &job.id).await?;
    // The tenant's one stream is taken.
    let refused = watching(&mut mesh.jobs(), &job.id)
        .await
        .expect_err("the tenant has its one stream open");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // The peer goes silent: the gateway's pings go unanswered and it closes the
    // connection, which frees the stream's place.
    let started = Instant::now();
    link.freeze();
    tokio::time::timeout(Duration::from_secs(10), link.upstream_closed.notified())
        .await
        .map_err(|_| anyhow::anyhow!("the gateway kept a silent peer's connection"))?;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after a ping went unanswered, not at once: {waited:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watching(&mut mesh.jobs(), &job.id).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => anyhow::bail!("the silent peer's stream kept its place: {status}"),
        }
    }
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_from_its_length() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let huge = "x".repeat(3 * 1024 * 1024);
    let refused = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: huge.clone(),
        })
        .await
        .expect_err("over the request limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("the limit is: 1048576 bytes"),
        "{}",
        refused.message()
    );
    let refused = mesh
        .jobs()
        .submit_job(v1::SubmitJobRequest {
            task: huge,
            ..Default::default()
        })
        .await
        .expect_err("over the request limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // Nothing was created, and the largest valid submission still goes in.
    let listed = mesh
        .jobs()
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    let args = serde_json::json!({ "blob": "y".repeat(250 * 1024) });
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "demo.echo".into(),
            args: args.as_object().map(jobmesh_proto::json::json_to_struct),
            labels: (0..64)
                .map(|n| (format!("k{n}"), "v".repeat(256)))
                .collect(),
            ..Default::default()
        })
        .await?;
    mesh.finished(&job.id, Duration::from_secs(20)).await?;
    mesh.stop().await;
    Ok(())
}

/// Watches do not each poll PostgreSQL: one task re-reads the versions of every
/// watched job together. A change whose NATS event never came (here: written
/// to PostgreSQL behind job-store's back) still reaches every watch of the job,
/// within the resync period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_event_was_lost_still_reaches_every_watch() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let mine = mesh.token(TENANT, &scope::USER);
    let job = queued(&mesh, &mine).await?;
    let other = queued(&mesh, &mine).await?;
    let mut jobs = mesh.jobs();
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(watching(&mut jobs, &job.id).await?);
    }
    let mut quiet = watching(&mut jobs, &other.id).await?;
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/{}", jobmesh_tests::postgres_server(), mesh.database),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let id: uuid::Uuid = job.id.parse()?;
    client
        .execute(
            "UPDATE jobs SET priority = 7, version = version + 1 WHERE id = $1",
            &[&id],
        )
        .await?;
    for watch in &mut watches {
        let seen = tokio::time::timeout(Duration::from_secs(6), watch.message())
            .await
            .map_err(|_| anyhow::anyhow!("the change never reached the watch"))??
            .and_then(|m| m.job)
            .expect("a job");
        assert_eq!((seen.priority, seen.version), (7, job.version + 1));
    }
    // A watch of a job that did not change is not woken.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), quiet.message())
            .await
            .is_err(),
        "the other job's watch sent something"
    );
    mesh.stop().await;
    Ok(())
}
