use prost::Message;
use prost::bytes::Bytes;
use proto::v1::{AgentMessage, Batch, Entry, Hello, agent_message};
use tonic::codec::Codec as _;

use super::*;

fn batch(n: u64) -> Vec<u8> {
    AgentMessage {
        body: Some(agent_message::Body::Batch(Batch {
            entries: (1..=n)
                .map(|seq| Entry {
                    seq,
                    record: vec![7; (seq % 5) as usize].into(),
                })
                .collect(),
            ..Batch::default()
        })),
    }
    .encode_to_vec()
}

#[test]
fn entries_are_counted_without_decoding() {
    assert_eq!(count_entries(&batch(0)), Some(0));
    assert_eq!(count_entries(&batch(1000)), Some(1000));
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            outbox_id: "x".repeat(300),
            ..Default::default()
        })),
    };
    assert_eq!(count_entries(&hello.encode_to_vec()), Some(0));
}

#[test]
fn repeated_batches_merge_so_all_their_entries_count() {
    // Two `batch` fields in one message: prost merges their entries.
    let mut twice = batch(3);
    twice.extend(batch(4));
    assert_eq!(count_entries(&twice), Some(7));
    let decoded = AgentMessage::decode(twice.as_slice()).unwrap();
    let Some(agent_message::Body::Batch(b)) = decoded.body else {
        panic!("not a batch")
    };
    assert_eq!(b.entries.len(), 7);
}

#[test]
fn unknown_fields_are_skipped_and_unwalkable_messages_refused() {
    // Field 9 as varint, fixed64, fixed32 and bytes before the batch.
    let mut m = vec![
        0x48, 0x96, 0x01, 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 0x4d, 1, 2, 3, 4, 0x4a, 2, 0, 0,
    ];
    m.extend(batch(5));
    assert_eq!(count_entries(&m), Some(5));
    let b = batch(5);
    assert_eq!(count_entries(&b[..b.len() - 1]), None, "truncated");
    // A group (wire type 3) inside the batch.
    let mut g = vec![0x12, 0x02, 0x0b, 0x0c];
    g.extend(batch(1));
    assert_eq!(count_entries(&g), None);
}

fn entries(n: u64) -> Vec<Entry> {
    (1..=n)
        .map(|seq| Entry {
            seq,
            record: format!("record {seq}").into_bytes().into(),
        })
        .collect()
}

fn compressed(frame: Vec<u8>) -> Batch {
    Batch {
        zstd_entries: frame.into(),
        ..Batch::default()
    }
}

fn frame_of(entries: Vec<Entry>) -> Vec<u8> {
    let plain = Batch {
        entries,
        ..Batch::default()
    }
    .encode_to_vec();
    zstd::bulk::compress(&plain, 1).unwrap()
}

fn dec(max_entries: usize, max_bytes: usize) -> Dec {
    Codec { max_entries, max_bytes }.decoder()
}

fn refusal(d: &mut Dec, b: &Batch) -> String {
    let e = d.inflate(b).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    e.message().to_owned()
}

#[test]
fn a_compressed_batch_inflates_to_its_entries_with_one_context() {
    let mut d = dec(10_000, 16 << 20);
    for n in [1, 500, 10_000] {
        let b = compressed(frame_of(entries(n)));
        assert_eq!(d.inflate(&b).unwrap().0.entries, entries(n));
    }
    // Read as a whole message: the service sees plain entries.
    let message = AgentMessage {
        body: Some(agent_message::Body::Batch(compressed(frame_of(entries(3))))),
    }
    .encode_to_vec();
    let decoded = d.read(&mut &message[..]).unwrap();
    let Some(agent_message::Body::Batch(b)) = decoded.body else {
        panic!("not a batch")
    };
    assert!(b.zstd_entries.is_empty());
    assert_eq!(b.entries, entries(3));
}

#[test]
fn a_compressed_batch_is_held_to_the_limits_once_inflated() {
    let frame = frame_of(entries(101));
    let plain_len = zstd::zstd_safe::get_frame_content_size(&frame).unwrap().unwrap() as usize;
    assert!(refusal(&mut dec(100, 16 << 20), &compressed(frame.clone())).contains("101 entries"));
    let small = refusal(&mut dec(10_000, plain_len - 1), &compressed(frame.clone()));
    assert!(small.contains("max_message_bytes"), "{small}");
    assert_eq!(
        dec(101, plain_len).inflate(&compressed(frame)).unwrap().0.entries.len(),
        101
    );
}

