//! Every job readable: its log lines (stored, fenced by attempt, bounded, followed
//! live, over gRPC and REST), every change of a tenant's jobs on one stream, and
//! the connected workers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use jobmesh_auth::scope;
use jobmesh_proto::internal::{AppendLogsRequest, JobAttempt, LogBatch, LogLine};
use jobmesh_proto::v1::{self, JobState, LogStream, connect_request, connect_response};
use jobmesh_tests::http::request;
use jobmesh_tests::{Mesh, MeshOptions, TENANT, WorkerSpec};
use jobmesh_worker::Handlers;
use tonic::Code;

fn exec_worker(tasks: &[(&str, &str)]) -> WorkerSpec {
    let mut handlers = Handlers::builtin();
    for (task, command) in tasks {
        jobmesh_worker::register_exec(&mut handlers, task, command);
    }
    WorkerSpec {
        worker_id: "exec-worker".to_owned(),
        slots: 8,
        handlers,
    }
}

fn submit(task: &str) -> v1::SubmitJobRequest {
    v1::SubmitJobRequest {
        task: task.to_owned(),
        ..Default::default()
    }
}

async fn read_logs(
    mesh: &Mesh,
    request: v1::ReadJobLogsRequest,
) -> anyhow::Result<Vec<v1::LogEntry>> {
    let mut stream = mesh.jobs().read_job_logs(request).await?.into_inner();
    let mut entries = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = stream.message().await? {
            entries.push(message.entry.context("message without entry")?);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("the log stream did not end within 30s")??;
    Ok(entries)
}

fn logs_of(job_id: &str) -> v1::ReadJobLogsRequest {
    v1::ReadJobLogsRequest {
        job_id: job_id.to_owned(),
        ..Default::default()
    }
}

/// A worker written from the proto alone: its stream, opened with `hello`.
async fn raw_worker(
    mesh: &Mesh,
    hello: v1::WorkerHello,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<v1::ConnectRequest>,
    tonic::Streaming<v1::ConnectResponse>,
)> {
    let token = mesh.token_without_tenant(&[scope::WORKER]);
    let channel = jobmesh_runtime::client::streaming_channel(&mesh.dispatcher_url)?;
    let mut client = v1::worker_service_client::WorkerServiceClient::new(jobmesh_auth::with_token(
        channel,
        Some(&token),
    ));
    let (out, out_rx) = tokio::sync::mpsc::channel(16);
    out.send(v1::ConnectRequest {
        message: Some(connect_request::Message::Hello(hello)),
    })
    .await?;
    let inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    Ok((out, inbound))
}

fn texts(entries: &[v1::LogEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.line.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_stored_in_order_and_read_over_grpc_and_rest() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![exec_worker(&[
            (
                "t.lines",
                r#"printf 'one\ntwo\nthree\n'; echo '{"result": {"ok": true}}'"#,
            ),
            ("t.stderr", "echo oops >&2"),
            (
                "t.retry",
                r#"echo "attempt $JOBMESH_ATTEMPT"; [ "$JOBMESH_ATTEMPT" -ge 2 ]"#,
            ),
        ])],
        ..Default::default()
    })
    .await?;
    let job = mesh.submit(submit("t.lines")).await?;
    let done = mesh.finished(&job.id, Duration::from_secs(30)).await?;
    assert_eq!(done.state(), JobState::Succeeded);

    let entries = read_logs(&mesh, logs_of(&job.id)).await?;
    assert_eq!(texts(&entries), ["one", "two", "three"]);
    for (n, entry) in entries.iter().enumerate() {
        assert_eq!(entry.sequence, n as i64 + 1);
        assert_eq!(entry.attempt, 1);
        assert_eq!(entry.stream(), LogStream::Stdout);
        assert_eq!(entry.dropped, 0);
        assert!(!entry.truncated);
        let time = std::time::SystemTime::try_from(entry.time.context("time")?)?;
        let created = std::time::SystemTime::try_from(done.create_time.context("created")?)?;
        assert!(
            time >= created,
            "a line is received after its job is created"
        );
    }

    // Resuming after a sequence sends the rest, without a duplicate.
    let rest = read_logs(
        &mesh,
        v1::ReadJobLogsRequest {
            after_sequence: 1,
            ..logs_of(&job.id)
        },
    )
    .await?;
    assert_eq!(texts(&rest), ["two", "three"]);
    assert_eq!(rest[0].sequence, 2);

    // The same over REST, as newline-delimited JSON.
    let address = mesh.gateway_url.trim_start_matches("http://");
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    let reply = request(
        address,
        "GET",
        &format!("/v1/jobs/{}/logs?afterSequence=1", job.id),
        &[("Authorization", &bearer)],
        b"",
    )
    .await?;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let lines = reply.lines()?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["result"]["entry"]["sequence"], "2");
    assert_eq!(lines[0]["result"]["entry"]["line"], "two");
    assert_eq!(lines[1]["result"]["entry"]["stream"], "LOG_STREAM_STDOUT");

    // stderr lines keep their stream.
    let job_err = mesh.submit(submit("t.stderr")).await?;
    mesh.finished(&job_err.id, Duration::from_secs(30)).await?;
    let entries = read_logs(&mesh, logs_of(&job_err.id)).await?;
    assert_eq!(texts(&entries), ["oops"]);
    assert_eq!(entries[0].stream(), LogStream::Stderr);

    // A retried job's lines carry their attempt; the filter reads one attempt.
    let retried = mesh
        .submit(v1::SubmitJobRequest {
            max_attempts: 2,
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                ..Default::default()
            }),
            ..submit("t.retry")
        })
        .await?;
    let done = mesh.finished(&retried.id, Duration::from_secs(30)).await?;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let entries = read_logs(&mesh, logs_of(&retried.id)).await?;
    assert_eq!(texts(&entries), ["attempt 1", "attempt 2"]);
    assert_eq!(
        entries.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    let second = read_logs(
        &mesh,
        v1::ReadJobLogsRequest {
            attempt: 2,
            ..logs_of(&retried.id)
        },
    )
    .await?;
    assert_eq!(texts(&second), ["attempt 2"]);
    assert_eq!(
        second[0].dropped, 0,
        "lines of other attempts are not drops"
    );

    // Another tenant's job is NOT_FOUND, over gRPC and REST.
    let stranger = mesh.token("tenant-b", &scope::USER);
    let refused = mesh
        .jobs_with(Some(&stranger))
        .read_job_logs(logs_of(&job.id))
        .await
        .expect_err("another tenant's job");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let reply = request(
        address,
        "GET",
        &format!("/v1/jobs/{}/logs", job.id),
        &[("Authorization", &format!("Bearer {stranger}"))],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()?["code"], 5);

    // Bad input names the field.
    for (bad, field) in [
        (
            v1::ReadJobLogsRequest {
                attempt: -1,
                ..logs_of(&job.id)
            },
            "attempt: ",
        ),
        (
            v1::ReadJobLogsRequest {
                after_sequence: -5,
                ..logs_of(&job.id)
            },
            "after_sequence: ",
        ),
        (logs_of("nope"), "job_id: "),
    ] {
        let status = mesh
            .jobs()
            .read_job_logs(bad)
            .await
            .expect_err("invalid request");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_sees_lines_as_they_are_printed_and_ends_with_the_job() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![exec_worker(&[(
            "t.slow",
            "for i in 1 2 3; do echo line$i; sleep 0.5; done",
        )])],
        ..Default::default()
    })
    .await?;
    let job = mesh.submit(submit("t.slow")).await?;
    let mut stream = mesh
        .jobs()
        .read_job_logs(v1::ReadJobLogsRequest {
            follow: true,
            ..logs_of(&job.id)
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    let mut running_at_first_line = None;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = stream.message().await? {
            let entry = message.entry.context("entry")?;
            if seen.is_empty() {
                let now = mesh
                    .jobs()
                    .get_job(v1::GetJobRequest {
                        job_id: job.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .job
                    .context("job")?;
                running_at_first_line = Some(now.state());
            }
            seen.push(entry.line);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("the follow stream did not end after the job")??;
    assert_eq!(seen, ["line1", "line2", "line3"]);
    assert_eq!(
        running_at_first_line,
        Some(JobState::Running),
        "the first line arrived while the job ran"
    );
    let job = mesh.finished(&job.id, Duration::from_secs(5)).await?;
    assert_eq!(job.state(), JobState::Succeeded);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_an_attempt_not_running_are_refused() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let job = mesh.submit(submit("raw.task")).await?;
    // A worker written from the proto: it gets the job and sends lines for the
    // attempt it holds and for one it does not.
    let (out, mut inbound) = raw_worker(
        &mesh,
        v1::WorkerHello {
            worker_id: "raw".into(),
            tasks: vec!["raw.task".into()],
            slots: 1,
            ..Default::default()
        },
    )
    .await?;
    let assignment = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await?.and_then(|m| m.message) {
                Some(connect_response::Message::Assignment(a)) => return Ok(a),
                Some(_) => continue,
                None => anyhow::bail!("stream ended before an assignment"),
            }
        }
    })
    .await??;
    assert_eq!(assignment.job_id, job.id);
    let log = |attempt: i32, line: &str| v1::ConnectRequest {
        message: Some(connect_request::Message::Log(v1::JobLog {
            job_id: job.id.clone(),
            attempt,
            line: line.to_owned(),
            stream: LogStream::Stdout as i32,
        })),
    };
    out.send(log(assignment.attempt + 1, "from an attempt never given"))
        .await?;
    out.send(log(assignment.attempt, "kept")).await?;
    let long = "x".repeat(5000);
    out.send(log(assignment.attempt, &long)).await?;
    out.send(v1::ConnectRequest {
        message: Some(connect_request::Message::Succeeded(v1::JobSucceeded {
            job_id: job.id.clone(),
            attempt: assignment.attempt,
            result: None,
        })),
    })
    .await?;
    let done = mesh.finished(&job.id, Duration::from_secs(20)).await?;
    assert_eq!(done.state(), JobState::Succeeded);
    // Lines sent after the outcome belong to a finished attempt.
    out.send(log(assignment.attempt, "after the end")).await?;

    // job-store itself refuses lines of an attempt that is not running.
    let refused = mesh
        .job_store()
        .append_logs(AppendLogsRequest {
            batches: vec![LogBatch {
                attempt: Some(JobAttempt {
                    job_id: job.id.clone(),
                    attempt: assignment.attempt,
                }),
                lines: vec![LogLine {
                    line: "late".into(),
                    ..Default::default()
                }],
            }],
        })
        .await?
        .into_inner()
        .refused;
    assert_eq!(refused.len(), 1, "a finished attempt's lines are refused");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = read_logs(&mesh, logs_of(&job.id)).await?;
    assert_eq!(entries.len(), 2, "{:?}", texts(&entries));
    assert_eq!(entries[0].line, "kept");
    assert_eq!(entries[0].sequence, 1);
    assert_eq!(entries[1].line.chars().count(), 4096, "long lines are cut");
    assert!(entries[1].truncated, "and marked");
    assert!(!entries[0].truncated);
    drop(out);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_log_limit_keeps_its_newest_lines() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        store: |config| config.max_log_bytes_per_job = 8 * 1024,
        ..Default::default()
    })
    .await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            args: serde_json::json!({"lines": 3000, "width": 40})
                .as_object()
                .map(jobmesh_proto::json::json_to_struct),
            ..submit("demo.logs")
        })
        .await?;
    let done = mesh.finished(&job.id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let entries = read_logs(&mesh, logs_of(&job.id)).await?;
    let kept_bytes: usize = entries.iter().map(|e| e.line.len()).sum();
    assert!(kept_bytes <= 8 * 1024, "{kept_bytes} bytes kept");
    assert!(!entries.is_empty());
    let last = entries.last().context("last")?;
    assert_eq!(last.sequence, 3000);
    assert!(last.line.starts_with("line 3000 of 3000"), "{}", last.line);
    let first = &entries[0];
    assert_eq!(
        first.dropped,
        first.sequence - 1,
        "the reader is told how many lines were dropped"
    );
    assert!(first.dropped > 2000, "{}", first.dropped);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        assert_eq!(pair[1].dropped, 0);
    }
    assert_eq!(first.dropped as usize + entries.len(), 3000);
    mesh.stop().await;
    Ok(())
}

