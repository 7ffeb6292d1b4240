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

/// Concurrent leases and reports are written in batches (one statement each),
/// and each is still fenced on its own: of two leases of the same attempt one
/// wins, a stale attempt's lease and results are refused, and a refused call
/// does not take its batch down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_leases_and_reports_are_each_fenced() -> anyhow::Result<()> {
    const JOBS: usize = 24;
    let mesh = Mesh::start(MeshOptions {
        workers: vec![],
        ..Default::default()
    })
    .await?;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let job = mesh
            .submit(v1::SubmitJobRequest {
                task: "fence.batch".to_owned(),
                ..Default::default()
            })
            .await?;
        ids.push(job.id);
    }
    let store = mesh.job_store();
    let lease = |id: &str, n: i32, worker: &str| {
        let mut store = store.clone();
        let request = LeaseJobRequest {
            attempt: attempt(id, n),
            worker_id: worker.to_owned(),
            lease_duration: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        };
        async move { store.lease_job(request).await.map(|r| r.into_inner().job) }
    };
    // Every job: two workers race for attempt 1, and a lease of attempt 2 (not
    // queued) comes with them, all at once.
    let calls = ids
        .iter()
        .flat_map(|id| [lease(id, 1, "a"), lease(id, 1, "b"), lease(id, 2, "stale")]);
    let outcomes = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    for (id, three) in ids.iter().zip(outcomes.chunks(3)) {
        let won: Vec<_> = three[..2].iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "job {id}: exactly one lease of attempt 1 wins: {three:?}"
        );
        let job = won[0].clone().expect("the leased job");
        assert_eq!(job.state(), JobState::Running);
        for refused in three.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        }
        assert!(three[2].is_err(), "job {id}: attempt 2 was never queued");
        winners.push(job.worker_id);
    }

    // Results and progress, all at once: attempt 1's are taken, attempt 2's
    // refused; half of the jobs report progress, half succeed.
    let mut calls = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        for number in [1, 2] {
            let mut store = store.clone();
            let id = id.clone();
            calls.push(async move {
                if n % 2 == 0 {
                    store
                        .complete_job(CompleteJobRequest {
                            attempt: attempt(&id, number),
                            result: Some(jobmesh_proto::json::json_to_struct(
                                serde_json::json!({"n": n, "attempt": number})
                                    .as_object()
                                    .expect("object"),
                            )),
                        })
                        .await
                        .map(|_| ())
                } else {
                    store
                        .report_progress(ReportProgressRequest {
                            attempt: attempt(&id, number),
                            percent: 40 + number,
                            message: format!("attempt {number}"),
                        })
                        .await
                        .map(|_| ())
                }
            });
        }
    }
    let outcomes = futures::future::join_all(calls).await;
    for (n, (id, two)) in ids.iter().zip(outcomes.chunks(2)).enumerate() {
        assert!(two[0].is_ok(), "job {id}: attempt 1's report: {:?}", two[0]);
        let refused = two[1].as_ref().expect_err("attempt 2's report");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let stored = mesh
            .job_store()
            .get_job(GetJobRequest {
                tenant: TENANT.to_owned(),
                job_id: id.clone(),
            })
            .await?
            .into_inner()
            .job
            .expect("job");
        assert_eq!(
            stored.worker_id, winners[n],
            "job {id}: the winner holds it"
        );
        if n % 2 == 0 {
            assert_eq!(stored.state(), JobState::Succeeded, "job {id}");
            let result = serde_json::to_value(jobmesh_proto::json::struct_to_json(
                stored.result.as_ref().expect("a result"),
            ))?;
            assert_eq!(
                result,
                serde_json::json!({"n": n as f64, "attempt": 1.0}),
                "job {id}"
            );
        } else {
            let progress = stored.progress.clone().unwrap_or_default();
            assert_eq!(
                (stored.state(), progress.percent, progress.message.as_str()),
                (JobState::Running, 41, "attempt 1"),
                "job {id}"
            );
        }
    }
    Ok(())
}
