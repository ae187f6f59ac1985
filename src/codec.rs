//! The protobuf codec of every generated service: prost's, with a smaller
//! starting buffer for the messages a call sends.
//!
//! tonic gives every response stream an encode buffer of 8 KiB for as long
//! as the stream lives, and a `WatchCases` stream lives for hours while
//! sending a few hundred bytes at a time: 10,000 watchers held 80 MiB of
//! empty buffer. Starting at 256 bytes (a heartbeat fits) costs a larger
//! message one growth, after which the buffer keeps its size.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec as TonicCodec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where an encode buffer starts.
const ENCODE_BUFFER_BYTES: usize = 256;
/// tonic's default: how much encoded data is batched before it is sent.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with [`ENCODE_BUFFER_BYTES`] (named in `build.rs`).
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}
