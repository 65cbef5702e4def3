//! File formats of the drop folder: CSV (UTF-8 or GB18030), JSON Lines and
//! Excel workbooks, read as a stream of rows with a resumable position (a
//! byte offset for text files, a row number for workbooks).

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::element::Issue;
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
            let name =
                decode(field, charset).map_err(|e| Unreadable(format!("header column {}: {}", i + 1, e.message)))?;
            names.push(crate::normalize::trim(&name).to_owned());
        }
        let index = bind_header(mapping, &names)?;
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
                    let q = mapping.unreadable(Origin { object, line }, raw, format!("{e} (第 {line} 行)"));
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
                    other => Some(Err(Issue {
                        code: "NESTED_VALUE",
                        message: format!("不允许嵌套的 JSON 值: {other}"),
                    })),
                })
                .collect();
            return Ok(Some((
                Row::Outcome(mapping.normalize(&fields, origin, now_us)),
                self.pos,
            )));
        }
    }
}

/// Reads rows from the first worksheet of an Excel workbook (.xlsx, .xlsm,
/// .xls) with a header row. The sheet is loaded whole (Excel caps a sheet
/// at 1,048,576 rows).
pub struct XlsxRows {
    range: calamine::Range<calamine::Data>,
    /// Column of each of the mapping's columns.
    index: Vec<Option<usize>>,
    /// Next row to read (0 is the header).
    row: usize,
    rows: u64,
}

impl XlsxRows {
    pub fn open(path: &Path, mapping: &Mapping, from: Pos) -> Result<XlsxRows, Unreadable> {
        use calamine::Reader;
        let mut book =
            calamine::open_workbook_auto(path).map_err(|e| Unreadable(format!("not a readable workbook: {e}")))?;
        let range = book
            .worksheet_range_at(0)
            .ok_or_else(|| Unreadable("the workbook has no worksheet".into()))?
            .map_err(|e| Unreadable(format!("first worksheet: {e}")))?;
        if range.is_empty() {
            return Err(Unreadable("empty worksheet: no header row".into()));
        }
        let names: Vec<String> = (0..range.width())
            .map(|c| {
                range
                    .get((0, c))
                    .map(|d| crate::normalize::trim(&d.to_string()).to_owned())
                    .unwrap_or_default()
            })
            .collect();
        let index = bind_header(mapping, &names)?;
        Ok(XlsxRows {
            range,
            index,
            row: 1 + from.rows as usize,
            rows: from.rows,
        })
    }

    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        while self.row < self.range.height() {
            let r = self.row;
            self.row += 1;
            let cells: Vec<Option<&calamine::Data>> = self
                .index
                .iter()
                .map(|i| i.and_then(|c| self.range.get((r, c))))
                .collect();
            if cells.iter().all(|c| c.is_none_or(|d| *d == calamine::Data::Empty)) {
                continue;
            }
            self.rows += 1;
            // Line numbers as Excel shows them (1-based, header on line 1).
            let line = r as u64 + 1;
            let pos = Pos {
                byte: 0,
                line: line + 1,
                rows: self.rows,
            };
            let fields: Vec<Field<'_>> = cells
                .iter()
                .zip(mapping.column_items())
                .map(|(c, item)| c.and_then(|d| cell(d, item)))
                .collect();
            return Ok(Some((
                Row::Outcome(mapping.normalize(&fields, Origin { object, line }, now_us)),
                pos,
            )));
        }
        Ok(None)
    }
}

