//! What an agency sends the hub on its Sync stream: the request body goes
//! through tonic's streaming decoder with the hub's own codec
//! (`hub_stub::codec::Codec`, which counts a batch's entries before prost
//! decodes it) and the hub's message-size limit, exactly as
//! `codec::ExchangeService` sets them up; each batch then goes through
//! `hub_stub::store::prepare` (decode, bound and check every record) with
//! the example catalog.
//!
//! The first input byte picks the framing: 0 = the rest is one
//! uncompressed message (framed here), 1 = the rest is the HTTP body as
//! is, 2 = likewise with `grpc-encoding: gzip`, 3 = with zstd. Bit 2
//! picks the agency (the people or the legal-person provider). Bit 3, with
//! framing 0, sends the rest as a batch's `zstd_entries` compressed into a
//! well-formed frame, so that the inflated batch's own decoding is explored.
//!
//! Invariants: no panic; a decoded batch has at most `max_batch_entries`
//! entries, no more than the codec counted (on the wire, or in the inflated
//! batch), and never still compressed.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hub_stub::Limits;
use hub_stub::codec::{Codec, count_entries};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1::agent_message::Body;
use proto::v1::{AgentMessage, Batch};
use qianzhi_fuzz::catalog;
use tonic::codec::{Codec as _, CompressionEncoding, Streaming};

/// Polls a future whose inputs are all in memory: it never waits.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("decoding an in-memory body is still pending after 1000 polls");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let packed;
    let rest = if mode & 11 == 8 {
        let inner = Batch {
            zstd_entries: zstd::bulk::compress(rest, 1).expect("zstd compresses").into(),
            ..Batch::default()
        };
        packed = AgentMessage {
            body: Some(Body::Batch(inner)),
        }
        .encode_to_vec();
        &packed[..]
    } else {
        rest
    };
    // What the codec counts: the wire's entries, or the inflated batch's
    // (counted as the batch field of a message that holds only it).
    let counted = |whole: &[u8]| match AgentMessage::decode(whole).ok().and_then(|m| m.body) {
        Some(Body::Batch(b)) if !b.zstd_entries.is_empty() => {
            let stated = zstd::zstd_safe::get_frame_content_size(&b.zstd_entries);
            let size = stated.ok().flatten().expect("a batch the codec let through states its size");
            let plain =
                zstd::bulk::decompress(&b.zstd_entries, size as usize).expect("a batch the codec let through inflates");
            let mut wrapped = vec![0x12];
            prost::encoding::encode_varint(plain.len() as u64, &mut wrapped);
            wrapped.extend_from_slice(&plain);
            count_entries(&wrapped)
        }
        _ => count_entries(whole),
    };
    let (body, encoding, whole) = match mode & 3 {
        0 => {
            let mut framed = Vec::with_capacity(rest.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&(rest.len() as u32).to_be_bytes());
            framed.extend_from_slice(rest);
            (framed, None, Some(rest))
        }
        1 => (rest.to_vec(), None, None),
        2 => (rest.to_vec(), Some(CompressionEncoding::Gzip), None),
        _ => (rest.to_vec(), Some(CompressionEncoding::Zstd), None),
    };
    let agency = if mode & 4 == 0 { "320282-gaj" } else { "320282-scjgj" };
    let mut codec = Codec {
        max_entries: limits.max_batch_entries,
        max_bytes: limits.max_message_bytes,
    };
    let body = http_body_util::Full::new(Bytes::from(body));
    let mut inbound = Streaming::new_request(codec.decoder(), body, encoding, Some(limits.max_message_bytes));
    let mut messages = 0;
    loop {
        let message = match now(inbound.message()) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        messages += 1;
        let Some(Body::Batch(batch)) = message.body else {
            continue;
        };
        assert!(
            batch.entries.len() <= limits.max_batch_entries,
            "a batch of {} entries got past the codec",
            batch.entries.len()
        );
        assert!(batch.zstd_entries.is_empty(), "a batch reached the service compressed");
        if let Some(whole) = whole {
            let counted = counted(whole).expect("a message the codec let through can be walked");
            assert!(
                batch.entries.len() as u64 <= counted,
                "prost decoded {} entries, the codec counted {counted}",
                batch.entries.len()
            );
        }
        let seqs: Vec<u64> = batch.entries.iter().map(|e| e.seq).collect();
        let prepared = hub_stub::store::prepare(agency, batch.entries, catalog(), limits.max_value_bytes);
        assert_eq!(prepared.iter().map(|p| p.seq).collect::<Vec<_>>(), seqs);
    }
    if whole.is_some() {
        assert!(messages <= 1);
    }
});
