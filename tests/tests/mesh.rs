//! The mesh end to end over real gRPC, PostgreSQL and NATS JetStream.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use jobmesh_proto::json::{json_to_struct, struct_to_json};
use jobmesh_proto::v1::{self, JobState};
use jobmesh_tests::{Mesh, MeshOptions, WorkerSpec};
use jobmesh_worker::{Handlers, TaskError};
use serde_json::json;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

fn args(value: serde_json::Value) -> Option<prost_types::Struct> {
    Some(json_to_struct(value.as_object().expect("an object")))
}

fn submit(task: &str, value: serde_json::Value) -> v1::SubmitJobRequest {
    v1::SubmitJobRequest {
        task: task.to_owned(),
        args: args(value),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_snapshot_then_running_progress_and_result() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    // Scheduled a second ahead so the watch surely starts while the job is queued.
    let mut request = submit("demo.sleep", json!({"seconds": 0.5, "steps": 5}));
    request.schedule_time = Some((SystemTime::now() + Duration::from_secs(1)).into());
    let job = mesh.submit(request).await?;
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.attempt, 1);

    let events = mesh.watch(&job.id, LIMIT).await?;
    let first = &events[0];
    assert_eq!(first.state(), JobState::Queued, "snapshot first: {first:?}");
    assert_eq!(first.version, job.version);
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[1] > w[0]),
        "versions strictly increase: {versions:?}"
    );
    assert!(events.iter().any(|e| e.state() == JobState::Running));
    let percents: Vec<i32> = events
        .iter()
        .filter(|e| e.state() == JobState::Running)
        .filter_map(|e| e.progress.as_ref().map(|p| p.percent))
        .collect();
    assert!(
        percents.windows(2).all(|w| w[1] >= w[0]),
        "progress never goes back: {percents:?}"
    );
    for step in [20, 40, 60, 80, 100] {
        assert!(
            percents.contains(&step),
            "progress {step}% seen live: {percents:?}"
        );
    }
    let last = events.last().expect("events");
    assert_eq!(last.state(), JobState::Succeeded);
    let result = struct_to_json(last.result.as_ref().expect("a result"));
    assert_eq!(
        serde_json::Value::Object(result),
        json!({"slept_seconds": 0.5, "steps": 5.0, "attempt": 1.0})
    );
    assert!(last.finish_time.is_some() && last.start_time.is_some());

    // A watcher that comes after the end gets the final snapshot, then the end.
    let late = mesh.watch(&job.id, LIMIT).await?;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].version, last.version);
    assert_eq!(late[0].state(), JobState::Succeeded);

    // GetJob agrees with the last event.
    let got = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(got, *last);
    mesh.stop().await;
    Ok(())
}

