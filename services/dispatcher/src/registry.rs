//! Connected workers, the tasks they offer and the attempts they hold. A slot is
//! taken (an attempt recorded as held) before the lease is asked for, so a worker
//! is never sent more attempts than it has slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobmesh_proto::v1::ConnectResponse;
use tokio::sync::{Notify, mpsc};

/// One attempt: job id and attempt number.
pub(crate) type Attempt = (String, i32);

/// Identifies one worker session on this dispatcher.
pub(crate) type SessionId = u64;

/// What a worker said about itself, and when its session opened.
#[derive(Clone, Debug, Default)]
pub(crate) struct About {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) host: String,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
}

/// When a session last heard from its worker, in milliseconds since the Unix
/// epoch; updated by the session on every message, without the registry lock.
#[derive(Clone, Debug, Default)]
pub(crate) struct LastSeen(Arc<AtomicU64>);

impl LastSeen {
    pub(crate) fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.0.store(now, Ordering::Relaxed);
    }

    fn get(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// A connected worker as ListWorkers shows it.
#[derive(Clone, Debug)]
pub(crate) struct WorkerView {
    pub(crate) worker_id: String,
    pub(crate) tasks: Vec<String>,
    pub(crate) slots: usize,
    pub(crate) held: Vec<String>,
    pub(crate) draining: bool,
    pub(crate) connect_time: SystemTime,
    pub(crate) last_seen: SystemTime,
    pub(crate) about: About,
}

struct Worker {
    worker_id: String,
    tasks: Vec<String>,
    slots: usize,
    about: About,
    connect_time: SystemTime,
    last_seen: LastSeen,
    /// Attempts on this worker: `false` while the lease is being asked for,
    /// `true` once job-store recorded it.
    held: HashMap<Attempt, bool>,
    /// Slots reserved whose assignment has not been sent (or given up) yet.
    unsent: usize,
    /// The worker asked for nothing more (`drain`).
    draining: bool,
    /// `drain_started` was handed out to be sent.
    drain_told: bool,
    tx: mpsc::Sender<ConnectResponse>,
}

impl Worker {
    /// The sender to tell a draining worker `drain_started` with, once no
    /// assignment is on its way any more (only once).
    fn drain_ready(&mut self) -> Option<mpsc::Sender<ConnectResponse>> {
        if self.draining && self.unsent == 0 && !self.drain_told {
            self.drain_told = true;
            return Some(self.tx.clone());
        }
        None
    }
}

#[derive(Default)]
struct Inner {
    next_session: SessionId,
    workers: HashMap<SessionId, Worker>,
    notify: HashMap<String, Arc<Notify>>,
}

/// A slot taken on a worker for one attempt.
pub(crate) struct Slot {
    pub(crate) session: SessionId,
    pub(crate) worker_id: String,
    pub(crate) tx: mpsc::Sender<ConnectResponse>,
}

/// Capacity of one task across workers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Capacity {
    pub(crate) workers: usize,
    pub(crate) slots: usize,
    pub(crate) free: usize,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data is still a
        // consistent map, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a worker session.
    pub(crate) fn register(
        &self,
        worker_id: String,
        tasks: Vec<String>,
        slots: usize,
        about: About,
        tx: mpsc::Sender<ConnectResponse>,
    ) -> (SessionId, LastSeen) {
        let last_seen = LastSeen::default();
        last_seen.touch();
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        for task in &tasks {
            inner.notify.entry(task.clone()).or_default();
        }
        inner.workers.insert(
            session,
            Worker {
                worker_id,
                tasks: tasks.clone(),
                slots,
                about,
                connect_time: SystemTime::now(),
                last_seen: last_seen.clone(),
                held: HashMap::new(),
                unsent: 0,
                draining: false,
                drain_told: false,
                tx,
            },
        );
        notify_tasks(&inner, &tasks);
        (session, last_seen)
    }

    /// Every connected worker, sorted by worker id, with at most `max_held` of the
    /// attempts each holds.
    pub(crate) fn workers(&self, max_held: usize) -> (Vec<WorkerView>, Vec<usize>) {
        let inner = self.lock();
        let mut views: Vec<(WorkerView, usize)> = inner
            .workers
            .values()
            .map(|w| {
                let mut held: Vec<String> = w.held.keys().map(|(id, _)| id.clone()).collect();
                held.sort();
                let in_use = held.len();
                held.truncate(max_held);
                (
                    WorkerView {
                        worker_id: w.worker_id.clone(),
                        tasks: w.tasks.clone(),
                        slots: w.slots,
                        held,
                        draining: w.draining,
                        connect_time: w.connect_time,
                        last_seen: w.last_seen.get(),
                        about: w.about.clone(),
                    },
                    in_use,
                )
            })
            .collect();
        views.sort_by(|a, b| a.0.worker_id.cmp(&b.0.worker_id));
        views.into_iter().unzip()
    }

    /// Removes a session; returns the attempts it still held.
    pub(crate) fn unregister(&self, session: SessionId) -> Vec<Attempt> {
        let mut inner = self.lock();
        inner
            .workers
            .remove(&session)
            .map(|w| w.held.into_keys().collect())
            .unwrap_or_default()
    }

    /// The signal raised when a slot for `task` may have become free.
    pub(crate) fn notifier(&self, task: &str) -> Arc<Notify> {
        Arc::clone(self.lock().notify.entry(task.to_owned()).or_default())
    }

    /// Free slots of all workers offering `task`.
    pub(crate) fn free_slots(&self, task: &str) -> usize {
        self.capacity(task).free
    }

    pub(crate) fn capacity(&self, task: &str) -> Capacity {
        let inner = self.lock();
        let mut capacity = Capacity::default();
        for worker in inner.workers.values() {
            if worker.tasks.iter().any(|t| t == task) {
                capacity.workers += 1;
                capacity.slots += worker.slots;
                if !worker.draining {
                    capacity.free += worker.slots.saturating_sub(worker.held.len());
                }
            }
        }
        capacity
    }

    /// Every task some connected worker offers.
    pub(crate) fn tasks(&self) -> Vec<String> {
        let inner = self.lock();
        let mut tasks: Vec<String> = inner
            .workers
            .values()
            .flat_map(|w| w.tasks.iter().cloned())
            .collect();
        tasks.sort();
        tasks.dedup();
        tasks
    }

    /// Takes a slot for an attempt on the least busy worker offering `task` (not
    /// a draining one). The caller sends the assignment, or gives up, then calls
    /// [`Registry::settle`].
    pub(crate) fn reserve(&self, task: &str, attempt: &Attempt) -> Option<Slot> {
        let mut inner = self.lock();
        let (session, worker) = inner
            .workers
            .iter_mut()
            .filter(|(_, w)| {
                !w.draining && w.tasks.iter().any(|t| t == task) && w.held.len() < w.slots
            })
            .max_by_key(|(_, w)| w.slots - w.held.len())?;
        worker.held.insert(attempt.clone(), false);
        worker.unsent += 1;
        Some(Slot {
            session: *session,
            worker_id: worker.worker_id.clone(),
            tx: worker.tx.clone(),
        })
    }

    /// Records that the assignment of a slot [`Registry::reserve`] took was sent,
    /// or given up. Returns the sender to tell the worker `drain_started` with
    /// when it drains and this was the last assignment on its way.
    pub(crate) fn settle(&self, session: SessionId) -> Option<mpsc::Sender<ConnectResponse>> {
        let mut inner = self.lock();
        let worker = inner.workers.get_mut(&session)?;
        worker.unsent = worker.unsent.saturating_sub(1);
        worker.drain_ready()
    }

    /// Marks a session draining: nothing more is assigned to it. Returns the
    /// sender to tell the worker `drain_started` with when no assignment is on
    /// its way (otherwise the last [`Registry::settle`] returns it).
    pub(crate) fn drain(&self, session: SessionId) -> Option<mpsc::Sender<ConnectResponse>> {
        let mut inner = self.lock();
        let worker = inner.workers.get_mut(&session)?;
        worker.draining = true;
        worker.drain_ready()
    }

    /// Frees the slot of an attempt (finished, failed, lost or never leased).
    pub(crate) fn release(&self, session: SessionId, attempt: &Attempt) {
        let mut inner = self.lock();
        let Some(worker) = inner.workers.get_mut(&session) else {
            return;
        };
        if worker.held.remove(attempt).is_none() {
            return;
        }
        let tasks = worker.tasks.clone();
        notify_tasks(&inner, &tasks);
    }

    /// Whether a session holds an attempt.
    pub(crate) fn holds(&self, session: SessionId, attempt: &Attempt) -> bool {
        self.lock()
            .workers
            .get(&session)
            .is_some_and(|w| w.held.contains_key(attempt))
    }

    /// Records that the lease of a reserved attempt is durable.
    pub(crate) fn mark_leased(&self, session: SessionId, attempt: &Attempt) {
        if let Some(leased) = self
            .lock()
            .workers
            .get_mut(&session)
            .and_then(|w| w.held.get_mut(attempt))
        {
            *leased = true;
        }
    }

    /// The session holding an attempt and its sender.
    pub(crate) fn holder(
        &self,
        attempt: &Attempt,
    ) -> Option<(SessionId, mpsc::Sender<ConnectResponse>)> {
        self.lock()
            .workers
            .iter()
            .find(|(_, w)| w.held.contains_key(attempt))
            .map(|(s, w)| (*s, w.tx.clone()))
    }

    /// Every attempt whose lease is recorded, for lease renewal. Attempts still
    /// being leased are left out: job-store would call them lost.
    pub(crate) fn leased(&self) -> Vec<Attempt> {
        self.lock()
            .workers
            .values()
            .flat_map(|w| {
                w.held
                    .iter()
                    .filter(|(_, leased)| **leased)
                    .map(|(a, _)| a.clone())
            })
            .collect()
    }

    /// Number of connected worker sessions.
    pub(crate) fn sessions(&self) -> usize {
        self.lock().workers.len()
    }
}

fn notify_tasks(inner: &Inner, tasks: &[String]) {
    for task in tasks {
        if let Some(notify) = inner.notify.get(task) {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reserves_more_than_the_slots() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(8);
        let a = registry
            .register(
                "a".into(),
                vec!["t".into(), "u".into()],
                2,
                About::default(),
                tx.clone(),
            )
            .0;
        let _b = registry.register("b".into(), vec!["t".into()], 1, About::default(), tx);
        let mut slots = Vec::new();
        for n in 0..5 {
            if let Some(slot) = registry.reserve("t", &(format!("job{n}"), 1)) {
                slots.push(slot);
            }
        }
        assert_eq!(slots.len(), 3);
        assert_eq!(registry.free_slots("u"), 0);
        registry.release(a, &("job0".into(), 1));
        assert_eq!(registry.free_slots("t"), 1);
        assert_eq!(registry.unregister(a).len(), 1);
    }
}
