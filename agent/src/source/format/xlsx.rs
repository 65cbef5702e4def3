//! Excel workbooks (.xlsx, .xlsm): the first worksheet, streamed cell by
//! cell on a thread of its own, resumable by the count of rows read. How
//! far the read is counts in the worksheet's compressed bytes.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Consumed, Limits, Pos, Unreadable, bind_header, bounded};
use crate::normalize::{Field, Mapping, Row};
use rules::element::Issue;

/// Uncompressed bytes of a workbook's shared parts (strings, styles) at
/// most: they are loaded whole, so a small file must not inflate into
/// gigabytes.
const MAX_WORKBOOK_PART: u64 = 256 << 20;

/// Rows read ahead of the consumer of a worksheet.
const SHEET_ROWS_AHEAD: usize = 64;

/// The workbook reader's buffer: its position in the file is at most this
/// far ahead of what the worksheet's decompression took.
const READ_AHEAD: usize = 8 << 10;

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
    /// The workbook reader's position in the file, moved by its own thread.
    at: Arc<AtomicU64>,
    /// Where each worksheet's compressed data lie in the file.
    sheets: Vec<Range<u64>>,
}

/// One worksheet row: its 0-based sheet row and its cells by column.
struct SheetRow {
    row: u32,
    cells: Vec<(u32, calamine::Data)>,
}

impl XlsxRows {
    pub fn open(file: File, mapping: &Mapping, from: Pos, limits: Limits) -> Result<XlsxRows, Unreadable> {
        let sheets = check_zip_parts(&file)?;
        let at = Arc::new(AtomicU64::new(0));
        let file = Counted { file, at: at.clone() };
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
            at,
            sheets,
        })
    }

    /// The bytes of the streamed worksheet read so far: its part is the
    /// one whose compressed data hold the reader's position, or end less
    /// than a buffer's read-ahead before it.
    pub fn consumed(&self) -> Consumed {
        let at = self.at.load(Ordering::Relaxed);
        let holds = |r: &&Range<u64>| r.start <= at && at <= r.end.saturating_add(READ_AHEAD as u64);
        match self.sheets.iter().find(holds) {
            Some(r) => Consumed::Sheet {
                read: (at - r.start).min(r.end - r.start),
                size: r.end - r.start,
            },
            None => Consumed::Unknown,
        }
    }
}

/// The workbook's file, noting how far its reader is in it.
struct Counted {
    file: File,
    at: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.at.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.file.seek(pos)?;
        self.at.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

impl XlsxRows {
    pub fn next_row(&mut self, mapping: &Mapping) -> std::io::Result<Option<(Row<'_>, Pos)>> {
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
            return Ok(Some((Row::Values { line, fields, op: None }, pos)));
        }
    }
}

/// Cells of one worksheet row kept at most (a row wider than Excel's
/// 16,384 columns is not a worksheet).
const MAX_ROW_CELLS: usize = 16_384;

/// The worksheet reader thread: sends the first sheet's rows, one at a
/// time, until the consumer hangs up.
fn read_sheet(
    file: Counted,
    tx: std::sync::mpsc::SyncSender<Result<Option<SheetRow>, String>>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> = match calamine::Xlsx::new(BufReader::with_capacity(READ_AHEAD, file)) {
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
/// Returns where the worksheets' compressed data lie.
fn check_zip_parts(file: &File) -> Result<Vec<Range<u64>>, Unreadable> {
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
    let mut sheets = Vec::new();
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
        if !shared {
            let start = entry.data_start();
            sheets.push(start..start.saturating_add(entry.compressed_size()));
        }
    }
    drop(zip);
    (&*file)
        .seek(SeekFrom::Start(0))
        .map_err(|e| Unreadable(format!("cannot read: {e}")))?;
    Ok(sheets)
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
