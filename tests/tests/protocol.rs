//! The worker protocol forgives nothing silently: a worker written from the proto
//! alone (raw messages on a real Connect stream, real dispatcher, job-store,
//! PostgreSQL and NATS). An invalid report is refused on its own and changes
//! nothing else; a report about an attempt the worker does not hold is dropped
//! and answered with a cancellation; a session that ends says why; a draining
//! worker is assigned nothing more and nothing it held is re-queued.

use std::time::Duration;

use anyhow::Context as _;
use jobmesh_auth::scope;
use jobmesh_proto::v1::{self, ConnectResponse, JobState, connect_request, connect_response};
use jobmesh_tests::{Mesh, MeshOptions};
use tokio::sync::mpsc;
use tonic::Code;

const LEASE_MS: u64 = 3000;
const TASK: &str = "proto.work";

type Outbound = mpsc::Sender<v1::ConnectRequest>;
type Inbound = tonic::Streaming<ConnectResponse>;

async fn mesh() -> anyhow::Result<Mesh> {
    Mesh::start(MeshOptions {
        workers: Vec::new(),
        lease_ms: LEASE_MS,
        ..Default::default()
    })
    .await
}

/// Opens a worker's stream with `hello` and returns it with its welcome.
async fn connect(
    mesh: &Mesh,
    worker_id: &str,
    task: &str,
    slots: i32,
) -> anyhow::Result<(Outbound, Inbound, v1::WorkerWelcome)> {
    let token = mesh.token_without_tenant(&[scope::WORKER]);
    let channel = jobmesh_runtime::client::streaming_channel(&mesh.dispatcher_url)?;
    let mut client = v1::worker_service_client::WorkerServiceClient::new(jobmesh_auth::with_token(
        channel,
        Some(&token),
    ));
    let (out, out_rx) = mpsc::channel(64);
    send(
        &out,
        connect_request::Message::Hello(v1::WorkerHello {
            worker_id: worker_id.to_owned(),
            tasks: vec![task.to_owned()],
            slots,
            ..Default::default()
        }),
    )
    .await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    match next(&mut inbound).await? {
        connect_response::Message::Welcome(welcome) => Ok((out, inbound, welcome)),
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    }
}

