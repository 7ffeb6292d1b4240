//! Job logs in PostgreSQL: the lines running attempts print, numbered per job
//! across attempts, stored in chunks (one row per batch the dispatcher forwards),
//! bounded per job (the oldest chunks go first), kept for a retention period after
//! the job ends, and announced on `<prefix>.logs.<job_id>` for followers.
//!
//! Why PostgreSQL and not a JetStream stream: the fence (`(job_id, attempt)` of a
//! running attempt), the tenant wall, deletion with the job and "retention after
//! the job ends" are all questions about the job's row; chunking makes a line
//! cost a fraction of a row. The measurement is in `docs/performance.md`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use jobmesh_proto::v1::{LogEntry, LogStream};
use uuid::Uuid;

use crate::error::Result;
use crate::events::Events;

/// Longest line kept, in characters (the dispatcher cuts longer ones).
pub(crate) const MAX_LINE_CHARS: usize = 4096;
/// Most lines and bytes one AppendLogs call may carry.
pub(crate) const MAX_APPEND_LINES: usize = 1024;
pub(crate) const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// Chunks read per query by a reader (each at most `MAX_APPEND_BYTES`).
const READ_CHUNKS: i64 = 4;
/// Heads removed per retention statement.
const RETENTION_BATCH: i64 = 1000;

/// One line as the dispatcher received it.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub(crate) time: SystemTime,
    pub(crate) stream: LogStream,
    pub(crate) text: String,
    pub(crate) truncated: bool,
}

/// Lines of one attempt, in order.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) job_id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) lines: Vec<Line>,
}

/// A stored chunk of lines.
pub(crate) struct Chunk {
    pub(crate) first_sequence: i64,
    pub(crate) attempt: i32,
    times: Vec<SystemTime>,
    streams: Vec<i16>,
    truncated: Vec<bool>,
    lines: Vec<String>,
}

impl Chunk {
    /// The chunk's lines with their sequence numbers.
    pub(crate) fn entries(self) -> impl Iterator<Item = LogEntry> {
        let (first, attempt) = (self.first_sequence, self.attempt);
        self.lines
            .into_iter()
            .zip(self.times)
            .zip(self.streams)
            .zip(self.truncated)
            .enumerate()
            .map(move |(i, (((line, time), stream), truncated))| LogEntry {
                sequence: first + i as i64,
                attempt,
                time: Some(time.into()),
                stream: i32::from(stream),
                line,
                truncated,
                dropped: 0,
            })
    }
}

/// Where a job's log lines are kept.
#[derive(Clone)]
pub(crate) struct Logs {
    pool: Pool,
    events: Events,
    /// Bytes of lines kept per job; past it the oldest chunks are dropped.
    max_bytes_per_job: i64,
}

impl Logs {
    pub(crate) fn new(pool: Pool, events: Events, max_bytes_per_job: u64) -> Self {
        Self {
            pool,
            events,
            max_bytes_per_job: i64::try_from(max_bytes_per_job).unwrap_or(i64::MAX).max(1),
        }
    }

