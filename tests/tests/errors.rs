//! Errors a program can read, over real gRPC: every refusal of the public API
//! carries `google.rpc` details (AIP-193) — an `ErrorInfo` with a stable reason
//! and the ids it is about, a `BadRequest` naming the field of an
//! `INVALID_ARGUMENT`, a `RetryInfo` on `RESOURCE_EXHAUSTED` — and input that
//! cannot be stored as sent is refused, not changed.

use std::time::{Duration, SystemTime};

use jobmesh_auth::scope;
use jobmesh_proto::v1;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};
use tonic::Code;
use tonic_types::StatusExt as _;

/// The reason, domain and metadata of a status's `ErrorInfo`.
fn info(status: &tonic::Status) -> (String, Vec<(String, String)>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "jobmesh.dev", "{status:?}");
    let mut metadata: Vec<(String, String)> = info
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort();
    (info.reason.clone(), metadata)
}

fn violation(status: &tonic::Status) -> Option<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().cloned())
        .map(|v| (v.field, v.description))
}

fn submit(task: &str) -> v1::SubmitJobRequest {
    v1::SubmitJobRequest {
        task: task.to_owned(),
        ..Default::default()
    }
}

fn number(n: f64) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            "x".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(n)),
            },
        )]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_carries_details_a_program_can_read() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.submit_rate = 0.5;
            config.submit_burst = 8;
        },
        ..Default::default()
    })
    .await?;
    let mut jobs = mesh.jobs();

    // A bad field: INVALID_FIELD, and the field in a BadRequest.
    let refused = jobs
        .submit_job(v1::SubmitJobRequest {
            priority: 5000,
            ..submit("demo.echo")
        })
        .await
        .expect_err("priority out of range");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        info(&refused),
        (
            "INVALID_FIELD".to_owned(),
            vec![("field".to_owned(), "priority".to_owned())]
        )
    );
    assert_eq!(
        violation(&refused),
        Some((
            "priority".to_owned(),
            "5000 is not between -1000 and 1000".to_owned()
        ))
    );

    // Input that cannot be stored as sent is refused, not changed.
    for n in [f64::NAN, f64::INFINITY] {
        let refused = jobs
            .submit_job(v1::SubmitJobRequest {
                args: Some(number(n)),
                ..submit("demo.echo")
            })
            .await
            .expect_err("not a finite number");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(
            violation(&refused).map(|v| v.0),
            Some("args".to_owned()),
            "{refused:?}"
        );
        assert!(
            refused.message().contains("args.x is"),
            "{}",
            refused.message()
        );
    }
    let refused = jobs
        .submit_job(v1::SubmitJobRequest {
            schedule_time: Some(SystemTime::UNIX_EPOCH.into()),
            ..submit("demo.echo")
        })
        .await
        .expect_err("an epoch start time");
    assert_eq!(
        violation(&refused).map(|v| v.0),
        Some("schedule_time".to_owned())
    );

    // job-store's refusals keep their reasons through the gateway.
    let unknown = "01a209d6-0000-7000-8000-000000000000";
    let refused = jobs
        .get_job(v1::GetJobRequest {
            job_id: unknown.to_owned(),
        })
        .await
        .expect_err("unknown job");
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(
        info(&refused),
        (
            "JOB_NOT_FOUND".to_owned(),
            vec![("job_id".to_owned(), unknown.to_owned())]
        )
    );
    let keyed = v1::SubmitJobRequest {
        idempotency_key: "order-42".to_owned(),
        ..submit("demo.echo")
    };
    let first = jobs.submit_job(keyed.clone()).await?.into_inner().job;
    let first = first.expect("job");
    let refused = jobs
        .submit_job(v1::SubmitJobRequest {
            args: Some(number(2.0)),
            ..keyed
        })
        .await
        .expect_err("the key with other args");
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(
        info(&refused),
        (
            "IDEMPOTENCY_KEY_REUSED".to_owned(),
            vec![
                ("idempotency_key".to_owned(), "order-42".to_owned()),
                ("job_id".to_owned(), first.id.clone())
            ]
        )
    );
    mesh.finished(&first.id, Duration::from_secs(20)).await?;
    let refused = jobs
        .cancel_job(v1::CancelJobRequest {
            job_id: first.id.clone(),
        })
        .await
        .expect_err("cancel a finished job");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        info(&refused),
        (
            "JOB_ALREADY_FINISHED".to_owned(),
            vec![
                ("job_id".to_owned(), first.id.clone()),
                ("state".to_owned(), "succeeded".to_owned())
            ]
        )
    );

    // Credentials.
    let refused = mesh
        .jobs_with(None)
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(info(&refused).0, "TOKEN_MISSING");
    let reader = mesh.token(TENANT, &[scope::READ]);
    let refused = mesh
        .jobs_with(Some(&reader))
        .submit_job(submit("demo.echo"))
        .await
        .expect_err("no submit scope");
    assert_eq!(
        info(&refused),
        (
            "SCOPE_MISSING".to_owned(),
            vec![("scope".to_owned(), "jobs:submit".to_owned())]
        )
    );

    // Over the submit rate: when to retry, exactly.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(status) = jobs.submit_job(submit("demo.echo")).await {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("the submit rate refuses past its burst");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(info(&limited).0, "SUBMIT_RATE_EXCEEDED");
    let delay = limited
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    mesh.stop().await;
    Ok(())
}
