//! The public `jobmesh.v1.JobService` and `jobmesh.v1.TaskService`: validate at the
//! edge, then call job-store or the dispatcher with the caller's deadline.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use jobmesh_proto::internal::{
    self as pb, dispatcher_service_client::DispatcherServiceClient,
    job_store_service_client::JobStoreServiceClient,
};
use jobmesh_proto::v1::{self, job_service_server::JobService, task_service_server::TaskService};
use jobmesh_runtime::client::Channel;
use jobmesh_runtime::grpc::forward;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use jobmesh_auth::{Authenticator, scope};

use crate::error::{Error, upstream};
use crate::limits::RateLimiter;
use crate::validate;

#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) job_store: JobStoreServiceClient<Channel>,
    /// Channels without per-call timeout, for streams, enough of them for the
    /// gateway's stream limit.
    pub(crate) job_store_streaming: crate::pool::StreamPool,
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
}

impl Gateway {
    /// The caller's tenant, once its token is verified and holds `wanted`.
    fn authorize<T>(&self, request: &Request<T>, wanted: &str) -> Result<String, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        caller.require(wanted)?;
        Ok(caller.tenant(&self.tenant_claim)?.to_owned())
    }
}

/// How an upstream stream may end early, in the caller's words.
struct Ends {
    /// The caller's deadline (`grpc-timeout`) passed.
    deadline: &'static str,
    /// The gateway is shutting down.
    shutdown: &'static str,
}

const WATCH_ENDS: Ends = Ends {
    deadline: "the watch reached the caller's deadline; the job goes on, watch it again to follow it",
    shutdown: "the gateway is shutting down; watch the job again",
};
const LOGS_ENDS: Ends = Ends {
    deadline: "the log stream reached the caller's deadline; read again with after_sequence set to the last sequence received to resume",
    shutdown: "the gateway is shutting down; read the logs again with after_sequence set to the last sequence received",
};
const JOBS_ENDS: Ends = Ends {
    deadline: "the watch reached the caller's deadline; open it again to go on following",
    shutdown: "the gateway is shutting down; open the watch again",
};

/// A stream in progress: the upstream stream, what ends it early, and its
/// place on one of the upstream channels.
struct Proxied<T> {
    upstream: tonic::Streaming<T>,
    end: Pin<Box<dyn Future<Output = Status> + Send>>,
    done: bool,
    _channel: crate::pool::InUse,
}

type Proxy<U> = Pin<Box<dyn Stream<Item = Result<U, Status>> + Send>>;

impl Gateway {
    /// Relays job-store's stream to the caller, mapping each message; it ends with
    /// the upstream stream, when the caller's deadline passes (the job goes on), or
    /// when the gateway starts shutting down (the client opens it again elsewhere).
    fn relay<T, U>(
        &self,
        source: tonic::Streaming<T>,
        metadata: &tonic::metadata::MetadataMap,
        channel: crate::pool::InUse,
        ends: &'static Ends,
        map: fn(T) -> U,
    ) -> Proxy<U>
    where
        T: Send + 'static,
        U: Send + 'static,
    {
        let deadline = jobmesh_runtime::grpc::deadline(metadata);
        let shutdown = self.shutdown.clone();
        let end: Pin<Box<dyn Future<Output = Status> + Send>> = Box::pin(async move {
            let expiry = async {
                match deadline {
                    Some(after) => tokio::time::sleep(after).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => Error::StreamShutdown(ends.shutdown).into(),
                () = expiry => Error::StreamDeadline(ends.deadline).into(),
            }
        });
        let state = Proxied {
            upstream: source,
            end,
            done: false,
            _channel: channel,
        };
        Box::pin(futures::stream::unfold(
            state,
            move |mut state| async move {
                if state.done {
                    return None;
                }
                tokio::select! {
                    item = state.upstream.next() => match item? {
                        Ok(message) => Some((Ok(map(message)), state)),
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
            },
        ))
    }
}

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

    async fn count_jobs(
        &self,
        request: Request<v1::CountJobsRequest>,
    ) -> Result<Response<v1::CountJobsResponse>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let count = validate::count(&tenant, request.get_ref().clone())?;
        let response = self
            .job_store
            .clone()
            .count_jobs(forward(request.metadata(), count))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(v1::CountJobsResponse {
            counts: response.counts,
            limit: validate::COUNT_LIMIT,
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

    type WatchJobStream = Proxy<v1::WatchJobResponse>;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let job_id = validate::job_id(&request.get_ref().job_id)?;
        jobmesh_runtime::trace::record_job(&job_id, None, None);
        let watch = pb::WatchJobRequest { tenant, job_id };
        let (mut client, channel) = self.job_store_streaming.pick();
        let stream = client
            .watch_job(forward(request.metadata(), watch))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(self.relay(
            stream,
            request.metadata(),
            channel,
            &WATCH_ENDS,
            |event| v1::WatchJobResponse { job: event.job },
        )))
    }

    type ReadJobLogsStream = Proxy<v1::ReadJobLogsResponse>;

    async fn read_job_logs(
        &self,
        request: Request<v1::ReadJobLogsRequest>,
    ) -> Result<Response<Self::ReadJobLogsStream>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let read = validate::read_logs(&tenant, request.get_ref().clone())?;
        jobmesh_runtime::trace::record_job(&read.job_id, None, None);
        let (mut client, channel) = self.job_store_streaming.pick();
        let stream = client
            .read_job_logs(forward(request.metadata(), read))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(self.relay(
            stream,
            request.metadata(),
            channel,
            &LOGS_ENDS,
            |line| v1::ReadJobLogsResponse { entry: line.entry },
        )))
    }

    type WatchJobsStream = Proxy<v1::WatchJobsResponse>;

    async fn watch_jobs(
        &self,
        request: Request<v1::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let tenant = self.authorize(&request, scope::READ)?;
        let watch = validate::watch_jobs(&tenant, request.get_ref().clone())?;
        let (mut client, channel) = self.job_store_streaming.pick();
        let stream = client
            .watch_jobs(forward(request.metadata(), watch))
            .await
            .map_err(upstream("job-store"))?
            .into_inner();
        Ok(Response::new(self.relay(
            stream,
            request.metadata(),
            channel,
            &JOBS_ENDS,
            |change| v1::WatchJobsResponse {
                job: change.job,
                skipped_changes: change.skipped_changes,
                dropped_changes: change.dropped_changes,
            },
        )))
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
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        self.authorize(&request, scope::WORKERS_READ)?;
        let response = self
            .dispatcher
            .clone()
            .list_workers(forward(request.metadata(), pb::ListWorkersRequest {}))
            .await
            .map_err(upstream("dispatcher"))?
            .into_inner();
        Ok(Response::new(v1::ListWorkersResponse {
            workers: response.workers,
        }))
    }
}
