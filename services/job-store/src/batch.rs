//! Group commit: concurrent calls of one kind (submissions, leases, results) are
//! written by one statement (one PostgreSQL commit, one fsync) instead of one
//! each. Batches form naturally: the collector takes every call waiting at that
//! moment, up to `MAX_BATCH`, so a lone call is never delayed, and under load the
//! batches grow while earlier ones are being written. Each call is answered
//! only after its batch committed, with its own outcome (a fenced-out lease
//! fails alone, not its batch).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{Job, NewJob};
use crate::store::{Completion, Lease, ProgressWrite, Store};

/// Most calls written by one statement.
const MAX_BATCH: usize = 256;
/// Calls waiting for a batch before callers wait to enqueue.
const QUEUE: usize = 4096;
/// Submission batches written at once (each holds one connection). Submitters
/// wait for nothing else, so several batches may be in flight.
const SUBMIT_WRITERS: usize = 4;
/// Lease and report batches written at once: one, so that whatever arrives
/// while a batch is written forms the next (a worker's slots cycle through
/// lease and report in step, and with more writers each call would find one
/// free and go alone).
const REPORT_WRITERS: usize = 1;

/// The outcome of one call.
pub(crate) type Outcome<O> = Result<O, tonic::Status>;
type Reply<O> = oneshot::Sender<Outcome<O>>;

/// The front of a batcher of calls `I` answered with `O`.
pub(crate) struct Batcher<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher whose batches `write` stores, at most `writers` at once,
    /// answering each call in order (one outcome per call), until `shutdown`.
    ///
    /// Calls with the same `key` (a job id) never share a batch: a later one
    /// waits for the next, so that one statement updates each row once.
    pub(crate) fn start<W, F>(
        writers: usize,
        key: fn(&I) -> Option<Uuid>,
        write: W,
        shutdown: CancellationToken,
    ) -> Self
    where
        W: Fn(Vec<I>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Outcome<O>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(collect(writers, key, Arc::new(write), rx, shutdown));
        Self { tx }
    }

    /// Writes `item` as part of the next batch.
    pub(crate) async fn call(&self, item: I) -> Outcome<O> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }
}

fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("job-store is shutting down")
}

async fn collect<I, O, W, F>(
    writers: usize,
    key: fn(&I) -> Option<Uuid>,
    write: Arc<W>,
    mut rx: mpsc::Receiver<(I, Reply<O>)>,
    shutdown: CancellationToken,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<Outcome<O>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(writers));
    // Calls taken from the queue that wait for a later batch (their key was in
    // the one being formed).
    let mut held: VecDeque<(I, Reply<O>)> = VecDeque::new();
    loop {
        // Wait for a free writer first: calls pile up meanwhile, and the next
        // batch takes them all.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let first = match held.pop_front() {
            Some(first) => Some(first),
            None => tokio::select! {
                _ = shutdown.cancelled() => None,
                first = rx.recv() => first,
            },
        };
        let Some(first) = first else { return };
        let mut keys = HashSet::new();
        keys.extend(key(&first.0));
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        while let Some(call) = held.pop_front() {
            if batch.len() < MAX_BATCH && key(&call.0).is_none_or(|k| keys.insert(k)) {
                batch.push(call);
            } else {
                later.push_back(call);
            }
        }
        held = later;
        while batch.len() < MAX_BATCH && held.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(call) if key(&call.0).is_none_or(|k| keys.insert(k)) => batch.push(call),
                Ok(call) => held.push_back(call),
                Err(_) => break,
            }
        }
        let write = Arc::clone(&write);
        tokio::spawn(async move {
            let (items, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
            let mut outcomes = write(items).await.into_iter();
            for reply in replies {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(tonic::Status::internal(
                        "a batch write answered fewer calls than it was given",
                    ))
                });
                let _ = reply.send(outcome);
            }
            drop(permit);
        });
    }
}

/// The outcomes of a batch written as a whole: `written`'s values one per call,
/// or its error for every call.
pub(crate) fn each<O, E: Into<tonic::Status>>(
    calls: usize,
    written: Result<Vec<O>, E>,
) -> Vec<Outcome<O>> {
    match written {
        Ok(values) => values.into_iter().map(Ok).collect(),
        Err(error) => {
            let status: tonic::Status = error.into();
            (0..calls).map(|_| Err(status.clone())).collect()
        }
    }
}

/// job-store's group-committed writes.
#[derive(Clone)]
pub(crate) struct Writes {
    pub(crate) create: Batcher<NewJob, (Job, bool)>,
    pub(crate) lease: Batcher<Lease, Job>,
    pub(crate) progress: Batcher<ProgressWrite, Job>,
    pub(crate) complete: Batcher<Completion, Job>,
}

impl Writes {
    pub(crate) fn start(store: &Store, shutdown: &CancellationToken) -> Self {
        let create = {
            let store = store.clone();
            Batcher::start(
                SUBMIT_WRITERS,
                |_| None,
                move |jobs: Vec<NewJob>| {
                    let store = store.clone();
                    async move { each(jobs.len(), store.create_many(jobs).await) }
                },
                shutdown.clone(),
            )
        };
        let lease = {
            let store = store.clone();
            Batcher::start(
                REPORT_WRITERS,
                |lease: &Lease| Some(lease.id),
                move |leases: Vec<Lease>| {
                    let store = store.clone();
                    async move { store.lease_many(&leases).await }
                },
                shutdown.clone(),
            )
        };
        let progress = {
            let store = store.clone();
            Batcher::start(
                REPORT_WRITERS,
                |write: &ProgressWrite| Some(write.report.id),
                move |reports: Vec<ProgressWrite>| {
                    let store = store.clone();
                    async move { store.progress_many(reports).await }
                },
                shutdown.clone(),
            )
        };
        let complete = {
            let store = store.clone();
            Batcher::start(
                REPORT_WRITERS,
                |done: &Completion| Some(done.id),
                move |results: Vec<Completion>| {
                    let store = store.clone();
                    async move { store.complete_many(results).await }
                },
                shutdown.clone(),
            )
        };
        Self {
            create,
            lease,
            progress,
            complete,
        }
    }
}
