//! `jobmesh bench --abuse`: a well-behaved client's round trips (submit →
//! finished, one at a time) and health checks, first alone, then while each
//! abuse of issue #11 runs against the same gateway: half-open calls with and
//! without a token, streams up to the gateway's limit, slow REST bodies, idle
//! connections, oversized values to echo. The abusers are other tenants
//! (tokens minted with the dev key of `jobmesh dev`), so the figures say what
//! one tenant's abuse costs the others. With `--watch-pid`, the resident memory
//! of that process (the mesh) is sampled too. The abusers connect from
//! 127.0.0.2 (idle connections from 127.0.0.3), other peers than the client
//! measured, as they would be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use jobmesh_auth::{self as auth, scope};
use jobmesh_proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::bench::{BenchArgs, median, percentile, round_trip};
use crate::footprint::resident_kib;

/// Every abuse, in the order they run.
pub(crate) const ABUSES: [&str; 7] = [
    "half-open",
    "half-open-token",
    "streams",
    "streams-all",
    "slow-rest",
    "idle",
    "echo",
];

/// The figures of one phase.
struct Phase {
    round_trips: Vec<f64>,
    health_checks: usize,
    health_failures: usize,
    health_p99_ms: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    /// What the abuse itself achieved (streams open, connections held...).
    abuser: u64,
}

pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let kinds: Vec<String> = if args.abuse.iter().any(|a| a == "all") {
        ABUSES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.abuse.clone()
    };
    if let Some(unknown) = kinds.iter().find(|k| !ABUSES.contains(&k.as_str())) {
        bail!(
            "unknown abuse {unknown:?}: choose from {} or all",
            ABUSES.join(", ")
        );
    }
    let gateway: SocketAddr = args
        .addr
        .gateway
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("--abuse needs the gateway as http://<ip>:<port> on this machine")?;
    let mut rounds: Vec<Vec<(String, Phase)>> = Vec::new();
    for _ in 0..args.rounds.max(1) {
        // Alone twice: following the job with a watch, and by polling (what the
        // client falls back to when every stream place is taken).
        let mut round = vec![
            ("none".to_owned(), measure(args, gateway, None).await?),
            (
                "none-polling".to_owned(),
                measure(args, gateway, Some("none-polling")).await?,
            ),
        ];
        for kind in &kinds {
            let phase = measure(args, gateway, Some(kind)).await?;
            round.push((kind.clone(), phase));
            // Let the gateway settle (bodies time out, streams close).
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        rounds.push(round);
    }
    report(args, &rounds)
}

fn report(args: &BenchArgs, rounds: &[Vec<(String, Phase)>]) -> anyhow::Result<()> {
    let names: Vec<&str> = rounds[0].iter().map(|(n, _)| n.as_str()).collect();
    let figure = |name: &str, f: &dyn Fn(&Phase) -> f64| {
        median(
            rounds
                .iter()
                .filter_map(|r| r.iter().find(|(n, _)| n == name).map(|(_, p)| f(p)))
                .collect(),
        )
    };
    let p50 = |p: &Phase| {
        let mut sorted = p.round_trips.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 50.0) * 1000.0
    };
    let p99 = |p: &Phase| {
        let mut sorted = p.round_trips.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 99.0) * 1000.0
    };
    let alone = figure("none", &p50);
    let alone_polling = figure("none-polling", &p50);
    let mut rows = Vec::new();
    for name in &names {
        let row = serde_json::json!({
            "abuse": name,
            "round_trip_p50_ms": figure(name, &p50),
            "round_trip_p99_ms": figure(name, &p99),
            // Compared with the same way of following the job, alone.
            "vs_alone": figure(name, &p50)
                / if *name == "streams-all" || *name == "none-polling" {
                    alone_polling
                } else {
                    alone
                },
            "round_trips": figure(name, &|p| p.round_trips.len() as f64),
            "health_checks": figure(name, &|p| p.health_checks as f64),
            "health_not_serving": figure(name, &|p| p.health_failures as f64),
            "health_p99_ms": figure(name, &|p| p.health_p99_ms),
            "rss_before_mib": figure(name, &|p| p.rss_before_mib),
            "rss_peak_mib": figure(name, &|p| p.rss_peak_mib),
            "abuser": figure(name, &|p| p.abuser as f64),
        });
        rows.push(row);
    }
    let not_serving: Vec<String> = rounds
        .iter()
        .flatten()
        .filter(|(_, p)| p.health_failures > 0)
        .map(|(n, p)| format!("{n} ({} of {})", p.health_failures, p.health_checks))
        .collect();
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print_table(args, rounds.len(), &rows);
    }
    if !not_serving.is_empty() {
        bail!("health was not SERVING during: {}", not_serving.join(", "));
    }
    Ok(())
}

