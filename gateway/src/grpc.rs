//! The public `jobmesh.v1.JobService` and `jobmesh.v1.TaskService`: validate at the
//! edge, then call job-store or the dispatcher with the caller's deadline.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use jobmesh_proto::internal::{
    self as pb, dispatcher_service_client::DispatcherServiceClient,
    job_store_service_client::JobStoreServiceClient,
};
use jobmesh_proto::v1::{self, job_service_server::JobService, task_service_server::TaskService};
use jobmesh_runtime::grpc::Channel;
use jobmesh_runtime::grpc::forward;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use jobmesh_runtime::auth::{Authenticator, scope};

use crate::limits::{RateLimiter, WatchSlots};
use crate::validate;

#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) job_store: JobStoreServiceClient<Channel>,
    /// A channel without per-call timeout, for watch streams.
    pub(crate) job_store_streaming: JobStoreServiceClient<Channel>,
    pub(crate) dispatcher: DispatcherServiceClient<Channel>,
    /// Cancelled when the gateway starts shutting down: open watch streams end
    /// with UNAVAILABLE so that clients re-watch elsewhere and the drain finishes.
    pub(crate) shutdown: CancellationToken,
    /// Verifies each caller's token.
    pub(crate) auth: Authenticator,
    /// Claim that names the caller's tenant (for error messages).
    pub(crate) tenant_claim: String,
    /// Per-tenant submit rate.
    pub(crate) submits: Arc<RateLimiter>,
    /// Open watch streams.
    pub(crate) watches: WatchSlots,
}

impl Gateway {
    /// The caller's tenant, once its token is verified and holds `wanted`.
    fn authorize<T>(&self, request: &Request<T>, wanted: &str) -> Result<String, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        caller.require(wanted)?;
        Ok(caller.tenant(&self.tenant_claim)?.to_owned())
    }
}

/// Internal failures reach the client with their code; a dependency that cannot be
/// reached says which one.
fn upstream(service: &'static str) -> impl Fn(Status) -> Status {
    move |status| match status.code() {
        tonic::Code::Unavailable => {
            Status::unavailable(format!("{service} unavailable: {}", status.message()))
        }
        _ => status,
    }
}

/// A watch in progress: job-store's stream, what ends it early, and the slot it holds.
struct WatchState {
    events: tonic::Streaming<pb::WatchJobResponse>,
    end: Pin<Box<dyn Future<Output = Status> + Send>>,
    done: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Gateway {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let tenant = self.authorize(&request, scope::SUBMIT)?;
        self.submits.check(&tenant)?;
        let create = validate::submit(&tenant, request.get_ref().clone())?;
        let response = self
            .job_store
            .clone()
            .create_job(forward(request.metadata(), create))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        if let Some(job) = &response.job {
            jobmesh_runtime::trace::record_job(&job.id, Some(&job.task), None);
        }
        Ok(Response::new(v1::SubmitJobResponse { job: response.job }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobResponse>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        jobmesh_runtime::trace::record_job(&job_id, None, None);
        let get = pb::GetJobRequest { tenant, job_id };
        let response = self
            .job_store
            .clone()
            .get_job(forward(request.metadata(), get))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(v1::GetJobResponse { job: response.job }))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let list = validate::list(&tenant, request.get_ref().clone())?;
        let response = self
            .job_store
            .clone()
            .list_jobs(forward(request.metadata(), list))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(v1::ListJobsResponse {
            jobs: response.jobs,
            next_page_token: response.next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        let tenant = self.authorize(&request, scope::CANCEL)?;
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        jobmesh_runtime::trace::record_job(&job_id, None, None);
        let cancel = pb::CancelJobRequest { tenant, job_id };
        let response = self
            .job_store
            .clone()
            .cancel_job(forward(request.metadata(), cancel))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(v1::CancelJobResponse { job: response.job }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        jobmesh_runtime::trace::record_job(&job_id, None, None);
        let slot = self.watches.acquire()?;
        let watch = pb::WatchJobRequest { tenant, job_id };
        let stream = self
            .job_store_streaming
            .clone()
            .watch_job(forward(request.metadata(), watch))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        // The stream ends after the job's terminal state, when the caller's
        // deadline passes (grpc-timeout; the job goes on), or when the gateway
        // starts shutting down (the client re-watches elsewhere).
        let deadline = jobmesh_runtime::grpc::deadline(request.metadata());
        let shutdown = self.shutdown.clone();
        let end: Pin<Box<dyn Future<Output = Status> + Send>> = Box::pin(async move {
            let expiry = async {
                match deadline {
                    Some(after) => tokio::time::sleep(after).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => Status::unavailable(
                    "the gateway is shutting down; watch the job again",
                ),
                () = expiry => Status::deadline_exceeded(
                    "the watch reached the caller's deadline; the job goes on, watch it again to follow it",
                ),
            }
        });
        let state = WatchState {
            events: stream,
            end,
            done: false,
            _slot: slot,
        };
        let events = futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            tokio::select! {
                item = state.events.next() => match item? {
                    Ok(event) => Some((Ok(v1::WatchJobResponse { job: event.job }), state)),
                    Err(status) => {
                        state.done = true;
                        Some((Err(upstream("job-store")(status)), state))
                    }
                },
                status = &mut state.end => {
                    state.done = true;
                    Some((Err(status), state))
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    type ReadJobLogsStream =
        Pin<Box<dyn Stream<Item = Result<v1::ReadJobLogsResponse, Status>> + Send>>;

    async fn read_job_logs(
        &self,
        _request: Request<v1::ReadJobLogsRequest>,
    ) -> Result<Response<Self::ReadJobLogsStream>, Status> {
        Err(Status::unimplemented("ReadJobLogs is not implemented yet"))
    }

    type WatchJobsStream =
        Pin<Box<dyn Stream<Item = Result<v1::WatchJobsResponse, Status>> + Send>>;

    async fn watch_jobs(
        &self,
        _request: Request<v1::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        Err(Status::unimplemented("WatchJobs is not implemented yet"))
    }
}

#[tonic::async_trait]
impl TaskService for Gateway {
    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        self.authorize(&request, scope::READ)?;
        let response = self
            .dispatcher
            .clone()
            .list_tasks(forward(request.metadata(), pb::ListTasksRequest {}))
            .await
            .map_err(upstream("dispatcher"))?
            .into_inner();
        Ok(Response::new(v1::ListTasksResponse {
            tasks: response
                .tasks
                .into_iter()
                .map(|t| v1::TaskInfo {
                    name: t.name,
                    workers: t.workers,
                    slots: t.slots,
                    free_slots: t.free_slots,
                    queue_depth: t.queue_depth,
                })
                .collect(),
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("ListWorkers is not implemented yet"))
    }
}