    /// Stores each batch whose attempt is running, in one transaction; returns the
    /// attempts whose lines were refused (not running: finished, re-queued, or
    /// never this attempt).
    pub(crate) async fn append(&self, batches: Vec<Batch>) -> Result<Vec<(Uuid, i32)>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(
                "WITH fence AS (
                    SELECT id FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'),
                head AS (
                    INSERT INTO job_log_heads AS h (job_id, next_sequence, bytes)
                    SELECT id, 1 + $3::bigint, $4::bigint FROM fence
                    ON CONFLICT (job_id) DO UPDATE
                        SET next_sequence = h.next_sequence + $3::bigint,
                            bytes = h.bytes + $4::bigint, update_time = now()
                    RETURNING next_sequence - $3::bigint AS first, bytes)
                INSERT INTO job_logs (job_id, first_sequence, last_sequence, attempt, bytes,
                    times, streams, truncated, lines)
                SELECT $1, first + $5::bigint, first + $3::bigint - 1, $2, $6::integer,
                    $7, $8, $9, $10 FROM head
                RETURNING first_sequence, last_sequence, (SELECT bytes FROM head)",
            )
            .await?;
        let mut refused = Vec::new();
        let (mut stored_lines, mut refused_lines) = (0u64, 0u64);
        let mut stored: Vec<(Uuid, i64, i64, i64)> = Vec::new();
        for batch in batches {
            if batch.lines.is_empty() {
                continue;
            }
            let count = batch.lines.len() as i64;
            // A batch larger than the whole per-job limit keeps its newest lines;
            // the ones before still take their sequence numbers, so readers see
            // them as dropped.
            let mut skip = 0usize;
            let mut bytes: i64 = batch.lines.iter().map(|l| l.text.len() as i64).sum();
            while bytes > self.max_bytes_per_job && skip + 1 < batch.lines.len() {
                bytes -= batch.lines[skip].text.len() as i64;
                skip += 1;
            }
            let kept = &batch.lines[skip..];
            let times: Vec<SystemTime> = kept.iter().map(|l| l.time).collect();
            let streams: Vec<i16> = kept
                .iter()
                .map(|l| i16::try_from(l.stream as i32).unwrap_or(0))
                .collect();
            let truncated: Vec<bool> = kept.iter().map(|l| l.truncated).collect();
            let lines: Vec<&str> = kept.iter().map(|l| l.text.as_str()).collect();
            let bytes32 = i32::try_from(bytes).unwrap_or(i32::MAX);
            let rows = tx
                .query(
                    &insert,
                    &[
                        &batch.job_id,
                        &batch.attempt,
                        &count,
                        &bytes,
                        &(skip as i64),
                        &bytes32,
                        &times,
                        &streams,
                        &truncated,
                        &lines,
                    ],
                )
                .await?;
            match rows.first() {
                Some(row) => {
                    stored_lines += count as u64;
                    stored.push((
                        batch.job_id,
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                    ));
                }
                None => {
                    refused_lines += count as u64;
                    refused.push((batch.job_id, batch.attempt));
                }
            }
        }
        for (job_id, newest_first, _, total) in &stored {
            if *total > self.max_bytes_per_job {
                self.trim(&tx, *job_id, *newest_first, *total).await?;
            }
        }
        tx.commit().await?;
        crate::metrics::log_lines(stored_lines, refused_lines);
        let mut last: HashMap<Uuid, i64> = HashMap::new();
        for (job_id, _, last_sequence, _) in stored {
            let entry = last.entry(job_id).or_default();
            *entry = (*entry).max(last_sequence);
        }
        for (job_id, last_sequence) in last {
            self.events.publish_logs(job_id, last_sequence);
        }
        Ok(refused)
    }

    /// Drops a job's oldest chunks until its lines take at most nine tenths of the
    /// limit (the slack spares a trim on every append), never the newest chunk.
    async fn trim(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        job_id: Uuid,
        newest_first: i64,
        total: i64,
    ) -> Result<()> {
        let excess = total - self.max_bytes_per_job / 10 * 9;
        let statement = tx
            .prepare_cached(
                "WITH ordered AS (
                    SELECT first_sequence, bytes,
                        sum(bytes) OVER (ORDER BY first_sequence) - bytes AS before
                    FROM job_logs WHERE job_id = $1 AND first_sequence < $2),
                gone AS (
                    DELETE FROM job_logs l USING ordered o
                    WHERE l.job_id = $1 AND l.first_sequence = o.first_sequence
                        AND o.before < $3
                    RETURNING l.bytes)
                UPDATE job_log_heads
                    SET bytes = bytes - (SELECT coalesce(sum(bytes), 0) FROM gone)
                WHERE job_id = $1",
            )
            .await?;
        tx.execute(&statement, &[&job_id, &newest_first, &excess])
            .await?;
        crate::metrics::log_trimmed();
        Ok(())
    }

    /// Up to a few chunks of a job holding lines after `after`, in order.
    pub(crate) async fn read(&self, job_id: Uuid, after: i64) -> Result<Vec<Chunk>> {
        let client = self.pool.get().await?;
        // The chunk holding line `after + 1` starts at or before it; later chunks
        // follow in order of the primary key.
        let statement = client
            .prepare_cached(
                "SELECT first_sequence, attempt, times, streams, truncated, lines
                 FROM job_logs
                 WHERE job_id = $1 AND last_sequence > $2 AND first_sequence >= coalesce(
                     (SELECT max(first_sequence) FROM job_logs
                      WHERE job_id = $1 AND first_sequence <= $2 + 1), 0)
                 ORDER BY first_sequence LIMIT $3",
            )
            .await?;
        let rows = client
            .query(&statement, &[&job_id, &after, &READ_CHUNKS])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Chunk {
                    first_sequence: row.try_get(0)?,
                    attempt: row.try_get(1)?,
                    times: row.try_get(2)?,
                    streams: row.try_get(3)?,
                    truncated: row.try_get(4)?,
                    lines: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Removes the logs of jobs that ended more than `retention` ago. Returns how
    /// many jobs' logs went.
    pub(crate) async fn expire(&self, retention: Duration) -> Result<u64> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM job_log_heads WHERE job_id IN (
                    SELECT h.job_id FROM job_log_heads h JOIN jobs j ON j.id = h.job_id
                    WHERE h.update_time < now() - $1::bigint * interval '1 millisecond'
                      AND j.finish_time < now() - $1::bigint * interval '1 millisecond'
                    LIMIT $2)",
            )
            .await?;
        let millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let n = client
                .execute(&statement, &[&millis, &RETENTION_BATCH])
                .await?;
            total += n;
            if n < RETENTION_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

/// Removes expired logs every minute (and once at start).
pub(crate) async fn retention(
    logs: Logs,
    retention: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker =
        tokio::time::interval(Duration::from_secs(60).min(retention.max(Duration::from_secs(1))));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match logs.expire(retention).await {
            Ok(0) => {}
            Ok(jobs) => tracing::info!(jobs, "removed logs past their retention"),
            Err(error) => tracing::warn!(%error, "log retention pass failed"),
        }
    }
}
