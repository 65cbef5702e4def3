use prost::Message;
use proto::v1::{AgentMessage, Batch, Entry, Hello, agent_message};

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
