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
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::normalize::{Field, Mapping, Origin, Outcome, Quarantined};
use rules::element::Issue;

/// A character encoding decided for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
}

/// What one row produced.
pub enum Row {
    Outcome(Outcome),
    Unreadable(Quarantined),
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

/// One CSV record as read, before decoding.
struct RawRecord {
    /// 1-based line where the record starts.
    line: u64,
    /// Set when the record is over a limit: what to keep instead.
    oversized: Option<String>,
}

/// Reads rows from a CSV file with a header row. Parsing is csv-core's;
/// this reader keeps the byte offset and the physical line where each
/// record starts (LF, CRLF and quoted multi-line fields alike) and bounds
/// the memory a record may take.
pub struct CsvRows {
    input: BufReader<File>,
    core: csv_core::Reader,
    /// The current record's field bytes, and where each field ends: the
    /// buffers keep their length (only grown), `out_len` and `ends_len` say
    /// how much of them the record uses.
    out: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    /// Set at a resume point: csv-core strips a UTF-8 BOM at what it takes
    /// for the start of a file, so its first input there is one byte (a BOM
    /// in the middle of a file is data, as it was when first read).
    resumed: bool,
    /// Field index of each of the mapping's columns in the header.
    index: Vec<Option<usize>>,
    width: usize,
    charset: Charset,
    limits: Limits,
    pos: Pos,
}

/// Fields of one record, at most.
const MAX_FIELDS: usize = 16_384;

impl CsvRows {
    pub fn open(
        file: File,
        charset: Charset,
        mapping: &Mapping,
        from: Pos,
        limits: Limits,
    ) -> Result<CsvRows, Unreadable> {
        let mut rows = CsvRows {
            input: BufReader::with_capacity(256 * 1024, file),
            core: csv_core::ReaderBuilder::new().build(),
            out: vec![0; 4096],
            ends: vec![0; 64],
            out_len: 0,
            ends_len: 0,
            resumed: false,
            index: Vec::new(),
            width: 0,
            charset,
            limits,
            pos: Pos {
                byte: 0,
                line: 1,
                rows: 0,
            },
        };
        let header = match rows.read_raw() {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Unreadable("empty file: no header row".into())),
            Err(e) => return Err(Unreadable(format!("header row: {e}"))),
        };
        if header.oversized.is_some() {
            return Err(Unreadable(format!(
                "the header row is longer than {} bytes or has more than {MAX_FIELDS} columns",
                limits.max_row
            )));
        }
        let mut names = Vec::with_capacity(rows.field_count());
        for i in 0..rows.field_count() {
            let field = rows.field(i);
            let field = if i == 0 {
                field.strip_prefix(BOM).unwrap_or(field)
            } else {
                field
            };
            let name =
                decode(field, charset).map_err(|e| Unreadable(format!("header column {}: {}", i + 1, e.message)))?;
            names.push(crate::normalize::trim(&name).to_owned());
        }
        rows.index = bind_header(mapping, &names)?;
        rows.width = names.len();
        if from.byte > 0 {
            rows.input
                .seek(SeekFrom::Start(from.byte))
                .map_err(|e| Unreadable(format!("cannot resume at byte {}: {e}", from.byte)))?;
            rows.core.reset();
            rows.resumed = true;
            rows.pos = from;
        }
        Ok(rows)
    }

