//! The safety net of WatchJob, shared: NATS events are at most once, so a watch
//! must also notice a change whose event was lost. Instead of each watch
//! re-reading its job every [`WATCH_RESYNC`] (a query per watch: 2 000 a second
//! for 4 000 quiet watches), the open watches register here, and one task reads
//! the versions of every watched job in one query per 1 000 jobs, waking only
//! the watches whose job moved past what they have sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::Store;

/// How long a change whose event was lost can go unseen by a watch.
pub(crate) const WATCH_RESYNC: Duration = Duration::from_secs(2);

/// Jobs' versions read per query.
const BATCH: usize = 1000;

/// The open watches, by job.
#[derive(Clone, Default)]
pub(crate) struct Resync {
    watched: Arc<Mutex<HashMap<Uuid, Vec<Arc<Watched>>>>>,
}

/// One watch: the version it has sent, and how it is woken.
pub(crate) struct Watched {
    sent: AtomicI64,
    pub(crate) moved: Notify,
}

/// A watch's place in [`Resync`], taken out when dropped.
pub(crate) struct Registration {
    resync: Resync,
    id: Uuid,
    pub(crate) watched: Arc<Watched>,
}

impl Registration {
    /// The watch has sent `version`.
    pub(crate) fn sent(&self, version: i64) {
        self.watched.sent.store(version, Ordering::Release);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut watched = self.resync.lock();
        if let Some(watches) = watched.get_mut(&self.id) {
            watches.retain(|w| !Arc::ptr_eq(w, &self.watched));
            if watches.is_empty() {
                watched.remove(&self.id);
            }
        }
    }
}

impl Resync {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Watched>>>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a watch of `id` that has sent `version`.
    pub(crate) fn register(&self, id: Uuid, version: i64) -> Registration {
        let watched = Arc::new(Watched {
            sent: AtomicI64::new(version),
            moved: Notify::new(),
        });
        self.lock()
            .entry(id)
            .or_default()
            .push(Arc::clone(&watched));
        Registration {
            resync: self.clone(),
            id,
            watched,
        }
    }

    /// Every [`WATCH_RESYNC`] until `shutdown`: reads the versions of the
    /// watched jobs and wakes the watches behind them.
    pub(crate) async fn run(self, store: Store, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(WATCH_RESYNC) => {}
            }
            let ids: Vec<Uuid> = self.lock().keys().copied().collect();
            for chunk in ids.chunks(BATCH) {
                let versions = match store.versions(chunk).await {
                    Ok(versions) => versions,
                    Err(error) => {
                        tracing::debug!(%error, "watch resync failed; trying again");
                        break;
                    }
                };
                let watched = self.lock();
                for (id, version) in versions {
                    for watch in watched.get(&id).into_iter().flatten() {
                        if version > watch.sent.load(Ordering::Acquire) {
                            watch.moved.notify_one();
                        }
                    }
                }
            }
        }
    }
}
