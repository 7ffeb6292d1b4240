//! The outbox relay: publishes committed runnable attempts to JetStream and deletes
//! their rows once JetStream acknowledged them. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several job-store replicas share the work, and a
//! crash at any point leaves the row for the next pass. `Nats-Msg-Id`
//! (`<job_id>:<attempt>`) makes a publish repeated after such a crash a no-op.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use deadpool_postgres::Pool;
use jobmesh_proto::internal::{JobAttempt, QueuedAttempt};
use jobmesh_runtime::NatsConfig;
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

/// Rows claimed per pass; bounds memory and the time a claim is held.
pub(crate) const BATCH: i64 = 512;
/// How long one pass may take to publish its batch and collect the acks before
/// giving up on the rest (those rows stay and are retried).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Relay {
    pub(crate) pool: Pool,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) nats: NatsConfig,
    pub(crate) wakeup: Arc<Notify>,
    pub(crate) poll: Duration,
}

impl Relay {
    /// Runs until `shutdown`, then finishes the pass in progress.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            match jobmesh_runtime::nats::ensure_stream(&self.jetstream, &self.nats).await {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot create the work-queue stream yet; jobs wait in the outbox");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        loop {
            loop {
                match self.pass().await {
                    Ok(n) if n as i64 >= BATCH => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "outbox pass failed, retrying");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Publishes one batch of due rows. Returns how many were published.
    async fn pass(&self) -> Result<usize, String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT o.id, o.job_id, o.attempt, o.task, j.traceparent
                 FROM outbox o LEFT JOIN jobs j ON j.id = o.job_id
                 WHERE o.available_at <= now() ORDER BY o.id LIMIT $1
                 FOR UPDATE OF o SKIP LOCKED",
                )
                .await
                .map_err(|e| e.to_string())?,
                &[&BATCH],
            )
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Publish the whole batch first, then await the acks: one round trip per
        // batch, not per row. One deadline bounds the whole pass, so the claimed rows
        // (which CancelJob may be waiting to delete) are never held for long.
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let (outbox_id, job_id, attempt, task): (i64, Uuid, i32, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let traceparent: Option<String> = row.get(4);
            let payload = QueuedAttempt {
                attempt: Some(JobAttempt {
                    job_id: job_id.to_string(),
                    attempt,
                }),
                task: task.clone(),
            }
            .encode_to_vec();
            // The publish joins the job's trace; its context travels in the
            // message headers to the dispatcher that delivers the attempt.
            let subject = self.nats.job_subject(&task);
            // Only a traced job's attempts are traced (no trace starts here).
            let span = if traceparent.is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(
                    "jetstream.publish",
                    otel.name = %format!("publish {subject}"),
                    otel.kind = "producer",
                    messaging.system = "nats",
                    messaging.operation.name = "publish",
                    messaging.operation.type = "send",
                    messaging.destination.name = %subject,
                    messaging.message.id = %format!("{job_id}:{attempt}"),
                    jobmesh.service = jobmesh_runtime::trace::services::JOB_STORE,
                    jobmesh.job_id = %job_id,
                    jobmesh.task = %task,
                    jobmesh.attempt = attempt,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                )
            };
            let mut headers = async_nats::HeaderMap::new();
            if let Some(parent) = &traceparent {
                jobmesh_runtime::trace::adopt(
                    &span,
                    jobmesh_runtime::trace::from_traceparent(parent),
                );
                jobmesh_runtime::trace::to_nats(&span_context(&span), &mut headers);
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .headers(headers)
                .message_id(format!("{job_id}:{attempt}"));
            let sent = tokio::time::timeout_at(
                deadline,
                self.jetstream
                    .send_publish(subject, publish)
                    .instrument(span),
            )
            .await;
            match sent {
                Ok(Ok(ack)) => pending.push((outbox_id, ack)),
                Ok(Err(error)) => {
                    tracing::warn!(%job_id, attempt, %error, "publish to JetStream failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!(%job_id, attempt, "publish to JetStream timed out");
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(pending.len());
        for (outbox_id, ack) in pending {
            match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(_)) => published.push(outbox_id),
                Ok(Err(error)) => tracing::warn!(outbox_id, %error, "JetStream refused an attempt"),
                Err(_) => tracing::warn!(outbox_id, "JetStream ack timed out"),
            }
        }
        tx.execute(
            &tx.prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
                .await
                .map_err(|e| e.to_string())?,
            &[&published],
        )
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(published.len())
    }
}

/// The OpenTelemetry context of `span`.
fn span_context(span: &tracing::Span) -> opentelemetry::Context {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    span.context()
}
