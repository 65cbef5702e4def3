//! File formats of the drop folder: CSV (UTF-8 or GB18030), JSON Lines and
//! Excel workbooks, read as a stream of rows with a resumable position (a
//! byte offset and line for text files, a sheet line for workbooks).
//!
//! Every reader works in bounded memory whatever the file holds: a line,
//! row or value over its limit ([`Limits`]) is quarantined with its length,
//! a SHA-256 of it and a prefix, never copied whole; a workbook is read
//! cell by cell, never expanded to its declared dimensions. Readers read
//! only through the file handle they are given (the folder opened it
//! without following links).

use std::borrow::Cow;

use crate::normalize::{Mapping, Row};
use rules::element::Issue;

/// A character encoding decided for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
}

/// Why a file cannot be read at all (it goes to `rejected/`).
#[derive(Debug)]
pub struct Unreadable(pub String);

/// Size limits of one input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one value (a CSV field, a JSON string, a cell).
    pub max_value: usize,
    /// Bytes of one row (a CSV record, a JSON line).
    pub max_row: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value: 64 << 10,
            max_row: 16 << 20,
        }
    }
}

/// Bytes of an oversized input kept in the quarantine.
const KEPT_PREFIX: usize = 4096;

/// The quarantine's text for an input too large to keep: a prefix, the
/// length and a hash of the whole.
fn oversized(prefix: &[u8], total: u64, digest: &[u8]) -> String {
    let mut end = prefix.len().min(KEPT_PREFIX);
    while end > 0 && std::str::from_utf8(&prefix[..end]).is_err() && prefix.len() - end < 4 {
        end -= 1;
    }
    format!(
        "{}… [truncated: {total} bytes in all, sha256 {}]",
        String::from_utf8_lossy(&prefix[..end]),
        rules::catalog::hex(digest)
    )
}

/// A resumable position inside a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    /// Byte offset where the next row starts.
    pub byte: u64,
    /// 1-based line number of the next row (for a workbook, its sheet line).
    pub line: u64,
    /// Rows read before this position.
    pub rows: u64,
}

pub fn decode<'a>(bytes: &'a [u8], charset: Charset) -> Result<Cow<'a, str>, Issue> {
    match charset {
        Charset::Utf8 => std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| Issue {
            code: "UNDECODABLE",
            message: format!("无法解码: invalid UTF-8 at byte {}", e.valid_up_to()),
        }),
        Charset::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .ok_or_else(|| Issue {
                code: "UNDECODABLE",
                message: "无法解码: invalid GB18030/GBK bytes".to_owned(),
            }),
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a pass over a text file says of its encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utf8Evidence {
    /// Valid multi-byte UTF-8 characters.
    pub multibyte: u64,
    /// Byte sequences that are not UTF-8.
    pub invalid: u64,
    /// An unfinished sequence at the end of the last chunk.
    carry: Vec<u8>,
}