    fn field_count(&self) -> usize {
        self.ends_len
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// Reads the next record into `out`/`ends`, or `None` at the end of
    /// the file.
    fn read_raw(&mut self) -> std::io::Result<Option<RawRecord>> {
        use csv_core::ReadRecordResult as R;
        let (mut nout, mut nend) = (0usize, 0usize);
        let mut start: Option<u64> = None;
        // Past a limit the rest of the record is only hashed and counted.
        let mut over: Option<(Sha256, u64, Vec<u8>)> = None;
        let mut scratch_out = [0u8; 8192];
        let mut scratch_ends = [0usize; 256];
        loop {
            let mut input = self.input.fill_buf()?;
            if std::mem::take(&mut self.resumed) && !input.is_empty() {
                input = &input[..1];
            }
            let (res, nin, o, e) = match &mut over {
                None => self
                    .core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]),
                Some(_) => self.core.read_record(input, &mut scratch_out, &mut scratch_ends),
            };
            let consumed = &input[..nin];
            // The record starts at its first byte that is not a line end
            // (blank lines and the LF of a CRLF are skipped).
            let mut rest = consumed;
            if start.is_none() {
                let skip = rest
                    .iter()
                    .position(|&b| b != b'\n' && b != b'\r')
                    .unwrap_or(rest.len());
                self.pos.line += memchr::memchr_iter(b'\n', &rest[..skip]).count() as u64;
                if skip < rest.len() {
                    start = Some(self.pos.line);
                }
                rest = &rest[skip..];
            }
            self.pos.line += memchr::memchr_iter(b'\n', rest).count() as u64;
            self.pos.byte += nin as u64;
            match &mut over {
                None => {
                    // csv-core's field ends count from the record's start.
                    nout += o;
                    nend += e;
                }
                Some((hash, total, _)) => {
                    hash.update(&scratch_out[..o]);
                    *total += o as u64;
                }
            }
            self.input.consume(nin);
            match res {
                R::InputEmpty => {}
                R::OutputFull if over.is_none() && self.out.len() < self.limits.max_row => {
                    let grown = (self.out.len() * 2).min(self.limits.max_row);
                    self.out.resize(grown, 0);
                }
                R::OutputEndsFull if over.is_none() && self.ends.len() < MAX_FIELDS => {
                    let grown = (self.ends.len() * 2).min(MAX_FIELDS);
                    self.ends.resize(grown, 0);
                }
                R::OutputFull | R::OutputEndsFull => {
                    if over.is_none() {
                        let mut hash = Sha256::new();
                        hash.update(&self.out[..nout]);
                        let prefix = self.out[..nout.min(KEPT_PREFIX)].to_vec();
                        over = Some((hash, nout as u64, prefix));
                    }
                }
                R::Record => {
                    let line = start.unwrap_or(self.pos.line);
                    self.out_len = nout;
                    self.ends_len = nend;
                    if over.is_none() && nout > self.limits.max_row {
                        let kept = oversized(&self.out[..nout], nout as u64, &Sha256::digest(&self.out[..nout]));
                        return Ok(Some(RawRecord {
                            line,
                            oversized: Some(kept),
                        }));
                    }
                    let oversized = over.map(|(hash, total, prefix)| oversized(&prefix, total, &hash.finalize()));
                    return Ok(Some(RawRecord { line, oversized }));
                }
                R::End => return Ok(None),
            }
        }
    }

    /// The next row, or `None` at the end of the file. An I/O error is
    /// returned as `Err` (the file is retried later, from its last commit).
    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        let Some(raw) = self.read_raw()? else {
            return Ok(None);
        };
        self.pos.rows += 1;
        let pos = self.pos;
        let line = raw.line;
        let origin = Origin { object, line };
        if let Some(kept) = raw.oversized {
            let reason = format!(
                "ROW_TOO_LONG: 第 {line} 行超过 {} 字节或 {MAX_FIELDS} 列的上限 (source limit max_row)",
                self.limits.max_row
            );
            return Ok(Some((Row::Unreadable(mapping.unreadable(origin, kept, reason)), pos)));
        }
        let long = (0..self.field_count()).find(|&i| self.field(i).len() > self.limits.max_value);
        if self.field_count() != self.width || long.is_some() {
            let raw: Vec<String> = (0..self.field_count())
                .map(|i| {
                    let f = self.field(i);
                    if f.len() > self.limits.max_value {
                        return oversized(f, f.len() as u64, &Sha256::digest(f));
                    }
                    decode(f, self.charset).map_or_else(|_| String::from_utf8_lossy(f).into_owned(), |c| c.into_owned())
                })
                .collect();
            let reason = match long {
                Some(i) => format!(
                    "VALUE_TOO_LONG: 第 {line} 行第 {} 列有 {} 字节, 超过上限 {} (source limit max_value)",
                    i + 1,
                    self.field(i).len(),
                    self.limits.max_value
                ),
                None => format!(
                    "RAGGED_ROW: 第 {line} 行有 {} 列, 表头有 {} 列",
                    self.field_count(),
                    self.width
                ),
            };
            let raw = serde_json::Value::from(raw).to_string();
            return Ok(Some((Row::Unreadable(mapping.unreadable(origin, raw, reason)), pos)));
        }
        let fields: Vec<Field<'_>> = self
            .index
            .iter()
            .map(|i| i.map(|i| decode(self.field(i), self.charset)))
            .collect();
        Ok(Some((Row::Outcome(mapping.normalize(&fields, origin, now_us)), pos)))
    }
}

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

    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        loop {
            let (n, fits) = read_line_bounded(&mut self.reader, &mut self.line, self.limits.max_row)?;
            if n == 0 {
                return Ok(None);
            }
            let line = self.pos.line;
            self.pos.byte += n as u64;
            self.pos.line += 1;
            let origin = Origin { object, line };
            if let Line::Over(kept) = fits {
                self.pos.rows += 1;
                let reason = format!(
                    "ROW_TOO_LONG: 第 {line} 行有 {n} 字节, 超过上限 {} (source limit max_row)",
                    self.limits.max_row
                );
                return Ok(Some((
                    Row::Unreadable(mapping.unreadable(origin, kept, reason)),
                    self.pos,
                )));
            }
            let text = match decode(&self.line, self.charset) {
                Ok(t) => t,
                Err(e) => {
                    self.pos.rows += 1;
                    let raw = String::from_utf8_lossy(&self.line).trim_end().to_owned();
                    let q = mapping.unreadable(origin, raw, format!("{e} (第 {line} 行)"));
                    return Ok(Some((Row::Unreadable(q), self.pos)));
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
                    let q = mapping.unreadable(
                        origin,
                        trimmed.to_owned(),
                        format!("INVALID_JSON: 第 {line} 行不是 JSON 对象: {e}"),
                    );
                    return Ok(Some((Row::Unreadable(q), self.pos)));
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
                let q = mapping.unreadable(origin, kept, reasons.join("; "));
                return Ok(Some((Row::Unreadable(q), self.pos)));
            }
            return Ok(Some((
                Row::Outcome(mapping.normalize(&fields, origin, now_us)),
                self.pos,
            )));
        }
    }
}

