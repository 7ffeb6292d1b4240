//! The protobuf codec of every generated service and client: prost's, with a
//! smaller first buffer. tonic allocates an encode and a decode buffer per call
//! up front (8 KiB each by default), and an open watch keeps them on every hop
//! for as long as it is open, while the `Job` snapshots it carries are a few
//! hundred bytes. Buffers still grow to whatever a message needs (up to the
//! message limits), and streams still batch what is ready up to tonic's yield
//! threshold.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
const BUFFER_BYTES: usize = 1024;
/// Bytes a stream gathers before it yields them (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// [`tonic_prost::ProstCodec`] with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
