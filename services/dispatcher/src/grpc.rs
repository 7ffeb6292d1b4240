//! The dispatcher's RPCs: `jobmesh.v1.WorkerService` (a worker's session, served
//! by [`crate::session`]) and `jobmesh.internal.v1.DispatcherService` (the
//! registry as the gateway sees it).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use jobmesh_proto::internal::dispatcher_service_server::DispatcherService;
use jobmesh_proto::internal::{
    ListTasksRequest, ListTasksResponse, ListWorkersRequest, ListWorkersResponse, TaskCapacity,
};
use jobmesh_proto::v1::ConnectRequest;
use jobmesh_proto::v1::WorkerInfo;
use jobmesh_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status, Streaming};

use crate::Dispatcher;
use crate::error::Error;
use crate::session;

/// Most subjects read from the stream when computing queue depths.
const MAX_SUBJECTS: usize = 10_000;
/// Most workers one ListWorkers answer shows, and held jobs shown per worker
/// (so that the answer stays far under the message limit).
const MAX_WORKERS_SHOWN: usize = 1000;
const MAX_HELD_SHOWN: usize = 100;

/// `jobmesh.v1.WorkerService`: workers connect here.
pub(crate) struct WorkerGrpc {
    pub(crate) ctx: Arc<Dispatcher>,
    /// Workers present a token with the `worker` scope.
    pub(crate) auth: jobmesh_auth::Authenticator,
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    type ConnectStream = session::ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.auth.authenticate(request.metadata())?;
        Ok(Response::new(session::open(&self.ctx, request).await?))
    }
}

/// `jobmesh.internal.v1.DispatcherService`.
pub(crate) struct DispatcherGrpc {
    pub(crate) ctx: Arc<Dispatcher>,
}

#[tonic::async_trait]
impl DispatcherService for DispatcherGrpc {
    async fn list_tasks(
        &self,
        _request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let tasks = snapshot(&self.ctx).await?;
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let (views, in_use) = self.ctx.registry.workers(MAX_HELD_SHOWN);
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let workers = views
            .into_iter()
            .zip(in_use)
            .take(MAX_WORKERS_SHOWN)
            .map(|(w, used)| WorkerInfo {
                worker_id: w.worker_id,
                tasks: w.tasks,
                slots: count(w.slots),
                slots_in_use: count(used),
                free_slots: count(w.slots.saturating_sub(used)),
                job_ids: w.held,
                connect_time: Some(w.connect_time.into()),
                last_seen_time: Some(w.last_seen.into()),
                name: w.about.name,
                version: w.about.version,
                host: w.about.host,
                labels: w.about.labels.into_iter().collect(),
                draining: w.draining,
            })
            .collect();
        Ok(Response::new(ListWorkersResponse { workers }))
    }
}

/// Every task this dispatcher knows or JetStream holds messages for: connected
/// workers, slots, free slots and messages waiting.
pub(crate) async fn snapshot(ctx: &Dispatcher) -> Result<Vec<TaskCapacity>, Error> {
    let mut depths: BTreeMap<String, i64> = BTreeMap::new();
    let stream = ctx
        .jetstream
        .get_stream(ctx.config.nats.stream_name())
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let subjects = stream
        .info_with_subjects(ctx.config.nats.jobs_wildcard())
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let subjects: Vec<(String, usize)> = subjects
        .take(MAX_SUBJECTS)
        .try_collect()
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    for (subject, count) in subjects {
        if let Some(task) = ctx.config.nats.task_of_subject(&subject) {
            depths.insert(task.to_owned(), i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
    for task in ctx.registry.tasks() {
        depths.entry(task).or_insert(0);
    }
    let tasks = depths
        .into_iter()
        .map(|(name, queue_depth)| {
            let capacity = ctx.registry.capacity(&name);
            TaskCapacity {
                name,
                workers: i32::try_from(capacity.workers).unwrap_or(i32::MAX),
                slots: i32::try_from(capacity.slots).unwrap_or(i32::MAX),
                free_slots: i32::try_from(capacity.free).unwrap_or(i32::MAX),
                queue_depth,
            }
        })
        .collect();
    Ok(tasks)
}
