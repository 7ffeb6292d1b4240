//! Every state transition of a job. Each one is a single statement or a short
//! transaction, fenced by `(job_id, attempt)` where a worker's report is involved,
//! followed (after commit) by an event for watchers.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::batch::Outcome;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::model::{JOB_COLUMNS, Job, NewJob, State};
use crate::progress::{Live, Settled};

/// Filters of a job listing.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListFilter {
    pub(crate) task: Option<String>,
    pub(crate) state: Option<State>,
    pub(crate) labels: serde_json::Map<String, serde_json::Value>,
}

/// The ` AND …` conditions of `filter`'s task and labels (not its state), their
/// values appended to `params`; `labels` is `filter.labels` as one JSON object.
fn conditions<'a>(
    filter: &'a ListFilter,
    labels: &'a serde_json::Value,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
) -> String {
    let mut sql = String::new();
    if let Some(task) = &filter.task {
        params.push(task);
        sql.push_str(&format!(" AND task = ${}", params.len()));
    }
    if !filter.labels.is_empty() {
        params.push(labels);
        sql.push_str(&format!(" AND labels @> ${}", params.len()));
    }
    sql
}

/// What ExtendLeases found.
#[derive(Debug, Default)]
pub(crate) struct LeaseCheck {
    /// Attempts no longer running under their lease.
    pub(crate) lost: Vec<(Uuid, i32)>,
    /// Attempts whose job has a pending cancellation request.
    pub(crate) cancel_requested: Vec<(Uuid, i32)>,
}

/// A lease asked for: attempt `attempt` of job `id` to `worker_id` for `lease`.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub(crate) id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) worker_id: String,
    pub(crate) lease: Duration,
}

/// Progress reported: attempt `attempt` of job `id` is at `percent`, `message`.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) percent: i32,
    pub(crate) message: String,
}

/// A report to write, and the least version the write sets ([`Settled::floor`]).
#[derive(Clone, Debug)]
pub(crate) struct ProgressWrite {
    pub(crate) report: Progress,
    pub(crate) floor: i64,
}

/// A result reported: attempt `attempt` of job `id` succeeded with `result`.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    pub(crate) id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) result: serde_json::Value,
}

/// The job state machine over PostgreSQL.
#[derive(Clone)]
pub(crate) struct Store {
    pool: Pool,
    events: Events,
    outbox_wakeup: Arc<Notify>,
    live: Arc<Live>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn one(rows: &[tokio_postgres::Row]) -> Result<Option<Job>> {
    rows.first().map(Job::try_from).transpose()
}

impl Store {
    /// A store whose progress is written every `progress_interval` (zero: each
    /// report at once).
    pub(crate) fn new(
        pool: Pool,
        events: Events,
        outbox_wakeup: Arc<Notify>,
        progress_interval: Duration,
    ) -> Self {
        Self {
            pool,
            events,
            outbox_wakeup,
            live: Arc::new(Live::new(!progress_interval.is_zero())),
        }
    }