/// At most `max` characters of `s`, with `…` if cut.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Uncompressed bytes of a workbook's shared parts (strings, styles) at
/// most: they are loaded whole, so a small file must not inflate into
/// gigabytes.
const MAX_WORKBOOK_PART: u64 = 256 << 20;

/// Rows read ahead of the consumer of a worksheet.
const SHEET_ROWS_AHEAD: usize = 64;

/// Reads rows from the first worksheet of an Excel workbook (.xlsx, .xlsm)
/// with a header row, cell by cell on a thread of its own: memory holds a
/// few rows, whatever dimensions the sheet declares. Legacy .xls and .ods
/// workbooks are refused: calamine expands them to their full dimensions
/// in memory, which a tiny hostile file can make terabytes.
pub struct XlsxRows {
    /// Rows, then `Ok(None)` at the end of the sheet; a reader that stops
    /// without it failed.
    rows: std::sync::mpsc::Receiver<Result<Option<SheetRow>, String>>,
    /// Column of each of the mapping's columns.
    index: Vec<Option<usize>>,
    rows_read: u64,
    /// The sheet line to resume at (rows above it were read before).
    /// Rows read before the resume point, still to skip: by count, not by
    /// sheet line, since a sheet's rows need not come in line order (the
    /// file's hash is checked before a resume, so the order is the same).
    skip: u64,
    limits: Limits,
}

/// One worksheet row: its 0-based sheet row and its cells by column.
struct SheetRow {
    row: u32,
    cells: Vec<(u32, calamine::Data)>,
}

