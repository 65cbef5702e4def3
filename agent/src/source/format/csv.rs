//! CSV with a header row, parsed by csv-core with physical line numbers and
//! bounded records, resumable at a record's byte offset.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use super::{BOM, Charset, KEPT_PREFIX, Limits, Pos, Unreadable, bind_header, decode, oversized};
use crate::normalize::{Field, Mapping, Row};

/// One CSV record as read, before decoding.
struct RawRecord {
    /// 1-based line where the record starts.
    line: u64,
    /// Set when the record is over a limit: what to keep instead.
    oversized: Option<String>,
}

/// A record past a limit: the rest of it is read into scratch buffers made
/// only then (zeroing them for every row cost the flood 2 % of the agent),
/// hashed and counted.
struct Over {
    hash: Sha256,
    total: u64,
    prefix: Vec<u8>,
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
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
        let mut over: Option<Over> = None;
        loop {
            let mut input = self.input.fill_buf()?;
            if std::mem::take(&mut self.resumed) && !input.is_empty() {
                input = &input[..1];
            }
            let (res, nin, o, e) = match &mut over {
                None => self
                    .core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]),
                Some(o) => self.core.read_record(input, &mut o.scratch, &mut o.scratch_ends),
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
                Some(over) => {
                    over.hash.update(&over.scratch[..o]);
                    over.total += o as u64;
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
                        over = Some(Over {
                            hash,
                            total: nout as u64,
                            prefix: self.out[..nout.min(KEPT_PREFIX)].to_vec(),
                            scratch: vec![0; 8192],
                            scratch_ends: vec![0; 256],
                        });
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
                    let oversized = over.map(|o| oversized(&o.prefix, o.total, &o.hash.finalize()));
                    return Ok(Some(RawRecord { line, oversized }));
                }
                R::End => return Ok(None),
            }
        }
    }

    /// The position after the last row read.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The next row, or `None` at the end of the file. An I/O error is
    /// returned as `Err` (the file is retried later, from its last commit).
    pub fn next_row(&mut self) -> std::io::Result<Option<(Row<'_>, Pos)>> {
        let Some(raw) = self.read_raw()? else {
            return Ok(None);
        };
        self.pos.rows += 1;
        let pos = self.pos;
        let line = raw.line;
        if let Some(kept) = raw.oversized {
            let reason = format!(
                "ROW_TOO_LONG: 第 {line} 行超过 {} 字节或 {MAX_FIELDS} 列的上限 (source limit max_row)",
                self.limits.max_row
            );
            return Ok(Some((
                Row::Unreadable {
                    line,
                    raw: kept,
                    reason,
                },
                pos,
            )));
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
            return Ok(Some((Row::Unreadable { line, raw, reason }, pos)));
        }
        let fields: Vec<Field<'_>> = self
            .index
            .iter()
            .map(|i| i.map(|i| decode(self.field(i), self.charset)))
            .collect();
        Ok(Some((Row::Values { line, fields, op: None }, pos)))
    }
}