fn print_table(args: &BenchArgs, rounds: usize, rows: &[serde_json::Value]) {
    println!(
        "medians of {rounds} rounds, {} s per abuse; round trip of one demo job, submit → finished",
        args.abuse_seconds
    );
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>8} {:>12} {:>10} {:>10} {:>9}",
        "abuse",
        "p50 ms",
        "p99 ms",
        "vs alone",
        "health",
        "not serving",
        "rss before",
        "rss peak",
        "abuser"
    );
    for row in rows {
        println!(
            "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>12} {:>10.1} {:>10.1} {:>9}",
            row["abuse"].as_str().unwrap_or_default(),
            row["round_trip_p50_ms"].as_f64().unwrap_or(f64::NAN),
            row["round_trip_p99_ms"].as_f64().unwrap_or(f64::NAN),
            row["vs_alone"].as_f64().unwrap_or(f64::NAN),
            row["health_checks"].as_f64().unwrap_or(0.0),
            row["health_not_serving"].as_f64().unwrap_or(0.0),
            row["rss_before_mib"].as_f64().unwrap_or(f64::NAN),
            row["rss_peak_mib"].as_f64().unwrap_or(f64::NAN),
            row["abuser"].as_f64().unwrap_or(0.0),
        );
    }
}

/// One phase: start the abuse, let it take hold, then measure for
/// `--abuse-seconds`.
async fn measure(
    args: &BenchArgs,
    gateway: SocketAddr,
    kind: Option<&str>,
) -> anyhow::Result<Phase> {
    let stop = CancellationToken::new();
    let achieved = Arc::new(AtomicU64::new(0));
    let rss_before = args.watch_pid.and_then(resident_kib).unwrap_or(0);
    if let Some(kind) = kind {
        start(kind, gateway, &stop, &achieved).await?;
    }
    let rss = Arc::new(AtomicU64::new(0));
    let sampler = args.watch_pid.map(|pid| {
        let (rss, stop) = (Arc::clone(&rss), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(kib) = resident_kib(pid) {
                    rss.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let health = {
        let (url, stop) = (args.addr.gateway.clone(), stop.clone());
        tokio::spawn(async move { health_checks(&url, stop).await })
    };
    let mut client = args.addr.jobs()?;
    let mut round_trips = Vec::new();
    let until = Instant::now() + Duration::from_secs(args.abuse_seconds.max(1));
    while Instant::now() < until {
        round_trips.push(if kind == Some("none-polling") {
            polled_round_trip(&mut client, &args.task).await?
        } else {
            round_trip_or_poll(&mut client, &args.task).await?
        });
    }
    stop.cancel();
    let (checks, failures, mut latencies) = health.await?;
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Phase {
        round_trips,
        health_checks: checks,
        health_failures: failures,
        health_p99_ms: percentile(&latencies, 99.0) * 1000.0,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_peak_mib: rss.load(Ordering::Relaxed) as f64 / 1024.0,
        abuser: achieved.load(Ordering::Relaxed),
    })
}

/// Health checks every 50 ms until `stop`: (checks, not SERVING or failed,
/// latencies in seconds).
async fn health_checks(url: &str, stop: CancellationToken) -> (usize, usize, Vec<f64>) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Ok(channel) = jobmesh_runtime::client::channel(url) else {
        return (0, 0, Vec::new());
    };
    let mut client = HealthClient::new(channel);
    let (mut checks, mut failures, mut latencies) = (0, 0, Vec::new());
    while !stop.is_cancelled() {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(2));
        let t0 = Instant::now();
        let serving = client
            .check(request)
            .await
            .is_ok_and(|r| r.into_inner().status == 1);
        latencies.push(t0.elapsed().as_secs_f64());
        checks += 1;
        if !serving {
            failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (checks, failures, latencies)
}

/// Where the abusers connect from.
const ABUSER: &str = "127.0.0.2";

/// A connection to the gateway from `source`.
async fn connect_from(source: &str, gateway: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(gateway).await?)
}

/// A channel to the gateway from the abusers' address, sending `token`.
fn abuser_channel(
    gateway: SocketAddr,
    token: &str,
    streaming: bool,
) -> anyhow::Result<auth::AuthChannel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))?
        .local_address(Some(ABUSER.parse()?))
        .tcp_nodelay(true);
    if !streaming {
        endpoint = endpoint.timeout(Duration::from_secs(10));
    }
    let channel =
        jobmesh_runtime::client::Channel::new(endpoint.connect_lazy(), endpoint.uri().clone());
    Ok(auth::with_token(channel, Some(token)))
}

