//! One file's read, on a blocking thread: its identity and encoding from
//! one pass over its bytes, then its rows in chunks through the source's
//! [`Committer`], up to CHUNKS_AHEAD chunks handed over before the oldest is
//! durable. The folder's bookkeeping (moving, rejecting, retrying) is the
//! parent module's.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{CHUNKS_AHEAD, FileError, FilePosition, ReadFile};
use crate::config::{Encoding, FileFormat, FolderConfig};
use crate::health::{ByteMeasure, ReadAt, SourceStats};
use crate::normalize::Mapping;
use crate::outbox;
use crate::source::commit::{Chunk, Committer, Position, Submitted};
use crate::source::format::{
    Charset, Consumed, CsvRows, JsonRows, Pos, Rows, Unreadable, Utf8Evidence, XlsxRows, bounded,
};

/// One file's processing, on a blocking thread.
pub(super) struct FileJob {
    pub(super) name: OsString,
    /// The name as logs show it.
    pub(super) shown: String,
    pub(super) key: String,
    pub(super) config: FolderConfig,
    pub(super) mapping: Arc<Mapping>,
    pub(super) committer: Committer,
    pub(super) stats: Arc<SourceStats>,
    pub(super) token: CancellationToken,
}

impl FileJob {
    pub(super) fn run(
        self,
        mut file: File,
        stored: Option<String>,
        rt: &tokio::runtime::Handle,
    ) -> Result<ReadFile, FileError> {
        let scan = identify(&mut file).map_err(|e| FileError::Retry(format!("cannot read: {e}")))?;
        let read = ReadFile {
            size: scan.size,
            mtime: scan.mtime,
        };
        let parsed: Option<FilePosition> = stored.as_deref().and_then(|v| serde_json::from_str(v).ok());
        let from = match &parsed {
            Some(p) if p.identity == scan.identity && p.done => return Ok(read),
            Some(p) if p.identity == scan.identity => {
                info!(file = %self.shown, line = p.line, "resuming file");
                Pos {
                    byte: p.byte,
                    line: p.line,
                    rows: p.rows,
                }
            }
            _ => Pos::default(),
        };
        let format = match self.config.format {
            FileFormat::Auto => {
                let ext = Path::new(&self.name)
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                match ext.as_str() {
                    "csv" | "txt" => FileFormat::Csv,
                    "jsonl" | "ndjson" => FileFormat::Jsonl,
                    "xlsx" | "xlsm" | "xls" => FileFormat::Xlsx,
                    _ => {
                        return Err(FileError::Unreadable(format!(
                            "unknown file type {:?}: expected .csv, .jsonl or .xlsx (or set the source's format)",
                            bounded(&ext, 20)
                        )));
                    }
                }
            }
            f => f,
        };
        let charset = match self.config.encoding {
            Encoding::Gb18030 if format != FileFormat::Xlsx && scan.evidence.is_clearly_utf8() => {
                return Err(FileError::Unreadable(format!(
                    "the source is configured encoding = \"gb18030\", but this file looks like UTF-8 ({} multi-byte \
                     UTF-8 characters, no byte that is not UTF-8): set encoding = \"auto\" or \"utf-8\", or export \
                     the file in GB18030/GBK",
                    scan.evidence.multibyte
                )));
            }
            Encoding::Gb18030 => Charset::Gb18030,
            Encoding::Utf8 if format != FileFormat::Xlsx && scan.evidence.charset() == Charset::Gb18030 => {
                // The mirror image: every row would fail to decode.
                return Err(FileError::Unreadable(format!(
                    "the source is configured encoding = \"utf-8\", but this file looks like GB18030/GBK ({} \
                     invalid UTF-8 sequences, {} valid multi-byte characters): set encoding = \"auto\" or \
                     \"gb18030\", or export the file in UTF-8",
                    scan.evidence.invalid, scan.evidence.multibyte
                )));
            }
            Encoding::Utf8 => Charset::Utf8,
            Encoding::Auto => scan.evidence.charset(),
        };
        debug!(file = %self.shown, ?format, ?charset, "reading file");
        let handle = file.try_clone().map_err(|e| FileError::Retry(e.to_string()))?;
        file.rewind().map_err(|e| FileError::Retry(e.to_string()))?;
        let limits = self.config.limits;
        let mut rows = match format {
            FileFormat::Csv => Rows::Csv(Box::new(
                CsvRows::open(file, charset, &self.mapping, from, limits).map_err(unreadable)?,
            )),
            FileFormat::Xlsx => Rows::Xlsx(XlsxRows::open(file, &self.mapping, from, limits).map_err(unreadable)?),
            _ => Rows::Json(JsonRows::open(file, charset, from, limits).map_err(unreadable)?),
        };
        let measure = match format {
            FileFormat::Xlsx => ByteMeasure::CompressedSheet,
            _ => ByteMeasure::File,
        };
        let at = |rows: &Rows, pos: Pos| read_at(pos.rows, rows.consumed(), scan.size);
        // Shown in /status until this read ends, however it ends.
        let progress = self
            .stats
            .start_reading(&self.shown, scan.size, measure, at(&rows, from));

        // Chunks submitted and not yet durable, oldest first.
        let mut submitted: std::collections::VecDeque<Submitted> = Default::default();
        let mut chunk = Chunk::default();
        let mut pos = from;
        // Each chunk commits only after the one before it: it follows the
        // position that one wrote.
        let mut previous = stored;
        loop {
            let now = crate::clock::now_us();
            let row = rows.next(&self.mapping).map_err(|e| {
                let why = format!("read error at line {}: {e}", pos.line);
                // A malformed workbook stays malformed; an I/O error may pass.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    FileError::Unreadable(why)
                } else {
                    FileError::Retry(why)
                }
            })?;
            let mut done = row.is_none();
            if let Some((row, next)) = row {
                pos = next;
                self.stats.rows.inc();
                chunk.push_row(&self.mapping, row, &self.shown, now);
            }
            let mut changed = None;
            if done {
                // Never mark as read a file that grew or changed under us.
                changed = changed_since(&handle, &read);
                done = changed.is_none();
            }
            if chunk.is_full() || done || changed.is_some() {
                // Read, if not yet handed over: the source's row count too.
                progress.advance(at(&rows, pos));
                let value = serde_json::to_string(&FilePosition {
                    identity: scan.identity.clone(),
                    byte: pos.byte,
                    line: pos.line,
                    rows: pos.rows,
                    done,
                })
                .unwrap_or_default();
                let position = Position {
                    key: self.key.clone(),
                    follows: Some(previous.replace(value.clone())),
                    value,
                };
                let handed = rt.block_on(async {
                    tokio::select! {
                        // A chunk handed over is not taken back.
                        biased;
                        s = self.committer.submit(std::mem::take(&mut chunk), position) => s.map_err(commit_error),
                        () = self.token.cancelled() => Err(FileError::Cancelled),
                    }
                })?;
                submitted.push_back(handed);
                let last = done || changed.is_some();
                while submitted.len() > CHUNKS_AHEAD || (last && !submitted.is_empty()) {
                    if let Some(p) = submitted.pop_front() {
                        rt.block_on(self.committer.committed(p)).map_err(commit_error)?;
                    }
                }
                if let Some(why) = changed {
                    return Err(FileError::Unreadable(why));
                }
                if done {
                    return Ok(read);
                }
                if self.token.is_cancelled() {
                    for p in submitted {
                        rt.block_on(self.committer.committed(p)).map_err(commit_error)?;
                    }
                    return Err(FileError::Cancelled);
                }
            }
        }
    }
}

