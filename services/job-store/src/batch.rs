//! Group commit of submissions: concurrent CreateJob calls are stored by one
//! statement (one PostgreSQL commit, one fsync) instead of one each. Batches form
//! naturally: the collector takes every request waiting at that moment, up to
//! `MAX_BATCH`, so a lone request is never delayed, and under load the batches
//! grow while earlier ones are being written.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{Job, NewJob};
use crate::store::Store;

/// Most jobs stored by one statement.
const MAX_BATCH: usize = 256;
/// Requests waiting for a batch before callers wait to enqueue.
const QUEUE: usize = 4096;
/// Batches written at once (each holds one connection).
const CONCURRENT_BATCHES: usize = 4;

type Reply = oneshot::Sender<Result<(Job, bool), tonic::Status>>;

/// The front of the batcher.
#[derive(Clone)]
pub(crate) struct Creator {
    tx: mpsc::Sender<(NewJob, Reply)>,
}

impl Creator {
    pub(crate) fn start(store: Store, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(collect(store, rx, shutdown));
        Self { tx }
    }

    /// Stores one job as part of the next batch.
    pub(crate) async fn create(&self, new: NewJob) -> Result<(Job, bool), tonic::Status> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((new, reply))
            .await
            .map_err(|_| tonic::Status::unavailable("job-store is shutting down"))?;
        answer
            .await
            .map_err(|_| tonic::Status::unavailable("job-store is shutting down"))?
    }
}

async fn collect(
    store: Store,
    mut rx: mpsc::Receiver<(NewJob, Reply)>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    loop {
        // Wait for a free writer first: requests pile up meanwhile, and the next
        // batch takes them all.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => None,
            first = rx.recv() => first,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = batch.into_iter().unzip();
            match store.create_many(jobs).await {
                Ok(created) => {
                    for (reply, result) in replies.into_iter().zip(created) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    let status = tonic::Status::from(error);
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
