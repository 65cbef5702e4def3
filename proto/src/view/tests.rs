use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::*;
use crate::v1::SourcePosition;

/// xorshift64*: the same cases on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn record(rng: &mut Rng) -> Record {
    let words = [
        "",
        "DE00001",
        "DE00002",
        "320282",
        "测试",
        "a\u{0}b",
        "1010100/0001",
        "x",
    ];
    let word = |rng: &mut Rng| words[rng.below(words.len())].to_owned();
    Record {
        resource: word(rng),
        key: (0..rng.below(3)).map(|_| word(rng)).collect(),
        op: rng.below(4) as i32 - 1,
        items: (0..rng.below(5)).map(|_| (word(rng), word(rng))).collect(),
        source: (rng.below(2) == 0).then(|| SourcePosition {
            source: word(rng),
            object: word(rng),
            line: rng.next() >> rng.below(64),
            change_id: word(rng),
        }),
        captured_at_us: rng.next() as i64,
        warnings: (0..rng.below(2)).map(|_| word(rng)).collect(),
    }
}

/// A field that may or may not be the Record's, of any wire type, with a
/// plausible or a random payload.
fn field(rng: &mut Rng, out: &mut Vec<u8>) {
    let tag = 1 + rng.below(9) as u32;
    let wire = [
        WireType::Varint,
        WireType::SixtyFourBit,
        WireType::LengthDelimited,
        WireType::ThirtyTwoBit,
        WireType::StartGroup,
        WireType::EndGroup,
    ][rng.below(6)];
    encode_key(tag, wire, out);
    match wire {
        WireType::Varint => encode_varint(rng.next() >> rng.below(64), out),
        WireType::LengthDelimited => {
            let payload: Vec<u8> = match rng.below(3) {
                // An item entry, perhaps of an id already given.
                0 => {
                    let mut e = Vec::new();
                    prost::encoding::string::encode(1, &"DE00001".to_owned(), &mut e);
                    if rng.below(2) == 0 {
                        prost::encoding::string::encode(2, &"late".to_owned(), &mut e);
                    }
                    e
                }
                1 => "测试".as_bytes().to_vec(),
                _ => (0..rng.below(6)).map(|_| rng.next() as u8).collect(),
            };
            encode_varint(payload.len() as u64, out);
            out.extend(payload);
        }
        // A whole group, mostly: an inner field, then its end.
        WireType::StartGroup if rng.below(4) > 0 => {
            encode_key(1, WireType::Varint, out);
            encode_varint(rng.next() >> 40, out);
            encode_key(tag, WireType::EndGroup, out);
        }
        _ => out.extend((0..rng.below(9)).map(|_| rng.next() as u8)),
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.truncate(at),
            2 => {
                let mut f = Vec::new();
                field(rng, &mut f);
                bytes.splice(at..at, f);
            }
            3 => {
                let mut f = Vec::new();
                field(rng, &mut f);
                bytes.extend(f);
            }
            _ if at < bytes.len() => bytes[at] = rng.next() as u8,
            _ => {}
        }
    }
}

/// The view accepts what prost accepts, sees what prost sees, and refuses
/// only what prost refuses or a group.
fn agrees(bytes: &[u8]) -> Option<bool> {
    let decoded = Record::decode(bytes);
    match (RecordView::decode(bytes), &decoded) {
        (Ok(view), Ok(record)) => {
            assert_eq!(view, RecordView::of(record), "bytes {bytes:?}");
            Some(true)
        }
        (Ok(view), Err(e)) => panic!("the view read {view:?} where prost refused ({e}): {bytes:?}"),
        (Err(e), Ok(_)) => {
            assert!(
                e.to_string().contains("group"),
                "view refused ({e}), prost accepted {bytes:?}"
            );
            None
        }
        (Err(_), Err(_)) => Some(false),
    }
}

#[test]
fn a_view_reads_what_prost_decodes_from_valid_and_mutated_records() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut read, mut refused, mut groups) = (0, 0, 0);
    for _ in 0..100_000 {
        let mut bytes = record(&mut rng).encode_to_vec();
        assert_eq!(agrees(&bytes), Some(true));
        mutate(&mut rng, &mut bytes);
        match agrees(&bytes) {
            Some(true) => read += 1,
            Some(false) => refused += 1,
            None => groups += 1,
        }
    }
    // The mutations reach both outcomes, and groups.
    assert!(
        read > 10_000 && refused > 10_000 && groups > 100,
        "{read} {refused} {groups}"
    );
}

#[test]
fn random_bytes_are_refused_or_read_as_prost_reads_them() {
    let mut rng = Rng(7);
    for _ in 0..100_000 {
        let bytes: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
        agrees(&bytes);
    }
}

#[test]
fn an_item_given_twice_keeps_its_last_value_and_a_missing_part_is_empty() {
    let mut bytes = Record {
        resource: "R".into(),
        items: [("B".into(), "first".into()), ("A".into(), "a".into())].into(),
        ..Record::default()
    }
    .encode_to_vec();
    let entry = |out: &mut Vec<u8>, id: Option<&str>, value: Option<&str>| {
        let mut e = Vec::new();
        if let Some(id) = id {
            prost::encoding::string::encode(1, &id.to_owned(), &mut e);
        }
        if let Some(value) = value {
            prost::encoding::string::encode(2, &value.to_owned(), &mut e);
        }
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(e.len() as u64, out);
        out.extend(e);
    };
    entry(&mut bytes, Some("B"), Some("second"));
    entry(&mut bytes, Some("C"), None);
    entry(&mut bytes, None, Some("no id"));
    let view = RecordView::decode(&bytes).unwrap();
    assert_eq!(view.items(), [("", "no id"), ("A", "a"), ("B", "second"), ("C", "")]);
    assert_eq!(view.item("B"), Some("second"));
    assert_eq!(view.item("D"), None);
    assert_eq!(agrees(&bytes), Some(true));
}

#[test]
fn a_group_is_refused_anywhere() {
    let base = Record {
        resource: "R".into(),
        ..Record::default()
    }
    .encode_to_vec();
    let mut top = base.clone();
    encode_key(9, WireType::StartGroup, &mut top);
    encode_key(9, WireType::EndGroup, &mut top);
    assert!(Record::decode(top.as_slice()).is_ok());
    assert!(
        RecordView::decode(&top)
            .unwrap_err()
            .to_string()
            .contains("field 9 is a group")
    );
    let mut nested = base;
    let mut e = Vec::new();
    encode_key(3, WireType::StartGroup, &mut e);
    encode_key(3, WireType::EndGroup, &mut e);
    encode_key(4, WireType::LengthDelimited, &mut nested);
    encode_varint(e.len() as u64, &mut nested);
    nested.extend(e);
    assert!(Record::decode(nested.as_slice()).is_ok());
    assert!(RecordView::decode(&nested).is_err());
}
