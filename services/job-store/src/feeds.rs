//! The server streams that follow a tenant's data as it changes: one job's log
//! lines (ReadJobLogs) and every change of a tenant's jobs (WatchJobs). Both are
//! bounded per reader: the log reader reads a few chunks at a time and waits for
//! the caller to take them; the jobs watcher keeps at most the newest snapshot of a
//! bounded number of jobs while its reader is behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt as _;
use jobmesh_proto::internal as pb;
use jobmesh_proto::v1;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::error::Error;
use crate::logs::Logs;
use crate::store::Store;

/// A follower looks again this often when no notice arrived, so a lost notice
/// (NATS reconnect) delays it at most this long.
const RESYNC: Duration = Duration::from_secs(1);
/// Jobs whose newest snapshot a slow WatchJobs reader may have waiting, and their
/// encoded size; changes of further jobs are dropped (and counted) until it
/// catches up.
pub(crate) const MAX_PENDING_JOBS: usize = 1024;
pub(crate) const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Last versions sent that a watcher remembers (to drop late duplicates); the
/// memory is cleared past it.
const MAX_REMEMBERED: usize = 100_000;

/// Messages a stream's sender may have waiting for its reader.
const STREAM_BUFFER: usize = 64;

/// The sending end of a server stream. Its messages are boxed: tokio allocates
/// a channel's slots 32 at a time, and 32 `Job` snapshots inline are ~16 KiB,
/// held for as long as the stream is open.
pub(crate) type Sink<T> = mpsc::Sender<Result<Box<T>, Status>>;
/// The receiving end, as tonic sends it.
pub(crate) type Outgoing<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// A server stream's two ends.
pub(crate) fn stream<T: Send + 'static>() -> (Sink<T>, Outgoing<T>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let rx = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|m: Result<Box<T>, Status>| m.map(|boxed| *boxed));
    (tx, Box::pin(rx))
}

fn unavailable() -> Status {
    Status::unavailable("job-store is shutting down; open the stream again")
}

/// The next message of a subscription, or never once it has ended.
async fn next_or_never(subscriber: &mut Option<async_nats::Subscriber>) {
    match subscriber {
        Some(s) => {
            if s.next().await.is_none() {
                *subscriber = None;
            }
        }
        None => futures::future::pending().await,
    }
}

/// What a ReadJobLogs call asked for.
pub(crate) struct LogRead {
    pub(crate) tenant: String,
    pub(crate) job_id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) after: i64,
    /// The job's log notices and events, subscribed before the first read; `None`
    /// when not following.
    pub(crate) follow: Option<(async_nats::Subscriber, async_nats::Subscriber)>,
}