impl XlsxRows {
    pub fn open(file: File, mapping: &Mapping, from: Pos, limits: Limits) -> Result<XlsxRows, Unreadable> {
        check_zip_parts(&file)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Option<SheetRow>, String>>(SHEET_ROWS_AHEAD);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        std::thread::Builder::new()
            .name("xlsx-reader".into())
            .spawn(move || {
                // calamine can panic on a malformed sheet (seen by fuzzing:
                // a shared-string index past the table): the file is
                // unreadable, the agent goes on.
                let failed = tx.clone();
                let run = std::panic::AssertUnwindSafe(|| read_sheet(file, tx, ready_tx));
                if std::panic::catch_unwind(run).is_err() {
                    let _ = failed.send(Err("the workbook reader failed on a malformed worksheet".into()));
                }
            })
            .map_err(|e| Unreadable(format!("cannot start the workbook reader: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| Unreadable("the workbook reader stopped".into()))?
            .map_err(Unreadable)?;
        let header = match rx.recv() {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => return Err(Unreadable("empty worksheet: no header row".into())),
            Ok(Err(e)) => return Err(Unreadable(format!("first worksheet: {e}"))),
            Err(_) => return Err(Unreadable("the workbook reader stopped".into())),
        };
        let width = header.cells.iter().map(|(c, _)| *c as usize + 1).max().unwrap_or(0);
        let mut names = vec![String::new(); width];
        for (c, d) in &header.cells {
            names[*c as usize] = crate::normalize::trim(&d.to_string()).to_owned();
        }
        let index = bind_header(mapping, &names)?;
        Ok(XlsxRows {
            rows: rx,
            index,
            rows_read: from.rows,
            skip: from.rows,
            limits,
        })
    }
}

impl XlsxRows {
    pub fn next(&mut self, mapping: &Mapping, object: &str, now_us: i64) -> std::io::Result<Option<(Row, Pos)>> {
        loop {
            // A worksheet that cannot be read on is unreadable for good
            // (InvalidData): the rows before it stay delivered.
            let sheet_row = match self.rows.recv() {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the workbook reader stopped",
                    ));
                }
            };
            // Line numbers as Excel shows them (1-based, header on line 1).
            let line = u64::from(sheet_row.row) + 1;
            let mut cells: Vec<Option<&calamine::Data>> = vec![None; self.index.len()];
            for (slot, col) in cells.iter_mut().zip(&self.index) {
                if let Some(col) = col {
                    *slot = sheet_row
                        .cells
                        .iter()
                        .find(|(c, _)| *c as usize == *col)
                        .map(|(_, d)| d);
                }
            }
            if cells.iter().all(|c| c.is_none_or(|d| *d == calamine::Data::Empty)) {
                continue;
            }
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            self.rows_read += 1;
            let pos = Pos {
                byte: 0,
                line: line + 1,
                rows: self.rows_read,
            };
            let max_value = self.limits.max_value;
            let fields: Vec<Field<'_>> = cells
                .iter()
                .zip(mapping.column_items())
                .map(|(c, item)| match c.and_then(|d| cell(d, item)) {
                    Some(Ok(v)) if v.len() > max_value => Some(Err(Issue {
                        code: "VALUE_TOO_LONG",
                        message: format!("值有 {} 字节, 超过上限 {max_value} (source limit max_value)", v.len()),
                    })),
                    other => other,
                })
                .collect();
            return Ok(Some((
                Row::Outcome(mapping.normalize(&fields, Origin { object, line }, now_us)),
                pos,
            )));
        }
    }
}

/// Cells of one worksheet row kept at most (a row wider than Excel's
/// 16,384 columns is not a worksheet).
const MAX_ROW_CELLS: usize = 16_384;

/// The worksheet reader thread: sends the first sheet's rows, one at a
/// time, until the consumer hangs up.
fn read_sheet(
    file: File,
    tx: std::sync::mpsc::SyncSender<Result<Option<SheetRow>, String>>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> = match calamine::Xlsx::new(BufReader::new(file)) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(format!("not a readable .xlsx workbook: {e}")));
            return;
        }
    };
    let Some(first) = book.sheet_names().first().cloned() else {
        let _ = ready.send(Err("the workbook has no worksheet".into()));
        return;
    };
    let mut cells = match book.worksheet_cells_reader(&first) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("first worksheet: {e}")));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut current: Option<SheetRow> = None;
    loop {
        let next = match cells.next_cell() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(format!("worksheet {first}: {e}")));
                return;
            }
        };
        let Some(cell) = next else { break };
        let (row, col) = cell.get_position();
        let value = calamine::Data::from(cell.get_value().clone());
        if value == calamine::Data::Empty {
            continue;
        }
        match &mut current {
            Some(r) if r.row == row => {
                if r.cells.len() < MAX_ROW_CELLS {
                    r.cells.push((col, value));
                }
            }
            _ => {
                if let Some(done) = current.take()
                    && tx.send(Ok(Some(done))).is_err()
                {
                    return;
                }
                current = Some(SheetRow {
                    row,
                    cells: vec![(col, value)],
                });
            }
        }
    }
    if let Some(done) = current
        && tx.send(Ok(Some(done))).is_err()
    {
        return;
    }
    let _ = tx.send(Ok(None));
}