/// A token of another tenant, minted with the dev key.
fn abuser_token(tenant: &str) -> anyhow::Result<String> {
    crate::token::dev_token(tenant, &scope::USER).context(
        "the abuse bench mints other tenants' tokens with the dev key of `jobmesh dev`; run it next to `jobmesh dev`",
    )
}

/// Starts `kind` in the background until `stop`, and returns once it has taken
/// hold. `achieved` counts what it holds (calls, streams, connections).
async fn start(
    kind: &str,
    gateway: SocketAddr,
    stop: &CancellationToken,
    achieved: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    match kind {
        "none-polling" => return Ok(()),
        "half-open" | "half-open-token" => {
            let token = match kind {
                "half-open-token" => Some(abuser_token("abuser")?),
                _ => None,
            };
            for _ in 0..4 {
                let (stop, token, achieved) = (stop.clone(), token.clone(), Arc::clone(achieved));
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let _ = half_open(gateway, token.as_deref(), 256, &stop, &achieved).await;
                    }
                });
            }
        }
        "streams" | "streams-all" => {
            // One tenant up to its share and beyond (refused), or four: together
            // the gateway's whole limit (the well-behaved client's own watches
            // are then refused, and it polls instead).
            let opened = Arc::new(AtomicUsize::new(0));
            let tenants = if kind == "streams" { 1 } else { 4 };
            let mut openers = Vec::new();
            for tenant in 0..tenants {
                let token = abuser_token(&format!("watcher-{tenant}"))?;
                let channel = || abuser_channel(gateway, &token, true);
                let mut jobs = v1::job_service_client::JobServiceClient::new(channel()?);
                let job = jobs
                    .submit_job(v1::SubmitJobRequest {
                        task: "nobody.runs.this".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .job
                    .unwrap_or_default();
                for _ in 0..2 {
                    let jobs = v1::job_service_client::JobServiceClient::new(channel()?);
                    let (stop, id, opened) = (stop.clone(), job.id.clone(), Arc::clone(&opened));
                    let achieved = Arc::clone(achieved);
                    openers.push(tokio::spawn(async move {
                        hold_watches(jobs, id, 600, stop, opened, achieved).await
                    }));
                }
            }
            // Wait until they are open (or refused).
            let deadline = Instant::now() + Duration::from_secs(60);
            while opened.load(Ordering::Relaxed) < tenants * 1200 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "slow-rest" => {
            let token = abuser_token("abuser")?;
            for n in 0..512 {
                let auth = (n % 2 == 1).then(|| token.clone());
                let (stop, achieved) = (stop.clone(), Arc::clone(achieved));
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let _ = trickle(gateway, auth.as_deref(), &stop, &achieved).await;
                    }
                });
            }
        }
        "idle" => {
            for _ in 0..2000 {
                let (stop, achieved) = (stop.clone(), Arc::clone(achieved));
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let _ = idle(gateway, &stop, &achieved).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        }
        "echo" => {
            let token = abuser_token("abuser")?;
            let channel = jobmesh_runtime::client::channel(&format!("http://{gateway}"))?;
            let jobs = v1::job_service_client::JobServiceClient::new(auth::with_token(
                channel,
                Some(&token),
            ))
            .max_decoding_message_size(jobmesh_runtime::grpc::MAX_MESSAGE_BYTES);
            // 3 MB values, 20 a second: 60 MB/s offered.
            let huge = "x".repeat(3 * 1024 * 1024);
            for _ in 0..4 {
                let (mut jobs, huge, stop, achieved) = (
                    jobs.clone(),
                    huge.clone(),
                    stop.clone(),
                    Arc::clone(achieved),
                );
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let _ = jobs
                            .get_job(v1::GetJobRequest {
                                job_id: huge.clone(),
                            })
                            .await;
                        achieved.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
            }
        }
        _ => bail!("unknown abuse {kind:?}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// [`round_trip`]; when the gateway has no stream left, the job is followed by
/// polling it every 2 ms instead, as a client told `RESOURCE_EXHAUSTED` on a
/// watch would.
async fn round_trip_or_poll(
    client: &mut v1::job_service_client::JobServiceClient<auth::AuthChannel>,
    task: &str,
) -> anyhow::Result<f64> {
    match round_trip(client, task).await {
        Ok(seconds) => return Ok(seconds),
        Err(error)
            if error
                .downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == tonic::Code::ResourceExhausted) => {}
        Err(error) => return Err(error),
    }
    polled_round_trip(client, task).await
}

/// A round trip following the job by polling it every 2 ms.
async fn polled_round_trip(
    client: &mut v1::job_service_client::JobServiceClient<auth::AuthChannel>,
    task: &str,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let job = client
        .submit_job(v1::SubmitJobRequest {
            task: task.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    loop {
        let now = client
            .get_job(v1::GetJobRequest {
                job_id: job.id.clone(),
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        if now.state().is_terminal() {
            return Ok(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `calls` unary calls on one connection, each promising a body it never sends,
/// held until answered (or `stop`).
async fn half_open(
    gateway: SocketAddr,
    token: Option<&str>,
    calls: usize,
    stop: &CancellationToken,
    achieved: &AtomicU64,
) -> anyhow::Result<()> {
    let tcp = connect_from(ABUSER, gateway).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let mut held = Vec::new();
    for _ in 0..calls {
        let mut request =
            http::Request::post(format!("http://{gateway}/jobmesh.v1.JobService/ListJobs"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        client = client.ready().await?;
        let (response, mut send) = client.send_request(request.body(())?, false)?;
        send.send_data(Bytes::from_static(&[0, 0, 0, 0, 10]), false)?;
        achieved.fetch_add(1, Ordering::Relaxed);
        held.push((response, send));
    }
    let answered = futures::future::join_all(held.into_iter().map(|(r, s)| async move {
        let _ = r.await;
        drop(s);
    }));
    tokio::select! {
        _ = answered => {}
        () = stop.cancelled() => {}
    }
    driver.abort();
    Ok(())
}

/// Opens up to `count` watches of `job_id` on one connection and holds them
/// until `stop`.
async fn hold_watches(
    mut jobs: v1::job_service_client::JobServiceClient<auth::AuthChannel>,
    job_id: String,
    count: usize,
    stop: CancellationToken,
    opened: Arc<AtomicUsize>,
    achieved: Arc<AtomicU64>,
) {
    let mut held = Vec::new();
    for _ in 0..count {
        if stop.is_cancelled() {
            break;
        }
        let request = v1::WatchJobRequest {
            job_id: job_id.clone(),
        };
        if let Ok(response) = jobs.watch_job(request).await {
            let mut stream = response.into_inner();
            if let Ok(Some(_)) = stream.message().await {
                achieved.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        }
        opened.fetch_add(1, Ordering::Relaxed);
    }
    stop.cancelled().await;
}

/// A REST submit promising a megabyte and sending a byte a second.
async fn trickle(
    gateway: SocketAddr,
    token: Option<&str>,
    stop: &CancellationToken,
    achieved: &AtomicU64,
) -> anyhow::Result<()> {
    let mut tcp = connect_from(ABUSER, gateway).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tcp.write_all(
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {gateway}\r\n{auth}Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    achieved.fetch_add(1, Ordering::Relaxed);
    let mut answer = Vec::new();
    loop {
        tokio::select! {
            read = tcp.read_to_end(&mut answer) => { read?; return Ok(()); }
            () = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if tcp.write_all(b" ").await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// A connection from 127.0.0.3 that sends nothing, held until the gateway
/// closes it (or `stop`).
async fn idle(
    gateway: SocketAddr,
    stop: &CancellationToken,
    achieved: &AtomicU64,
) -> anyhow::Result<()> {
    let mut tcp = connect_from("127.0.0.3", gateway).await?;
    achieved.fetch_add(1, Ordering::Relaxed);
    let mut buffer = [0u8; 64];
    tokio::select! {
        _ = tcp.read(&mut buffer) => {}
        () = stop.cancelled() => {}
    }
    Ok(())
}
