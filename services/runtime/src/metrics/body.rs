//! What the gRPC metrics watch in a body ([`crate::body::Watch`]): its messages
//! as they pass and, for a response, the call's outcome when it ends.

use std::time::Instant;

use super::rpc::Method;
use crate::body::{Watch, Watched};
use crate::call::{HttpRequest, Side, code_number};

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

/// The metrics of one body: its messages counted on `counter` and, for a
/// response, the call's `grpc_*_handled_total` and `_handling_seconds` at its end.
pub(crate) struct Metered {
    messages: Messages,
    counter: &'static metrics::Counter,
    call: Option<(Side, &'static Method, Instant)>,
}

impl Metered {
    /// `request` with its messages counted on `counter`.
    pub(crate) fn request(request: HttpRequest, counter: &'static metrics::Counter) -> HttpRequest {
        Watched::request(
            request,
            Self {
                messages: Messages::default(),
                counter,
                call: None,
            },
        )
    }

    /// The metrics of the response of a call to `labels` on `side`, started at
    /// `started`.
    pub(crate) fn response(side: Side, labels: &'static Method, started: Instant) -> Self {
        Self {
            messages: Messages::default(),
            counter: labels.responses(side),
            call: Some((side, labels, started)),
        }
    }
}

impl Watch for Metered {
    fn data(&mut self, data: &[u8]) {
        self.counter.increment(self.messages.feed(data));
    }

    fn end(&mut self, code: &str) {
        if let Some((side, labels, started)) = self.call.take() {
            labels.handled(side, code_number(code), started.elapsed());
        }
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