/// Sends a job's stored lines after `after`, then (when following) each new line,
/// until the job has ended and every line is sent.
pub(crate) async fn read_logs(
    store: Store,
    logs: Logs,
    request: LogRead,
    tx: Sink<pb::ReadJobLogsResponse>,
    shutdown: CancellationToken,
) {
    let LogRead {
        tenant,
        job_id,
        attempt,
        after,
        follow,
    } = request;
    let following = follow.is_some();
    let (mut notices, mut events) = match follow {
        Some((n, e)) => (Some(n), Some(e)),
        None => (None, None),
    };
    let mut cursor = after;
    let mut dropped = 0i64;
    loop {
        // Whether the job had ended is read before its lines: lines are stored
        // before the outcome that ends the job, so a job seen ended has them all.
        let ended = if following {
            match store.get(&tenant, job_id).await {
                Ok(job) => job.state.is_terminal(),
                Err(Error::NotFound { .. }) => true,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            }
        } else {
            true
        };
        loop {
            let chunks = match logs.read(job_id, cursor).await {
                Ok(chunks) => chunks,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            if chunks.is_empty() {
                break;
            }
            for chunk in chunks {
                for mut entry in chunk.entries() {
                    if entry.sequence <= cursor {
                        continue;
                    }
                    // Sequences have no gaps but where the oldest lines were dropped.
                    dropped += entry.sequence - cursor - 1;
                    cursor = entry.sequence;
                    if attempt != 0 && entry.attempt != attempt {
                        continue;
                    }
                    entry.dropped = std::mem::take(&mut dropped);
                    let message = pb::ReadJobLogsResponse { entry: Some(entry) };
                    tokio::select! {
                        sent = tx.send(Ok(Box::new(message))) => if sent.is_err() { return },
                        _ = shutdown.cancelled() => {
                            let _ = tx.try_send(Err(unavailable()));
                            return;
                        }
                    }
                }
            }
        }
        if ended {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(unavailable())).await;
                return;
            }
            _ = tx.closed() => return,
            _ = next_or_never(&mut notices) => {}
            _ = next_or_never(&mut events) => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Which jobs a WatchJobs call follows.
#[derive(Debug, Default)]
pub(crate) struct JobFilter {
    pub(crate) task: Option<String>,
    pub(crate) state: Option<v1::JobState>,
    pub(crate) labels: BTreeMap<String, String>,
}

impl JobFilter {
    fn matches(&self, job: &v1::Job) -> bool {
        self.task.as_ref().is_none_or(|t| *t == job.task)
            && self.state.is_none_or(|s| s == job.state())
            && self
                .labels
                .iter()
                .all(|(k, v)| job.labels.get(k).is_some_and(|have| have == v))
    }
}

struct Pending {
    job: v1::Job,
    bytes: usize,
    replaced: i64,
}

/// Forwards every change of a tenant's jobs matching `filter`, coalescing the
/// changes of each job while the reader is behind.
pub(crate) async fn watch_jobs(
    filter: JobFilter,
    mut subscriber: async_nats::Subscriber,
    tx: Sink<pb::WatchJobsResponse>,
    shutdown: CancellationToken,
) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut order: VecDeque<String> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut dropped = 0i64;
    let mut sent: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(unavailable()));
                break;
            }
            permit = tx.reserve(), if !order.is_empty() => {
                let Ok(permit) = permit else { break };
                let Some(id) = order.pop_front() else { continue };
                let Some(p) = pending.remove(&id) else { continue };
                pending_bytes -= p.bytes;
                let skipped = match sent.get(&id) {
                    Some(last) => (p.job.version - last - 1).max(0),
                    None => p.replaced,
                };
                // Ended jobs are remembered too: a late event of an earlier
                // change must not look new once the end was sent.
                if sent.len() >= MAX_REMEMBERED {
                    sent.clear();
                }
                sent.insert(id, p.job.version);
                permit.send(Ok(Box::new(pb::WatchJobsResponse {
                    job: Some(p.job),
                    skipped_changes: skipped,
                    dropped_changes: std::mem::take(&mut dropped),
                })));
            }
            _ = tx.closed(), if order.is_empty() => break,
            message = subscriber.next() => {
                let Some(message) = message else {
                    let _ = tx.try_send(Err(Status::unavailable("job events stopped; open the stream again")));
                    break;
                };
                let bytes = message.payload.len();
                let Ok(job) = v1::Job::decode(message.payload) else { continue };
                if !filter.matches(&job) || sent.get(&job.id).is_some_and(|v| *v >= job.version) {
                    continue;
                }
                match pending.get_mut(&job.id) {
                    Some(p) if job.version > p.job.version => {
                        pending_bytes = pending_bytes + bytes - p.bytes;
                        p.replaced += 1;
                        p.bytes = bytes;
                        p.job = job;
                    }
                    Some(_) => {}
                    None if order.len() >= MAX_PENDING_JOBS
                        || pending_bytes + bytes > MAX_PENDING_BYTES =>
                    {
                        dropped += 1;
                    }
                    None => {
                        pending_bytes += bytes;
                        order.push_back(job.id.clone());
                        pending.insert(job.id.clone(), Pending { job, bytes, replaced: 0 });
                    }
                }
            }
        }
    }
    let _ = subscriber.unsubscribe().await;
}
