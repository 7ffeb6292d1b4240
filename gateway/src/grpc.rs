//! The public `jobmesh.v1.JobService` and `jobmesh.v1.TaskService`: validate at the
//! edge, then call job-store or the dispatcher with the caller's deadline.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use jobmesh_proto::internal::{
    self as pb, dispatcher_service_client::DispatcherServiceClient,
    job_store_service_client::JobStoreServiceClient,
};
use jobmesh_proto::v1::{self, job_service_server::JobService, task_service_server::TaskService};
use jobmesh_runtime::grpc::forward;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::validate;

/// Tenant of every request until authentication assigns one per caller.
pub(crate) const DEFAULT_TENANT: &str = "default";

#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) job_store: JobStoreServiceClient<Channel>,
    /// A channel without per-call timeout, for watch streams.
    pub(crate) job_store_streaming: JobStoreServiceClient<Channel>,
    pub(crate) dispatcher: DispatcherServiceClient<Channel>,
    /// Cancelled when the gateway starts shutting down: open watch streams end
    /// with UNAVAILABLE so that clients re-watch elsewhere and the drain finishes.
    pub(crate) shutdown: CancellationToken,
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Gateway {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let create = validate::submit(DEFAULT_TENANT, request.get_ref().clone())?;
        let response = self
            .job_store
            .clone()
            .create_job(forward(request.metadata(), create))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(v1::SubmitJobResponse { job: response.job }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobResponse>, Status> {
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        let get = pb::GetJobRequest {
            tenant: DEFAULT_TENANT.to_owned(),
            job_id,
        };
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
        let list = validate::list(DEFAULT_TENANT, request.get_ref().clone())?;
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
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        let cancel = pb::CancelJobRequest {
            tenant: DEFAULT_TENANT.to_owned(),
            job_id,
        };
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
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        let watch = pb::WatchJobRequest {
            tenant: DEFAULT_TENANT.to_owned(),
            job_id,
        };
        let stream = self
            .job_store_streaming
            .clone()
            .watch_job(forward(request.metadata(), watch))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        let events = stream.map(|item| {
            item.map(|event| v1::WatchJobResponse { job: event.job })
                .map_err(upstream("job-store"))
        });
        let shutdown = self.shutdown.clone();
        let stopping = self.shutdown.clone().cancelled_owned();
        let goodbye = futures::stream::once(async move {
            Err(Status::unavailable(
                "the gateway is shutting down; watch the job again",
            ))
        })
        .filter(move |_| futures::future::ready(shutdown.is_cancelled()));
        Ok(Response::new(Box::pin(
            events.take_until(stopping).chain(goodbye),
        )))
    }
}

#[tonic::async_trait]
impl TaskService for Gateway {
    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
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
}
