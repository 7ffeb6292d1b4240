//! One JetStream pull loop per task. It asks for at most as many messages as the
//! task has free worker slots, leases each attempt in job-store, and acks the
//! message only once the lease is recorded: from then on PostgreSQL, not NATS,
//! is responsible for the attempt.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt as _;
use jobmesh_proto::internal::{LeaseJobRequest, QueuedAttempt};
use jobmesh_proto::v1::{ConnectResponse, JobAssignment, connect_response};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use jobmesh_runtime::grpc::traced_in;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::Dispatcher;

/// Largest pull request, whatever the free capacity.
const MAX_BATCH: usize = 256;
/// How long one pull request waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Delay before a message that found no free slot (or an unavailable job-store) is
/// delivered again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub(crate) async fn run(task: String, ctx: Arc<Dispatcher>, shutdown: CancellationToken) {
    let consumer = loop {
        match consumer(&ctx, &task).await {
            Ok(consumer) => break consumer,
            Err(error) => {
                tracing::warn!(task, %error, "cannot create the JetStream consumer, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    };
    let notify = ctx.registry.notifier(&task);
    tracing::info!(task, "consuming");
    loop {
        // Register interest before reading the capacity, so a slot freed in between
        // is not missed.
        let freed = notify.notified();
        let free = ctx.registry.free_slots(&task);
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = freed => {}
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
            continue;
        }
        let batch = consumer
            .batch()
            .max_messages(free.min(MAX_BATCH))
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(task, %error, "pull request failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = batch.next() => message,
            };
            match message {
                Some(Ok(message)) => {
                    // The slot is taken here, before the next pull counts the free
                    // ones: taken in the delivery's task, it would still look free
                    // to the next pull, whose extra messages would find no slot
                    // and wait RETRY_DELAY to come back.
                    let slot = queued_attempt(&message).map(|queued| {
                        (
                            ctx.registry
                                .reserve(&task, &(queued.job_id.clone(), queued.attempt)),
                            queued,
                        )
                    });
                    let ctx = Arc::clone(&ctx);
                    let task = task.clone();
                    ctx.tracker
                        .clone()
                        .spawn(async move { deliver(&ctx, &task, message, slot).await });
                }
                Some(Err(error)) => {
                    tracing::debug!(task, %error, "pull batch ended with an error");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn consumer(
    ctx: &Dispatcher,
    task: &str,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    let stream = jobmesh_runtime::nats::ensure_stream(&ctx.jetstream, &ctx.config.nats)
        .await
        .map_err(|e| e.to_string())?;
    let name = ctx.config.nats.consumer_name(task);
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("jobmesh dispatchers of task {task}")),
                filter_subject: ctx.config.nats.job_subject(task),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ctx.config.ack_wait(),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

/// The attempt a queue message is about; `None` when it cannot be read.
fn queued_attempt(message: &jetstream::Message) -> Option<jobmesh_proto::internal::JobAttempt> {
    match QueuedAttempt::decode(message.payload.clone()) {
        Ok(QueuedAttempt {
            attempt: Some(attempt),
            ..
        }) => Some(attempt),
        _ => None,
    }
}

/// Leases one queued attempt to the worker whose slot was reserved for it and
/// sends it the assignment, in a span of the job's trace (its context came in
/// the message). `slot` is what the consumer read and reserved: `None` for a
/// message it could not read, a `None` slot when no slot was free.
async fn deliver(
    ctx: &Dispatcher,
    task: &str,
    message: jetstream::Message,
    slot: Option<(
        Option<crate::registry::Slot>,
        jobmesh_proto::internal::JobAttempt,
    )>,
) {
    let Some((slot, queued)) = slot else {
        tracing::error!(task, subject = %message.subject, "undecodable queue message, dropping it");
        ack(&message, AckKind::Term).await;
        return;
    };
    let parent = message
        .headers
        .as_ref()
        .map(jobmesh_runtime::trace::from_nats)
        .unwrap_or_default();
    // Only a traced job's deliveries are traced (no trace starts here).
    let span = if !jobmesh_runtime::trace::has_span(&parent) {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "jetstream.process",
            otel.name = %format!("process {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.message.id = %format!("{}:{}", queued.job_id, queued.attempt),
            jobmesh.service = jobmesh_runtime::trace::services::DISPATCHER,
            jobmesh.job_id = %queued.job_id,
            jobmesh.task = %task,
            jobmesh.attempt = queued.attempt,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    };
    jobmesh_runtime::trace::adopt(&span, parent);
    let context = span.context();
    lease_and_assign(ctx, message, queued, slot, context)
        .instrument(span)
        .await;
}

async fn lease_and_assign(
    ctx: &Dispatcher,
    message: jetstream::Message,
    queued: jobmesh_proto::internal::JobAttempt,
    slot: Option<crate::registry::Slot>,
    context: opentelemetry::Context,
) {
    let Some(slot) = slot else {
        ack(&message, AckKind::Nak(Some(RETRY_DELAY))).await;
        return;
    };
    let session = slot.session;
    assign(ctx, message, &queued, context, slot).await;
    // Sent or given up: a draining worker learns it gets nothing more once no
    // assignment is on its way.
    if let Some(tx) = ctx.registry.settle(session) {
        let _ = tx.send(crate::session::drain_started()).await;
    }
}

/// Leases the attempt a slot was reserved for and sends it to the worker.
async fn assign(
    ctx: &Dispatcher,
    message: jetstream::Message,
    queued: &jobmesh_proto::internal::JobAttempt,
    context: opentelemetry::Context,
    slot: crate::registry::Slot,
) {
    let key = (queued.job_id.clone(), queued.attempt);
    let lease = ctx
        .job_store()
        .lease_job(traced_in(
            &context,
            LeaseJobRequest {
                attempt: Some(queued.clone()),
                worker_id: slot.worker_id.clone(),
                lease_duration: prost_types::Duration::try_from(ctx.config.lease()).ok(),
            },
        ))
        .await;
    let job = match lease {
        Ok(response) => response.into_inner().job.unwrap_or_default(),
        Err(status) => {
            ctx.registry.release(slot.session, &key);
            match status.code() {
                // Cancelled, already run, or superseded by a later attempt.
                Code::FailedPrecondition | Code::NotFound => {
                    tracing::debug!(job_id = %queued.job_id, attempt = queued.attempt, reason = status.message(), "dropping stale queue message");
                    ack(&message, AckKind::Term).await;
                }
                _ => {
                    tracing::warn!(job_id = %queued.job_id, %status, "lease failed, redelivering later");
                    ack(&message, AckKind::Nak(Some(RETRY_DELAY))).await;
                }
            }
            return;
        }
    };
    // The lease is durable: the message has done its job, and the lease keeper
    // may renew it from now on.
    ctx.registry.mark_leased(slot.session, &key);
    let traceparent = jobmesh_runtime::trace::to_traceparent(&context).unwrap_or_default();
    ctx.remember_trace(&job.id, job.attempt, context);
    ack(&message, AckKind::Ack).await;
    let assignment = ConnectResponse {
        message: Some(connect_response::Message::Assignment(JobAssignment {
            job_id: job.id.clone(),
            attempt: job.attempt,
            task: job.task.clone(),
            args: job.args.clone(),
            timeout: job.timeout,
            labels: job.labels.clone(),
            max_attempts: job.max_attempts,
            traceparent,
        })),
    };
    tracing::debug!(job_id = %job.id, attempt = job.attempt, worker_id = %slot.worker_id, "assigned");
    if slot.tx.send(assignment).await.is_err() {
        // The worker left between the reservation and now.
        ctx.registry.release(slot.session, &key);
        crate::session::fail_attempt(
            ctx,
            queued,
            "the worker disconnected before receiving the job",
        )
        .await;
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::debug!(%error, "ack not sent; JetStream will redeliver and the lease fence drops it");
    }
}
