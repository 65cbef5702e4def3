//! File formats of the drop folder: CSV (UTF-8 or GB18030) and JSON Lines,
//! read as a stream of rows with a resumable byte position.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::normalize::{Field, Mapping, Origin, Outcome};
use crate::outbox::Quarantined;

/// A character encoding decided for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
}

/// What one row produced, plus where the next row starts.
pub enum Row {
    Outcome(Outcome),
    Unreadable(Quarantined),
}

/// Why a file cannot be read at all (it goes to `rejected/`).
#[derive(Debug)]
pub struct Unreadable(pub String);

/// A resumable position inside a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    /// Byte offset where the next row starts.
    pub byte: u64,
    /// 1-based line number of the next row.
    pub line: u64,
    /// Rows read before this position.
    pub rows: u64,
}

pub fn decode<'a>(bytes: &'a [u8], charset: Charset) -> Result<Cow<'a, str>, String> {
    match charset {
        Charset::Utf8 => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        Charset::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .ok_or_else(|| "invalid GB18030/GBK bytes".to_owned()),
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads rows from a CSV file with a header row.
pub struct CsvRows {
    reader: csv::Reader<File>,
    /// Field index of each of the mapping's columns in the header.
    index: Vec<Option<usize>>,
    width: usize,
    charset: Charset,
    record: csv::ByteRecord,
    rows: u64,
}

impl CsvRows {
    pub fn open(path: &Path, charset: Charset, mapping: &Mapping, from: Pos) -> Result<CsvRows, Unreadable> {
        let file = File::open(path).map_err(|e| Unreadable(format!("cannot open: {e}")))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(file);
        let mut header = csv::ByteRecord::new();
        match reader.read_byte_record(&mut header) {
            Ok(true) => {}
            Ok(false) => return Err(Unreadable("empty file: no header row".into())),
            Err(e) => return Err(Unreadable(format!("header row: {e}"))),
        }
        let mut names = Vec::with_capacity(header.len());
        for (i, field) in header.iter().enumerate() {
            let field = if i == 0 {
                field.strip_prefix(BOM).unwrap_or(field)
            } else {
                field
            };
            let name = decode(field, charset).map_err(|e| Unreadable(format!("header column {}: {e}", i + 1)))?;
            names.push(crate::normalize::trim(&name).to_owned());
        }
        let index: Vec<Option<usize>> = mapping.columns().map(|c| names.iter().position(|n| n == c)).collect();
        let missing: Vec<&str> = mapping
            .columns()
            .zip(&index)
            .filter(|(_, i)| i.is_none())
            .map(|(c, _)| c)
            .collect();
        if !missing.is_empty() {
            return Err(Unreadable(format!(
                "header lacks mapped column(s) {}; the header has: {}",
                missing.join(", "),
                names.join(", ")
            )));
        }
        if from.byte > 0 {
            let mut p = csv::Position::new();
            p.set_byte(from.byte).set_line(from.line).set_record(from.rows + 1);
            reader
                .seek(p)
                .map_err(|e| Unreadable(format!("cannot resume at byte {}: {e}", from.byte)))?;
        }
        Ok(CsvRows {
            reader,
            index,
            width: names.len(),
            charset,
            record: csv::ByteRecord::new(),
            rows: from.rows,
        })
    }

    /// The next row, or `None` at the end of the file. An I/O error is
    /// returned as `Err` (the file is retried later, from its last commit).
    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        let ok = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| match e.into_kind() {
                csv::ErrorKind::Io(io) => io,
                other => std::io::Error::other(format!("{other:?}")),
            })?;
        if !ok {
            return Ok(None);
        }
        self.rows += 1;
        let line = self.record.position().map_or(0, |p| p.line());
        let next = self.reader.position();
        let pos = Pos {
            byte: next.byte(),
            line: next.line(),
            rows: self.rows,
        };
        let origin = Origin { object, line };
        if self.record.len() != self.width {
            let raw: Vec<String> = self
                .record
                .iter()
                .map(|f| {
                    decode(f, self.charset).map_or_else(|_| String::from_utf8_lossy(f).into_owned(), |c| c.into_owned())
                })
                .collect();
            let reason = format!(
                "RAGGED_ROW: 第 {line} 行有 {} 列, 表头有 {} 列",
                self.record.len(),
                self.width
            );
            let raw = serde_json::Value::from(raw).to_string();
            return Ok(Some((Row::Unreadable(mapping.unreadable(origin, raw, reason)), pos)));
        }
        let fields: Vec<Field<'_>> = self
            .index
            .iter()
            .map(|i| i.and_then(|i| self.record.get(i)).map(|b| decode(b, self.charset)))
            .collect();
        Ok(Some((Row::Outcome(mapping.normalize(&fields, origin, now_us)), pos)))
    }
}