async fn send(out: &Outbound, message: connect_request::Message) -> anyhow::Result<()> {
    out.send(v1::ConnectRequest {
        message: Some(message),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the worker's stream is closed"))
}

async fn heartbeat(out: &Outbound) -> anyhow::Result<()> {
    send(
        out,
        connect_request::Message::Heartbeat(v1::WorkerHeartbeat {}),
    )
    .await
}

/// The next message the dispatcher sends, within 10 s.
async fn next(inbound: &mut Inbound) -> anyhow::Result<connect_response::Message> {
    tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .context("nothing from the dispatcher within 10s")??
        .and_then(|m| m.message)
        .context("the dispatcher ended the stream")
}

/// The next message other than a log acknowledgement.
async fn next_said(inbound: &mut Inbound) -> anyhow::Result<connect_response::Message> {
    loop {
        match next(inbound).await? {
            connect_response::Message::LogsStored(_) => {}
            other => return Ok(other),
        }
    }
}

/// Whether anything but log acknowledgements arrives within `wait`, sending
/// heartbeats meanwhile.
async fn quiet_for(
    out: &Outbound,
    inbound: &mut Inbound,
    wait: Duration,
) -> anyhow::Result<Option<connect_response::Message>> {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        heartbeat(out).await?;
        match tokio::time::timeout(Duration::from_millis(500), inbound.message()).await {
            Err(_) => {}
            Ok(message) => match message?.and_then(|m| m.message) {
                Some(connect_response::Message::LogsStored(_)) => {}
                Some(other) => return Ok(Some(other)),
                None => anyhow::bail!("the dispatcher ended the stream"),
            },
        }
    }
    Ok(None)
}

async fn assignment(inbound: &mut Inbound) -> anyhow::Result<v1::JobAssignment> {
    match next_said(inbound).await? {
        connect_response::Message::Assignment(a) => Ok(a),
        other => anyhow::bail!("expected an assignment, got {other:?}"),
    }
}

async fn submit(mesh: &Mesh, task: &str) -> anyhow::Result<v1::Job> {
    mesh.submit(v1::SubmitJobRequest {
        task: task.to_owned(),
        ..Default::default()
    })
    .await
}

async fn job(mesh: &Mesh, id: &str) -> anyhow::Result<v1::Job> {
    mesh.jobs()
        .get_job(v1::GetJobRequest {
            job_id: id.to_owned(),
        })
        .await?
        .into_inner()
        .job
        .context("no job")
}

fn progress(a: &v1::JobAssignment, percent: i32, message: &str) -> connect_request::Message {
    connect_request::Message::Progress(v1::JobProgress {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        percent,
        message: message.to_owned(),
    })
}

fn succeeded(job_id: &str, attempt: i32, value: f64) -> connect_request::Message {
    let result = serde_json::json!({ "value": value });
    connect_request::Message::Succeeded(v1::JobSucceeded {
        job_id: job_id.to_owned(),
        attempt,
        result: result.as_object().map(jobmesh_proto::json::json_to_struct),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_report_is_refused_alone_and_the_attempt_goes_on() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let (out, mut inbound, welcome) = connect(&mesh, "w-invalid", TASK, 1).await?;
    // The welcome tells the timings: heartbeats every third of the silence limit.
    let interval = welcome.heartbeat_interval.context("heartbeat interval")?;
    let silence = welcome.silence_limit.context("silence limit")?;
    assert_eq!((interval.seconds, interval.nanos), (1, 0));
    assert_eq!((silence.seconds, silence.nanos), (3, 0));
    let first = submit(&mesh, TASK).await?;
    let second = submit(&mesh, TASK).await?;
    let a = assignment(&mut inbound).await?;
    assert_eq!(a.job_id, first.id);

    let refused = |report: &str, reason: &str, said: connect_response::Message| match said {
        connect_response::Message::Refused(r) => {
            assert_eq!(r.report, report, "{r:?}");
            assert!(r.reason.contains(reason), "{r:?}");
        }
        other => panic!("expected refused {report}, got {other:?}"),
    };
    send(&out, progress(&a, 101, "too far")).await?;
    refused(
        "progress",
        "progress.percent: 101 is not between 0 and 100",
        next_said(&mut inbound).await?,
    );
    send(&out, progress(&a, -1, "")).await?;
    refused(
        "progress",
        "progress.percent: -1",
        next_said(&mut inbound).await?,
    );
    send(&out, progress(&a, 10, &"x".repeat(5000))).await?;
    refused(
        "progress",
        "progress.message: 5000 bytes exceed the limit of 4096",
        next_said(&mut inbound).await?,
    );
    send(
        &out,
        connect_request::Message::Hello(v1::WorkerHello {
            tasks: vec![TASK.to_owned()],
            slots: 5,
            ..Default::default()
        }),
    )
    .await?;
    refused(
        "hello",
        "a session has one hello",
        next_said(&mut inbound).await?,
    );

    // Nothing else changed: for two leases the attempt stays running (its lease
    // is renewed), the worker's one slot stays taken (the second job waits), and
    // no cancellation comes.
    let said = quiet_for(&out, &mut inbound, Duration::from_millis(2 * LEASE_MS)).await?;
    assert!(said.is_none(), "the dispatcher said {said:?}");
    let now = job(&mesh, &first.id).await?;
    assert_eq!((now.state(), now.attempt), (JobState::Running, 1));
    assert_eq!(
        now.progress.map_or(0, |p| p.percent),
        0,
        "no refused percent stored"
    );
    assert_eq!(job(&mesh, &second.id).await?.state(), JobState::Queued);

    // A valid report goes through; the outcome frees the slot for the next job.
    send(&out, progress(&a, 50, "half")).await?;
    send(&out, succeeded(&a.job_id, a.attempt, 3.0)).await?;
    let done = mesh.finished(&first.id, Duration::from_secs(10)).await?;
    assert_eq!((done.state(), done.attempt), (JobState::Succeeded, 1));
    let b = assignment(&mut inbound).await?;
    assert_eq!(b.job_id, second.id);
    drop(out);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_attempts_the_worker_does_not_hold_are_dropped() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let (out, mut inbound, _) = connect(&mesh, "w-holder", TASK, 1).await?;
    let (other, mut other_in, _) = connect(&mesh, "w-other", "proto.elsewhere", 1).await?;
    let first = submit(&mesh, TASK).await?;
    let second = submit(&mesh, TASK).await?;
    let a = assignment(&mut inbound).await?;
    let cancelled = |said: connect_response::Message, attempt: i32| match said {
        connect_response::Message::Cancellation(c) => {
            assert_eq!((c.job_id.as_str(), c.attempt), (a.job_id.as_str(), attempt));
            assert!(c.reason.contains("does not hold"), "{c:?}");
        }
        other => panic!("expected a cancellation, got {other:?}"),
    };

    // Another worker claims the outcome: dropped (job-store fences by attempt,
    // the dispatcher by worker), and told to stop.
    send(&other, succeeded(&a.job_id, a.attempt, 666.0)).await?;
    cancelled(next_said(&mut other_in).await?, a.attempt);
    // The holder reports with a wrong attempt number.
    send(
        &out,
        progress(
            &v1::JobAssignment {
                attempt: 2,
                ..a.clone()
            },
            10,
            "",
        ),
    )
    .await?;
    cancelled(next_said(&mut inbound).await?, 2);
    let now = job(&mesh, &first.id).await?;
    assert_eq!((now.state(), now.attempt), (JobState::Running, 1));
    assert!(now.result.is_none());
    // The holder's slot is still its: the second job is not assigned.
    let said = quiet_for(&out, &mut inbound, Duration::from_millis(LEASE_MS)).await?;
    assert!(said.is_none(), "the dispatcher said {said:?}");
    assert_eq!(job(&mesh, &second.id).await?.state(), JobState::Queued);

    send(&out, succeeded(&a.job_id, a.attempt, 1.0)).await?;
    let b = assignment(&mut inbound).await?;
    assert_eq!(b.job_id, second.id);
    // A second outcome of the same attempt: dropped, the first one stands.
    send(&out, succeeded(&a.job_id, a.attempt, 2.0)).await?;
    cancelled(next_said(&mut inbound).await?, a.attempt);
    let done = job(&mesh, &first.id).await?;
    assert_eq!(done.state(), JobState::Succeeded);
    let value = jobmesh_proto::json::struct_to_json(&done.result.context("result")?);
    assert_eq!(value["value"], 1.0);
    // The second job goes on normally on the same slot.
    send(&out, succeeded(&b.job_id, b.attempt, 4.0)).await?;
    assert_eq!(
        mesh.finished(&second.id, Duration::from_secs(10))
            .await?
            .state(),
        JobState::Succeeded
    );
    drop((out, other));
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_told_why_its_session_ended() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let (out, mut inbound, _) = connect(&mesh, "w-silent", TASK, 1).await?;
    let job = submit(&mesh, TASK).await?;
    let _ = assignment(&mut inbound).await?;
    // Sends nothing from now on.
    let ended = tokio::time::timeout(Duration::from_millis(LEASE_MS * 3), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .context("the session did not end after the silence limit")?
    .context("the session ended with OK, saying nothing")?;
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("sent nothing for 3000 ms")
            && ended
                .message()
                .contains("send a heartbeat at least every 1000 ms, busy or idle"),
        "{}",
        ended.message()
    );
    // What it held is queued again for another attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = mesh
        .jobs()
        .get_job(v1::GetJobRequest { job_id: job.id })
        .await?
        .into_inner()
        .job
        .context("job")?;
    assert_eq!((now.state(), now.attempt), (JobState::Queued, 2));
    drop(out);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_gets_nothing_more_and_nothing_it_held_is_requeued() -> anyhow::Result<()>
{
    let mesh = mesh().await?;
    let (out, mut inbound, _) = connect(&mesh, "w-drain", TASK, 2).await?;
    let first = submit(&mesh, TASK).await?;
    let a = assignment(&mut inbound).await?;
    send(&out, connect_request::Message::Drain(v1::WorkerDrain {})).await?;
    match next_said(&mut inbound).await? {
        connect_response::Message::DrainStarted(_) => {}
        other => anyhow::bail!("expected drain_started, got {other:?}"),
    }
    let workers = mesh
        .tasks_with(Some(&mesh.operator_token()))
        .list_workers(v1::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    assert!(
        workers
            .iter()
            .any(|w| w.worker_id == "w-drain" && w.draining),
        "{workers:?}"
    );
    // A free slot, a queued job of its task: nothing is assigned.
    let second = submit(&mesh, TASK).await?;
    let said = quiet_for(&out, &mut inbound, Duration::from_secs(2)).await?;
    assert!(said.is_none(), "the dispatcher said {said:?}");
    // What it holds, it finishes; then it closes and the session ends OK.
    send(&out, succeeded(&a.job_id, a.attempt, 1.0)).await?;
    let done = mesh.finished(&first.id, Duration::from_secs(10)).await?;
    assert_eq!((done.state(), done.attempt), (JobState::Succeeded, 1));
    drop(out);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .context("the session did not end after the worker closed")?;
    assert!(
        end.is_ok(),
        "the session of a worker that closed ended with {end:?}"
    );
    // The job it never got waits for another worker, on its first attempt.
    let (next_out, mut next_in, _) = connect(&mesh, "w-next", TASK, 1).await?;
    let b = assignment(&mut next_in).await?;
    assert_eq!((b.job_id.as_str(), b.attempt), (second.id.as_str(), 1));
    drop(next_out);
    mesh.stop().await;
    Ok(())
}

/// A malformed hello ends the call at once with INVALID_ARGUMENT, a `BadRequest`
/// violation naming the field and the reason `INVALID_FIELD`, and registers
/// nothing: no worker shows up, nothing is offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hello_is_refused_by_its_field_and_registers_nothing() -> anyhow::Result<()> {
    use tonic_types::StatusExt as _;
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let token = mesh.token_without_tenant(&[scope::WORKER]);
    for (hello, field, message) in [
        (
            v1::WorkerHello {
                tasks: vec!["demo.echo".to_owned()],
                slots: 0,
                ..Default::default()
            },
            "hello.slots",
            "hello.slots: 0 is not between 1 and 10000",
        ),
        (
            v1::WorkerHello {
                tasks: vec!["demo echo".to_owned()],
                slots: 1,
                ..Default::default()
            },
            "hello.tasks",
            "hello.tasks: \"demo echo\" is not a task name",
        ),
    ] {
        let channel = jobmesh_runtime::client::streaming_channel(&mesh.dispatcher_url)?;
        let mut client = v1::worker_service_client::WorkerServiceClient::new(
            jobmesh_auth::with_token(channel, Some(&token)),
        );
        let (out, out_rx) = mpsc::channel(4);
        send(&out, connect_request::Message::Hello(hello)).await?;
        let status = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .expect_err("a bad hello is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .expect("a BadRequest")
            .field_violations
            .clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, field);
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("INVALID_FIELD")
        );
    }
    let workers = mesh
        .tasks_with(Some(&mesh.operator_token()))
        .list_workers(v1::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    assert!(workers.is_empty(), "no worker registered: {workers:?}");
    mesh.stop().await;
    Ok(())
}
