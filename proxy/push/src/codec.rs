//! The protobuf codec of the push API, with small message buffers.
//!
//! tonic keeps each stream's encode and decode buffer at the largest size it ever grew to, for
//! the stream's life; by default it batches ready messages into one buffer up to 32 KiB before
//! writing. An operator holds a thousand subscriptions open for days, so that memory counts:
//! with these settings (and [`CHUNK_BYTES`](crate::CHUNK_BYTES) payloads, just under one
//! buffer) every message is written as soon as it is encoded and a stream's buffers stay at
//! 8 KiB each.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial (and, for chunked payloads, final) size of a stream's buffers.
pub const BUFFER_BYTES: usize = 8 * 1024;

/// Write out each message once the buffer holds this much (one chunk is more).
const YIELD_BYTES: usize = 4 * 1024;

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers that yield after every large message.
#[derive(Debug, Clone)]
pub struct PushCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PushCodec<T, U> {
    fn default() -> Self {
        PushCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

impl<T, U> Codec for PushCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