/// Reads rows from a JSON Lines file: one JSON object a line.
pub struct JsonRows {
    reader: BufReader<File>,
    charset: Charset,
    line: Vec<u8>,
    pos: Pos,
}

impl JsonRows {
    pub fn open(path: &Path, charset: Charset, from: Pos) -> Result<JsonRows, Unreadable> {
        let mut file = File::open(path).map_err(|e| Unreadable(format!("cannot open: {e}")))?;
        let mut pos = from;
        if pos.byte == 0 {
            let mut head = [0u8; 3];
            let n = file
                .read(&mut head)
                .map_err(|e| Unreadable(format!("cannot read: {e}")))?;
            pos.byte = if n == 3 && head == BOM { 3 } else { 0 };
            pos.line = 1;
        }
        file.seek(SeekFrom::Start(pos.byte))
            .map_err(|e| Unreadable(format!("cannot resume at byte {}: {e}", pos.byte)))?;
        Ok(JsonRows {
            reader: BufReader::with_capacity(256 * 1024, file),
            charset,
            line: Vec::new(),
            pos,
        })
    }

    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        loop {
            self.line.clear();
            let n = self.reader.read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(None);
            }
            let line = self.pos.line;
            self.pos.byte += n as u64;
            self.pos.line += 1;
            let text = match decode(&self.line, self.charset) {
                Ok(t) => t,
                Err(e) => {
                    self.pos.rows += 1;
                    let raw = String::from_utf8_lossy(&self.line).trim_end().to_owned();
                    let q = mapping.unreadable(Origin { object, line }, raw, format!("UNDECODABLE: 第 {line} 行 {e}"));
                    return Ok(Some((Row::Unreadable(q), self.pos)));
                }
            };
            let trimmed = crate::normalize::trim(&text);
            if trimmed.is_empty() {
                continue;
            }
            self.pos.rows += 1;
            let origin = Origin { object, line };
            let object_map = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed) {
                Ok(m) => m,
                Err(e) => {
                    let q = mapping.unreadable(
                        origin,
                        trimmed.to_owned(),
                        format!("INVALID_JSON: 第 {line} 行不是 JSON 对象: {e}"),
                    );
                    return Ok(Some((Row::Unreadable(q), self.pos)));
                }
            };
            let fields: Vec<Field<'_>> = mapping
                .columns()
                .map(|c| match object_map.get(c)? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(Ok(Cow::Owned(s.clone()))),
                    serde_json::Value::Number(n) => Some(Ok(Cow::Owned(n.to_string()))),
                    serde_json::Value::Bool(b) => Some(Ok(Cow::Owned(b.to_string()))),
                    other => Some(Err(format!("a nested JSON value is not allowed: {other}"))),
                })
                .collect();
            return Ok(Some((
                Row::Outcome(mapping.normalize(&fields, origin, now_us)),
                self.pos,
            )));
        }
    }
}

/// The rows of one file, whatever its format.
pub enum Rows {
    Csv(CsvRows),
    Json(JsonRows),
}

impl Rows {
    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        match self {
            Rows::Csv(r) => r.next(mapping, object, now_us),
            Rows::Json(r) => r.next(mapping, object, now_us),
        }
    }
}
