//! The Sync method on the wire: a codec that counts a batch's entries
//! before decoding it, and the route that serves [`Exchange`] with it.
//!
//! prost decodes a whole `Batch` into a `Vec<Entry>`: 16 MiB of two-byte
//! entries would be eight million values (and as many rejections) before
//! the service could look at the count. The decoder here walks the message's
//! fields first (no allocation) and refuses a batch over
//! `limits.max_batch_entries` with INVALID_ARGUMENT, or a message it cannot
//! walk. The generated `ExchangeServer` hard-wires prost's codec, hence
//! [`ExchangeService`], which is the generated route with this codec.
//!
//! The wire format is unchanged: the same messages, the same method path.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use prost::bytes::Buf;
use proto::v1::exchange_server::Exchange;
use proto::v1::{AgentMessage, Delivery, HubMessage, SubscriberMessage};
use tonic::codec::{CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Status, Streaming};

use crate::text;

#[cfg(test)]
mod tests;

/// `AgentMessage.batch` and `Batch.entries`.
const BATCH_FIELD: u64 = 2;
const ENTRIES_FIELD: u64 = 1;

/// Encodes `HubMessage`s; decodes `AgentMessage`s of at most `max_entries`
/// entries.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    pub max_entries: usize,
}

#[derive(Debug)]
pub struct Enc;

#[derive(Debug)]
pub struct Dec {
    max_entries: usize,
}

impl tonic::codec::Codec for Codec {
    type Encode = HubMessage;
    type Decode = AgentMessage;
    type Encoder = Enc;
    type Decoder = Dec;

    fn encoder(&mut self) -> Enc {
        Enc
    }

    fn decoder(&mut self) -> Dec {
        Dec {
            max_entries: self.max_entries,
        }
    }
}

impl Encoder for Enc {
    type Item = HubMessage;
    type Error = Status;

    fn encode(&mut self, item: HubMessage, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for Dec {
    type Item = AgentMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<AgentMessage>, Status> {
        let n = if buf.chunk().len() == buf.remaining() {
            count_entries(buf.chunk())
        } else {
            // Not contiguous (tonic's buffer is, today): walk a copy.
            count_entries(&buf.copy_to_bytes(buf.remaining()))
        };
        let n = n.ok_or_else(|| Status::invalid_argument("not an AgentMessage: unreadable fields"))?;
        if n > self.max_entries as u64 {
            return Err(Status::invalid_argument(format!(
                "a batch of {n} entries is over the hub's limit of {} (limits.max_batch_entries); \
                 lower the agent's hub.batch_records",
                self.max_entries
            )));
        }
        AgentMessage::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not an AgentMessage: {}", text::shown(&e.to_string()))))
    }
}

/// Entries in the batches of an encoded `AgentMessage` (repeated fields
/// merge, so every occurrence counts), or `None` if its fields cannot be
/// walked.
pub fn count_entries(message: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    walk(message, |field, body| {
        if field == BATCH_FIELD
            && let Some(body) = body
        {
            let mut entries = 0u64;
            walk(body, |f, _| {
                entries += u64::from(f == ENTRIES_FIELD);
                Some(())
            })?;
            n += entries;
        }
        Some(())
    })?;
    Some(n)
}

/// Calls `f(field, length-delimited body)` for each field of a message;
/// `None` on a truncated field or a group (which no Qianzhi message has).
fn walk(mut b: &[u8], mut f: impl FnMut(u64, Option<&[u8]>) -> Option<()>) -> Option<()> {
    while !b.is_empty() {
        let key = prost::encoding::decode_varint(&mut b).ok()?;
        let field = key >> 3;
        let body = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut b).ok()?;
                None
            }
            1 => {
                b = b.get(8..)?;
                None
            }
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut b).ok()?).ok()?;
                let body = b.get(..len)?;
                b = &b[len..];
                Some(body)
            }
            5 => {
                b = b.get(4..)?;
                None
            }
            _ => return None,
        };
        f(field, body)?;
    }
    Some(())
}

/// The `Exchange` service with [`Codec`]: the generated route, with the
/// codec and the decoding limit chosen here.
pub struct ExchangeService<T> {
    inner: Arc<T>,
    codec: Codec,
    max_message_bytes: usize,
}

impl<T> ExchangeService<T> {
    pub fn new(inner: T, max_entries: usize, max_message_bytes: usize) -> Self {
        ExchangeService {
            inner: Arc::new(inner),
            codec: Codec { max_entries },
            max_message_bytes,
        }
    }
}

impl<T> Clone for ExchangeService<T> {
    fn clone(&self) -> Self {
        ExchangeService {
            inner: self.inner.clone(),
            codec: self.codec,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

impl<T> tonic::server::NamedService for ExchangeService<T> {
    const NAME: &'static str = proto::v1::exchange_server::SERVICE_NAME;
}

/// The Subscribe method: its messages are small and few (the receiver
/// only acknowledges), so prost's codec within the message size limit.
struct SubscribeMethod<T>(Arc<T>);

impl<T: Exchange> tonic::server::StreamingService<SubscriberMessage> for SubscribeMethod<T> {
    type Response = Delivery;
    type ResponseStream = T::SubscribeStream;
    type Future = BoxFuture<tonic::Response<T::SubscribeStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<SubscriberMessage>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.subscribe(request).await })
    }
}

/// The Sync method, as tonic's streaming handler wants it.
struct SyncMethod<T>(Arc<T>);

impl<T: Exchange> tonic::server::StreamingService<AgentMessage> for SyncMethod<T> {
    type Response = HubMessage;
    type ResponseStream = T::SyncStream;
    type Future = BoxFuture<tonic::Response<T::SyncStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<AgentMessage>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.sync(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for ExchangeService<T>
where
    T: Exchange,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut accept = EnabledCompressionEncodings::default();
        accept.enable(CompressionEncoding::Gzip);
        accept.enable(CompressionEncoding::Zstd);
        if req.uri().path() == "/qianzhi.exchange.v1.Exchange/Subscribe" {
            let (method, max) = (SubscribeMethod(self.inner.clone()), self.max_message_bytes);
            return Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<Delivery, SubscriberMessage>::default())
                        .apply_compression_config(accept, accept)
                        .apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(method, req).await)
            });
        }
        if req.uri().path() != "/qianzhi.exchange.v1.Exchange/Sync" {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let (method, codec, max) = (SyncMethod(self.inner.clone()), self.codec, self.max_message_bytes);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(method, req).await)
        })
    }
}
