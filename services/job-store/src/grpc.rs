//! `jobmesh.internal.v1.JobStoreService`: each RPC as a domain call, its request
//! and answer converted at the edge ([`crate::convert`]).

use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use jobmesh_proto::internal::job_store_service_server::JobStoreService;
use jobmesh_proto::internal::{self as pb, JobAttempt};
use jobmesh_proto::json::struct_to_json;
use jobmesh_proto::v1;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert::{self, attempt, duration, job_id};
use crate::error::Error;
use crate::feeds;
use crate::logs::{self, Logs, MAX_APPEND_BYTES, MAX_APPEND_LINES, MAX_LINE_CHARS};
use crate::model::{Job, NewJob};
use crate::store::{ListFilter, Store};

pub(crate) struct JobStoreGrpc {
    pub(crate) writes: crate::batch::Writes,
    pub(crate) store: Store,
    pub(crate) logs: Logs,
    /// Open watches, re-read together in case an event was lost.
    pub(crate) resync: crate::resync::Resync,
    pub(crate) shutdown: CancellationToken,
}

/// Largest result a job may store (encoded).
const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// Where a CountJobs count stops at most.
const MAX_COUNT: i64 = 10_000;

/// Most bytes of jobs in one ListJobs answer (under the 4 MiB message limit).
const PAGE_BYTES: usize = 3 * 1024 * 1024;

/// A worker's text with NUL characters (which PostgreSQL text and JSON cannot
/// hold) replaced by U+FFFD, so that an outcome is recorded rather than refused.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn json_without_nul(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(without_nul(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json_without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (without_nul(&k), json_without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn job(job: &Job) -> Option<v1::Job> {
    Some(v1::Job::from(job))
}