/// Refuses a workbook whose shared parts would inflate past
/// [`MAX_WORKBOOK_PART`] (they are loaded whole), and legacy formats.
fn check_zip_parts(file: &File) -> Result<(), Unreadable> {
    let mut head = [0u8; 8];
    let n = (&*file)
        .read(&mut head)
        .map_err(|e| Unreadable(format!("cannot read: {e}")))?;
    (&*file)
        .seek(SeekFrom::Start(0))
        .map_err(|e| Unreadable(format!("cannot read: {e}")))?;
    if n >= 8 && head == [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1] {
        return Err(Unreadable(
            "a legacy Excel 97-2003 (.xls) workbook: it cannot be read in bounded memory; save it as .xlsx or CSV"
                .into(),
        ));
    }
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Unreadable(format!("not a readable .xlsx workbook: {e}")))?;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| Unreadable(format!("not a readable .xlsx workbook: {e}")))?;
        let name = entry.name().to_owned();
        let shared = !name.contains("worksheets/");
        if shared && entry.size() > MAX_WORKBOOK_PART {
            return Err(Unreadable(format!(
                "workbook part {} inflates to {} bytes (limit {MAX_WORKBOOK_PART})",
                bounded(&name, 100),
                entry.size()
            )));
        }
    }
    drop(zip);
    (&*file)
        .seek(SeekFrom::Start(0))
        .map_err(|e| Unreadable(format!("cannot read: {e}")))?;
    Ok(())
}

/// The text of one worksheet cell for an item. Numbers never stand for
/// identifiers: Excel keeps 15 significant digits and drops leading zeros,
/// so such a value is refused, never repaired.
pub fn cell(d: &calamine::Data, item: Option<&rules::catalog::Item>) -> Field<'static> {
    use calamine::{Data, DataType};
    use rules::catalog::ValueRule;
    use rules::element::Rule;
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

/// The rows of one file, whatever its format.
pub enum Rows {
    Csv(Box<CsvRows>),
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
            rules::catalog::Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
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

    #[test]
    fn utf8_evidence_is_the_same_whatever_the_chunks() {
        let mut text = "公民身份号码,姓名\n320282199001019995,李四\n".repeat(50).into_bytes();
        text.insert(200, 0xB0);
        let mut whole = Utf8Evidence::default();
        whole.update(&text);
        whole.finish();
        assert_eq!(whole.invalid, 1);
        assert_eq!(whole.multibyte as usize, "公民身份号码姓名李四".chars().count() * 50);
        assert_eq!(whole.charset(), Charset::Utf8);
        for size in [1, 2, 3, 7, 64] {
            let mut parts = Utf8Evidence::default();
            for chunk in text.chunks(size) {
                parts.update(chunk);
            }
            parts.finish();
            assert_eq!(
                (parts.multibyte, parts.invalid),
                (whole.multibyte, whole.invalid),
                "{size}"
            );
        }
        // GBK text: its bytes are mostly not UTF-8.
        let (gbk, _, _) = encoding_rs::GB18030.encode("姓名,李四,王五,赵六\n");
        let mut e = Utf8Evidence::default();
        e.update(&gbk);
        e.finish();
        assert_eq!(e.charset(), Charset::Gb18030);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(leads(&bytes), bytes.iter().filter(|&&b| b >= 0xC0).count() as u64);
    }

    fn people_mapping() -> Mapping {
        let catalog =
            rules::catalog::Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
        let columns = [
            ("公民身份号码", "DE00001"),
            ("姓名", "DE00002"),
            ("性别", "DE00003"),
            ("出生日期", "DE00004"),
        ];
        let source = crate::config::SourceConfig {
            name: "people".into(),
            kind: crate::config::SourceKind::Folder,
            resource: "1010100/0001".into(),
            path: "/tmp".into(),
            format: crate::config::FileFormat::Auto,
            encoding: crate::config::Encoding::Auto,
            complete: crate::config::Completion::Rename,
            settle: std::time::Duration::ZERO,
            rescan: std::time::Duration::ZERO,
            after: crate::config::AfterDone::Move,
            op_column: None,
            db: None,
            transforms: Default::default(),
            columns: columns
                .iter()
                .map(|(c, e)| ((*c).to_owned(), (*e).to_owned()))
                .collect(),
            limits: Limits::default(),
            max_attempts: 3,
        };
        Mapping::new("320282-gaj", &source, catalog.resource("1010100/0001").unwrap())
    }

