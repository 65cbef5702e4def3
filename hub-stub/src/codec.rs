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
//! A batch may come compressed (`Batch.zstd_entries`, offered in the
//! Welcome): the decoder inflates it with one zstd context per stream, into
//! a buffer no larger than the message size limit, counts the entries it
//! holds against the same limit, and hands the service a plain batch.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use prost::bytes::{Buf, Bytes};
use proto::v1::exchange_server::Exchange;
use proto::v1::{AgentMessage, Batch, Delivery, HubMessage, SubscriberMessage, agent_message};
use tonic::codec::{CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Status, Streaming};

use crate::text;

#[cfg(test)]
mod tests;

/// `AgentMessage.batch` and `Batch.entries`.
const BATCH_FIELD: u64 = 2;
const ENTRIES_FIELD: u64 = 1;

/// How a standard zstd frame begins (not a legacy or skippable one).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Encodes `HubMessage`s; decodes `AgentMessage`s of at most `max_entries`
/// entries, whose compressed batches inflate to at most `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    pub max_entries: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
pub struct Enc;

pub struct Dec {
    max_entries: usize,
    max_bytes: usize,
    /// Made at the first compressed batch, kept for the stream's life.
    inflater: Option<zstd::bulk::Decompressor<'static>>,
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
            max_bytes: self.max_bytes,
            inflater: None,
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
        self.read(buf).map(Some)
    }
}

impl Dec {
    /// One message from the whole of `buf`.
    fn read(&mut self, buf: &mut impl Buf) -> Result<AgentMessage, Status> {
        let received = buf.remaining();
        let n = if buf.chunk().len() == buf.remaining() {
            count_entries(buf.chunk())
        } else {
            // Not contiguous (tonic's buffer is, today): walk a copy.
            count_entries(&buf.copy_to_bytes(buf.remaining()))
        };
        let n = n.ok_or_else(|| Status::invalid_argument("not an AgentMessage: unreadable fields"))?;
        self.within_limit(n)?;
        let mut message = AgentMessage::decode(buf)
            .map_err(|e| Status::invalid_argument(format!("not an AgentMessage: {}", text::shown(&e.to_string()))))?;
        if let Some(agent_message::Body::Batch(batch)) = &mut message.body {
            let held = if batch.zstd_entries.is_empty() {
                received
            } else {
                let plain;
                (*batch, plain) = self.inflate(batch)?;
                plain
            };
            compact(batch, held);
        }
        Ok(message)
    }

    fn within_limit(&self, entries: u64) -> Result<(), Status> {
        if entries > self.max_entries as u64 {
            return Err(Status::invalid_argument(format!(
                "a batch of {entries} entries is over the hub's limit of {} (limits.max_batch_entries); \
                 lower the agent's hub.batch_records",
                self.max_entries
            )));
        }
        Ok(())
    }

    /// The plain batch inside `batch.zstd_entries`: exactly one standard
    /// zstd frame that states its size, at most `max_bytes`, holding an
    /// encoded `Batch` of entries alone. The buffer is allocated at the
    /// stated size and decompression stops at its end, so a frame that lies
    /// about its size fails instead of growing anything. Returns the batch
    /// and the size of the buffer its records are slices of.
    fn inflate(&mut self, batch: &Batch) -> Result<(Batch, usize), Status> {
        let frame = &batch.zstd_entries[..];
        let refuse = |why: &str| Status::invalid_argument(format!("a compressed batch {why}"));
        if !batch.entries.is_empty() {
            return Err(refuse("also has plain entries"));
        }
        if !frame.starts_with(&ZSTD_MAGIC) {
            return Err(refuse("is not a zstd frame"));
        }
        if zstd::zstd_safe::find_frame_compressed_size(frame) != Ok(frame.len()) {
            return Err(refuse("is not exactly one zstd frame"));
        }
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) => size,
            _ => return Err(refuse("does not state its size")),
        };
        if size > self.max_bytes as u64 {
            return Err(Status::invalid_argument(format!(
                "a compressed batch of {size} bytes is over the hub's limit of {} (limits.max_message_bytes); \
                 lower the agent's hub.batch_bytes",
                self.max_bytes
            )));
        }
        let inflater = match &mut self.inflater {
            Some(d) => d,
            None => self
                .inflater
                .insert(zstd::bulk::Decompressor::new().map_err(|e| Status::internal(e.to_string()))?),
        };
        let plain = inflater
            .decompress(frame, size as usize)
            .map_err(|e| refuse(&format!("cannot be decompressed: {e}")))?;
        if plain.len() as u64 != size {
            return Err(refuse("is shorter than it states"));
        }
        // Counted up to one past the limit: 16 MiB of two-byte entries are
        // not walked to the end.
        let mut n = 0u64;
        let walked = walk(&plain, |field, _| {
            n += u64::from(field == ENTRIES_FIELD);
            (n <= self.max_entries as u64).then_some(())
        });
        self.within_limit(n)?;
        walked.ok_or_else(|| refuse("holds unreadable fields"))?;
        let held = plain.len();
        let inner = Batch::decode(Bytes::from(plain))
            .map_err(|e| refuse(&format!("holds no Batch: {}", text::shown(&e.to_string()))))?;
        if !inner.zstd_entries.is_empty() {
            return Err(refuse("holds another compressed batch"));
        }
        Ok((inner, held))
    }
}

/// Slack allowed between a buffer and the records that are slices of it.
const COMPACT_SLACK: usize = 64 << 10;

/// Copies a batch's records out of `held` bytes they are slices of when
/// those are mostly something else (fields the hub skips, say), into one
/// buffer of their own. A record keeps its whole buffer alive until it is
/// stored, and the stream's queue budget counts records, not buffers: one
/// small record in 16 MiB of padding, which compresses to a few hundred
/// bytes, would otherwise hold 16 MiB on a budget charged a few KiB. An
/// agent's batch is nearly all records and is left as it is.
fn compact(batch: &mut Batch, held: usize) {
    let records: usize = batch.entries.iter().map(|e| e.record.len()).sum();
    if held <= 2 * records + COMPACT_SLACK {
        return;
    }
    let mut own = prost::bytes::BytesMut::with_capacity(records);
    for e in &batch.entries {
        own.extend_from_slice(&e.record);
    }
    let mut own = own.freeze();
    for e in &mut batch.entries {
        e.record = own.split_to(e.record.len());
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
            codec: Codec {
                max_entries,
                max_bytes: max_message_bytes,
            },
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