/// The text of one worksheet cell for an item. Numbers never stand for
/// identifiers: Excel keeps 15 significant digits and drops leading zeros,
/// so such a value is refused, never repaired.
pub fn cell(d: &calamine::Data, item: Option<&crate::catalog::Item>) -> Field<'static> {
    use crate::catalog::ValueRule;
    use crate::element::Rule;
    use calamine::{Data, DataType};
    let rule = item.and_then(|i| match &i.rule {
        ValueRule::Builtin(e) => Some(e.rule),
        _ => None,
    });
    let identifier = item.is_some_and(|i| i.is_identifier());
    let number = |text: String| -> Field<'static> {
        let looks_mobile = text.len() == 11 && text.starts_with('1');
        if identifier && !(rule == Some(Rule::Phone) && looks_mobile) {
            return Some(Err(Issue {
                code: "NUMERIC_IDENTIFIER",
                message: format!(
                    "标识符以数值保存 ({text}), 可能已丢失位数或前导零: save identifiers as text (Excel keeps 15 significant digits)"
                ),
            }));
        }
        Some(Ok(Cow::Owned(text)))
    };
    // NaiveDateTime displays as "2016-06-23 14:05:00[.fraction]".
    let date_text = |d: &Data| {
        d.as_datetime().map(|t| {
            let mut text = t.to_string();
            text.truncate(if rule == Some(Rule::DateTime) { 19 } else { 10 });
            text
        })
    };
    match d {
        Data::Empty => None,
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => Some(Ok(Cow::Owned(s.clone()))),
        Data::Bool(b) => Some(Ok(Cow::Owned(b.to_string()))),
        // A date column whose formatting was lost: an Excel serial date.
        Data::Int(_) | Data::Float(_) if matches!(rule, Some(Rule::Date | Rule::DateTime)) => {
            date_text(d).map(|t| Ok(Cow::Owned(t)))
        }
        Data::Int(i) => number(i.to_string()),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => number(format!("{}", *f as i64)),
        Data::Float(f) => number(f.to_string()),
        Data::DateTime(_) => date_text(d).map(|t| Ok(Cow::Owned(t))),
        Data::Error(e) => Some(Err(Issue {
            code: "CELL_ERROR",
            message: format!("单元格错误 {e}"),
        })),
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
        return Err(Unreadable(format!(
            "header lacks mapped column(s) {}; the header has: {}",
            missing.join(", "),
            names.join(", ")
        )));
    }
    Ok(index)
}

/// The rows of one file, whatever its format.
pub enum Rows {
    Csv(CsvRows),
    Json(JsonRows),
    Xlsx(XlsxRows),
}

impl Rows {
    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        match self {
            Rows::Csv(r) => r.next(mapping, object, now_us),
            Rows::Json(r) => r.next(mapping, object, now_us),
            Rows::Xlsx(r) => r.next(mapping, object, now_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use calamine::{Data, ExcelDateTime, ExcelDateTimeType};

    use super::*;

    fn text(d: &Data, item: &str) -> Result<String, &'static str> {
        let catalog =
            crate::catalog::Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
        let item = catalog.resource("1010100/0001").unwrap().item(item).unwrap();
        match cell(d, Some(item)) {
            Some(Ok(v)) => Ok(v.into_owned()),
            Some(Err(e)) => Err(e.code),
            None => Err("empty"),
        }
    }

    #[test]
    fn excel_serial_dates_in_both_systems() {
        // shared/standards.md: serials 42544 / 59 / 61 in the 1900 system.
        assert_eq!(text(&Data::Float(42544.0), "DE00004"), Ok("2016-06-23".into()));
        assert_eq!(text(&Data::Int(59), "DE00004"), Ok("1900-02-28".into()));
        assert_eq!(text(&Data::Int(61), "DE00004"), Ok("1900-03-01".into()));
        let d1904 = Data::DateTime(ExcelDateTime::new(0.0, ExcelDateTimeType::DateTime, true));
        assert_eq!(text(&d1904, "DE00004"), Ok("1904-01-01".into()));
        let d1900 = Data::DateTime(ExcelDateTime::new(42544.0, ExcelDateTimeType::DateTime, false));
        assert_eq!(text(&d1900, "DE00008"), Ok("2016-06-23".into()));
    }

    #[test]
    fn numbers_never_stand_for_identifiers() {
        assert_eq!(
            text(&Data::Float(3.20282199001019e17), "DE00001"),
            Err("NUMERIC_IDENTIFIER")
        );
        assert_eq!(text(&Data::Int(214200), "DE00001"), Err("NUMERIC_IDENTIFIER"));
        // A mobile number is exact as a number; a name is not an identifier.
        assert_eq!(text(&Data::Float(13912345678.0), "DE00007"), Ok("13912345678".into()));
        assert_eq!(text(&Data::Int(1), "DE00003"), Ok("1".into()));
        assert_eq!(text(&Data::Empty, "DE00002"), Err("empty"));
    }
}
