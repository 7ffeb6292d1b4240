//! One job = one trace, across four processes: the mesh runs as separate
//! `jobmesh` processes exporting over OTLP to an in-process collector (a tonic
//! server implementing the OTLP trace service). A job that fails once and is
//! retried must leave one trace holding the gateway's submit span (the root),
//! job-store's spans, a JetStream publish and a dispatcher delivery per attempt,
//! and the worker's executions (with progress events), in the right parent/child
//! order. A `traceparent` sent by the client is honoured.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jobmesh_proto::v1;
use jobmesh_tests::faults::{Cluster, ClusterOptions};
use jobmesh_tests::otlp::{Collector, Received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_retry_is_one_trace_across_the_four_services() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(collector.clone().serve(listener, stop.clone()));
    let cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 1,
        slots: 2,
        lease_ms: 3000,
        otlp_endpoint: Some(endpoint),
    })
    .await?;
    let result = async {
        let mut jobs = cluster.jobs();
        // Fails retryably on attempt 1, then is retried (and fails again, for good).
        let args = serde_json::json!({"retryable": true, "message": "flaky"});
        let job = jobs
            .submit_job(v1::SubmitJobRequest {
                task: "demo.fail".into(),
                args: Some(jobmesh_proto::json::json_to_struct(
                    args.as_object().expect("object"),
                )),
                max_attempts: 2,
                retry_policy: Some(v1::RetryPolicy {
                    initial_backoff: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 50_000_000,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .expect("job");
        // And a job with progress, submitted under the client's own trace.
        let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let client_span = "00f067aa0ba902b7";
        let mut request = tonic::Request::new(v1::SubmitJobRequest {
            task: "demo.sleep".into(),
            args: Some(jobmesh_proto::json::json_to_struct(
                serde_json::json!({"seconds": 0.3, "steps": 3})
                    .as_object()
                    .expect("object"),
            )),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{client_trace}-{client_span}-01").parse()?,
        );
        let sleeper = jobs
            .submit_job(request)
            .await?
            .into_inner()
            .job
            .expect("job");

        // And one over REST, under another trace of the client's.
        let rest_trace = "5ce0e9a56015fec5aadfa328ae398115";
        let traceparent = format!("00-{rest_trace}-{client_span}-01");
        let bearer = format!("Bearer {}", cluster.token);
        let reply = jobmesh_tests::http::request(
            cluster.gateway_url.trim_start_matches("http://"),
            "POST",
            "/v1/jobs",
            &[
                ("Authorization", bearer.as_str()),
                ("Content-Type", "application/json"),
                ("traceparent", traceparent.as_str()),
                ("User-Agent", "traces-test/1"),
            ],
            br#"{"task":"demo.echo","args":{"via":"rest"}}"#,
        )
        .await?;
        anyhow::ensure!(reply.status == 200, "REST submit: {:?}", reply.json());

        // Wait for both jobs to end and their spans to be exported.
        let until = Instant::now() + Duration::from_secs(30);
        let is_done = |spans: &[Received], job_id: &str, executions: usize| {
            spans
                .iter()
                .filter(|s| {
                    s.service == "jobmesh-worker"
                        && s.attributes.get("jobmesh.job_id").map(String::as_str) == Some(job_id)
                })
                .count()
                >= executions
                && spans.iter().any(|s| {
                    s.service == "jobmesh-job-store"
                        && s.attributes.get("rpc.method").map(String::as_str) == Some("FailJob")
                })
        };
        loop {
            let spans = collector.spans();
            if is_done(&spans, &job.id, 2)
                && spans
                    .iter()
                    .any(|s| s.trace_id == client_trace && s.service == "jobmesh-worker")
                && spans
                    .iter()
                    .any(|s| s.trace_id == rest_trace && s.service == "jobmesh-worker")
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "spans not all exported within 30s: {:#?}",
                spans
                    .iter()
                    .map(|s| format!("{} {} {}", s.service, s.name, s.trace_id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Only the public API starts traces: no health check, lease renewal or
        // worker session makes a trace of its own.
        let strays: Vec<String> = collector
            .spans()
            .iter()
            .filter(|s| s.parent.is_empty() && s.service != "jobmesh-gateway")
            .map(|s| format!("{} {}", s.service, s.name))
            .collect();
        anyhow::ensure!(
            strays.is_empty(),
            "traces started outside the public API: {strays:?}"
        );
        // Give the last batches (the final FailJob and CompleteJob) a moment.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let spans = collector.spans();

        // The job's trace is the one its executions are in; its root is the
        // gateway's SubmitJob span, without a parent.
        let job_trace = spans
            .iter()
            .find(|s| s.attributes.get("jobmesh.job_id") == Some(&job.id))
            .map(|s| s.trace_id.clone())
            .expect("a span of the job");
        let root = spans
            .iter()
            .find(|s| {
                s.service == "jobmesh-gateway"
                    && s.attributes.get("rpc.method").map(String::as_str) == Some("SubmitJob")
                    && s.trace_id == job_trace
            })
            .expect("the gateway's SubmitJob span")
            .clone();
        assert_eq!(root.parent, "", "the submit span is the root");
        assert_eq!(root.attributes.get("jobmesh.job_id"), Some(&job.id));
        assert_eq!(
            root.attributes.get("jobmesh.task").map(String::as_str),
            Some("demo.fail")
        );
        assert_eq!(
            root.attributes.get("rpc.system").map(String::as_str),
            Some("grpc")
        );
        assert_eq!(
            root.attributes.get("rpc.service").map(String::as_str),
            Some("jobmesh.v1.JobService")
        );
        assert_eq!(
            root.attributes
                .get("rpc.grpc.status_code")
                .map(String::as_str),
            Some("0")
        );
        let trace: Vec<&Received> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let services: std::collections::BTreeSet<&str> =
            trace.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            vec![
                "jobmesh-dispatcher",
                "jobmesh-gateway",
                "jobmesh-job-store",
                "jobmesh-worker"
            ],
            "one trace across the four services"
        );
        let by_id: HashMap<&str, &Received> =
            trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
        let parent_of = |s: &Received| by_id.get(s.parent.as_str()).copied();
        let method = |s: &Received| s.attributes.get("rpc.method").cloned().unwrap_or_default();
        // A call between services is a client span of the caller under `parent`,
        // with the callee's server span under it; the server span is returned.
        let called = |parent: &Received, caller: &str, callee: &str, rpc: &str| {
            let client = trace
                .iter()
                .find(|s| s.parent == parent.span_id && s.kind == "client" && method(s) == rpc)
                .unwrap_or_else(|| panic!("a client span {rpc} under {}", parent.name));
            assert_eq!(client.service, caller, "{client:?}");
            assert_eq!(
                client.attributes.get("server.address").map(String::as_str),
                Some("127.0.0.1"),
                "{client:?}"
            );
            assert!(client.attributes.contains_key("server.port"), "{client:?}");
            let server = trace
                .iter()
                .find(|s| s.parent == client.span_id)
                .unwrap_or_else(|| panic!("the server span under the client {rpc}"));
            assert_eq!(
                (
                    server.service.as_str(),
                    server.kind,
                    method(server).as_str()
                ),
                (callee, "server", rpc)
            );
            assert_eq!(server.name, client.name, "both named service/method");
            *server
        };
        // The attribute naming a span's service is the resource's, not the span's.
        for span in &trace {
            assert!(!span.attributes.contains_key("jobmesh.service"), "{span:?}");
        }

        // job-store's CreateJob is called by the submit.
        let create = called(&root, "jobmesh-gateway", "jobmesh-job-store", "CreateJob");
        // One publish per attempt, each a child of CreateJob (the stored context).
        let publishes: Vec<&&Received> = trace
            .iter()
            .filter(|s| {
                s.attributes
                    .get("messaging.operation.name")
                    .map(String::as_str)
                    == Some("publish")
            })
            .collect();
        assert_eq!(publishes.len(), 2, "a publish per attempt");
        for publish in &publishes {
            assert_eq!(publish.parent, create.span_id, "{publish:?}");
            assert_eq!(publish.kind, "producer");
            assert_eq!(publish.service, "jobmesh-job-store");
            let subject = &publish.attributes["messaging.destination.name"];
            assert_eq!(publish.name, format!("publish {subject}"));
            assert_eq!(
                publish
                    .attributes
                    .get("messaging.operation.type")
                    .map(String::as_str),
                Some("send")
            );
            assert_eq!(
                publish
                    .attributes
                    .get("messaging.system")
                    .map(String::as_str),
                Some("nats")
            );
        }
        // A dispatcher delivery per attempt, a child of that attempt's publish; the
        // lease, the worker's execution and the outcome are children of it.
        let deliveries: Vec<&&Received> = trace
            .iter()
            .filter(|s| {
                s.service == "jobmesh-dispatcher"
                    && s.attributes
                        .get("messaging.operation.name")
                        .map(String::as_str)
                        == Some("process")
            })
            .collect();
        // A delivery that found no free slot is handed back to JetStream for
        // later (no lease, no execution): it shows as a `process` span of its own.
        let (deliveries, handed_back): (Vec<&&Received>, Vec<&&Received>) =
            deliveries.into_iter().partition(|delivery| {
                trace
                    .iter()
                    .any(|s| s.parent == delivery.span_id && method(s) == "LeaseJob")
            });
        for delivery in &handed_back {
            assert!(
                !trace.iter().any(|s| s.parent == delivery.span_id),
                "a delivery without a lease has no children: {delivery:?}"
            );
        }
        assert_eq!(deliveries.len(), 2, "a leased delivery per attempt");
        let mut attempts_seen = Vec::new();
        for delivery in &deliveries {
            let publish = parent_of(delivery).expect("delivery has a parent");
            assert_eq!(publish.kind, "producer");
            assert_eq!(delivery.kind, "consumer");
            let subject = &delivery.attributes["messaging.destination.name"];
            assert_eq!(delivery.name, format!("process {subject}"));
            assert_eq!(
                delivery
                    .attributes
                    .get("messaging.operation.type")
                    .map(String::as_str),
                Some("process")
            );
            let attempt = delivery
                .attributes
                .get("jobmesh.attempt")
                .cloned()
                .unwrap_or_default();
            assert_eq!(publish.attributes.get("jobmesh.attempt"), Some(&attempt));
            attempts_seen.push(attempt.clone());
            let children: Vec<&&Received> = trace
                .iter()
                .filter(|s| s.parent == delivery.span_id)
                .collect();
            called(
                delivery,
                "jobmesh-dispatcher",
                "jobmesh-job-store",
                "LeaseJob",
            );
            let execute = children
                .iter()
                .find(|s| s.service == "jobmesh-worker")
                .expect("the worker's execution under the delivery");
            assert_eq!(execute.attributes.get("jobmesh.job_id"), Some(&job.id));
            assert_eq!(execute.attributes.get("jobmesh.attempt"), Some(&attempt));
            assert_eq!(
                execute.attributes.get("jobmesh.task").map(String::as_str),
                Some("demo.fail")
            );
            assert_eq!(execute.kind, "consumer");
            called(
                delivery,
                "jobmesh-dispatcher",
                "jobmesh-job-store",
                "FailJob",
            );
        }
        attempts_seen.sort();
        assert_eq!(attempts_seen, vec!["1".to_owned(), "2".to_owned()]);

        // The client's traceparent is honoured: its trace holds the whole job,
        // and the worker's execution carries progress events.
        let theirs: Vec<&Received> = spans
            .iter()
            .filter(|s| s.trace_id == client_trace)
            .collect();
        let submit = theirs
            .iter()
            .find(|s| s.service == "jobmesh-gateway" && s.kind == "server")
            .expect("gateway span in the client's trace");
        assert_eq!(submit.parent, client_span);
        let execute = theirs
            .iter()
            .find(|s| s.service == "jobmesh-worker")
            .expect("worker span in the client's trace");
        assert_eq!(execute.attributes.get("jobmesh.job_id"), Some(&sleeper.id));
        assert!(
            execute.events.iter().filter(|e| *e == "progress").count() >= 3,
            "progress reports are span events: {:?}",
            execute.events
        );

        // A REST call is an HTTP server span (the caller's child) with the gRPC
        // call it became inside it, an internal span.
        let rest: Vec<&Received> = spans.iter().filter(|s| s.trace_id == rest_trace).collect();
        let http = rest
            .iter()
            .find(|s| s.kind == "server" && s.service == "jobmesh-gateway")
            .expect("the REST call's server span");
        assert_eq!(http.parent, client_span);
        assert_eq!(http.service, "jobmesh-gateway");
        assert_eq!(http.name, "POST /v1/jobs");
        for (key, value) in [
            ("http.request.method", "POST"),
            ("http.route", "/v1/jobs"),
            ("url.path", "/v1/jobs"),
            ("url.scheme", "http"),
            ("http.response.status_code", "200"),
            ("user_agent.original", "traces-test/1"),
        ] {
            assert_eq!(
                http.attributes.get(key).map(String::as_str),
                Some(value),
                "{key} of {http:?}"
            );
        }
        let grpc = rest
            .iter()
            .find(|s| s.parent == http.span_id)
            .expect("the gRPC call under the REST span");
        assert_eq!(grpc.kind, "internal");
        assert_eq!(grpc.name, "jobmesh.v1.JobService/SubmitJob");
        assert!(
            rest.iter().any(|s| s.service == "jobmesh-worker"),
            "the REST job ran in the REST call's trace"
        );
        anyhow::Ok(())
    }
    .await;
    let logs = cluster.logs();
    cluster.stop().await;
    stop.cancel();
    let _ = server.await;
    result.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))
}

/// A collector that is down changes nothing: with the services exporting to a
/// port where nothing listens, a mixed workload runs to the same accounting as
/// without tracing, and no call is slow (spans are dropped, never waited for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing() -> anyhow::Result<()> {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    let cluster = Cluster::start(ClusterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobmesh")),
        workers: 1,
        slots: 8,
        lease_ms: 3000,
        otlp_endpoint: Some(dead),
    })
    .await?;
    let jobs = 300;
    let result = async {
        let submitted = jobmesh_tests::faults::submit_workload(
            cluster.jobs(),
            jobs,
            16,
            Duration::from_secs(60),
        )
        .await?;
        jobmesh_tests::faults::account(&cluster, &submitted, Duration::from_secs(90)).await
    }
    .await;
    let logs = cluster.logs();
    cluster.stop().await;
    let accounting = result.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))?;
    assert_eq!(accounting.accepted, jobs);
    assert!(
        accounting.slowest_call_seconds < 5.0,
        "a call took {:.1}s with the collector down",
        accounting.slowest_call_seconds
    );
    Ok(())
}
