//! The one body wrapper of the stack: a gRPC body that tells a [`Watch`] what
//! passes (each data frame) and how the call ended (its `grpc-status`), when it
//! ends or when it is dropped before its end (the other side went away). The
//! span layer ([`crate::trace::layer`]) and the metrics ([`crate::metrics`])
//! each watch a call with it; a client channel watches with both at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use crate::call::{HttpRequest, HttpResponse};

/// What follows a body.
pub(crate) trait Watch: Send + Unpin + 'static {
    /// A data frame passed.
    fn data(&mut self, _data: &[u8]) {}
    /// The call ended with the `grpc-status` value `code`; called once.
    fn end(&mut self, code: &str);
}

/// Two watchers of one body.
impl<A: Watch, B: Watch> Watch for (A, B) {
    fn data(&mut self, data: &[u8]) {
        self.0.data(data);
        self.1.data(data);
    }
    fn end(&mut self, code: &str) {
        self.0.end(code);
        self.1.end(code);
    }
}

/// A body followed by `W`.
pub(crate) struct Watched<W: Watch> {
    inner: tonic::body::Body,
    watch: W,
    /// The status the response head already carries (a trailers-only answer).
    head: Option<String>,
    /// Whether the end was told (a request's end is not the call's: never).
    ended: bool,
}

impl<W: Watch> Watched<W> {
    /// `request` with its data frames told to `watch`.
    pub(crate) fn request(request: HttpRequest, watch: W) -> HttpRequest {
        let (parts, body) = request.into_parts();
        let watched = Self {
            inner: body,
            watch,
            head: None,
            ended: true,
        };
        http::Request::from_parts(parts, tonic::body::Body::new(watched))
    }

    /// `response` with its data frames and its end told to `watch`.
    pub(crate) fn response(response: HttpResponse, watch: W) -> HttpResponse {
        let (parts, body) = response.into_parts();
        // A trailers-only answer (an error before any message) has its code in
        // the headers; otherwise it comes in the trailers at the end.
        let head = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let watched = Self {
            inner: body,
            watch,
            head,
            ended: false,
        };
        http::Response::from_parts(parts, tonic::body::Body::new(watched))
    }

    fn end(&mut self, code: &str) {
        if !self.ended {
            self.ended = true;
            self.watch.end(code);
        }
    }
}

impl<W: Watch> http_body::Body for Watched<W> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.watch.data(data);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("2")
                        .to_owned();
                    self.end(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end("2"),
            Poll::Ready(None) => {
                let code = self.head.clone().unwrap_or_else(|| "0".to_owned());
                self.end(&code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        // Ended before its end: the other side went away (CANCELLED).
        let code = self.head.clone().unwrap_or_else(|| "1".to_owned());
        self.end(&code);
    }
}