/// Reads a WatchJobs stream until `done` says every job it cares about ended.
async fn collect_changes(
    stream: &mut tonic::Streaming<v1::WatchJobsResponse>,
    changes: &mut Vec<v1::WatchJobsResponse>,
    done: impl Fn(&[v1::WatchJobsResponse]) -> bool,
    limit: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(limit, async {
        while !done(changes) {
            let change = stream.message().await?.context("the stream ended")?;
            changes.push(change);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| format!("not every job ended within {limit:?}"))?
}

fn ended(changes: &[v1::WatchJobsResponse]) -> BTreeMap<String, bool> {
    let mut state = BTreeMap::new();
    for change in changes {
        if let Some(job) = &change.job {
            state.insert(job.id.clone(), job.state().is_terminal());
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_jobs_follows_every_job_of_the_tenant_and_only_those() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let open = |token: Option<String>, task: &str| {
        let mut jobs = match &token {
            Some(token) => mesh.jobs_with(Some(token)),
            None => mesh.jobs(),
        };
        let request = v1::WatchJobsRequest {
            task: task.to_owned(),
            ..Default::default()
        };
        async move { jobs.watch_jobs(request).await.map(|r| r.into_inner()) }
    };
    let mut all = open(None, "").await?;
    let mut echoes = open(None, "demo.echo").await?;
    let mut stranger = open(Some(mesh.token("tenant-b", &scope::USER)), "").await?;
    // REST: the same stream, newline-delimited.
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    let rest = tokio::spawn(async move {
        request(
            &address,
            "GET",
            "/v1/jobs:watch?task=demo.echo",
            &[("Authorization", &bearer), ("Grpc-Timeout", "6S")],
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ids = Vec::new();
    for n in 0..50 {
        let task = if n % 10 == 0 {
            "demo.echo"
        } else {
            "demo.sleep"
        };
        let args = serde_json::json!({"seconds": 0.2, "steps": 2});
        let job = mesh
            .submit(v1::SubmitJobRequest {
                args: args.as_object().map(jobmesh_proto::json::json_to_struct),
                ..submit(task)
            })
            .await?;
        ids.push((job.id, task));
    }
    let mut changes = Vec::new();
    collect_changes(
        &mut all,
        &mut changes,
        |c| {
            let e = ended(c);
            e.len() == 50 && e.values().all(|done| *done)
        },
        Duration::from_secs(60),
    )
    .await?;
    let mut versions: HashMap<String, Vec<(i64, JobState)>> = HashMap::new();
    for change in &changes {
        let job = change.job.as_ref().context("job")?;
        versions
            .entry(job.id.clone())
            .or_default()
            .push((job.version, job.state()));
    }
    for (id, _) in &ids {
        let seen = versions
            .get(id)
            .with_context(|| format!("job {id} never seen"))?;
        assert_eq!(
            seen[0],
            (1, JobState::Queued),
            "{id} seen from its creation"
        );
        assert!(
            seen.windows(2).all(|w| w[1].0 > w[0].0),
            "versions in order: {seen:?}"
        );
        assert!(seen.last().is_some_and(|(_, s)| s.is_terminal()));
    }

    let mut echo_changes = Vec::new();
    collect_changes(
        &mut echoes,
        &mut echo_changes,
        |c| {
            let e = ended(c);
            e.len() == 5 && e.values().all(|done| *done)
        },
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        echo_changes
            .iter()
            .all(|c| c.job.as_ref().is_some_and(|j| j.task == "demo.echo")),
        "the task filter holds"
    );
    let reply = rest.await??;
    assert_eq!(reply.status, 200);
    let lines = reply.lines()?;
    let rest_jobs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["result"]["job"]["task"].as_str())
        .collect();
    assert!(rest_jobs.len() >= 10, "{lines:?}");
    assert!(rest_jobs.iter().all(|t| *t == "demo.echo"));
    assert_eq!(
        lines.last().map(|l| l["error"]["code"].clone()),
        Some(serde_json::json!(4)),
        "the REST stream ends at its deadline: {lines:?}"
    );

    let leaked = tokio::time::timeout(Duration::from_millis(500), stranger.message()).await;
    assert!(
        leaked.is_err(),
        "another tenant's watcher saw nothing: {leaked:?}"
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watch_jobs_reader_skips_to_the_newest_snapshots() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![WorkerSpec::builtin("busy", 64)],
        ..Default::default()
    })
    .await?;
    let mut slow = mesh
        .jobs()
        .watch_jobs(v1::WatchJobsRequest::default())
        .await?
        .into_inner();
    let mut ids = Vec::new();
    // Large snapshots (12 KB of args each): the changes outgrow what the HTTP/2
    // windows between job-store, gateway and client hold.
    let pad = "x".repeat(12_000);
    for _ in 0..200 {
        let args = serde_json::json!({"seconds": 0.5, "steps": 25, "pad": pad});
        let job = mesh
            .submit(v1::SubmitJobRequest {
                args: args.as_object().map(jobmesh_proto::json::json_to_struct),
                ..submit("demo.sleep")
            })
            .await?;
        ids.push(job.id);
    }
    // The reader takes nothing until every job has ended.
    for id in &ids {
        mesh.finished(id, Duration::from_secs(60)).await?;
    }
    let mut changes = Vec::new();
    collect_changes(
        &mut slow,
        &mut changes,
        |c| {
            let e = ended(c);
            e.len() == 200 && e.values().all(|done| *done)
        },
        Duration::from_secs(30),
    )
    .await?;
    // Each job went through about 28 versions (queued, running, 25 progress
    // reports, succeeded): 5600 changes.
    let skipped: i64 = changes.iter().map(|c| c.skipped_changes).sum();
    let dropped: i64 = changes.iter().map(|c| c.dropped_changes).sum();
    assert!(
        skipped > 0,
        "a reader that fell behind is told it skipped ({} messages)",
        changes.len()
    );
    assert!(
        changes.len() < 200 * 28,
        "it got fewer messages than changes: {}",
        changes.len()
    );
    assert_eq!(dropped, 0, "200 jobs fit the stream's bound");
    let mut last: HashMap<&str, i64> = HashMap::new();
    for change in &changes {
        let job = change.job.as_ref().context("job")?;
        let previous = last.insert(&job.id, job.version);
        assert!(
            previous.is_none_or(|v| v < job.version),
            "versions in order"
        );
    }
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workers_shows_connected_workers_and_drops_gone_ones() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![WorkerSpec::builtin("worker-1", 3)],
        lease_ms: 3_000,
        ..Default::default()
    })
    .await?;
    let operator = mesh.operator_token();
    let list = || {
        let mut tasks = mesh.tasks_with(Some(&operator));
        async move {
            tasks
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map(|r| r.into_inner().workers)
        }
    };
    // Workers written from the proto, with what they say about themselves.
    let connect = |id: &'static str| {
        raw_worker(
            &mesh,
            v1::WorkerHello {
                worker_id: id.into(),
                tasks: vec!["py.train".into(), "py.eval".into()],
                slots: 2,
                name: "jobmesh-python".into(),
                version: "0.3.1".into(),
                host: "gpu-node-7".into(),
                labels: [("gpu".to_owned(), "a100".to_owned())].into(),
            },
        )
    };
    let (gone_out, gone_in) = connect("python-gone").await?;
    let (silent_out, silent_in) = connect("python-silent").await?;
    let mut workers = Vec::new();
    for _ in 0..50 {
        workers = list().await?;
        if workers.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(ids, ["python-gone", "python-silent", "worker-1"]);
    let rust = &workers[2];
    assert_eq!(rust.slots, 3);
    assert_eq!(rust.free_slots, 3);
    assert!(rust.tasks.contains(&"demo.sleep".to_owned()), "{rust:?}");
    assert_eq!(rust.name, "jobmesh-worker");
    assert!(!rust.host.is_empty() && !rust.version.is_empty());
    let python = &workers[0];
    assert_eq!(python.tasks, ["py.train", "py.eval"]);
    assert_eq!((python.slots, python.slots_in_use), (2, 0));
    assert_eq!(
        (
            python.name.as_str(),
            python.version.as_str(),
            python.host.as_str()
        ),
        ("jobmesh-python", "0.3.1", "gpu-node-7")
    );
    assert_eq!(python.labels.get("gpu").map(String::as_str), Some("a100"));
    assert!(python.connect_time.is_some() && python.last_seen_time.is_some());

    // A held job shows on its worker.
    let job = mesh
        .submit(v1::SubmitJobRequest {
            args: serde_json::json!({"seconds": 3, "steps": 3})
                .as_object()
                .map(jobmesh_proto::json::json_to_struct),
            ..submit("demo.sleep")
        })
        .await?;
    let mut held = Vec::new();
    for _ in 0..50 {
        held = list().await?[2].job_ids.clone();
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, std::slice::from_ref(&job.id));

    // A worker that closes its stream is gone at once; one that goes silent is
    // gone within a lease.
    drop((gone_out, gone_in));
    let started = std::time::Instant::now();
    let mut remaining = Vec::new();
    for _ in 0..100 {
        remaining = list().await?;
        if remaining.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remaining: Vec<&str> = remaining.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(remaining, ["worker-1"]);
    assert!(
        started.elapsed() < Duration::from_secs(3) + Duration::from_secs(2),
        "the silent worker was dropped within a lease"
    );

    // The scope: jobs:read is not enough, workers:read or admin is.
    let reader = mesh.token(TENANT, &[scope::READ]);
    let status = mesh
        .tasks_with(Some(&reader))
        .list_workers(v1::ListWorkersRequest {})
        .await
        .expect_err("jobs:read alone");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("workers:read"),
        "{}",
        status.message()
    );
    let admin = mesh.token(TENANT, &[scope::ADMIN]);
    mesh.tasks_with(Some(&admin))
        .list_workers(v1::ListWorkersRequest {})
        .await?;
    drop((silent_out, silent_in));
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_describing_itself_badly_is_refused() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let worker = mesh.token_without_tenant(&[scope::WORKER]);
    for (hello, field) in [
        (
            v1::WorkerHello {
                name: "n".repeat(129),
                ..Default::default()
            },
            "hello.name: ",
        ),
        (
            v1::WorkerHello {
                labels: [("bad key".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            },
            "hello.labels: ",
        ),
    ] {
        let hello = v1::WorkerHello {
            tasks: vec!["demo.echo".into()],
            slots: 1,
            ..hello
        };
        let channel = jobmesh_runtime::client::streaming_channel(&mesh.dispatcher_url)?;
        let mut client = v1::worker_service_client::WorkerServiceClient::new(
            jobmesh_auth::with_token(channel, Some(&worker)),
        );
        let status = client
            .connect(futures::stream::iter([v1::ConnectRequest {
                message: Some(connect_request::Message::Hello(hello)),
            }]))
            .await
            .expect_err("a bad hello");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_while_the_job_runs_and_go_after_their_retention() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        store: |config| config.log_retention = Duration::from_secs(1),
        ..Default::default()
    })
    .await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            args: serde_json::json!({"lines": 2, "interval_ms": 2500})
                .as_object()
                .map(jobmesh_proto::json::json_to_struct),
            ..submit("demo.logs")
        })
        .await?;
    // Older than the retention, but the job still runs: kept.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let early = read_logs(&mesh, logs_of(&job.id)).await?;
    assert_eq!(early.len(), 1, "{:?}", texts(&early));
    let done = mesh.finished(&job.id, Duration::from_secs(30)).await?;
    assert_eq!(done.state(), JobState::Succeeded);
    let mut left = read_logs(&mesh, logs_of(&job.id)).await?.len();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = read_logs(&mesh, logs_of(&job.id)).await?.len();
    }
    assert_eq!(left, 0, "the logs went within seconds of the retention");
    let still = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .context("job")?;
    assert_eq!(still.state(), JobState::Succeeded, "the job itself stays");
    mesh.stop().await;
    Ok(())
}

async fn count(
    mesh: &Mesh,
    token: Option<&str>,
    request: v1::CountJobsRequest,
) -> Result<BTreeMap<String, (i64, bool)>, tonic::Status> {
    let mut client = match token {
        Some(token) => mesh.jobs_with(Some(token)),
        None => mesh.jobs(),
    };
    let answer = client.count_jobs(request).await?.into_inner();
    assert_eq!(answer.limit, 10_000);
    let states: Vec<JobState> = answer.counts.iter().map(|c| c.state()).collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled
        ],
        "one count per state, in order"
    );
    Ok(answer
        .counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| {
            let name = c.state().as_str_name().trim_start_matches("JOB_STATE_");
            (name.to_lowercase(), (c.count, c.at_least))
        })
        .collect())
}

