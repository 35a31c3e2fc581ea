//! The gRPC codec of both mesh streams: prost, with smaller per-stream buffers than
//! tonic's default.
//!
//! tonic gives every stream an 8 KiB encode buffer and an 8 KiB decode buffer up front. A
//! control plane holds two long-lived streams per proxy (discovery and telemetry), mostly
//! idle, and mesh messages are a few hundred bytes, so at 10,000 proxies the defaults are
//! about 300 MiB of buffers that are almost always empty. The buffers still grow on
//! demand for a large message.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial buffer per stream and direction: one typical mesh message.
const BUFFER: usize = 1024;
/// tonic's default: encode at most this much before yielding to other tasks.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with `BUFFER`-sized initial buffers.
#[derive(Debug, Clone, Copy)]
pub struct MeshCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for MeshCodec<T, U> {
    fn default() -> Self {
        MeshCodec(PhantomData)
    }
}

impl<T, U> Codec for MeshCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