    /// The running attempts whose progress is coalesced here.
    pub(crate) fn live(&self) -> &Live {
        &self.live
    }

    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// Stores jobs and their first attempts' outbox rows in one statement (one
    /// commit for the whole batch). For each job, returns the stored job and
    /// `true`, or the existing job and `false` when its idempotency key was used
    /// before (also by an earlier job of the same batch).
    pub(crate) async fn create_many(&self, batch: Vec<NewJob>) -> Result<Vec<(Job, bool)>> {
        let client = self.pool.get().await?;
        let n = batch.len();
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let (mut tenants, mut tasks, mut args, mut max_attempts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut labels, mut priorities, mut timeouts, mut schedules, mut keys) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut initial, mut max, mut multiplier, mut jitter) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut traceparents: Vec<Option<String>> = Vec::with_capacity(n);
        for new in &batch {
            tenants.push(new.tenant.clone());
            tasks.push(new.task.clone());
            args.push(serde_json::Value::Object(new.args.clone()));
            max_attempts.push(new.max_attempts);
            labels.push(serde_json::Value::Object(
                new.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ));
            priorities.push(new.priority);
            timeouts.push(new.timeout.map(ms));
            schedules.push(new.schedule_time);
            keys.push(new.idempotency_key.clone());
            initial.push(ms(new.retry.initial_backoff));
            max.push(ms(new.retry.max_backoff));
            multiplier.push(new.retry.multiplier);
            jitter.push(new.retry.jitter);
            traceparents.push(new.traceparent.clone());
        }
        let sql = format!(
            "WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::integer[],
                    $6::jsonb[], $7::integer[], $8::bigint[], $9::timestamptz[], $10::text[],
                    $11::bigint[], $12::bigint[], $13::double precision[], $14::double precision[],
                    $15::text[])
                AS t(id, tenant, task, args, max_attempts, labels, priority, timeout_ms,
                    schedule_time, idempotency_key, retry_initial_ms, retry_max_ms,
                    retry_multiplier, retry_jitter, traceparent)),
            j AS (
                INSERT INTO jobs (id, tenant, task, args, state, max_attempts, labels, priority,
                    timeout_ms, schedule_time, idempotency_key, retry_initial_ms, retry_max_ms,
                    retry_multiplier, retry_jitter, traceparent)
                SELECT id, tenant, task, args, 'queued', max_attempts, labels, priority,
                    timeout_ms, schedule_time, idempotency_key, retry_initial_ms, retry_max_ms,
                    retry_multiplier, retry_jitter, traceparent
                FROM input ORDER BY id
                ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                RETURNING {JOB_COLUMNS}),
            o AS (
                INSERT INTO outbox (job_id, attempt, task, available_at)
                SELECT id, 1, task, greatest(coalesce(schedule_time, now()), now()) FROM j)
            SELECT {JOB_COLUMNS} FROM j"
        );
        let rows = client
            .query(
                &client.prepare_cached(&sql).await?,
                &[
                    &ids,
                    &tenants,
                    &tasks,
                    &args,
                    &max_attempts,
                    &labels,
                    &priorities,
                    &timeouts,
                    &schedules,
                    &keys,
                    &initial,
                    &max,
                    &multiplier,
                    &jitter,
                    &traceparents,
                ],
            )
            .await?;
        let mut created: std::collections::HashMap<Uuid, Job> = std::collections::HashMap::new();
        for row in &rows {
            let job = Job::try_from(row)?;
            created.insert(job.id, job);
        }
        if !created.is_empty() {
            self.outbox_wakeup.notify_one();
        }
        let mut out = Vec::with_capacity(n);
        for (id, new) in ids.iter().zip(batch) {
            if let Some(job) = created.remove(id) {
                tracing::debug!(job_id = %job.id, tenant = %job.tenant, task = %job.task, "job created");
                crate::metrics::submitted(&job);
                self.events.publish(&job).await;
                out.push((job, true));
                continue;
            }
            // The key was taken (before, or by an earlier job of this batch).
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
            );
            let rows = client
                .query(
                    &client.prepare_cached(&sql).await?,
                    &[&new.tenant, &new.idempotency_key],
                )
                .await?;
            let job = one(&rows)?.ok_or_else(|| {
                Error::Corrupt("idempotency key conflict without a holder".to_owned())
            })?;
            out.push((job, false));
        }
        Ok(out)
    }

    /// One job of a tenant, with the progress its watchers already saw (held
    /// here for the next coalesced write).
    pub(crate) async fn get(&self, tenant: &str, id: Uuid) -> Result<Job> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2");
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &[&id, &tenant])
            .await?;
        one(&rows)?
            .map(|job| self.live.newer(&job).unwrap_or(job))
            .ok_or_else(|| Error::NotFound {
                job_id: id.to_string(),
            })
    }

    /// The versions of those of `ids` that exist (any tenant: ids are unique).
    pub(crate) async fn versions(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT id, version FROM jobs WHERE id = ANY($1)")
                    .await?,
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Up to `limit` jobs of a tenant older than `before`, newest first.
    pub(crate) async fn list(
        &self,
        tenant: &str,
        filter: &ListFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let client = self.pool.get().await?;
        let labels = serde_json::Value::Object(filter.labels.clone());
        let state = filter.state.map(State::as_str);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant];
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1");
        sql.push_str(&conditions(filter, &labels, &mut params));
        if let Some(state) = &state {
            params.push(state);
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some(before) = &before {
            params.push(before);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &params)
            .await?;
        rows.iter().map(Job::try_from).collect()
    }

    /// How many of a tenant's jobs match `filter` (its state aside) in each
    /// state, each count stopping at `limit`: one scan per state that reads at
    /// most `limit` matching rows, so the cost does not grow with the table.
    /// Each state is written into the statement (they are our own constants),
    /// so that the planner picks the `(tenant, state, id)` index for the rare
    /// states instead of one plan for all of them.
    pub(crate) async fn count(
        &self,
        tenant: &str,
        filter: &ListFilter,
        limit: i64,
    ) -> Result<Vec<(State, i64)>> {
        let client = self.pool.get().await?;
        let labels = serde_json::Value::Object(filter.labels.clone());
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &limit];
        let conditions = conditions(filter, &labels, &mut params);
        let sql = State::ALL
            .iter()
            .map(|state| {
                let state = state.as_str();
                format!(
                    "SELECT '{state}', (SELECT count(*) FROM (SELECT 1 FROM jobs \
                     WHERE tenant = $1 AND state = '{state}'{conditions} LIMIT $2) bounded)"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &params)
            .await?;
        let mut counts = rows
            .iter()
            .map(|row| Ok((State::parse(row.try_get(0)?)?, row.try_get(1)?)))
            .collect::<Result<Vec<(State, i64)>>>()?;
        counts.sort_by_key(|(state, _)| State::ALL.iter().position(|s| s == state));
        Ok(counts)
    }

    /// Cancels a tenant's job: a queued job ends CANCELLED at once (its outbox row
    /// goes with it); a running job gets a cancellation request that its dispatcher
    /// forwards to the worker.
    pub(crate) async fn cancel(&self, tenant: &str, id: Uuid) -> Result<Job> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2 FOR UPDATE");
        let rows = tx
            .query(&tx.prepare_cached(&sql).await?, &[&id, &tenant])
            .await?;
        let job = one(&rows)?.ok_or_else(|| Error::NotFound {
            job_id: id.to_string(),
        })?;
        let updated = match job.state {
            State::Cancelled => return Ok(job),
            State::Succeeded | State::Failed => {
                return Err(Error::AlreadyFinished {
                    job_id: id,
                    state: job.state.as_str(),
                });
            }
            State::Running if job.cancel_requested => return Ok(job),
            State::Queued => {
                tx.execute(
                    &tx.prepare_cached("DELETE FROM outbox WHERE job_id = $1")
                        .await?,
                    &[&id],
                )
                .await?;
                let sql = format!(
                    "UPDATE jobs SET state = 'cancelled', finish_time = now(), update_time = now(),
                        error_message = 'cancelled by request', error_retryable = false,
                        error_attempt = attempt, version = version + 1
                     WHERE id = $1 RETURNING {JOB_COLUMNS}"
                );
                tx.query(&tx.prepare_cached(&sql).await?, &[&id]).await?
            }
            State::Running => {
                let settled = self.live.settle(id, None);
                let sql = format!(
                    "UPDATE jobs SET cancel_requested = true, cancel_request_time = now(),
                        update_time = now(), {}
                     WHERE id = $1 RETURNING {JOB_COLUMNS}",
                    settled_sql(2)
                );
                let (percent, message, floor) = settled.params();
                tx.query(
                    &tx.prepare_cached(&sql).await?,
                    &[&id, &percent, &message, &floor],
                )
                .await?
            }
        };
        tx.commit().await?;
        let job = one(&updated)?.ok_or_else(|| Error::NotFound {
            job_id: id.to_string(),
        })?;
        if job.state == State::Running {
            self.events.publish_cancel(job.id, job.attempt).await;
        }
        crate::metrics::transitioned(&job);
        self.events.publish(&job).await;
        Ok(job)
    }

    /// Leases queued attempts to workers, one statement for all of them (each
    /// fenced on its own: an attempt that is no longer queued fails alone, with
    /// why). The ids are distinct ([`crate::batch`] keeps repeats for the next
    /// batch).
    pub(crate) async fn lease_many(&self, leases: &[Lease]) -> Vec<Outcome<Job>> {
        let written = async {
            let client = self.pool.get().await?;
            let sql = format!(
                "UPDATE jobs SET state = 'running', worker_id = b.b_worker, lease_ms = b.b_lease_ms,
                    lease_expires_at = now() + b.b_lease_ms * interval '1 millisecond',
                    start_time = coalesce(start_time, now()), attempt_start_time = now(),
                    progress_percent = 0,
                    progress_message = '', update_time = now(), version = version + 1
                 FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::bigint[])
                    AS b(b_id, b_attempt, b_worker, b_lease_ms)
                 WHERE id = ANY($1) AND id = b.b_id AND attempt = b.b_attempt AND state = 'queued'
                 RETURNING {JOB_COLUMNS}"
            );
            let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
            let attempts: Vec<i32> = leases.iter().map(|l| l.attempt).collect();
            let workers: Vec<&str> = leases.iter().map(|l| l.worker_id.as_str()).collect();
            let lease_ms: Vec<i64> = leases.iter().map(|l| ms(l.lease)).collect();
            Ok::<_, Error>(
                client
                    .query(
                        &client.prepare_cached(&sql).await?,
                        &[&ids, &attempts, &workers, &lease_ms],
                    )
                    .await?,
            )
        };
        let keys: Vec<(Uuid, i32)> = leases.iter().map(|l| (l.id, l.attempt)).collect();
        let jobs = self.fenced(&keys, written.await, State::Queued).await;
        for job in jobs.iter().flatten() {
            tracing::debug!(job_id = %job.id, attempt = job.attempt, worker_id = job.worker_id.as_deref(), "job leased");
            crate::metrics::leased(job);
            self.live.confirmed(job, job.lease.unwrap_or_default());
        }
        self.published(&jobs).await;
        jobs
    }

    /// The outcome of each call `keys` of a batch statement that `rows` (its
    /// returned jobs) answered: the job, or why its fence refused it.
    async fn fenced(
        &self,
        keys: &[(Uuid, i32)],
        rows: Result<Vec<tokio_postgres::Row>>,
        expected: State,
    ) -> Vec<Outcome<Job>> {
        let mut found = match rows.and_then(|rows| {
            rows.iter()
                .map(|row| Job::try_from(row).map(|job| (job.id, job)))
                .collect::<Result<std::collections::HashMap<_, _>>>()
        }) {
            Ok(found) => found,
            Err(error) => {
                let status = tonic::Status::from(error);
                return keys.iter().map(|_| Err(status.clone())).collect();
            }
        };
        let mut outcomes = Vec::with_capacity(keys.len());
        for &(id, attempt) in keys {
            outcomes.push(match found.remove(&id) {
                Some(job) => Ok(job),
                None => Err(match self.explain_fence(id, attempt, expected).await {
                    Ok(why) | Err(why) => why.into(),
                }),
            });
        }
        outcomes
    }

    /// Records the transitions of `jobs` that were written (metrics, events).
    async fn published(&self, jobs: &[Outcome<Job>]) {
        for job in jobs.iter().flatten() {
            crate::metrics::transitioned(job);
            self.events.publish(job).await;
        }
    }

    /// Extends the leases of running attempts; reports the ones that are no longer
    /// running and the ones with a pending cancellation.
    pub(crate) async fn extend_leases(
        &self,
        attempts: &[(Uuid, i32)],
        lease: Duration,
    ) -> Result<LeaseCheck> {
        if attempts.is_empty() {
            return Ok(LeaseCheck::default());
        }
        let client = self.pool.get().await?;
        let ids: Vec<Uuid> = attempts.iter().map(|(id, _)| *id).collect();
        let numbers: Vec<i32> = attempts.iter().map(|(_, a)| *a).collect();
        let rows = client
            .query(&client.prepare_cached("UPDATE jobs j SET lease_expires_at = now() + $3::bigint * interval '1 millisecond'
                 FROM unnest($1::uuid[], $2::integer[]) AS i(id, attempt)
                 WHERE j.id = i.id AND j.attempt = i.attempt AND j.state = 'running'
                 RETURNING j.id, j.attempt, j.cancel_requested").await?,
                &[&ids, &numbers, &ms(lease)],
            )
            .await?;
        let mut check = LeaseCheck::default();
        let mut held = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let key: (Uuid, i32) = (row.try_get(0)?, row.try_get(1)?);
            if row.try_get::<_, bool>(2)? {
                check.cancel_requested.push(key);
            }
            held.insert(key);
        }
        check.lost = attempts
            .iter()
            .filter(|a| !held.contains(a))
            .copied()
            .collect();
        Ok(check)
    }

    /// Records the progress of running attempts (which also extends their
    /// leases). One statement for all of them, each fenced on its own; the ids
    /// are distinct. Each write sets at least its floor as the job's version.
    pub(crate) async fn progress_many(&self, writes: Vec<ProgressWrite>) -> Vec<Outcome<Job>> {
        let jobs = self.write_progress_rows(writes).await;
        self.published(&jobs).await;
        jobs
    }

    /// [`Store::progress_many`] without the events: for reports watchers got
    /// live already (an event now could arrive after a later change's and,
    /// once that change ended the job, look new to a feed).
    async fn write_progress_rows(&self, writes: Vec<ProgressWrite>) -> Vec<Outcome<Job>> {
        let keys: Vec<(Uuid, i32)> = writes
            .iter()
            .map(|w| (w.report.id, w.report.attempt))
            .collect();
        let written = async {
            let client = self.pool.get().await?;
            let sql = format!(
                "UPDATE jobs SET progress_percent = b.b_percent, progress_message = b.b_message,
                    lease_expires_at = now() + lease_ms * interval '1 millisecond',
                    update_time = now(), version = greatest(version + 1, b.b_floor)
                 FROM unnest($1::uuid[], $2::integer[], $3::integer[], $4::text[], $5::bigint[])
                    AS b(b_id, b_attempt, b_percent, b_message, b_floor)
                 WHERE id = ANY($1) AND id = b.b_id AND attempt = b.b_attempt AND state = 'running'
                 RETURNING {JOB_COLUMNS}"
            );
            let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
            let attempts: Vec<i32> = keys.iter().map(|k| k.1).collect();
            let percents: Vec<i32> = writes.iter().map(|w| w.report.percent).collect();
            let messages: Vec<&str> = writes.iter().map(|w| w.report.message.as_str()).collect();
            let floors: Vec<i64> = writes.iter().map(|w| w.floor).collect();
            Ok::<_, Error>(
                client
                    .query(
                        &client.prepare_cached(&sql).await?,
                        &[&ids, &attempts, &percents, &messages, &floors],
                    )
                    .await?,
            )
        };
        let jobs = self.fenced(&keys, written.await, State::Running).await;
        for job in jobs.iter().flatten() {
            self.live.confirmed(job, job.lease.unwrap_or_default());
        }
        jobs
    }

    /// A report of an attempt live here: published to watchers now, written
    /// with the next [`Store::write_progress`]. `None` when it must be written
    /// now (the attempt is not live here).
    pub(crate) async fn report_live(&self, report: &Progress) -> Option<Job> {
        let job = self.live.report(report)?;
        crate::metrics::progress_held();
        self.events.publish(&job).await;
        Some(job)
    }

    /// Writes the newest held report of each live job, in batches of `batch`:
    /// what [`Store::report_live`] answered since the last call.
    pub(crate) async fn write_progress(&self, batch: usize) {
        let due = self.live.due();
        for chunk in due.chunks(batch.max(1)) {
            let writes = chunk
                .iter()
                .map(|(report, version)| ProgressWrite {
                    report: report.clone(),
                    floor: *version,
                })
                .collect();
            let written = self.write_progress_rows(writes).await;
            for (outcome, (report, _)) in written.into_iter().zip(chunk) {
                match outcome {
                    Ok(_) => {}
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::FailedPrecondition | tonic::Code::NotFound
                        ) =>
                    {
                        self.live.forget(report.id);
                    }
                    Err(status) => {
                        tracing::debug!(job_id = %report.id, %status, "progress not written; retried");
                        self.live.retry(report.id, report.attempt);
                    }
                }
            }
        }
    }

    /// Records the results of running attempts: their jobs SUCCEEDED. One
    /// statement for all of them, each fenced on its own; the ids are distinct.
    pub(crate) async fn complete_many(&self, results: Vec<Completion>) -> Vec<Outcome<Job>> {
        let keys: Vec<(Uuid, i32)> = results.iter().map(|r| (r.id, r.attempt)).collect();
        let (floors, messages): (Vec<i64>, Vec<Option<String>>) = keys
            .iter()
            .map(|&(id, attempt)| {
                let settled = self.live.settle(id, Some(attempt));
                (settled.floor, settled.progress.map(|p| p.1))
            })
            .unzip();
        let written = async {
            let client = self.pool.get().await?;
            let sql = format!(
                "UPDATE jobs SET state = 'succeeded', result = b.b_result, progress_percent = 100,
                    progress_message = coalesce(b.b_message, progress_message),
                    finish_time = now(), lease_expires_at = NULL, update_time = now(),
                    version = greatest(version + 1, b.b_floor)
                 FROM unnest($1::uuid[], $2::integer[], $3::jsonb[], $4::bigint[], $5::text[])
                    AS b(b_id, b_attempt, b_result, b_floor, b_message)
                 WHERE id = ANY($1) AND id = b.b_id AND attempt = b.b_attempt AND state = 'running'
                 RETURNING {JOB_COLUMNS}"
            );
            let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
            let attempts: Vec<i32> = keys.iter().map(|k| k.1).collect();
            let values: Vec<serde_json::Value> = results.into_iter().map(|r| r.result).collect();
            Ok::<_, Error>(
                client
                    .query(
                        &client.prepare_cached(&sql).await?,
                        &[&ids, &attempts, &values, &floors, &messages],
                    )
                    .await?,
            )
        };
        let jobs = self.fenced(&keys, written.await, State::Running).await;
        for job in jobs.iter().flatten() {
            tracing::debug!(job_id = %job.id, attempt = job.attempt, "job succeeded");
        }
        self.published(&jobs).await;
        jobs
    }

    /// Records a failed attempt: the job is queued again after its backoff when the
    /// failure is retryable and attempts remain, FAILED otherwise, and CANCELLED
    /// when a cancellation was pending.
    pub(crate) async fn fail(
        &self,
        id: Uuid,
        attempt: i32,
        message: &str,
        retryable: bool,
    ) -> Result<Job> {
        let settled = self.live.settle(id, Some(attempt));
        self.fail_settled(id, attempt, message, retryable, &settled)
            .await
    }

    /// [`Store::fail`] of an attempt already taken out of [`Live`].
    async fn fail_settled(
        &self,
        id: Uuid,
        attempt: i32,
        message: &str,
        retryable: bool,
        settled: &Settled,
    ) -> Result<Job> {
        let (percent, progress, floor) = settled.params();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE");
        let rows = tx.query(&tx.prepare_cached(&sql).await?, &[&id]).await?;
        let job = one(&rows)?.ok_or_else(|| Error::NotFound {
            job_id: id.to_string(),
        })?;
        if job.state != State::Running || job.attempt != attempt {
            return Err(fence_error(&job, attempt, State::Running));
        }
        let rows = if job.cancel_requested {
            let sql = format!(
                "UPDATE jobs SET state = 'cancelled', finish_time = now(), lease_expires_at = NULL,
                    error_message = $2, error_retryable = false, error_attempt = attempt,
                    update_time = now(), {}
                 WHERE id = $1 RETURNING {JOB_COLUMNS}",
                settled_sql(3)
            );
            let message = format!("cancelled by request (the attempt ended with: {message})");
            tx.query(
                &tx.prepare_cached(&sql).await?,
                &[&id, &message, &percent, &progress, &floor],
            )
            .await?
        } else if retryable && job.attempt < job.max_attempts {
            let backoff = job.retry.backoff(job.attempt);
            let sql = format!(
                "UPDATE jobs SET state = 'queued', attempt = attempt + 1, worker_id = NULL,
                    lease_expires_at = NULL, error_message = $2, error_retryable = true,
                    error_attempt = attempt, update_time = now(), {}
                 WHERE id = $1 RETURNING {JOB_COLUMNS}",
                settled_sql(3)
            );
            let rows = tx
                .query(
                    &tx.prepare_cached(&sql).await?,
                    &[&id, &message, &percent, &progress, &floor],
                )
                .await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO outbox (job_id, attempt, task, available_at)
                 VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond')",
                )
                .await?,
                &[&id, &(attempt + 1), &job.task, &ms(backoff)],
            )
            .await?;
            tracing::info!(job_id = %id, attempt, backoff_ms = ms(backoff), %message, "attempt failed, retrying");
            rows
        } else {
            let sql = format!(
                "UPDATE jobs SET state = 'failed', finish_time = now(), lease_expires_at = NULL,
                    error_message = $2, error_retryable = $3, error_attempt = attempt,
                    update_time = now(), {}
                 WHERE id = $1 RETURNING {JOB_COLUMNS}",
                settled_sql(4)
            );
            tx.query(
                &tx.prepare_cached(&sql).await?,
                &[&id, &message, &retryable, &percent, &progress, &floor],
            )
            .await?
        };
        tx.commit().await?;
        let job = one(&rows)?.ok_or_else(|| Error::NotFound {
            job_id: id.to_string(),
        })?;
        if job.state == State::Queued {
            self.outbox_wakeup.notify_one();
        }
        crate::metrics::transitioned(&job);
        self.events.publish(&job).await;
        Ok(job)
    }

    /// Records that a running attempt stopped after a cancellation request: the
    /// job is CANCELLED. Without a pending request, the stop counts as a retryable
    /// failure of the attempt.
    pub(crate) async fn confirm_cancel(&self, id: Uuid, attempt: i32) -> Result<Job> {
        let settled = self.live.settle(id, Some(attempt));
        let (percent, progress, floor) = settled.params();
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE jobs SET state = 'cancelled', finish_time = now(), lease_expires_at = NULL,
                error_message = 'cancelled by request', error_retryable = false,
                error_attempt = attempt, update_time = now(), {}
             WHERE id = $1 AND attempt = $2 AND state = 'running' AND cancel_requested
             RETURNING {JOB_COLUMNS}",
            settled_sql(3)
        );
        let rows = client
            .query(
                &client.prepare_cached(&sql).await?,
                &[&id, &attempt, &percent, &progress, &floor],
            )
            .await?;
        drop(client);
        match one(&rows)? {
            Some(job) => {
                crate::metrics::transitioned(&job);
                self.events.publish(&job).await;
                Ok(job)
            }
            None => {
                self.fail_settled(
                    id,
                    attempt,
                    "the worker stopped the attempt",
                    true,
                    &settled,
                )
                .await
            }
        }
    }

    /// Running attempts whose lease expired (by the database clock).
    pub(crate) async fn expired_leases(
        &self,
        limit: i64,
    ) -> Result<Vec<(Uuid, i32, Option<String>)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, attempt, worker_id FROM jobs
                 WHERE state = 'running' AND lease_expires_at < now()
                 ORDER BY lease_expires_at LIMIT $1",
                    )
                    .await?,
                &[&limit],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Running attempts that outlived their execution timeout by more than `grace`
    /// (their worker neither finished nor reported the timeout).
    pub(crate) async fn overdue_attempts(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<(Uuid, i32, i64)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&client.prepare_cached("SELECT id, attempt, timeout_ms FROM jobs
                 WHERE state = 'running' AND timeout_ms IS NOT NULL
                   AND attempt_start_time + (timeout_ms + $1::bigint) * interval '1 millisecond' < now()
                 LIMIT $2").await?,
                &[&ms(grace), &limit],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Ends CANCELLED the running attempts that ignored a cancellation for longer
    /// than `grace`. Returns how many.
    pub(crate) async fn revoke_overdue_cancellations(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<usize> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE jobs SET state = 'cancelled', finish_time = now(), lease_expires_at = NULL,
                error_message = 'cancelled by request (the worker did not stop in time; lease revoked)',
                error_retryable = false, error_attempt = attempt, update_time = now(),
                version = version + 1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND cancel_requested
                 AND cancel_request_time < now() - $1::bigint * interval '1 millisecond' LIMIT $2)
             RETURNING {JOB_COLUMNS}"
        );
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &[&ms(grace), &limit])
            .await?;
        for row in &rows {
            let job = Job::try_from(row)?;
            crate::metrics::transitioned(&job);
            self.events.publish(&job).await;
        }
        Ok(rows.len())
    }

    /// Why a fenced update matched no row.
    async fn explain_fence(&self, id: Uuid, attempt: i32, expected: State) -> Result<Error> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &[&id])
            .await?;
        Ok(match one(&rows)? {
            None => Error::NotFound {
                job_id: id.to_string(),
            },
            Some(job) => fence_error(&job, attempt, expected),
        })
    }
}

/// The assignments a write of a job taken out of [`Live`] adds, its parameters
/// numbered from `first`: the progress watchers saw, and a version past theirs.
fn settled_sql(first: usize) -> String {
    format!(
        "progress_percent = coalesce(${first}::integer, progress_percent),
         progress_message = coalesce(${}::text, progress_message),
         version = greatest(version + 1, ${}::bigint)",
        first + 1,
        first + 2
    )
}

impl Settled {
    /// The parameters of [`settled_sql`].
    fn params(&self) -> (Option<i32>, Option<&str>, i64) {
        (
            self.progress.as_ref().map(|p| p.0),
            self.progress.as_ref().map(|p| p.1.as_str()),
            self.floor,
        )
    }
}

fn fence_error(job: &Job, attempt: i32, expected: State) -> Error {
    crate::metrics::stale(if expected == State::Queued {
        "lease"
    } else {
        "report"
    });
    if job.state.is_terminal() && job.attempt == attempt && expected == State::Running {
        Error::AlreadyFinished {
            job_id: job.id,
            state: job.state.as_str(),
        }
    } else {
        Error::StaleAttempt {
            job_id: job.id,
            attempt,
            current: job.attempt,
            state: job.state.as_str(),
        }
    }
}