/// DESIGN: progress is coalesced before it is written, and watchers see each
/// update live. A job reporting 200 times in 2 s: its watcher sees all 200
/// reports, one version each, in order; PostgreSQL writes its row a few
/// times; `GetJob` shows the progress the watcher saw even before it is
/// written; and the stored job ends at the watcher's last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_reaches_watchers_while_postgres_writes_few() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let (db, connection) = tokio_postgres::connect(
        &format!("{}/{}", jobmesh_tests::postgres_server(), mesh.database),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    // Every write of a job's row, counted by PostgreSQL itself.
    db.batch_execute(
        "CREATE TABLE row_writes (job_id uuid, version bigint);
         CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN INSERT INTO row_writes VALUES (NEW.id, NEW.version); RETURN NEW; END $$;
         CREATE TRIGGER count_writes AFTER UPDATE ON jobs
            FOR EACH ROW EXECUTE FUNCTION count_write();",
    )
    .await?;
    let mut request = submit("demo.sleep", json!({"seconds": 2, "steps": 200}));
    request.schedule_time = Some((SystemTime::now() + Duration::from_secs(1)).into());
    let job = mesh.submit(request).await?;
    let mut stream = mesh
        .jobs()
        .watch_job(v1::WatchJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    let mut events: Vec<v1::Job> = Vec::new();
    let mut read_while_running = None;
    tokio::time::timeout(LIMIT, async {
        while let Some(event) = stream.message().await? {
            let event = event.job.expect("a job");
            let percent = event.progress.as_ref().map_or(0, |p| p.percent);
            if read_while_running.is_none() && event.state() == JobState::Running && percent >= 50 {
                let got = mesh
                    .jobs()
                    .get_job(v1::GetJobRequest {
                        job_id: job.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .job
                    .expect("job");
                read_while_running = Some((event.clone(), got));
            }
            events.push(event);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;

    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "one version per change, none missed or repeated: {versions:?}"
    );
    let reports: Vec<String> = events
        .iter()
        .filter(|e| e.state() == JobState::Running)
        .filter_map(|e| e.progress.as_ref())
        .map(|p| p.message.clone())
        .filter(|m| m.starts_with("step "))
        .collect();
    let expected: Vec<String> = (1..=200).map(|n| format!("step {n}/200")).collect();
    assert_eq!(reports, expected, "every report, live, in order");
    let last = events.last().expect("events");
    assert_eq!(last.state(), JobState::Succeeded);
    assert_eq!(
        last.progress
            .as_ref()
            .map(|p| (p.percent, p.message.as_str())),
        Some((100, "step 200/200")),
        "the end keeps the last report, written or not"
    );

    let (seen, got) = read_while_running.expect("a running event at 50 % or more");
    assert!(
        got.version >= seen.version
            && got.progress.as_ref().map_or(0, |p| p.percent)
                >= seen.progress.as_ref().map_or(0, |p| p.percent),
        "GetJob shows what the watcher saw: {seen:?} then {got:?}"
    );

    let id: uuid::Uuid = job.id.parse()?;
    let stored: i64 = db
        .query_one("SELECT version FROM jobs WHERE id = $1", &[&id])
        .await?
        .get(0);
    assert_eq!(
        stored, last.version,
        "PostgreSQL holds the last version watchers saw"
    );
    let writes: i64 = db
        .query_one("SELECT count(*) FROM row_writes WHERE job_id = $1", &[&id])
        .await?
        .get(0);
    // Lease and result, plus one write per 250 ms interval of reports (2 s): about 10.
    assert!(
        (2..=20).contains(&writes),
        "{writes} writes of the job's row for 200 reports"
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_250_jobs_each_exactly_once_newest_first() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    // No worker offers this task, so the jobs stay queued while we page.
    let mut submitted = Vec::new();
    for chunk in 0..25 {
        let mut batch = Vec::new();
        for n in 0..10 {
            let mut request = submit("nobody.runs_this", json!({"n": chunk * 10 + n}));
            request.labels = [("batch".to_owned(), (chunk % 2).to_string())].into();
            batch.push(mesh.submit(request));
        }
        for job in futures::future::join_all(batch).await {
            submitted.push(job?.id);
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = mesh
            .jobs()
            .list_jobs(v1::ListJobsRequest {
                page_size: 40,
                page_token: token.clone(),
                task: "nobody.runs_this".to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 40);
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 7, "250 jobs in pages of 40");
    assert_eq!(seen.len(), 250);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 250, "no job twice");
    assert_eq!(
        unique,
        submitted.iter().collect::<HashSet<_>>(),
        "every job once"
    );
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first, "newest first (UUIDv7 order)");

    // Filters: state, label, and a task nobody submitted.
    let list = |request: v1::ListJobsRequest| {
        let mut client = mesh.jobs();
        async move { client.list_jobs(request).await.map(|r| r.into_inner()) }
    };
    let queued = list(v1::ListJobsRequest {
        page_size: 1000,
        state: JobState::Queued as i32,
        ..Default::default()
    })
    .await?;
    assert_eq!(queued.jobs.len(), 250);
    let labelled = list(v1::ListJobsRequest {
        page_size: 1000,
        labels: vec!["batch=1".to_owned()],
        ..Default::default()
    })
    .await?;
    assert_eq!(labelled.jobs.len(), 120);
    assert!(labelled.jobs.iter().all(|j| j.labels["batch"] == "1"));
    let none = list(v1::ListJobsRequest {
        task: "other.task".to_owned(),
        ..Default::default()
    })
    .await?;
    assert!(none.jobs.is_empty() && none.next_page_token.is_empty());

    // A token is bound to its filters.
    let first = list(v1::ListJobsRequest {
        page_size: 10,
        ..Default::default()
    })
    .await?;
    let mismatch = list(v1::ListJobsRequest {
        page_size: 10,
        page_token: first.next_page_token,
        state: JobState::Running as i32,
        ..Default::default()
    })
    .await
    .expect_err("token used with other filters");
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert!(
        mismatch.message().starts_with("page_token: "),
        "{}",
        mismatch.message()
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tasks_end_failed_with_their_message_after_their_attempts() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let permanent = mesh
        .submit(submit("demo.fail", json!({"message": "disk on fire"})))
        .await?;
    let mut flaky = submit(
        "demo.fail",
        json!({"message": "try again", "retryable": true}),
    );
    flaky.max_attempts = 2;
    flaky.retry_policy = Some(v1::RetryPolicy {
        initial_backoff: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..Default::default()
    });
    let flaky = mesh.submit(flaky).await?;

    let done = mesh.finished(&permanent.id, LIMIT).await?;
    assert_eq!(done.state(), JobState::Failed);
    let error = done.error.expect("an error");
    assert_eq!(error.message, "disk on fire");
    assert!(!error.retryable);
    assert_eq!(done.attempt, 1, "a non-retryable failure is not retried");

    let events = mesh.watch(&flaky.id, LIMIT).await?;
    let last = events.last().expect("events");
    assert_eq!(last.state(), JobState::Failed);
    assert_eq!(last.attempt, 2, "retried up to max_attempts");
    assert_eq!(last.error.as_ref().expect("error").message, "try again");
    assert!(last.result.is_none());
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_precise_codes_and_create_nothing() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let mut jobs = mesh.jobs();
    let deep = (0..33).fold(json!(1), |inner, _| json!({ "a": inner }));
    let far_too_deep = (0..60).fold(json!(1), |inner, _| json!({ "a": inner }));
    let big = json!({ "blob": "x".repeat(300 * 1024) });
    let cases: Vec<(&str, v1::SubmitJobRequest, &str)> = vec![
        ("empty task", submit("", json!({})), "task: required"),
        (
            "task with a space",
            submit("demo echo", json!({})),
            "task: \"demo echo\" is not a task name",
        ),
        ("wildcard task", submit("demo.*", json!({})), "task: "),
        ("args too large", submit("demo.echo", big), "args: "),
        (
            "args too deep",
            submit("demo.echo", deep),
            "args: nested 33 levels deep, over the limit of 32",
        ),
        // Past prost's decoding recursion limit: refused while decoding.
        (
            "args far too deep",
            submit("demo.echo", far_too_deep),
            "failed to decode",
        ),
        (
            "bad label key",
            v1::SubmitJobRequest {
                labels: [("no spaces".to_owned(), "v".to_owned())].into(),
                ..submit("demo.echo", json!({}))
            },
            "labels: key \"no spaces\"",
        ),
        (
            "too many attempts",
            v1::SubmitJobRequest {
                max_attempts: 101,
                ..submit("demo.echo", json!({}))
            },
            "max_attempts: 101",
        ),
        (
            "negative attempts",
            v1::SubmitJobRequest {
                max_attempts: -1,
                ..submit("demo.echo", json!({}))
            },
            "max_attempts: -1",
        ),
        (
            "priority out of range",
            v1::SubmitJobRequest {
                priority: 5000,
                ..submit("demo.echo", json!({}))
            },
            "priority: 5000",
        ),
        (
            "negative timeout",
            v1::SubmitJobRequest {
                timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..submit("demo.echo", json!({}))
            },
            "timeout: ",
        ),
        (
            "jitter above 1",
            v1::SubmitJobRequest {
                retry_policy: Some(v1::RetryPolicy {
                    jitter: 2.0,
                    ..Default::default()
                }),
                ..submit("demo.echo", json!({}))
            },
            "retry_policy.jitter: 2",
        ),
    ];
    for (name, request, message) in cases {
        let status = jobs.submit_job(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with(message),
            "{name}: {:?} should start with {message:?}",
            status.message()
        );
    }

    let unknown = uuid::Uuid::now_v7().to_string();
    let get = jobs
        .get_job(v1::GetJobRequest {
            job_id: "nope".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(get.code(), Code::InvalidArgument);
    assert_eq!(get.message(), "job_id: \"nope\" is not a job id (a UUID)");
    let get = jobs
        .get_job(v1::GetJobRequest {
            job_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(get.message(), format!("job {unknown} not found"));
    let cancel = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(cancel.code(), Code::NotFound);
    let watch = jobs
        .watch_job(v1::WatchJobRequest {
            job_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(watch.code(), Code::NotFound);
    let empty = jobs
        .get_job(v1::GetJobRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(
        (empty.code(), empty.message()),
        (Code::InvalidArgument, "job_id: required")
    );
    for (request, message) in [
        (
            v1::ListJobsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size: -1 is negative",
        ),
        (
            v1::ListJobsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token: not a token returned by ListJobs",
        ),
        (
            v1::ListJobsRequest {
                labels: vec!["novalue".into()],
                ..Default::default()
            },
            "labels: \"novalue\" is not written key=value",
        ),
        (
            v1::ListJobsRequest {
                state: 42,
                ..Default::default()
            },
            "state: 42 is not a JobState",
        ),
    ] {
        let status = jobs.list_jobs(request).await.expect_err(message);
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
    }

    // Nothing was created by any of it.
    let all = jobs
        .list_jobs(v1::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        all.jobs.is_empty(),
        "bad requests created jobs: {:?}",
        all.jobs
    );
    mesh.stop().await;
    Ok(())
}

/// Counts jobs running at once, overall and per worker, and the peaks.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

fn gauged(total: Arc<Gauge>, mine: Arc<Gauge>) -> Handlers {
    let mut handlers = Handlers::new();
    handlers.register("test.gauged", move |_ctx| {
        let (total, mine) = (Arc::clone(&total), Arc::clone(&mine));
        async move {
            total.enter();
            mine.enter();
            tokio::time::sleep(Duration::from_millis(150)).await;
            mine.leave();
            total.leave();
            Ok::<_, TaskError>(json!({}))
        }
    });
    handlers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_two_slots_never_hold_more_than_four_jobs() -> anyhow::Result<()> {
    let total = Arc::new(Gauge::default());
    let (a, b) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
    let mesh = Mesh::start(MeshOptions {
        workers: vec![
            WorkerSpec {
                worker_id: "a".into(),
                slots: 2,
                handlers: gauged(Arc::clone(&total), Arc::clone(&a)),
            },
            WorkerSpec {
                worker_id: "b".into(),
                slots: 2,
                handlers: gauged(Arc::clone(&total), Arc::clone(&b)),
            },
        ],
        ..Default::default()
    })
    .await?;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(mesh.submit(submit("test.gauged", json!({}))).await?.id);
    }
    for id in &ids {
        let job = mesh.finished(id, LIMIT).await?;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    }
    assert!(
        a.peak() <= 2 && b.peak() <= 2,
        "per worker: {} and {}",
        a.peak(),
        b.peak()
    );
    assert_eq!(total.peak(), 4, "4 slots are used, never more");
    let tasks = mesh
        .tasks()
        .list_tasks(v1::ListTasksRequest {})
        .await?
        .into_inner();
    let gauged = tasks
        .tasks
        .iter()
        .find(|t| t.name == "test.gauged")
        .expect("task listed");
    assert_eq!(
        (
            gauged.workers,
            gauged.slots,
            gauged.free_slots,
            gauged.queue_depth
        ),
        (2, 4, 4, 0)
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_and_running_jobs_and_is_idempotent() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let mut jobs = mesh.jobs();
    // Queued: no worker offers the task; it ends CANCELLED at once and never runs.
    let queued = mesh.submit(submit("nobody.runs_this", json!({}))).await?;
    let cancelled = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: queued.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let again = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: queued.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(
        again.version, cancelled.version,
        "cancelling twice changes nothing"
    );

    // Running: the worker is told, stops, and the job ends CANCELLED.
    let running = mesh
        .submit(submit("demo.sleep", json!({"seconds": 60, "steps": 60})))
        .await?;
    let mut stream = jobs
        .watch_job(v1::WatchJobRequest {
            job_id: running.id.clone(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event.job.is_some_and(|j| j.state() == JobState::Running) {
            break;
        }
    }
    let requested = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: running.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert!(requested.cancel_requested || requested.state() == JobState::Cancelled);
    let done = mesh.finished(&running.id, Duration::from_secs(10)).await?;
    assert_eq!(done.state(), JobState::Cancelled);
    assert!(done.result.is_none());

    // Finished jobs cannot be cancelled.
    let echo = mesh.submit(submit("demo.echo", json!({"x": 1}))).await?;
    assert_eq!(
        mesh.finished(&echo.id, LIMIT).await?.state(),
        JobState::Succeeded
    );
    let late = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: echo.id.clone(),
        })
        .await
        .expect_err("already succeeded");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(late.message(), format!("job {} already succeeded", echo.id));
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_an_idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let mut request = submit("demo.echo", json!({"n": 1}));
    request.idempotency_key = "order-42".to_owned();
    let first = mesh.submit(request.clone()).await?;
    let second = mesh.submit(request).await?;
    assert_eq!(first.id, second.id);
    // The same key with other args is a mistake, not a resubmission.
    let mut other = submit("demo.echo", json!({"n": 2}));
    other.idempotency_key = "order-42".to_owned();
    let refused = mesh
        .jobs()
        .submit_job(other.clone())
        .await
        .expect_err("other args");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().starts_with(&format!(
            "idempotency key \"order-42\" was used for job {} with another task or other args",
            first.id
        )),
        "{}",
        refused.message()
    );
    other.args = Some(jobmesh_proto::json::json_to_struct(
        json!({"n": 1}).as_object().expect("object"),
    ));
    other.task = "demo.sleep".to_owned();
    let refused = mesh.jobs().submit_job(other).await.expect_err("other task");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    let done = mesh.finished(&first.id, LIMIT).await?;
    assert_eq!(done.state(), JobState::Succeeded);
    // Concurrent resubmissions (stored together in one batch) agree on one job too.
    let mut burst = submit("nobody.runs_this", json!({}));
    burst.idempotency_key = "burst".to_owned();
    let ids: Vec<String> = futures::future::join_all((0..20).map(|_| mesh.submit(burst.clone())))
        .await
        .into_iter()
        .map(|job| job.map(|j| j.id))
        .collect::<Result<_, _>>()?;
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one id for one key: {ids:?}"
    );
    let all = mesh
        .jobs()
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert_eq!(all.jobs.len(), 2, "one job per key");
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_after_a_dispatcher_restart_and_held_jobs_are_rerun() -> anyhow::Result<()>
{
    let mut mesh = Mesh::start(MeshOptions::default()).await?;
    let mut request = submit("demo.sleep", json!({"seconds": 1.0, "steps": 4}));
    request.retry_policy = Some(v1::RetryPolicy {
        initial_backoff: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..Default::default()
    });
    let job = mesh.submit(request).await?;
    let mut stream = mesh
        .jobs()
        .watch_job(v1::WatchJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event.job.is_some_and(|j| j.state() == JobState::Running) {
            break;
        }
    }
    mesh.restart_dispatcher().await?;
    let done = mesh.finished(&job.id, LIMIT).await?;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(
        done.attempt, 2,
        "the held attempt was re-queued, the next one ran"
    );
    assert!(
        done.error
            .as_ref()
            .is_some_and(|e| e.message.contains("disconnected")),
        "{done:?}"
    );

    // The reconnected worker takes new jobs.
    let echo = mesh
        .submit(submit("demo.echo", json!({"after": "restart"})))
        .await?;
    assert_eq!(
        mesh.finished(&echo.id, LIMIT).await?.state(),
        JobState::Succeeded
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fail_the_attempt_and_panics_do_not_kill_the_worker() -> anyhow::Result<()> {
    let mut handlers = Handlers::builtin();
    handlers.register("test.panics", |_ctx| async move {
        if true {
            panic!("handler bug");
        }
        Ok::<_, TaskError>(json!({}))
    });
    let mesh = Mesh::start(MeshOptions {
        workers: vec![WorkerSpec {
            worker_id: "w".into(),
            slots: 4,
            handlers,
        }],
        ..Default::default()
    })
    .await?;
    let fast_retry = Some(v1::RetryPolicy {
        initial_backoff: Some(prost_types::Duration {
            seconds: 0,
            nanos: 50_000_000,
        }),
        ..Default::default()
    });
    let mut slow = submit("demo.sleep", json!({"seconds": 30, "steps": 3}));
    slow.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    slow.max_attempts = 2;
    slow.retry_policy = fast_retry;
    let slow = mesh.submit(slow).await?;
    let mut panics = submit("test.panics", json!({}));
    panics.max_attempts = 2;
    panics.retry_policy = fast_retry;
    let panics = mesh.submit(panics).await?;

    let timed_out = mesh.finished(&slow.id, LIMIT).await?;
    assert_eq!(
        (timed_out.state(), timed_out.attempt),
        (JobState::Failed, 2)
    );
    let error = timed_out.error.expect("error");
    assert_eq!(error.message, "timed out after 0.3s");
    assert!(error.retryable);

    let panicked = mesh.finished(&panics.id, LIMIT).await?;
    assert_eq!((panicked.state(), panicked.attempt), (JobState::Failed, 2));
    assert_eq!(
        panicked.error.expect("error").message,
        "the handler panicked: handler bug"
    );

    // The worker survived both and still runs jobs.
    let echo = mesh
        .submit(submit("demo.echo", json!({"still": "alive"})))
        .await?;
    assert_eq!(
        mesh.finished(&echo.id, LIMIT).await?.state(),
        JobState::Succeeded
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_a_command_per_job_and_kills_its_process_group_on_cancel() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobmesh-exec-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let pid_file = dir.join("child.pid");
    std::fs::write(
        dir.join("job.sh"),
        "read -r args || true\n\
         echo '{\"progress\": 50, \"message\": \"half\"}'\n\
         echo 'a plain log line'\n\
         echo \"{\\\"result\\\": {\\\"args\\\": $args, \\\"attempt\\\": $JOBMESH_ATTEMPT}}\"\n",
    )?;
    std::fs::write(
        dir.join("hang.sh"),
        format!(
            "sleep 300 &\necho $! > {}\necho '{{\"progress\": 10, \"message\": \"started\"}}'\nwait\n",
            pid_file.display()
        ),
    )?;
    let mut handlers = Handlers::new();
    jobmesh_worker::register_exec(
        &mut handlers,
        "test.exec",
        &format!("sh {}", dir.join("job.sh").display()),
    );
    jobmesh_worker::register_exec(
        &mut handlers,
        "test.hang",
        &format!("sh {}", dir.join("hang.sh").display()),
    );
    jobmesh_worker::register_exec(&mut handlers, "test.exit", "echo 'disk full' >&2; exit 3");
    let mesh = Mesh::start(MeshOptions {
        workers: vec![WorkerSpec {
            worker_id: "exec".into(),
            slots: 4,
            handlers,
        }],
        ..Default::default()
    })
    .await?;

    // Args on stdin, progress and result as JSON lines on stdout.
    let job = mesh.submit(submit("test.exec", json!({"x": 1}))).await?;
    let events = mesh.watch(&job.id, LIMIT).await?;
    let last = events.last().expect("events");
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    let result = serde_json::Value::Object(struct_to_json(last.result.as_ref().expect("result")));
    assert_eq!(result, json!({"args": {"x": 1.0}, "attempt": 1.0}));

    // A non-zero exit fails the attempt with the stderr tail.
    let mut exit = submit("test.exit", json!({}));
    exit.max_attempts = 1;
    let exit = mesh.submit(exit).await?;
    let failed = mesh.finished(&exit.id, LIMIT).await?;
    assert_eq!(failed.state(), JobState::Failed);
    assert_eq!(
        failed.error.expect("error").message,
        "the command exited with status 3: disk full"
    );

    // Cancelling kills the whole process group, children included.
    let hang = mesh.submit(submit("test.hang", json!({}))).await?;
    let mut stream = mesh
        .jobs()
        .watch_job(v1::WatchJobRequest {
            job_id: hang.id.clone(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if event
            .job
            .is_some_and(|j| j.progress.is_some_and(|p| p.percent == 10))
        {
            break;
        }
    }
    let child: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let alive = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(alive(child), "the command's child runs");
    mesh.jobs()
        .cancel_job(v1::CancelJobRequest {
            job_id: hang.id.clone(),
        })
        .await?;
    let cancelled = mesh.finished(&hang.id, LIMIT).await?;
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(child) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !alive(child),
        "the child of a cancelled command was killed with its group"
    );
    mesh.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A page ends before its answer would pass the 4 MiB message limit: 20 jobs of
/// 200 KiB of args each (4 MB) come in several pages, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stay_under_the_message_limit_and_lose_nothing() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: Vec::new(),
        ..MeshOptions::default()
    })
    .await?;
    let blob = "x".repeat(200 * 1024);
    let mut ids = HashSet::new();
    for n in 0..20 {
        let args = json!({"blob": blob, "n": n});
        let job = mesh
            .submit(v1::SubmitJobRequest {
                task: "nobody.home".into(),
                args: args.as_object().map(json_to_struct),
                ..Default::default()
            })
            .await?;
        ids.insert(job.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = mesh
            .jobs()
            .list_jobs(v1::ListJobsRequest {
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(!page.jobs.is_empty() || page.next_page_token.is_empty());
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 1, "20 × 200 KiB should not fit one answer");
    assert_eq!(seen.len(), 20, "each job exactly once");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ids);
    // NUL characters never reach PostgreSQL: refused, nothing created.
    let refused = mesh
        .jobs()
        .submit_job(v1::SubmitJobRequest {
            task: "nobody.home".into(),
            labels: [("team".to_owned(), "a\0b".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect_err("NUL in a label");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "labels: value of \"team\" contains a NUL character"
    );
    mesh.stop().await;
    Ok(())
}

/// A result too large to be read back fails the job with a message saying so,
/// instead of being stored (a job travels whole under the 4 MiB message limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_fails_the_job_with_a_clear_message() -> anyhow::Result<()> {
    let mut handlers = Handlers::new();
    handlers.register("test.huge", |_ctx| async move {
        Ok::<_, TaskError>(json!({"blob": "y".repeat(2 * 1024 * 1024)}))
    });
    let mesh = Mesh::start(MeshOptions {
        workers: vec![WorkerSpec {
            worker_id: "huge".into(),
            slots: 1,
            handlers,
        }],
        ..MeshOptions::default()
    })
    .await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "test.huge".into(),
            ..Default::default()
        })
        .await?;
    let done = mesh.finished(&job.id, Duration::from_secs(30)).await?;
    assert_eq!(done.state(), JobState::Failed);
    let error = done.error.expect("an error");
    assert!(!error.retryable);
    assert!(
        error.message.ends_with(
            "over the limit of 1048576; store large outputs elsewhere and return a reference"
        ),
        "{}",
        error.message
    );
    assert!(done.result.is_none());
    mesh.stop().await;
    Ok(())
}
