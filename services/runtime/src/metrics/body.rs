//! The one body wrapper of the gRPC metrics: counts a body's messages as they
//! pass and, for a response, records the call's outcome (metrics, span status)
//! when it ends, or when it is dropped (the other side went away).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;

use super::rpc::{Method, code_number};
use crate::call::{HttpRequest, HttpResponse, Side};

/// Counts the gRPC messages of a body from its data frames, however they are
/// split: each message is a 5-byte prefix (a compression flag and a big-endian
/// length) and that many bytes. A message counts when its prefix is complete.
#[derive(Debug, Default)]
struct Messages {
    /// Bytes of the current prefix seen so far (0 to 4).
    prefix: usize,
    length: [u8; 4],
    /// Bytes of the current message still to come.
    left: u64,
}

impl Messages {
    /// Feeds one data frame; returns how many messages started in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[n..];
                self.left -= n as u64;
                continue;
            }
            if self.prefix > 0 {
                self.length[self.prefix - 1] = data[0];
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == 5 {
                self.prefix = 0;
                self.left = u64::from(u32::from_be_bytes(self.length));
                started += 1;
            }
        }
        started
    }
}

/// A call whose end a response body records.
pub(crate) struct Call {
    side: Side,
    labels: &'static Method,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    pub(crate) fn new(
        side: Side,
        labels: &'static Method,
        started: Instant,
        span: tracing::Span,
    ) -> Self {
        Self {
            side,
            labels,
            started,
            span,
        }
    }

    /// Records the call's end with the `grpc-status` value `code`.
    pub(crate) fn finish(self, code: &str) {
        let number = code_number(code);
        crate::trace::record_status(&self.span, self.side, number);
        self.labels
            .handled(self.side, number, self.started.elapsed());
    }
}

/// A gRPC body whose messages are counted on `counter` as they pass; a
/// response's body also ends its [`Call`].
pub(crate) struct MeteredBody {
    inner: tonic::body::Body,
    messages: Messages,
    counter: &'static metrics::Counter,
    call: Option<Call>,
    /// The status the response head already carries (a trailers-only answer).
    code: Option<String>,
}

impl MeteredBody {
    /// `request` with its messages counted on `counter`.
    pub(crate) fn request(request: HttpRequest, counter: &'static metrics::Counter) -> HttpRequest {
        let (parts, body) = request.into_parts();
        let counted = Self {
            inner: body,
            messages: Messages::default(),
            counter,
            call: None,
            code: None,
        };
        http::Request::from_parts(parts, tonic::body::Body::new(counted))
    }

    /// `response` with its messages counted, ending `call` when it ends.
    pub(crate) fn response(response: HttpResponse, call: Call) -> HttpResponse {
        let (parts, body) = response.into_parts();
        // A trailers-only answer (an error before any message) has its code in
        // the headers; otherwise it comes in the trailers at the end.
        let code = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let metered = Self {
            inner: body,
            messages: Messages::default(),
            counter: call.labels.responses(call.side),
            call: Some(call),
            code,
        };
        http::Response::from_parts(parts, tonic::body::Body::new(metered))
    }

    fn finish(&mut self, code: &str) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for MeteredBody {
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
                    let this = &mut *self;
                    this.counter.increment(this.messages.feed(data));
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("2")
                        .to_owned();
                    self.finish(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("2"),
            Poll::Ready(None) => {
                let code = self.code.clone().unwrap_or_else(|| "0".to_owned());
                self.finish(&code);
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

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Ended before its end: the other side went away (CANCELLED).
        let code = self.code.clone().unwrap_or_else(|| "1".to_owned());
        self.finish(&code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_however_frames_split_them() {
        // Three messages: 3 bytes, 0 bytes, 300 bytes.
        let mut body = Vec::new();
        for len in [3u32, 0, 300] {
            body.push(0);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, len as usize));
        }
        let whole = Messages::default().feed(&body);
        assert_eq!(whole, 3);
        for chunk in [1, 2, 4, 5, 6, 64] {
            let mut messages = Messages::default();
            let counted: u64 = body.chunks(chunk).map(|c| messages.feed(c)).sum();
            assert_eq!(counted, 3, "chunks of {chunk}");
        }
    }
}
