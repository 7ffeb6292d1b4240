//! Limits at the edge: a token bucket per tenant on submit, a cap on calls in
//! flight that refuses the excess at once (load shedding: 10× overload gets fast
//! refusals and bounded memory, not a queue and timeouts), and a cap on open
//! watch streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt as _};
use jobmesh_auth::Authenticator;
use jobmesh_runtime::quote::quoted;
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
            jobmesh_runtime::errors::exhausted(
                format!(
                    "tenant {tenant:?} is over its submit rate ({} per second, burst {}); retry in {} ms",
                    self.rate,
                    self.burst,
                    wait.as_millis().max(1)
                ),
                "SUBMIT_RATE_EXCEEDED",
                &[("tenant", tenant.to_owned())],
                wait,
            )
        })
    }
}

/// A limit shared by tenants: at most `total` places held at once, and at most
/// `per_tenant` of them by any one tenant, so one careless or hostile tenant
/// cannot take every place from the others. A place is taken at once or refused
/// at once (`RESOURCE_EXHAUSTED` with a retry hint), never waited for.
pub(crate) struct Shares {
    /// What a place is, for messages ("calls in flight", "open streams").
    what: &'static str,
    /// The flags that set the limits, named in refusals.
    flags: (&'static str, &'static str),
    total: usize,
    per_tenant: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    tenants: HashMap<String, usize>,
}

/// One place of a [`Shares`], given back when dropped.
pub(crate) struct Share {
    shares: Arc<Shares>,
    tenant: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(count) = held.tenants.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                held.tenants.remove(&self.tenant);
            }
        }
    }
}

impl Shares {
    /// `per_tenant` is capped at `total`; both are at least 1.
    pub(crate) fn new(
        what: &'static str,
        flags: (&'static str, &'static str),
        total: usize,
        per_tenant: usize,
    ) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(Self {
            what,
            flags,
            total,
            per_tenant: per_tenant.clamp(1, total),
            held: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `tenant`, or the refusal saying which limit is reached.
    pub(crate) fn take(self: &Arc<Self>, tenant: &str) -> Result<Share, Status> {
        let mut held = self.lock();
        if held.total >= self.total {
            return Err(refused(
                format!(
                    "the gateway is overloaded ({} {}, its limit {}); retry with backoff",
                    self.total, self.what, self.flags.0
                ),
                "GATEWAY_OVERLOADED",
                &[("limit", self.flags.0.to_owned())],
            ));
        }
        let mine = held.tenants.get(tenant).copied().unwrap_or(0);
        if mine >= self.per_tenant {
            return Err(refused(
                format!(
                    "tenant {} has {} {}, its share of the gateway ({}); close some or retry with backoff",
                    quoted(tenant),
                    self.per_tenant,
                    self.what,
                    self.flags.1
                ),
                "TENANT_SHARE_EXHAUSTED",
                &[
                    ("tenant", tenant.to_owned()),
                    ("limit", self.flags.1.to_owned()),
                ],
            ));
        }
        held.total += 1;
        *held.tenants.entry(tenant.to_owned()).or_insert(0) += 1;
        Ok(Share {
            shares: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }

    /// Places held now: in all, and by `tenant`.
    #[cfg(test)]
    fn held(&self, tenant: &str) -> (usize, usize) {
        let held = self.lock();
        (held.total, held.tenants.get(tenant).copied().unwrap_or(0))
    }
}

/// `RESOURCE_EXHAUSTED` with a one-second retry hint.
fn refused(message: String, reason: &str, metadata: &[(&str, String)]) -> Status {
    jobmesh_runtime::errors::exhausted(
        message,
        reason,
        metadata,
        jobmesh_runtime::errors::DEFAULT_RETRY_DELAY,
    )
}

/// The key a caller's places are counted under: its tenant (callers whose token
/// names none share one key; their calls are refused further in).
pub(crate) fn tenant_key(caller: &jobmesh_auth::Caller) -> &str {
    caller.tenant.as_deref().unwrap_or("")
}

/// The public methods that answer with a stream: they hold a place among the
/// open streams for their whole life, not one among the calls in flight.
pub(crate) fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/jobmesh.v1.JobService/WatchJob"
            | "/jobmesh.v1.JobService/WatchJobs"
            | "/jobmesh.v1.JobService/ReadJobLogs"
    )
}

/// The edge's own admission: a caller is authenticated before it may take any
/// place; then a unary call takes a place among the calls in flight (until the
/// handler has produced its response head) and a streaming call one among the
/// open streams (until its response body is dropped: the stream ended or the
/// caller went away). Both are [`Shares`]: bounded in total and per tenant, and
/// refused at once over either bound, answered without touching the service
/// (a trailers-only gRPC response). Every request body must arrive within
/// `body_timeout`.
#[derive(Clone)]
pub(crate) struct InflightLayer {
    calls: Arc<Shares>,
    streams: Arc<Shares>,
    /// Callers are authenticated before they may take a place.
    auth: Authenticator,
    body_timeout: Duration,
}

impl InflightLayer {
    pub(crate) fn new(
        calls: Arc<Shares>,
        streams: Arc<Shares>,
        auth: Authenticator,
        body_timeout: Duration,
    ) -> Self {
        Self {
            calls,
            streams,
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
            return Poll::Ready(Some(Err(
                crate::error::Error::BodyTimeout(this.timeout).into()
            )));
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
    type Service = Wrapped<InflightLayer, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(self.clone(), inner)
    }
}

use jobmesh_runtime::call::{HttpRequest, HttpResponse, Inner, Intercept, Wrapped};

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

impl<S: Inner> Intercept<S> for InflightLayer {
    fn intercept(
        &self,
        mut inner: S,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, S::Error>> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let open = is_open_service(path);
        let stream = is_stream(path);
        // Only a caller with valid credentials may take a place among the calls
        // in flight or the streams: one without is answered at once and cannot
        // fill either.
        let caller = if open {
            None
        } else {
            let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
            match self.auth.authenticate(&metadata) {
                Ok(caller) => Some(caller),
                Err(status) => return refuse(status, body),
            }
        };
        let timeout = self.body_timeout;
        let body = tonic::body::Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            ended: false,
        });
        let request = HttpRequest::from_parts(parts, body);
        let Some(caller) = caller else {
            return async move { inner.call(request).await }.boxed();
        };
        let shares = if stream { &self.streams } else { &self.calls };
        let share = match shares.take(tenant_key(&caller)) {
            Ok(share) => share,
            Err(status) => return refuse(status, request.into_body()),
        };
        if stream {
            return async move {
                let response = inner.call(request).await?;
                Ok(response.map(|body| hold(body, share)))
            }
            .boxed();
        }
        async move {
            let response = inner.call(request).await;
            drop(share);
            response
        }
        .boxed()
    }
}

/// `status` as the answer to a refused call, once what it is still sending is
/// drained (see [`drain`]).
fn refuse<E: Send + 'static>(
    status: Status,
    body: tonic::body::Body,
) -> BoxFuture<'static, Result<HttpResponse, E>> {
    async move {
        drain(body).await;
        Ok(status.into_http())
    }
    .boxed()
}

