//! Prometheus metrics over real calls: the counters move as jobs run (success,
//! retry then failure, cancellation, a bad request), the text served at
//! `/metrics` passes `promtool check metrics`, and dependency gauges read 1.

use std::time::Duration;

use jobmesh_auth::scope;
use jobmesh_proto::v1;
use jobmesh_tests::http::request;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The value of the sample `name{labels}` (labels as written by the exporter, in
/// any order), or 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

async fn scrape(address: &str) -> anyhow::Result<String> {
    let reply = request(address, "GET", "/metrics", &[], b"").await?;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.headers
    );
    Ok(String::from_utf8(reply.body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_jobs_run_and_promtool_accepts_the_text() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let stop = CancellationToken::new();
    tokio::spawn(jobmesh_runtime::metrics::serve(listener, stop.clone()));
    // Dependency probes run every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = scrape(&address).await?;

    let echo = |n: usize| v1::SubmitJobRequest {
        task: "demo.echo".into(),
        idempotency_key: format!("metrics-echo-{n}"),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(mesh.submit(echo(n)).await?.id);
    }
    // An idempotent resubmission is not a new job.
    mesh.submit(echo(0)).await?;
    let failing = mesh
        .submit(v1::SubmitJobRequest {
            task: "demo.fail".into(),
            args: Some(jobmesh_proto::json::json_to_struct(
                &serde_json::json!({"retryable": true})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )),
            max_attempts: 2,
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 10_000_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    ids.push(failing.id.clone());
    let parked = mesh
        .submit(v1::SubmitJobRequest {
            task: "nobody.home".into(),
            ..Default::default()
        })
        .await?;
    mesh.jobs()
        .cancel_job(v1::CancelJobRequest {
            job_id: parked.id.clone(),
        })
        .await?;
    let bad = mesh
        .jobs()
        .submit_job(v1::SubmitJobRequest {
            task: "not a task".into(),
            ..Default::default()
        })
        .await;
    assert!(bad.is_err());
    // Each watch streams the job's changes up to its terminal state.
    let mut watched = 0;
    // A method the gateway does not serve: UNIMPLEMENTED, and labelled `unknown`
    // (a caller cannot add series by inventing paths).
    let mut raw = tonic::client::Grpc::new(jobmesh_runtime::client::channel(&mesh.gateway_url)?);
    raw.ready().await?;
    // With a valid token: a caller without one is refused before any routing.
    let mut invented = tonic::Request::new(());
    invented.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", mesh.token(TENANT, &scope::USER)).parse()?,
    );
    let unserved = raw
        .unary(
            invented,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/jobmesh.v1.JobService/InventedByACaller",
            ),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .expect_err("not a method of JobService");
    assert_eq!(unserved.code(), tonic::Code::Unimplemented);
    for id in &ids {
        let events = mesh.watch(id, Duration::from_secs(30)).await?;
        anyhow::ensure!(
            events.last().is_some_and(|job| job.state().is_terminal()),
            "the watch of {id} ended before a terminal state: {events:?}"
        );
        watched += events.len();
    }
    let after = scrape(&address).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    assert_eq!(
        delta("jobmesh_jobs_submitted_total", &[("task", "demo.echo")]),
        5.0
    );
    assert_eq!(
        delta(
            "jobmesh_jobs_finished_total",
            &[("task", "demo.echo"), ("state", "succeeded")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "jobmesh_jobs_finished_total",
            &[("task", "demo.fail"), ("state", "failed")]
        ),
        1.0
    );
    assert_eq!(
        delta("jobmesh_job_retries_total", &[("task", "demo.fail")]),
        1.0
    );
    assert_eq!(
        delta(
            "jobmesh_job_cancellations_total",
            &[("task", "nobody.home")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "jobmesh_worker_attempts_total",
            &[("task", "demo.fail"), ("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "jobmesh_job_queue_wait_seconds_count",
            &[("task", "demo.echo")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "jobmesh_job_run_seconds_count",
            &[("task", "demo.echo"), ("state", "succeeded")]
        ),
        5.0
    );
    // gRPC server metrics, by service, method and code.
    let submit = [
        ("grpc_service", "jobmesh.v1.JobService"),
        ("grpc_method", "SubmitJob"),
    ];
    assert_eq!(
        delta(
            "grpc_server_handled_total",
            &[submit[0], submit[1], ("grpc_code", "OK")]
        ),
        8.0
    );
    assert_eq!(
        delta(
            "grpc_server_handled_total",
            &[submit[0], submit[1], ("grpc_code", "InvalidArgument")]
        ),
        1.0
    );
    assert_eq!(delta("grpc_server_started_total", &submit), 9.0);
    assert!(delta("grpc_server_handling_seconds_count", &submit) >= 9.0);
    // grpc_type, and messages: one request per call, one response per OK call;
    // a watch receives one request and sends every change.
    let unary = [submit[0], submit[1], ("grpc_type", "unary")];
    assert_eq!(delta("grpc_server_started_total", &unary), 9.0);
    assert_eq!(delta("grpc_server_msg_received_total", &unary), 9.0);
    assert_eq!(delta("grpc_server_msg_sent_total", &unary), 8.0);
    let watch = [
        ("grpc_service", "jobmesh.v1.JobService"),
        ("grpc_method", "WatchJob"),
        ("grpc_type", "server_stream"),
    ];
    assert_eq!(delta("grpc_server_started_total", &watch), ids.len() as f64);
    assert_eq!(
        delta("grpc_server_msg_received_total", &watch),
        ids.len() as f64
    );
    assert_eq!(delta("grpc_server_msg_sent_total", &watch), watched as f64);
    assert!(
        delta(
            "grpc_client_msg_received_total",
            &[
                ("grpc_service", "jobmesh.internal.v1.JobStoreService"),
                ("grpc_method", "WatchJob"),
                ("grpc_type", "server_stream")
            ]
        ) >= watched as f64,
        "the gateway received from job-store what it sent on"
    );
    assert!(
        delta(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "jobmesh.internal.v1.JobStoreService"),
                ("grpc_method", "LeaseJob"),
                ("grpc_code", "OK")
            ]
        ) >= 7.0,
        "job-store's own calls are counted too"
    );
    assert_eq!(
        delta(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "unknown"),
                ("grpc_method", "unknown"),
                ("grpc_code", "Unimplemented")
            ]
        ),
        1.0
    );
    assert!(!after.contains("InventedByACaller"));
    // Client side: the gateway's calls to job-store, as the gateway saw them.
    let create = [
        ("grpc_service", "jobmesh.internal.v1.JobStoreService"),
        ("grpc_method", "CreateJob"),
    ];
    assert_eq!(
        delta(
            "grpc_client_handled_total",
            &[create[0], create[1], ("grpc_code", "OK")]
        ),
        8.0
    );
    assert_eq!(delta("grpc_client_started_total", &create), 8.0);
    assert_eq!(delta("grpc_client_msg_sent_total", &create), 8.0);
    assert_eq!(delta("grpc_client_msg_received_total", &create), 8.0);
    assert_eq!(delta("grpc_client_handling_seconds_count", &create), 8.0);
    for dependency in ["postgres", "nats", "job-store"] {
        assert_eq!(
            sample(
                &after,
                "jobmesh_dependency_up",
                &[("dependency", dependency)]
            ),
            1.0,
            "{dependency}"
        );
    }

    // promtool (Debian's prometheus package) accepts the text.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run promtool ({e}): install Debian's `prometheus` package")
        })?;
    {
        use std::io::Write as _;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(after.as_bytes())?;
    }
    let output = promtool.wait_with_output()?;
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stop.cancel();
    mesh.stop().await;
    Ok(())
}