impl Utf8Evidence {
    /// Takes the next chunk of the file.
    pub fn update(&mut self, chunk: &[u8]) {
        let joined: Cow<'_, [u8]> = if self.carry.is_empty() {
            Cow::Borrowed(chunk)
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(chunk);
            Cow::Owned(v)
        };
        let mut rest: &[u8] = &joined;
        loop {
            match std::str::from_utf8(rest) {
                Ok(_) => {
                    self.multibyte += leads(rest);
                    return;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.multibyte += leads(good);
                    match e.error_len() {
                        Some(n) => {
                            self.invalid += 1;
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Ends the file: an unfinished sequence at its end is invalid.
    pub fn finish(&mut self) {
        if !self.carry.is_empty() {
            self.invalid += 1;
            self.carry.clear();
        }
    }

    /// How `encoding = "auto"` reads a file: UTF-8 unless the bytes that
    /// are not UTF-8 outnumber the multi-byte UTF-8 characters (then
    /// GB18030). A mostly-UTF-8 file with a stray byte stays UTF-8 and the
    /// rows with bad bytes are quarantined: never decoded into other
    /// characters.
    pub fn charset(&self) -> Charset {
        if self.invalid == 0 || self.multibyte >= self.invalid {
            Charset::Utf8
        } else {
            Charset::Gb18030
        }
    }

    /// True for a file that is certainly UTF-8 text with Chinese (or other
    /// non-ASCII) characters: refused by a folder configured for GB18030.
    pub fn is_clearly_utf8(&self) -> bool {
        self.invalid == 0 && self.multibyte > 0
    }
}

/// Lead bytes of multi-byte characters in valid UTF-8 (bytes `11xxxxxx`),
/// counted eight at a time.
fn leads(valid: &[u8]) -> u64 {
    let mut words = valid.chunks_exact(8);
    let mut n = 0u64;
    for w in &mut words {
        let w = u64::from_ne_bytes(w.try_into().unwrap_or_default());
        n += u64::from((w & (w << 1) & 0x8080_8080_8080_8080).count_ones());
    }
    n + words.remainder().iter().filter(|&&b| b >= 0xC0).count() as u64
}

mod csv;
mod jsonl;
#[cfg(test)]
mod tests;
mod xlsx;

pub use csv::CsvRows;
pub use jsonl::JsonRows;
pub use xlsx::{XlsxRows, cell};

/// At most `max` characters of `s`, with `…` if cut, and its control
/// characters escaped: a reason can carry a file's header names.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    let cut = match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    };
    if cut.chars().any(char::is_control) {
        cut.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    } else {
        cut
    }
}

/// Finds each mapped column in a header, or says which are missing.
fn bind_header(mapping: &Mapping, names: &[String]) -> Result<Vec<Option<usize>>, Unreadable> {
    let index: Vec<Option<usize>> = mapping.columns().map(|c| names.iter().position(|n| n == c)).collect();
    let missing: Vec<&str> = mapping
        .columns()
        .zip(&index)
        .filter(|(_, i)| i.is_none())
        .map(|(c, _)| c)
        .collect();
    if !missing.is_empty() {
        let shown: Vec<String> = names.iter().take(64).map(|n| bounded(n, 64)).collect();
        return Err(Unreadable(format!(
            "header lacks mapped column(s) {}; the header has: {}{}",
            missing.join(", "),
            shown.join(", "),
            if names.len() > 64 {
                format!(" and {} more", names.len() - 64)
            } else {
                String::new()
            }
        )));
    }
    Ok(index)
}

/// How far a reader is through its file, for progress only (a resume
/// uses [`Pos`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// Bytes of the file before the next row (CSV, JSON Lines).
    Offset(u64),
    /// Bytes of a workbook's compressed worksheet read, of its compressed
    /// size. The worksheet streams through in order, but the shared strings
    /// were read whole before it and may sit after it in the file, so the
    /// file's offset would not say how far the rows are.
    Sheet { read: u64, size: u64 },
    /// Not known: the worksheet's part was not found among the workbook's.
    Unknown,
}

/// The rows of one file, whatever its format.
pub enum Rows {
    Csv(Box<CsvRows>),
    Json(JsonRows),
    Xlsx(XlsxRows),
}

impl Rows {
    /// The next row and the position after it, or `None` at the end. An
    /// I/O error is returned as `Err` (the file is retried later, from its
    /// last commit); `InvalidData` means the file stays unreadable.
    pub fn next(&mut self, mapping: &Mapping) -> std::io::Result<Option<(Row<'_>, Pos)>> {
        match self {
            Rows::Csv(r) => r.next_row(),
            Rows::Json(r) => r.next_row(mapping),
            Rows::Xlsx(r) => r.next_row(mapping),
        }
    }

    /// How far the reader is through its file.
    pub fn consumed(&self) -> Consumed {
        match self {
            Rows::Csv(r) => Consumed::Offset(r.pos().byte),
            Rows::Json(r) => Consumed::Offset(r.pos().byte),
            Rows::Xlsx(r) => r.consumed(),
        }
    }
}
