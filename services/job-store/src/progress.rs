//! Progress coalesced before it is written: a worker may report thousands of
//! times a second, PostgreSQL sees at most one write per job per interval, and
//! watchers still see every report, live.
//!
//! An attempt that PostgreSQL confirmed running through this job-store (its
//! lease, or a write of its progress) is *live* here for half its lease,
//! at most [`MAX_WINDOW`]. A report of a live attempt is answered at once and
//! published as the job's next version; only the newest report per job is
//! written, every interval, by one statement for all of them, fenced by attempt
//! like any report. The fence still holds between writes: within half its lease
//! of being confirmed, an attempt stops being its job's attempt only through
//! this job-store (its outcome, a cancellation request), and each of those
//! first takes the job out of here.
//!
//! Versions stay one per change, in order: a write of a job that has live
//! versions here sets at least the version after them ([`Settled::floor`]), so
//! no version is used twice and watchers drop nothing they should see.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use tokio_util::sync::CancellationToken;

use crate::model::Job;
use crate::store::{Progress, Store};

/// Longest an attempt stays live after PostgreSQL last confirmed it.
const MAX_WINDOW: Duration = Duration::from_secs(5);
/// Most jobs held here; past it, reports of further jobs are written one by one.
const MAX_JOBS: usize = 20_000;
/// Most reports written by one statement.
const WRITE_BATCH: usize = 256;
/// Largest job (its arguments, as JSON text) held here; larger ones are written
/// one report at a time rather than copied on every report.
const MAX_ARGS_BYTES: usize = 16 * 1024;

/// A running attempt as its watchers last saw it.
struct Entry {
    job: Job,
    /// How long the attempt stays live after `confirmed`.
    window: Duration,
    /// When PostgreSQL last confirmed the attempt running.
    confirmed: Instant,
    /// Reports not written yet (the newest is in `job`).
    pending: bool,
}

/// What a write must carry for a job taken out of here.
#[derive(Debug, Default, Clone)]
pub(crate) struct Settled {
    /// The least version the write may set (0: none): one past the versions
    /// already published from here.
    pub(crate) floor: i64,
    /// The newest progress published and not yet written.
    pub(crate) progress: Option<(i32, String)>,
}

/// The live attempts of this job-store.
pub(crate) struct Live {
    /// Whether progress is coalesced at all.
    enabled: bool,
    jobs: Mutex<HashMap<Uuid, Entry>>,
}

impl Live {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            jobs: Mutex::default(),
        }
    }

    /// Records that PostgreSQL holds `job` running under a lease of `lease`
    /// (just leased, or its progress just written).
    pub(crate) fn confirmed(&self, job: &Job, lease: Duration) {
        if !self.enabled {
            return;
        }
        if job.cancel_requested || job.args.to_string().len() > MAX_ARGS_BYTES {
            // Reports of a job being cancelled go to PostgreSQL one by one: the
            // overdue-cancellation sweep ends such jobs without passing here.
            self.jobs.lock().expect("live jobs").remove(&job.id);
            return;
        }
        let mut jobs = self.jobs.lock().expect("live jobs");
        let window = (lease / 2).min(MAX_WINDOW);
        let full = jobs.len() >= MAX_JOBS;
        match jobs.get_mut(&job.id) {
            Some(entry) if entry.job.attempt == job.attempt => {
                entry.confirmed = Instant::now();
                entry.window = window;
                if job.version >= entry.job.version {
                    entry.job = job.clone();
                    entry.pending = false;
                }
            }
            Some(entry) => {
                // Another attempt: the newer one is kept (a late answer about
                // an older one must not bring it back).
                if job.version > entry.job.version {
                    *entry = Entry {
                        job: job.clone(),
                        window,
                        confirmed: Instant::now(),
                        pending: false,
                    };
                }
            }
            None if full => {}
            None => {
                jobs.insert(
                    job.id,
                    Entry {
                        job: job.clone(),
                        window,
                        confirmed: Instant::now(),
                        pending: false,
                    },
                );
            }
        }
    }

    /// The job as its watchers should see it after `report`, when the attempt
    /// is live here (the report is then held for the next write); `None` when
    /// the report must be written now.
    pub(crate) fn report(&self, report: &Progress) -> Option<Job> {
        let mut jobs = self.jobs.lock().expect("live jobs");
        let entry = jobs.get_mut(&report.id)?;
        if entry.job.attempt != report.attempt || entry.confirmed.elapsed() >= entry.window {
            return None;
        }
        entry.job.progress_percent = report.percent;
        entry.job.progress_message.clone_from(&report.message);
        entry.job.version += 1;
        entry.job.update_time = SystemTime::now();
        entry.pending = true;
        Some(entry.job.clone())
    }

    /// `job` (as PostgreSQL holds it) as its watchers saw it since, when that
    /// is newer.
    pub(crate) fn newer(&self, job: &Job) -> Option<Job> {
        let jobs = self.jobs.lock().expect("live jobs");
        let entry = jobs.get(&job.id)?;
        (entry.job.attempt == job.attempt && entry.job.version > job.version)
            .then(|| entry.job.clone())
    }

    /// Takes the job out of here before a write that changes its attempt
    /// (`attempt`, or whichever it is) or state: what that write must carry so
    /// that versions stay in order.
    pub(crate) fn settle(&self, id: Uuid, attempt: Option<i32>) -> Settled {
        let mut jobs = self.jobs.lock().expect("live jobs");
        if attempt.is_some_and(|a| jobs.get(&id).is_some_and(|e| e.job.attempt != a)) {
            // A report about another attempt: its write is fenced out, and the
            // live attempt stays.
            return Settled::default();
        }
        match jobs.remove(&id) {
            Some(entry) => Settled {
                floor: entry.job.version + 1,
                progress: entry
                    .pending
                    .then_some((entry.job.progress_percent, entry.job.progress_message)),
            },
            None => Settled::default(),
        }
    }

    /// The reports to write now (the newest per job, with the version its
    /// watchers saw), marked written; and forgets attempts no longer live
    /// with nothing to write.
    pub(crate) fn due(&self) -> Vec<(Progress, i64)> {
        let mut jobs = self.jobs.lock().expect("live jobs");
        jobs.retain(|_, entry| entry.pending || entry.confirmed.elapsed() < entry.window);
        jobs.values_mut()
            .filter(|entry| entry.pending)
            .map(|entry| {
                entry.pending = false;
                let job = &entry.job;
                (
                    Progress {
                        id: job.id,
                        attempt: job.attempt,
                        percent: job.progress_percent,
                        message: job.progress_message.clone(),
                    },
                    job.version,
                )
            })
            .collect()
    }

    /// Marks `id`'s report as still to write (its write failed, not its fence).
    pub(crate) fn retry(&self, id: Uuid, attempt: i32) {
        if let Some(entry) = self.jobs.lock().expect("live jobs").get_mut(&id)
            && entry.job.attempt == attempt
        {
            entry.pending = true;
        }
    }

    /// Forgets `id` (its attempt was refused by PostgreSQL).
    pub(crate) fn forget(&self, id: Uuid) {
        self.jobs.lock().expect("live jobs").remove(&id);
    }
}

/// Writes the held progress every `interval` until `shutdown`, then once more.
pub(crate) async fn write(store: Store, interval: Duration, shutdown: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => store.write_progress(WRITE_BATCH).await,
        }
    }
    store.write_progress(WRITE_BATCH).await;
}
