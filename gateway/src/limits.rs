//! Limits at the edge: a token bucket per tenant on submit, a cap on calls in
//! flight that refuses the excess at once (load shedding: 10× overload gets fast
//! refusals and bounded memory, not a queue and timeouts), and a cap on open
//! watch streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt as _};
use jobmesh_runtime::auth::Authenticator;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Tenants tracked at once by the rate limiter; idle (full) buckets are dropped
/// beyond this.
const MAX_TRACKED_TENANTS: usize = 100_000;

/// Most of a refused request's body read before answering, and how long to wait
/// for it.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Metadata key of the retry hint on a refusal, in whole seconds (the REST shim
/// turns it into `Retry-After`).
pub(crate) const RETRY_AFTER: &str = "retry-after";

/// A token bucket per tenant.
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `tenant`'s bucket, or says how long until one is there.
    pub(crate) fn take(&self, tenant: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_TENANTS && !buckets.contains_key(tenant) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// `RESOURCE_EXHAUSTED` with a retry hint when `tenant` is over its rate.
    pub(crate) fn check(&self, tenant: &str) -> Result<(), Status> {
        self.take(tenant).map_err(|wait| {
            let mut status = Status::resource_exhausted(format!(
                "tenant {tenant:?} is over its submit rate ({} per second, burst {}); retry in {} ms",
                self.rate,
                self.burst,
                wait.as_millis().max(1)
            ));
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = seconds.max(1).to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER, value);
            }
            status
        })
    }
}

/// Open watch streams, bounded.
#[derive(Clone)]
pub(crate) struct WatchSlots(Arc<Semaphore>, usize);

impl WatchSlots {
    pub(crate) fn new(limit: usize) -> Self {
        Self(Arc::new(Semaphore::new(limit.max(1))), limit.max(1))
    }

    /// A slot held for the life of one stream, or `RESOURCE_EXHAUSTED`.
    pub(crate) fn acquire(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.0).try_acquire_owned().map_err(|_| {
            let mut status = Status::resource_exhausted(format!(
                "the gateway has {} watch streams open, its limit; retry later or watch from another gateway",
                self.1
            ));
            status
                .metadata_mut()
                .insert(RETRY_AFTER, tonic::metadata::MetadataValue::from_static("1"));
            status
        })
    }
}

/// Refuses calls beyond `limit` in flight at once with `RESOURCE_EXHAUSTED`,
/// answered without touching the service (a trailers-only gRPC response). The
/// permit is held until the handler has produced its response head: a unary
/// call's whole handling, a stream's set-up (streams are bounded by
/// [`WatchSlots`]).
#[derive(Clone)]
pub(crate) struct InflightLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    /// Callers are authenticated before they may take a place.
    auth: Authenticator,
    body_timeout: Duration,
}

impl InflightLayer {
    pub(crate) fn new(limit: usize, auth: Authenticator, body_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            limit: limit.max(1),
            auth,
            body_timeout,
        }
    }
}

/// Health and reflection: answered without a token and never behind the cap,
/// so a probe sees the gateway's health even when callers fill it.
fn is_open_service(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// A request body that must end within a deadline: past it, reading it fails
/// with DEADLINE_EXCEEDED, which tonic answers as the call's status (so a caller
/// promising a body it never sends holds nothing for long).
struct TimedBody {
    inner: tonic::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    ended: bool,
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if !this.ended && this.deadline.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the request body did not arrive within {} ms",
                this.timeout.as_millis()
            )))));
        }
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(_)) if this.inner.is_end_stream() => this.ended = true,
            _ => {}
        }
        frame.map_err(|status| status)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> tower::Layer<S> for InflightLayer {
    type Service = Inflight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Inflight {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Inflight<S> {
    inner: S,
    layer: InflightLayer,
}

use jobmesh_runtime::grpc::{HttpRequest, HttpResponse};

/// The refusal of a call over the gateway's in-flight limit, with a retry hint.
pub(crate) fn overloaded(limit: usize) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "the gateway is overloaded ({limit} calls in flight, its limit); retry with backoff"
    ));
    status.metadata_mut().insert(
        RETRY_AFTER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// Reads and drops what a refused caller is still sending (at most
/// `DRAIN_LIMIT` bytes, for at most `DRAIN_WAIT`, one frame held at a time)
/// before the refusal goes out: a response sent while the client is still
/// sending makes HTTP/2 reset the stream, which clients report as a transport
/// error instead of the refusal.
pub(crate) async fn drain(body: tonic::body::Body) {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |data| data.len());
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, read).await;
}

impl<S> tower::Service<HttpRequest> for Inflight<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let (parts, body) = request.into_parts();
        let open = is_open_service(parts.uri.path());
        // Only a caller with valid credentials may take a place among the calls
        // in flight: one without is answered at once and cannot fill the cap.
        if !open {
            let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
            if let Err(status) = self.layer.auth.authenticate(&metadata) {
                return async move {
                    drain(body).await;
                    Ok(status.into_http())
                }
                .boxed();
            }
        }
        let timeout = self.layer.body_timeout;
        let body = tonic::body::Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            ended: false,
        });
        let request = HttpRequest::from_parts(parts, body);
        if open {
            let mut inner = jobmesh_runtime::grpc::take_ready(&mut self.inner);
            return async move { inner.call(request).await }.boxed();
        }
        let Ok(permit) = Arc::clone(&self.layer.permits).try_acquire_owned() else {
            let status = overloaded(self.layer.limit);
            let body = request.into_body();
            return async move {
                drain(body).await;
                Ok(status.into_http())
            }
            .boxed();
        };
        let mut inner = jobmesh_runtime::grpc::take_ready(&mut self.inner);
        async move {
            let response = inner.call(request).await;
            drop(permit);
            response
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_burst_then_waits_and_others_are_untouched() {
        let limiter = RateLimiter::new(10.0, 3);
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        let wait = limiter.take("a").expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limiter.take("b").is_ok(), "tenants have their own buckets");
        let status = limiter.check("a").expect_err("still over");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("\"a\""), "{}", status.message());
        assert_eq!(
            status.metadata().get(RETRY_AFTER).map(|v| v.to_str().ok()),
            Some(Some("1"))
        );
    }

    #[test]
    fn watch_slots_are_returned_when_dropped() {
        let slots = WatchSlots::new(1);
        let held = slots.acquire().expect("first");
        assert_eq!(
            slots.acquire().expect_err("full").code(),
            tonic::Code::ResourceExhausted
        );
        drop(held);
        assert!(slots.acquire().is_ok());
    }
}
