//! State transitions are fenced by `(job_id, attempt)`: reports from a stale
//! attempt are refused with FAILED_PRECONDITION and change nothing. Driven through
//! job-store's internal gRPC API, as the dispatcher drives it.

use std::time::Duration;

use jobmesh_proto::internal::{
    CompleteJobRequest, FailJobRequest, GetJobRequest, JobAttempt, LeaseJobRequest,
    ReportProgressRequest,
};
use jobmesh_proto::v1::{self, JobState};
use jobmesh_tests::{Mesh, MeshOptions, TENANT};
use tonic::Code;

fn attempt(job_id: &str, attempt: i32) -> Option<JobAttempt> {
    Some(JobAttempt {
        job_id: job_id.to_owned(),
        attempt,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_attempts_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "fence.test".to_owned(),
            max_attempts: 3,
            retry_policy: Some(v1::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let mut store = mesh.job_store();
    let lease = |n| LeaseJobRequest {
        attempt: attempt(&job.id, n),
        worker_id: "w".to_owned(),
        lease_duration: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    let get =
        |store: &mut jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient<
            _,
        >| {
            let request = GetJobRequest {
                tenant: TENANT.to_owned(),
                job_id: job.id.clone(),
            };
            let mut store = store.clone();
            async move {
                store
                    .get_job(request)
                    .await
                    .map(|r| r.into_inner().job.unwrap_or_default())
            }
        };

    // Leasing an attempt that is not queued is refused.
    assert_eq!(
        store
            .lease_job(lease(2))
            .await
            .expect_err("attempt 2 not queued")
            .code(),
        Code::FailedPrecondition
    );
    let leased = store
        .lease_job(lease(1))
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(leased.state(), JobState::Running);
    assert_eq!(
        store
            .lease_job(lease(1))
            .await
            .expect_err("leased twice")
            .code(),
        Code::FailedPrecondition
    );

    // Attempt 1 fails retryably: the job is queued again as attempt 2 (after an
    // hour of backoff, so nothing leases it meanwhile).
    let failed = store
        .fail_job(FailJobRequest {
            attempt: attempt(&job.id, 1),
            message: "flaky".into(),
            retryable: true,
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!((failed.state(), failed.attempt), (JobState::Queued, 2));

    // Every late report of attempt 1 is refused and leaves the job as it was.
    let before = get(&mut store).await?;
    let stale = [
        store
            .complete_job(CompleteJobRequest {
                attempt: attempt(&job.id, 1),
                result: None,
            })
            .await
            .expect_err("stale complete"),
        store
            .fail_job(FailJobRequest {
                attempt: attempt(&job.id, 1),
                message: "late".into(),
                retryable: false,
            })
            .await
            .expect_err("stale fail"),
        store
            .report_progress(ReportProgressRequest {
                attempt: attempt(&job.id, 1),
                percent: 50,
                message: "late".into(),
            })
            .await
            .expect_err("stale progress"),
    ];
    for status in stale {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("is stale"),
            "{}",
            status.message()
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&mut store).await?,
        before,
        "stale reports changed the job"
    );

    // Other tenants do not see the job.
    let other = store
        .get_job(GetJobRequest {
            tenant: "other".into(),
            job_id: job.id.clone(),
        })
        .await
        .expect_err("tenant wall");
    assert_eq!(other.code(), Code::NotFound);
    mesh.stop().await;
    Ok(())
}