    fn temp_file(bytes: &[u8]) -> File {
        use std::io::Write as _;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    /// Found by fuzzing: a row that starts with the bytes of a BOM, read
    /// again from its position after a restart, lost them (csv-core strips a
    /// BOM at what it takes for the start of a file).
    #[test]
    fn a_csv_resumed_before_bom_bytes_reads_the_same_rows() {
        let m = people_mapping();
        let text = "公民身份号码,姓名,性别,出生日期\n320282199001019995,李四,1,1990-01-01\n\u{FEFF}320282199001019995,王五,2,1990-01-01\n";
        let read = |from: Pos| {
            let mut rows =
                CsvRows::open(temp_file(text.as_bytes()), Charset::Utf8, &m, from, Limits::default()).unwrap();
            let mut out = Vec::new();
            while let Some((row, pos)) = rows.next(&m, "f.csv", 0).unwrap() {
                let kind = match row {
                    Row::Outcome(Outcome::Record { bytes, .. }) => format!("record {bytes:?}"),
                    Row::Outcome(Outcome::Quarantine(q)) | Row::Unreadable(q) => format!("quarantine {q:?}"),
                };
                out.push((kind, pos));
            }
            out
        };
        let whole = read(Pos::default());
        assert_eq!(whole.len(), 2);
        assert_eq!(read(whole[0].1), whole[1..]);
    }

    /// Found by fuzzing: calamine panics on a shared-string index past the
    /// table. The file is unreadable (an error), never a silent end of the
    /// sheet that would move unread rows to done/.
    #[test]
    fn a_worksheet_calamine_panics_on_is_an_error_not_an_end() {
        use std::io::Write as _;
        let m = people_mapping();
        let ns = "http://schemas.openxmlformats.org/";
        let parts = [
            (
                "[Content_Types].xml",
                format!(
                    r#"<?xml version="1.0"?><Types xmlns="{ns}package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>"#
                ),
            ),
            (
                "_rels/.rels",
                format!(
                    r#"<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships"><Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
                ),
            ),
            (
                "xl/workbook.xml",
                format!(
                    r#"<?xml version="1.0"?><workbook xmlns="{ns}spreadsheetml/2006/main" xmlns:r="{ns}officeDocument/2006/relationships"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>"#
                ),
            ),
            (
                "xl/_rels/workbook.xml.rels",
                format!(
                    r#"<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships"><Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="{ns}officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>"#
                ),
            ),
            (
                "xl/sharedStrings.xml",
                format!(
                    r#"<?xml version="1.0"?><sst xmlns="{ns}spreadsheetml/2006/main"><si><t>公民身份号码</t></si><si><t>姓名</t></si><si><t>性别</t></si><si><t>出生日期</t></si></sst>"#
                ),
            ),
            (
                "xl/worksheets/sheet1.xml",
                // Row 2 is a person; row 3 names shared string 99 of a table of four.
                format!(
                    r#"<?xml version="1.0"?><worksheet xmlns="{ns}spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c><c r="D1" t="s"><v>3</v></c></row><row r="2"><c r="A2" t="inlineStr"><is><t>320282199001019995</t></is></c><c r="B2" t="inlineStr"><is><t>李四</t></is></c></row><row r="3"><c r="A3" t="s"><v>99</v></c></row><row r="4"><c r="A4" t="inlineStr"><is><t>x</t></is></c></row></sheetData></worksheet>"#
                ),
            ),
        ];
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, text) in &parts {
            zip.start_file(*name, stored).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        let mut rows = XlsxRows::open(temp_file(&bytes), &m, Pos::default(), Limits::default()).unwrap();
        loop {
            match rows.next(&m, "f.xlsx", 0) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the sheet ended silently: rows after the bad cell would be lost"),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                    break;
                }
            }
        }
    }
}