fn counts(entries: &[(&str, i64)]) -> BTreeMap<String, (i64, bool)> {
    entries
        .iter()
        .map(|(state, n)| ((*state).to_owned(), (*n, false)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_counted_per_state_with_the_filters_and_up_to_the_limit() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let labelled = |task: &str, team: &str| v1::SubmitJobRequest {
        labels: [("team".to_owned(), team.to_owned())].into(),
        max_attempts: 1,
        ..submit(task)
    };
    let mut ended = Vec::new();
    for _ in 0..3 {
        ended.push(mesh.submit(labelled("demo.echo", "a")).await?);
    }
    ended.push(mesh.submit(labelled("demo.fail", "a")).await?);
    ended.push(mesh.submit(labelled("demo.echo", "b")).await?);
    let mut later = labelled("demo.echo", "b");
    later.schedule_time = Some((std::time::SystemTime::now() + Duration::from_secs(3600)).into());
    let queued = mesh.submit(later).await?;
    for job in &ended {
        mesh.finished(&job.id, Duration::from_secs(30)).await?;
    }
    let other = mesh.token("tenant-b", &[scope::SUBMIT, scope::READ]);
    mesh.jobs_with(Some(&other))
        .submit_job(submit("demo.echo"))
        .await?;

    let all = v1::CountJobsRequest::default();
    assert_eq!(
        count(&mesh, None, all.clone()).await?,
        counts(&[("queued", 1), ("succeeded", 4), ("failed", 1)])
    );
    let team_a = v1::CountJobsRequest {
        labels: vec!["team=a".to_owned()],
        ..Default::default()
    };
    assert_eq!(
        count(&mesh, None, team_a).await?,
        counts(&[("succeeded", 3), ("failed", 1)])
    );
    let fails = v1::CountJobsRequest {
        task: "demo.fail".to_owned(),
        ..Default::default()
    };
    assert_eq!(count(&mesh, None, fails).await?, counts(&[("failed", 1)]));
    mesh.jobs()
        .cancel_job(v1::CancelJobRequest {
            job_id: queued.id.clone(),
        })
        .await?;
    assert_eq!(
        count(&mesh, None, all.clone()).await?,
        counts(&[("succeeded", 4), ("failed", 1), ("cancelled", 1)]),
        "the counts follow the jobs' changes"
    );
    // Another tenant's counts hold only its own job (queued or already done).
    let theirs = count(&mesh, Some(&other), all.clone()).await?;
    assert_eq!(
        theirs.values().map(|(n, _)| n).sum::<i64>(),
        1,
        "{theirs:?}"
    );

    // Bad filters: INVALID_ARGUMENT naming the field, over gRPC and REST.
    let bad_task = v1::CountJobsRequest {
        task: "9lives".to_owned(),
        ..Default::default()
    };
    let refused = count(&mesh, None, bad_task).await.expect_err("a bad task");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("task"), "{}", refused.message());
    let bad_label = v1::CountJobsRequest {
        labels: vec!["no-equals-sign".to_owned()],
        ..Default::default()
    };
    let refused = count(&mesh, None, bad_label)
        .await
        .expect_err("a bad label");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("labels"),
        "{}",
        refused.message()
    );
    let address = mesh.gateway_url.trim_start_matches("http://");
    let bearer = format!("Bearer {}", mesh.token(TENANT, &[scope::READ]));
    let reply = request(
        address,
        "GET",
        "/v1/jobs:count?labels=team%3Da&task=demo.echo",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json()?;
    assert_eq!(json["limit"], "10000", "{json}");
    assert_eq!(json["counts"][2]["state"], "JOB_STATE_SUCCEEDED", "{json}");
    assert_eq!(json["counts"][2]["count"], "3", "{json}");
    let reply = request(
        address,
        "GET",
        "/v1/jobs:count?task=9lives",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = request(address, "GET", "/v1/jobs:count", &[], b"").await?;
    assert_eq!(reply.status, 401, "{reply:?}");
    let no_read = format!("Bearer {}", mesh.token(TENANT, &[scope::SUBMIT]));
    let reply = request(
        address,
        "GET",
        "/v1/jobs:count",
        &[("Authorization", no_read.as_str())],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 403, "{reply:?}");

    // Past the limit a count stops there and says so.
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/{}", jobmesh_tests::postgres_server(), mesh.database),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO jobs (id, tenant, task, args, state, max_attempts, retry_initial_ms,
                 retry_max_ms, retry_multiplier, retry_jitter)
             SELECT gen_random_uuid(), 'tenant-many', 'demo.echo', '{}', 'succeeded', 1,
                 1000, 60000, 2, 0.2
             FROM generate_series(1, 10001)",
        )
        .await?;
    let many = mesh.token("tenant-many", &[scope::READ]);
    assert_eq!(
        count(&mesh, Some(&many), all).await?,
        [("succeeded".to_owned(), (10_000, true))].into()
    );
    mesh.stop().await;
    Ok(())
}