/// `body`, holding `held` until it is dropped (the response sent, or the caller
/// gone).
pub(crate) fn hold<G: Send + Unpin + 'static>(
    body: tonic::body::Body,
    held: G,
) -> tonic::body::Body {
    tonic::body::Body::new(Holding {
        inner: body,
        _held: held,
    })
}

struct Holding<G> {
    inner: tonic::body::Body,
    _held: G,
}

impl<G: Unpin> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
    fn a_tenant_gets_its_share_others_the_rest_and_places_come_back() {
        let shares = Shares::new(
            "open streams",
            ("--max-streams", "--max-streams-per-tenant"),
            3,
            2,
        );
        let a1 = shares.take("a").expect("first of a");
        let _a2 = shares.take("a").expect("second of a");
        let refused = shares.take("a").err().expect("a is at its share");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("tenant \"a\" has 2 open streams")
                && refused.message().contains("--max-streams-per-tenant"),
            "{}",
            refused.message()
        );
        assert_eq!(
            refused.metadata().get(RETRY_AFTER).map(|v| v.to_str().ok()),
            Some(Some("1"))
        );
        let _b1 = shares.take("b").expect("b has its own share");
        let full = shares.take("c").err().expect("the total is reached");
        assert!(
            full.message()
                .contains("the gateway is overloaded (3 open streams, its limit --max-streams)"),
            "{}",
            full.message()
        );
        assert_eq!(shares.held("a"), (3, 2));
        drop(a1);
        assert_eq!(shares.held("a"), (2, 1));
        let c = shares.take("c").expect("a place came back");
        assert_eq!(shares.held("c"), (3, 1));
        drop(c);
        assert_eq!(shares.held("c"), (2, 0), "and goes back again");
    }
}
