//! JSON Lines: one object per line, lines read in bounded memory,
//! resumable at a line's byte offset.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use super::{BOM, Charset, KEPT_PREFIX, Limits, Pos, Unreadable, bounded, decode, oversized};
use crate::normalize::{Field, Mapping, Row};
use rules::element::Issue;

/// One line read in bounded memory: its bytes, or what to keep of it when
/// it is over the limit.
enum Line {
    Fits,
    Over(String),
}

/// Reads up to and including the next `\n` into `buf`, keeping at most
/// `max` bytes; returns the bytes consumed (0 at the end of the file).
fn read_line_bounded(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<(usize, Line)> {
    buf.clear();
    let mut consumed = 0usize;
    let mut over: Option<Sha256> = None;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        match &mut over {
            Some(h) => h.update(&chunk[..take]),
            None if buf.len() + take > max => {
                let mut h = Sha256::new();
                h.update(&buf[..]);
                h.update(&chunk[..take]);
                let room = KEPT_PREFIX.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..take.min(room)]);
                over = Some(h);
            }
            None => buf.extend_from_slice(&chunk[..take]),
        }
        consumed += take;
        input.consume(take);
        if done {
            break;
        }
    }
    Ok(match over {
        None => (consumed, Line::Fits),
        Some(h) => (consumed, Line::Over(oversized(buf, consumed as u64, &h.finalize()))),
    })
}

/// Reads rows from a JSON Lines file: one JSON object a line.
pub struct JsonRows {
    reader: BufReader<File>,
    charset: Charset,
    limits: Limits,
    line: Vec<u8>,
    pos: Pos,
}

impl JsonRows {
    pub fn open(mut file: File, charset: Charset, from: Pos, limits: Limits) -> Result<JsonRows, Unreadable> {
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
            limits,
            line: Vec::new(),
            pos,
        })
    }

    /// The position after the last line read.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn next_row(&mut self, mapping: &Mapping) -> std::io::Result<Option<(Row<'_>, Pos)>> {
        loop {
            let (n, fits) = read_line_bounded(&mut self.reader, &mut self.line, self.limits.max_row)?;
            if n == 0 {
                return Ok(None);
            }
            let line = self.pos.line;
            self.pos.byte += n as u64;
            self.pos.line += 1;
            if let Line::Over(kept) = fits {
                self.pos.rows += 1;
                let reason = format!(
                    "ROW_TOO_LONG: 第 {line} 行有 {n} 字节, 超过上限 {} (source limit max_row)",
                    self.limits.max_row
                );
                return Ok(Some((
                    Row::Unreadable {
                        line,
                        raw: kept,
                        reason,
                    },
                    self.pos,
                )));
            }
            let text = match decode(&self.line, self.charset) {
                Ok(t) => t,
                Err(e) => {
                    self.pos.rows += 1;
                    let raw = String::from_utf8_lossy(&self.line).trim_end().to_owned();
                    let reason = format!("{e} (第 {line} 行)");
                    return Ok(Some((Row::Unreadable { line, raw, reason }, self.pos)));
                }
            };
            let trimmed = crate::normalize::trim(&text);
            if trimmed.is_empty() {
                continue;
            }
            self.pos.rows += 1;
            let object_map = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed) {
                Ok(m) => m,
                Err(e) => {
                    let reason = format!("INVALID_JSON: 第 {line} 行不是 JSON 对象: {e}");
                    let raw = trimmed.to_owned();
                    return Ok(Some((Row::Unreadable { line, raw, reason }, self.pos)));
                }
            };
            let max_value = self.limits.max_value;
            let fields: Vec<Field<'_>> = mapping
                .columns()
                .map(|c| match object_map.get(c)? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) if s.len() > max_value => Some(Err(Issue {
                        code: "VALUE_TOO_LONG",
                        message: format!("值有 {} 字节, 超过上限 {max_value} (source limit max_value)", s.len()),
                    })),
                    serde_json::Value::String(s) => Some(Ok(Cow::Owned(s.clone()))),
                    serde_json::Value::Number(n) => Some(Ok(Cow::Owned(n.to_string()))),
                    serde_json::Value::Bool(b) => Some(Ok(Cow::Owned(b.to_string()))),
                    other => Some(Err(Issue {
                        code: "NESTED_VALUE",
                        message: format!("不允许嵌套的 JSON 值: {}", bounded(&other.to_string(), 200)),
                    })),
                })
                .collect();
            let long = fields
                .iter()
                .any(|f| matches!(f, Some(Err(i)) if i.code == "VALUE_TOO_LONG"));
            if long {
                // The raw line would keep the long value whole: keep it cut.
                let kept = oversized(
                    trimmed.as_bytes(),
                    trimmed.len() as u64,
                    &Sha256::digest(trimmed.as_bytes()),
                );
                let reasons: Vec<String> = fields
                    .iter()
                    .zip(mapping.columns())
                    .filter_map(|(f, c)| match f {
                        Some(Err(i)) => Some(format!("{}: {c} {}", i.code, i.message)),
                        _ => None,
                    })
                    .collect();
                let reason = reasons.join("; ");
                return Ok(Some((
                    Row::Unreadable {
                        line,
                        raw: kept,
                        reason,
                    },
                    self.pos,
                )));
            }
            return Ok(Some((Row::Values { line, fields, op: None }, self.pos)));
        }
    }
}