#[test]
fn only_one_standard_frame_that_tells_the_truth_about_its_size_is_inflated() {
    let mut d = dec(10_000, 16 << 20);
    let good = frame_of(entries(50));
    let mut both = compressed(good.clone());
    both.entries = entries(1);
    assert!(refusal(&mut d, &both).contains("plain entries"));
    assert!(refusal(&mut d, &compressed(b"not zstd at all".to_vec())).contains("not a zstd frame"));
    // A skippable frame (magic 0x184D2A50) carries no data.
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0].to_vec();
    assert!(refusal(&mut d, &compressed(skippable)).contains("not a zstd frame"));
    let mut twice = good.clone();
    twice.extend_from_slice(&good);
    assert!(refusal(&mut d, &compressed(twice)).contains("exactly one"));
    assert!(refusal(&mut d, &compressed(good[..good.len() - 1].to_vec())).contains("exactly one"));
    // A streaming encoder that is not told the size leaves it out.
    let plain = Batch {
        entries: entries(50),
        ..Batch::default()
    }
    .encode_to_vec();
    let unsized_frame = zstd::stream::encode_all(&plain[..], 1).unwrap();
    assert!(matches!(
        zstd::zstd_safe::get_frame_content_size(&unsized_frame),
        Ok(None)
    ));
    assert!(refusal(&mut d, &compressed(unsized_frame)).contains("state its size"));
    // A frame that states less than it holds: the buffer is made at the
    // stated size and decompression stops at its end. A single-segment
    // frame of 256..=65791 bytes states its size in two bytes after the
    // header byte, as size - 256.
    assert!((256..=65791).contains(&plain.len()));
    let mut liar = zstd::bulk::compress(&plain, 1).unwrap();
    assert_eq!(liar[4] & 0xe0, 0x60, "a single-segment frame with a two-byte size");
    liar[5..7].copy_from_slice(&((plain.len() - 100 - 256) as u16).to_le_bytes());
    assert!(refusal(&mut d, &compressed(liar)).contains("cannot be decompressed"));
    // A frame of something that is not a Batch of entries.
    let nested = compressed(zstd::bulk::compress(&compressed(good).encode_to_vec(), 1).unwrap());
    assert!(refusal(&mut d, &nested).contains("another compressed batch"));
    let junk = compressed(zstd::bulk::compress(&[0xff; 40], 1).unwrap());
    assert!(refusal(&mut d, &junk).contains("unreadable"));
    // The context survives refusals.
    assert_eq!(
        d.inflate(&compressed(frame_of(entries(7)))).unwrap().0.entries,
        entries(7)
    );
}

/// Whether `record` is a slice of `buffer`.
fn within(record: &[u8], buffer: &[u8]) -> bool {
    let (start, end) = (buffer.as_ptr() as usize, buffer.as_ptr() as usize + buffer.len());
    (start..end).contains(&(record.as_ptr() as usize))
}

#[test]
fn records_in_a_buffer_that_is_mostly_padding_are_copied_out() {
    // One record, then a megabyte of a field the hub skips: it compresses
    // to almost nothing.
    let mut plain = Batch {
        entries: entries(1),
        ..Batch::default()
    }
    .encode_to_vec();
    plain.push(9 << 3 | 2);
    prost::encoding::encode_varint(1 << 20, &mut plain);
    plain.resize(plain.len() + (1 << 20), 0);
    let frame = zstd::bulk::compress(&plain, 1).unwrap();
    assert!(frame.len() < 1024);
    let message = AgentMessage {
        body: Some(agent_message::Body::Batch(compressed(frame))),
    }
    .encode_to_vec();
    let decoded = dec(10_000, 16 << 20).read(&mut &message[..]).unwrap();
    let Some(agent_message::Body::Batch(b)) = decoded.body else {
        panic!("not a batch")
    };
    assert_eq!(b.entries, entries(1));

    // `compact` itself: padded, the record moves to a buffer of its own;
    // an agent's batch stays where it is.
    let buffer = Bytes::from(plain.clone());
    let slices = |b: &Bytes| {
        let mut at = 0;
        entries(1)
            .into_iter()
            .map(|e| {
                at = b.windows(e.record.len()).position(|w| w == &e.record[..]).unwrap();
                Entry {
                    seq: e.seq,
                    record: b.slice(at..at + e.record.len()),
                }
            })
            .collect::<Vec<_>>()
    };
    let mut padded = Batch {
        entries: slices(&buffer),
        ..Batch::default()
    };
    assert!(within(&padded.entries[0].record, &buffer));
    compact(&mut padded, buffer.len());
    assert_eq!(padded.entries, entries(1));
    assert!(!within(&padded.entries[0].record, &buffer), "copied out");

    let lean = Bytes::from(plain[..plain.len() - (1 << 20) - 4].to_vec());
    let mut kept = Batch {
        entries: slices(&lean),
        ..Batch::default()
    };
    compact(&mut kept, lean.len());
    assert!(within(&kept.entries[0].record, &lean), "left in place");
}
