//! A `Record` read in place: the hub checks every record it receives, and
//! decoding one with prost allocates a `String` for the resource, every key
//! value, every item id and value, and a map node for every item. A
//! [`RecordView`] borrows them all from the message's bytes instead.
//!
//! It accepts no message that `Record::decode` refuses, and it sees the
//! same values: a later `resource`, `op` or `captured_at_us` replaces an
//! earlier one, key values and warnings add up, an item given twice keeps
//! its last value, a map entry without an id or value has the empty string,
//! unknown fields are skipped. It refuses one thing prost accepts: a group
//! (wire types 3 and 4), which proto3 has no use for and the agent never
//! writes. The tests hold it to prost on mutated and random messages.

use std::fmt;

use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field};

use crate::v1::Record;

/// The fields of a `Record` the hub checks, borrowed from its encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordView<'a> {
    pub resource: &'a str,
    pub key: Vec<&'a str>,
    pub op: i32,
    /// Item id → value, ordered by id (as a decoded `Record`'s map), each id
    /// once.
    items: Vec<(&'a str, &'a str)>,
    pub captured_at_us: i64,
}

/// Why some bytes are not a `Record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError(e.to_string())
    }
}

impl<'a> RecordView<'a> {
    /// Reads a protobuf-encoded `Record`.
    pub fn decode(mut buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut view = RecordView::default();
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match tag {
                1 => view.resource = string(wire_type, &mut buf)?,
                2 => view.key.push(string(wire_type, &mut buf)?),
                3 => view.op = varint(wire_type, &mut buf)? as i32,
                4 => view.items.push(item(delimited(wire_type, &mut buf)?)?),
                5 => source_position(delimited(wire_type, &mut buf)?)?,
                6 => view.captured_at_us = varint(wire_type, &mut buf)? as i64,
                7 => {
                    string(wire_type, &mut buf)?;
                }
                _ => skip(wire_type, tag, &mut buf)?,
            }
        }
        order_items(&mut view.items);
        Ok(view)
    }

    /// The view of a decoded record.
    pub fn of(record: &'a Record) -> Self {
        RecordView {
            resource: &record.resource,
            key: record.key.iter().map(String::as_str).collect(),
            op: record.op,
            items: record.items.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            captured_at_us: record.captured_at_us,
        }
    }

    /// The items, ordered by id.
    pub fn items(&self) -> &[(&'a str, &'a str)] {
        &self.items
    }

    /// The value of item `id`, if the record has it.
    pub fn item(&self, id: &str) -> Option<&'a str> {
        find_item(&self.items, id).map(|i| self.items[i].1)
    }
}

/// Orders (item id, value) pairs by id, as a `Record`'s map iterates, and
/// keeps of an id given more than once its last value, as decoding into
/// the map does. Shared with the agent, which builds a record's items the
/// same way.
pub fn order_items<V>(items: &mut Vec<(&str, V)>) {
    // Stable: of equal ids the last given stays last, and replaces the rest.
    items.sort_by(|a, b| a.0.cmp(b.0));
    items.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(&mut kept.1, &mut later.1);
        }
        same
    });
}

/// Where item `id` is among items ordered by [`order_items`].
pub fn find_item<V>(items: &[(&str, V)], id: &str) -> Option<usize> {
    items.binary_search_by(|(k, _)| (*k).cmp(id)).ok()
}

/// One entry of the items map: (id, value), either empty if absent, the
/// last given if repeated.
fn item(mut entry: &[u8]) -> Result<(&str, &str), DecodeError> {
    let (mut id, mut value) = ("", "");
    while !entry.is_empty() {
        let (tag, wire_type) = decode_key(&mut entry)?;
        match tag {
            1 => id = string(wire_type, &mut entry)?,
            2 => value = string(wire_type, &mut entry)?,
            _ => skip(wire_type, tag, &mut entry)?,
        }
    }
    Ok((id, value))
}

/// Checks a `SourcePosition` the way prost would decode it; the hub does not
/// look at its values.
fn source_position(mut message: &[u8]) -> Result<(), DecodeError> {
    while !message.is_empty() {
        let (tag, wire_type) = decode_key(&mut message)?;
        match tag {
            1 | 2 | 4 => {
                string(wire_type, &mut message)?;
            }
            3 => {
                varint(wire_type, &mut message)?;
            }
            _ => skip(wire_type, tag, &mut message)?,
        }
    }
    Ok(())
}

fn varint(wire_type: WireType, buf: &mut &[u8]) -> Result<u64, DecodeError> {
    check_wire_type(WireType::Varint, wire_type)?;
    Ok(decode_varint(buf)?)
}

fn string<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(delimited(wire_type, buf)?)
        .map_err(|_| DecodeError("invalid string value: data is not UTF-8 encoded".into()))
}

fn delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    take(buf)
}

/// A length and that many bytes.
fn take<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(DecodeError("buffer underflow".into()));
    }
    let (head, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(head)
}

/// Skips an unknown field; refuses a group, which would nest.
fn skip(wire_type: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), DecodeError> {
    if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
        return Err(DecodeError(format!(
            "field {tag} is a group, which the protocol does not use"
        )));
    }
    Ok(skip_field(wire_type, tag, buf, DecodeContext::default())?)
}

#[cfg(test)]
mod tests;
