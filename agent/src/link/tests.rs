use prost::Message;
use proto::v1::{Batch, Entry};

use super::Packer;

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|seq| Entry {
            seq,
            record: format!("a record of sequence {seq}").into_bytes().into(),
        })
        .collect()
}

#[test]
fn every_batch_of_a_session_is_one_sized_frame_of_its_entries() {
    let mut packer = Packer::new().unwrap();
    // Large, small, large again: the buffer and the context are reused.
    for (from, n) in [(1, 4096), (4097, 1), (4098, 300)] {
        let batch = packer.pack(entries(from, n)).unwrap();
        assert!(batch.entries.is_empty());
        let frame = &batch.zstd_entries[..];
        let stated = zstd::zstd_safe::get_frame_content_size(frame).unwrap();
        assert_eq!(zstd::zstd_safe::find_frame_compressed_size(frame), Ok(frame.len()));
        let plain = zstd::bulk::decompress(frame, 16 << 20).unwrap();
        assert_eq!(stated, Some(plain.len() as u64), "the frame states its size");
        let inner = Batch::decode(plain.as_slice()).unwrap();
        assert!(inner.zstd_entries.is_empty());
        assert_eq!(inner.entries, entries(from, n));
    }
}