#[tonic::async_trait]
impl JobStoreService for JobStoreGrpc {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        let r = request.into_inner();
        let mut new = NewJob::from(r);
        new.traceparent =
            jobmesh_runtime::trace::to_traceparent(&jobmesh_runtime::trace::current());
        // What a resubmission with the same key must repeat (kept only when a
        // key is given).
        let asked = new
            .idempotency_key
            .clone()
            .map(|key| (key, new.task.clone(), new.args.clone()));
        let (stored, created) = self.writes.create.call(new).await?;
        if let Some((key, task, args)) = asked
            && !created
            && (stored.task != task || stored.args != serde_json::Value::Object(args))
        {
            return Err(Error::KeyReused {
                key,
                job_id: stored.id,
            }
            .into());
        }
        jobmesh_runtime::trace::record_job(&stored.id.to_string(), Some(&stored.task), None);
        Ok(Response::new(pb::CreateJobResponse {
            job: job(&stored),
            created,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let r = request.into_inner();
        let found = self
            .store
            .get(&r.tenant, job_id("job_id", &r.job_id)?)
            .await?;
        Ok(Response::new(pb::GetJobResponse { job: job(&found) }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let filter = ListFilter {
            task: (!r.task.is_empty()).then(|| r.task.clone()),
            state: convert::state_of(r.state()),
            labels: r
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        };
        let fingerprint = crate::page::fingerprint(&r.task, r.state, &r.labels);
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(crate::page::decode(&r.page_token, fingerprint)?)
        };
        let page_size = i64::from(r.page_size.clamp(1, 1000));
        let mut jobs = self
            .store
            .list(&r.tenant, &filter, before, page_size + 1)
            .await?;
        let more = jobs.len() as i64 > page_size;
        jobs.truncate(page_size as usize);
        // A page also ends before the answer would pass the message limit (jobs
        // carry args and results): the rest comes on the next page.
        let mut out = Vec::with_capacity(jobs.len());
        let mut bytes = 0usize;
        for job in &jobs {
            let proto = v1::Job::from(job);
            let size = prost::Message::encoded_len(&proto) + 8;
            if !out.is_empty() && bytes + size > PAGE_BYTES {
                break;
            }
            bytes += size;
            out.push(proto);
        }
        let cut = out.len() < jobs.len();
        let next_page_token = if more || cut {
            jobs.get(out.len().saturating_sub(1))
                .map(|last| crate::page::encode(last.id, fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: out,
            next_page_token,
        }))
    }

    async fn count_jobs(
        &self,
        request: Request<pb::CountJobsRequest>,
    ) -> Result<Response<pb::CountJobsResponse>, Status> {
        let r = request.into_inner();
        let filter = ListFilter {
            task: (!r.task.is_empty()).then_some(r.task),
            state: None,
            labels: r
                .labels
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        };
        let limit = r.limit.clamp(1, MAX_COUNT);
        let counts = self.store.count(&r.tenant, &filter, limit).await?;
        Ok(Response::new(pb::CountJobsResponse {
            counts: counts
                .into_iter()
                .map(|(state, count)| v1::StateCount {
                    state: v1::JobState::from(state).into(),
                    count,
                    at_least: count >= limit,
                })
                .collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let r = request.into_inner();
        let cancelled = self
            .store
            .cancel(&r.tenant, job_id("job_id", &r.job_id)?)
            .await?;
        Ok(Response::new(pb::CancelJobResponse {
            job: job(&cancelled),
        }))
    }

    type WatchJobStream = feeds::Outgoing<pb::WatchJobResponse>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let r = request.into_inner();
        let id = job_id("job_id", &r.job_id)?;
        // Subscribe before reading the snapshot: a change committed after the read
        // is then in the subscription, and versions drop the ones already seen.
        let subscriber = self
            .subscribe(
                self.store_events()
                    .nats()
                    .events_subject(&r.tenant, &id.to_string()),
            )
            .await?;
        let snapshot = self.store.get(&r.tenant, id).await?;
        let (tx, rx) = feeds::stream();
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let registration = self.resync.register(id, snapshot.version);
        tokio::spawn(watch(
            store,
            r.tenant,
            snapshot,
            subscriber,
            tx,
            registration,
            shutdown,
        ));
        Ok(Response::new(rx))
    }

    async fn lease_job(
        &self,
        request: Request<pb::LeaseJobRequest>,
    ) -> Result<Response<pb::LeaseJobResponse>, Status> {
        let r = request.into_inner();
        let (id, number) = attempt(r.attempt)?;
        let lease = duration(r.lease_duration).unwrap_or(Duration::from_secs(30));
        let leased = self
            .writes
            .lease
            .call(crate::store::Lease {
                id,
                attempt: number,
                worker_id: r.worker_id,
                lease,
            })
            .await?;
        Ok(Response::new(pb::LeaseJobResponse { job: job(&leased) }))
    }

    async fn extend_leases(
        &self,
        request: Request<pb::ExtendLeasesRequest>,
    ) -> Result<Response<pb::ExtendLeasesResponse>, Status> {
        let r = request.into_inner();
        if r.attempts.len() > 10_000 {
            return Err(Status::invalid_argument(format!(
                "attempts: {} entries exceed the limit of 10000",
                r.attempts.len()
            )));
        }
        let attempts = r
            .attempts
            .into_iter()
            .map(|a| attempt(Some(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let lease = duration(r.lease_duration).unwrap_or(Duration::from_secs(30));
        let check = self.store.extend_leases(&attempts, lease).await?;
        let to_pb = |v: Vec<(Uuid, i32)>| {
            v.into_iter()
                .map(|(id, attempt)| JobAttempt {
                    job_id: id.to_string(),
                    attempt,
                })
                .collect()
        };
        Ok(Response::new(pb::ExtendLeasesResponse {
            lost: to_pb(check.lost),
            cancel_requested: to_pb(check.cancel_requested),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let r = request.into_inner();
        let (id, number) = attempt(r.attempt)?;
        if !(0..=100).contains(&r.percent) {
            return Err(Error::InvalidArgument {
                field: "percent",
                reason: format!("{} is not between 0 and 100", r.percent),
            }
            .into());
        }
        let report = crate::store::Progress {
            id,
            attempt: number,
            percent: r.percent,
            message: without_nul(&r.message),
        };
        // An attempt live here is answered at once (watchers get the report
        // now, PostgreSQL with the next coalesced write); any other is written first.
        if let Some(job) = self.store.report_live(&report).await {
            return Ok(Response::new(pb::ReportProgressResponse {
                cancel_requested: job.cancel_requested,
            }));
        }
        crate::metrics::progress_direct();
        let floor = self.store.live().settle(id, Some(number)).floor;
        let updated = self
            .writes
            .progress
            .call(crate::store::ProgressWrite { report, floor })
            .await?;
        Ok(Response::new(pb::ReportProgressResponse {
            cancel_requested: updated.cancel_requested,
        }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let r = request.into_inner();
        let (id, number) = attempt(r.attempt)?;
        // A result too large to be read back (jobs travel whole, with their args,
        // under the 4 MiB message limit) fails the job instead of being stored.
        let size = r.result.as_ref().map_or(0, prost::Message::encoded_len);
        if size > MAX_RESULT_BYTES {
            let message = format!(
                "the result is {size} bytes, over the limit of {MAX_RESULT_BYTES}; store large outputs elsewhere and return a reference"
            );
            let failed = self.store.fail(id, number, &message, false).await?;
            return Ok(Response::new(pb::CompleteJobResponse { job: job(&failed) }));
        }
        let result = json_without_nul(serde_json::Value::Object(
            r.result.as_ref().map(struct_to_json).unwrap_or_default(),
        ));
        let done = self
            .writes
            .complete
            .call(crate::store::Completion {
                id,
                attempt: number,
                result,
            })
            .await?;
        Ok(Response::new(pb::CompleteJobResponse { job: job(&done) }))
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let r = request.into_inner();
        let (id, number) = attempt(r.attempt)?;
        let failed = self
            .store
            .fail(id, number, &without_nul(&r.message), r.retryable)
            .await?;
        Ok(Response::new(pb::FailJobResponse { job: job(&failed) }))
    }

    async fn confirm_cancel(
        &self,
        request: Request<pb::ConfirmCancelRequest>,
    ) -> Result<Response<pb::ConfirmCancelResponse>, Status> {
        let r = request.into_inner();
        let (id, number) = attempt(r.attempt)?;
        let cancelled = self.store.confirm_cancel(id, number).await?;
        Ok(Response::new(pb::ConfirmCancelResponse {
            job: job(&cancelled),
        }))
    }

    async fn append_logs(
        &self,
        request: Request<pb::AppendLogsRequest>,
    ) -> Result<Response<pb::AppendLogsResponse>, Status> {
        let r = request.into_inner();
        let lines: usize = r.batches.iter().map(|b| b.lines.len()).sum();
        let bytes: usize = r
            .batches
            .iter()
            .flat_map(|b| &b.lines)
            .map(|l| l.line.len())
            .sum();
        if lines > MAX_APPEND_LINES || bytes > MAX_APPEND_BYTES {
            return Err(Error::InvalidArgument {
                field: "batches",
                reason: format!(
                    "{lines} lines of {bytes} bytes exceed the limit of {MAX_APPEND_LINES} lines and {MAX_APPEND_BYTES} bytes per call"
                ),
            }
            .into());
        }
        let mut batches = Vec::with_capacity(r.batches.len());
        for batch in r.batches {
            let (job_id, attempt) = attempt(batch.attempt)?;
            let lines = batch
                .lines
                .into_iter()
                .map(|l| {
                    let stream = l.stream();
                    logs::Line {
                        time: l
                            .time
                            .and_then(|t| SystemTime::try_from(t).ok())
                            .unwrap_or_else(SystemTime::now),
                        stream,
                        text: cut_line(without_nul(&l.line)),
                        truncated: l.truncated,
                    }
                })
                .collect();
            batches.push(logs::Batch {
                job_id,
                attempt,
                lines,
            });
        }
        let refused = self.logs.append(batches).await?;
        Ok(Response::new(pb::AppendLogsResponse {
            refused: refused
                .into_iter()
                .map(|(id, attempt)| JobAttempt {
                    job_id: id.to_string(),
                    attempt,
                })
                .collect(),
        }))
    }

    type ReadJobLogsStream = feeds::Outgoing<pb::ReadJobLogsResponse>;

    async fn read_job_logs(
        &self,
        request: Request<pb::ReadJobLogsRequest>,
    ) -> Result<Response<Self::ReadJobLogsStream>, Status> {
        let r = request.into_inner();
        let id = job_id("job_id", &r.job_id)?;
        if r.attempt < 0 {
            return Err(Error::InvalidArgument {
                field: "attempt",
                reason: format!("{} is negative; use 0 for every attempt", r.attempt),
            }
            .into());
        }
        if r.after_sequence < 0 {
            return Err(Error::InvalidArgument {
                field: "after_sequence",
                reason: format!("{} is negative", r.after_sequence),
            }
            .into());
        }
        // Subscribe before the first read: a line stored after it is announced
        // to a subscription that already exists.
        let follow = if r.follow {
            let nats = self.store_events().nats();
            let notices = self.subscribe(nats.logs_subject(&id.to_string())).await?;
            let changes = self
                .subscribe(nats.events_subject(&r.tenant, &id.to_string()))
                .await?;
            Some((notices, changes))
        } else {
            None
        };
        // The tenant wall: another tenant's job is NOT_FOUND, like a missing one.
        self.store.get(&r.tenant, id).await?;
        let (tx, rx) = feeds::stream();
        let read = feeds::LogRead {
            tenant: r.tenant,
            job_id: id,
            attempt: r.attempt,
            after: r.after_sequence,
            follow,
        };
        tokio::spawn(feeds::read_logs(
            self.store.clone(),
            self.logs.clone(),
            read,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(rx))
    }

    type WatchJobsStream = feeds::Outgoing<pb::WatchJobsResponse>;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let r = request.into_inner();
        let filter = feeds::JobFilter {
            task: (!r.task.is_empty()).then(|| r.task.clone()),
            state: match r.state() {
                v1::JobState::Unspecified => None,
                state => Some(state),
            },
            labels: r.labels.into_iter().collect(),
        };
        let subscriber = self
            .subscribe(self.store_events().nats().tenant_events_wildcard(&r.tenant))
            .await?;
        let (tx, rx) = feeds::stream();
        tokio::spawn(feeds::watch_jobs(
            filter,
            subscriber,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(rx))
    }
}

/// A line cut to the longest kept (the dispatcher cuts too; this guards the
/// table against any other caller).
fn cut_line(line: String) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((end, _)) => line[..end].to_owned(),
        None => line,
    }
}

impl JobStoreGrpc {
    fn store_events(&self) -> &crate::events::Events {
        self.store.events()
    }

    /// A subscription that NATS has registered (flushed) when this returns: what
    /// is published afterwards reaches it.
    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, Error> {
        let client = self.store_events().client();
        let subscriber = client
            .subscribe(subject)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        Ok(subscriber)
    }
}

/// Feeds one watcher: the snapshot, then each newer version in order, until the
/// job is terminal, the watcher leaves or job-store shuts down.
async fn watch(
    store: Store,
    tenant: String,
    snapshot: Job,
    mut subscriber: async_nats::Subscriber,
    tx: feeds::Sink<pb::WatchJobResponse>,
    resync: crate::resync::Registration,
    shutdown: CancellationToken,
) {
    let id = snapshot.id;
    let mut last = snapshot.version;
    let send = |job: v1::Job| Box::new(pb::WatchJobResponse { job: Some(job) });
    let terminal = snapshot.state.is_terminal();
    if tx.send(Ok(send(v1::Job::from(&snapshot)))).await.is_err() || terminal {
        return;
    }
    loop {
        let next: Option<v1::Job> = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("job-store is shutting down; watch again"))).await;
                break;
            }
            _ = tx.closed() => break,
            message = subscriber.next() => match message {
                Some(message) => match v1::Job::decode(message.payload) {
                    Ok(job) if job.version <= last => None,
                    Ok(job) if job.version == last + 1 => Some(job),
                    // A gap: an event was lost or reordered; PostgreSQL has the truth.
                    Ok(_) | Err(_) => reread(&store, &tenant, id).await,
                },
                None => reread(&store, &tenant, id).await,
            },
            // The job moved past what was sent, and its event did not come.
            () = resync.watched.moved.notified() => reread(&store, &tenant, id).await,
        };
        let Some(job) = next else { continue };
        if job.version <= last {
            continue;
        }
        last = job.version;
        resync.sent(last);
        let terminal = job.state().is_terminal();
        if tx.send(Ok(send(job))).await.is_err() || terminal {
            break;
        }
    }
    let _ = subscriber.unsubscribe().await;
}

async fn reread(store: &Store, tenant: &str, id: Uuid) -> Option<v1::Job> {
    match store.get(tenant, id).await {
        Ok(job) => Some(v1::Job::from(&job)),
        Err(error) => {
            tracing::debug!(job_id = %id, %error, "watch re-read failed");
            None
        }
    }
}