/// How far a read is, as `/status` counts it.
fn read_at(rows: u64, consumed: Consumed, file_size: u64) -> ReadAt {
    let bytes = match consumed {
        Consumed::Offset(byte) => Some((byte, file_size)),
        Consumed::Sheet { read, size } => Some((read, size)),
        Consumed::Unknown => None,
    };
    ReadAt { rows, bytes }
}

/// Why the open file is no longer what was read, if it is not.
pub(super) fn changed_since(handle: &File, read: &ReadFile) -> Option<String> {
    let meta = handle.metadata().ok()?;
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    (meta.len() != read.size || mtime != read.mtime).then(|| {
        format!(
            "the file changed while it was read (it had {} bytes, it now has {}): the rows read were delivered, \
             the rest were not. Write files under a temporary name and rename them when complete",
            read.size,
            meta.len()
        )
    })
}

/// A chunk that did not commit: the disk reserve pauses the file (and the
/// chunks after it fail as conflicts), anything else retries it.
pub(super) fn commit_error(e: outbox::Error) -> FileError {
    match e {
        outbox::Error::DiskLow { .. } | outbox::Error::Conflict { .. } => FileError::Paused,
        e if e.is_disk_full() => FileError::Paused,
        e => FileError::Retry(e.to_string()),
    }
}

pub(super) fn unreadable(u: Unreadable) -> FileError {
    FileError::Unreadable(u.0)
}

/// One pass over a file: its identity and what its bytes say of their
/// encoding.
pub(super) struct FileScan {
    /// Size, mtime and SHA-256 of the content.
    identity: String,
    size: u64,
    mtime: SystemTime,
    evidence: Utf8Evidence,
}

/// Reads the whole file through its handle once.
pub(super) fn identify(file: &mut File) -> std::io::Result<FileScan> {
    let meta = file.metadata()?;
    let mtime = meta.modified()?;
    let nanos = mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut evidence = Utf8Evidence::default();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        evidence.update(&buf[..n]);
    }
    evidence.finish();
    let digest = rules::catalog::hex(&hasher.finalize());
    Ok(FileScan {
        identity: format!("{}:{nanos}:{digest}", meta.len()),
        size: meta.len(),
        mtime,
        evidence,
    })
}
