//! A record's protobuf bytes written straight from the normalized values,
//! byte for byte what prost writes for the same `Record`.
//!
//! Building a `Record` to encode it cost every row a copy of the resource
//! code, the source name, the object and each item id, a map, and freeing
//! them all again: about a fifth of the agent's CPU in a flood. The bytes
//! must stay exactly prost's (the same record always encodes to the same
//! bytes, and the hub stores them as they come): the tests compare both on
//! many records, and debug builds compare every record normalized.

use std::borrow::Cow;

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// The fields of a `Record`, borrowed.
pub struct Fields<'a> {
    pub resource: &'a str,
    pub key: &'a [&'a str],
    pub op: i32,
    /// Ordered by id, each id once (as the `Record`'s map iterates).
    pub items: &'a [(&'a str, Cow<'a, str>)],
    pub source: &'a str,
    pub object: &'a str,
    pub line: u64,
    pub captured_at_us: i64,
    pub warnings: &'a [String],
}

/// The encoding of `f`, in a vector of its exact length.
pub fn record(f: &Fields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(len(f));
    write(f, &mut out);
    debug_assert_eq!(out.len(), len(f));
    out
}

fn len(f: &Fields<'_>) -> usize {
    string_len(1, f.resource)
        + f.key.iter().map(|k| key_len(2) + delimited_len(k)).sum::<usize>()
        + varint_len(3, f.op as i64 as u64)
        + f.items
            .iter()
            .map(|(id, value)| key_len(4) + delimited_len_of(string_len(1, id) + string_len(2, value)))
            .sum::<usize>()
        + key_len(5)
        + delimited_len_of(source_len(f))
        + varint_len(6, f.captured_at_us as u64)
        + f.warnings.iter().map(|w| key_len(7) + delimited_len(w)).sum::<usize>()
}

fn source_len(f: &Fields<'_>) -> usize {
    string_len(1, f.source) + string_len(2, f.object) + varint_len(3, f.line)
}

fn delimited_len(s: &str) -> usize {
    delimited_len_of(s.len())
}

fn delimited_len_of(n: usize) -> usize {
    encoded_len_varint(n as u64) + n
}

fn write(f: &Fields<'_>, out: &mut Vec<u8>) {
    string_field(1, f.resource, out);
    for k in f.key {
        string(2, k, out);
    }
    varint_field(3, f.op as i64 as u64, out);
    for (id, value) in f.items {
        // prost leaves out a map entry's id or value that is empty.
        let len = string_len(1, id) + string_len(2, value);
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        string_field(1, id, out);
        string_field(2, value, out);
    }
    // `source` is always set: the message, even if all its fields are empty.
    encode_key(5, WireType::LengthDelimited, out);
    encode_varint(source_len(f) as u64, out);
    string_field(1, f.source, out);
    string_field(2, f.object, out);
    varint_field(3, f.line, out);
    varint_field(6, f.captured_at_us as u64, out);
    for w in f.warnings {
        string(7, w, out);
    }
}

/// A string field of its own: left out when empty (proto3's default).
fn string_field(tag: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        string(tag, s, out);
    }
}

/// One string, even empty (an element of a repeated field).
fn string(tag: u32, s: &str, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// An integer field: left out when zero.
fn varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use proto::v1::{Record, SourcePosition};

    use super::*;

    #[test]
    fn the_bytes_are_prosts_for_any_record() {
        let texts = ["", "1", "DE00001", "测试路1号", &"长".repeat(50)];
        let numbers = [0u64, 1, 127, 128, 1 << 35, u64::MAX];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut pick = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let resource = texts[pick(texts.len())];
            let key: Vec<&str> = (0..pick(3)).map(|_| texts[pick(texts.len())]).collect();
            let op = [-1, 0, 1, 2][pick(4)];
            let mut items: Vec<(&str, Cow<'_, str>)> = (0..pick(6))
                .map(|_| (texts[pick(texts.len())], Cow::Borrowed(texts[pick(texts.len())])))
                .collect();
            items.sort_by(|a, b| a.0.cmp(b.0));
            items.dedup_by(|a, b| a.0 == b.0);
            let (source, object) = (texts[pick(texts.len())], texts[pick(texts.len())]);
            let line = numbers[pick(numbers.len())];
            let captured_at_us = [0, 1, -1, i64::MIN, i64::MAX][pick(5)];
            let warnings: Vec<String> = (0..pick(3)).map(|_| texts[pick(texts.len())].to_owned()).collect();
            let ours = record(&Fields {
                resource,
                key: &key,
                op,
                items: &items,
                source,
                object,
                line,
                captured_at_us,
                warnings: &warnings,
            });
            let theirs = Record {
                resource: resource.to_owned(),
                key: key.iter().map(|k| (*k).to_owned()).collect(),
                op,
                items: items.iter().map(|(k, v)| ((*k).to_owned(), v.to_string())).collect(),
                source: Some(SourcePosition {
                    source: source.to_owned(),
                    object: object.to_owned(),
                    line,
                    change_id: String::new(),
                }),
                captured_at_us,
                warnings,
            }
            .encode_to_vec();
            assert_eq!(ours, theirs);
        }
    }
}
