//! The drop-folder source: business systems export files into a folder, and
//! this source takes each complete file once, streams its rows through
//! normalization into the outbox, and moves it to `done/` (or deletes it).
//!
//! A file is found by a notify watch and by a periodic rescan (notify misses
//! events on NFS and when its queue overflows). It is taken only when
//! complete, per the source's `complete` rule. Its identity (size, mtime,
//! SHA-256) and the byte offset reached commit with each chunk of records,
//! so after a crash the same file resumes where the last commit ended, and a
//! file whose last chunk committed is only moved. A file that cannot be read
//! at all (no header, missing mapped columns, unknown format) moves to
//! `rejected/` beside `NAME.error.txt`; a bad row is quarantined and the
//! rest of the file goes on.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::format::{Charset, CsvRows, JsonRows, Pos, Row, Rows, Unreadable, XlsxRows};
use crate::config::{AfterDone, Completion, Encoding, FileFormat, SourceConfig};
use crate::health::SourceStats;
use crate::normalize::{Mapping, Outcome};
use crate::outbox::{self, Outbox, PositionUpdate, Receipt, Write};

/// Rows per outbox transaction, at most.
const CHUNK_ROWS: usize = 4096;
/// Encoded bytes per outbox transaction, about.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks submitted but not yet committed, at most: lets parsing run ahead
/// of the fsync without holding much memory.
const CHUNKS_AHEAD: usize = 2;

pub struct Folder {
    config: SourceConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    stats: Arc<SourceStats>,
}

/// A file seen but not yet complete (settle rule).
struct Pending {
    size: u64,
    mtime: SystemTime,
    since: Instant,
}

/// How far a file got, as stored in the outbox's positions table.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct FilePosition {
    identity: String,
    byte: u64,
    line: u64,
    rows: u64,
    done: bool,
}

enum FileError {
    /// The file can never be read: move it to `rejected/`.
    Unreadable(String),
    /// Something transient (I/O, outbox): try again later.
    Retry(String),
    /// Shutdown was requested; the last commit stands.
    Cancelled,
}

impl Folder {
    pub fn new(config: SourceConfig, mapping: Mapping, outbox: Outbox, stats: Arc<SourceStats>) -> Folder {
        Folder {
            config,
            mapping: Arc::new(mapping),
            outbox,
            stats,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let span = info_span!("source", name = %self.config.name, path = %self.config.path.display());
        self.run_inner(token).instrument(span).await
    }

    async fn run_inner(self, token: CancellationToken) {
        for dir in [self.config.path.clone(), self.done_dir(), self.rejected_dir()] {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                let msg = format!("cannot create {}: {e}", dir.display());
                error!(error = %msg, "source cannot start");
                self.stats.set_error(Some(msg));
                // Keep trying: the folder may be mounted later.
            }
        }
        if let Err(e) = self.forget_gone_files().await {
            warn!(error = %e, "cannot tidy file positions");
        }
        let wake = Arc::new(Notify::new());
        let _watcher = self.watch(wake.clone());
        let mut pending: HashMap<String, Pending> = HashMap::new();
        info!("watching drop folder");
        loop {
            let next = match self.scan(&mut pending, &token).await {
                Ok(next) => {
                    self.stats.set_error(None);
                    next
                }
                Err(e) => {
                    warn!(error = %e, "scan failed; retrying");
                    self.stats.set_error(Some(e));
                    Some(Duration::from_secs(1))
                }
            };
            if token.is_cancelled() {
                break;
            }
            let wait = next.map_or(self.config.rescan, |n| n.min(self.config.rescan));
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        info!("source stopped");
    }

    /// Clears the positions of files no longer in the folder: left when a
    /// crash came between moving a finished file and clearing its position.
    async fn forget_gone_files(&self) -> Result<(), crate::outbox::Error> {
        let source = self.config.name.clone();
        let positions = self.outbox.read(move |r| r.positions(&source)).await?;
        for (key, _) in positions {
            let Some(name) = key.strip_prefix("file:") else {
                continue;
            };
            if !self.config.path.join(name).exists() {
                self.outbox
                    .write(Write {
                        positions: vec![PositionUpdate {
                            source: self.config.name.clone(),
                            key,
                            value: None,
                        }],
                        ..Write::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }

    fn done_dir(&self) -> PathBuf {
        self.config.path.join("done")
    }

    fn rejected_dir(&self) -> PathBuf {
        self.config.path.join("rejected")
    }

    /// Starts a notify watch that wakes the scan loop. A failure only costs
    /// latency: the rescan still finds every file.
    fn watch(&self, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Access events must not wake the scan: the scan's own read of
            // the folder makes them, and would keep it spinning.
            if let Ok(e) = &event
                && matches!(e.kind, notify::EventKind::Access(_))
            {
                return;
            }
            wake.notify_one();
        })
        .map_err(|e| warn!(error = %e, "no file watch; relying on rescan"))
        .ok()?;
        watcher
            .watch(&self.config.path, notify::RecursiveMode::NonRecursive)
            .map_err(|e| warn!(error = %e, "no file watch; relying on rescan"))
            .ok()?;
        Some(watcher)
    }

    /// Takes every complete file, oldest first. Returns when the next check
    /// is due for a file that is not complete yet.
    async fn scan(
        &self,
        pending: &mut HashMap<String, Pending>,
        token: &CancellationToken,
    ) -> Result<Option<Duration>, String> {
        let mut candidates = Vec::new();
        let entries = std::fs::read_dir(&self.config.path)
            .map_err(|e| format!("cannot list {}: {e}", self.config.path.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ignored(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            candidates.push((mtime, name, meta.len()));
        }
        candidates.sort();
        pending.retain(|name, _| candidates.iter().any(|(_, n, _)| n == name));
        let mut next: Option<Duration> = None;
        for (mtime, name, size) in candidates {
            if token.is_cancelled() {
                return Ok(None);
            }
            match self.config.complete {
                Completion::Rename => {}
                Completion::Marker => {
                    if !self.config.path.join(format!("{name}.ok")).exists() {
                        continue;
                    }
                }
                Completion::Settle => {
                    let p = pending.entry(name.clone()).or_insert(Pending {
                        size,
                        mtime,
                        since: Instant::now(),
                    });
                    if p.size != size || p.mtime != mtime {
                        *p = Pending {
                            size,
                            mtime,
                            since: Instant::now(),
                        };
                    }
                    let age = p.since.elapsed();
                    if age < self.config.settle {
                        let left = self.config.settle - age;
                        next = Some(next.map_or(left, |n| n.min(left)));
                        continue;
                    }
                    pending.remove(&name);
                }
            }
            self.take(&name, token).await?;
        }
        Ok(next)
    }

    /// Processes one complete file to the end (or to shutdown).
    async fn take(&self, name: &str, token: &CancellationToken) -> Result<(), String> {
        let path = self.config.path.join(name);
        let key = format!("file:{name}");
        let source = self.config.name.clone();
        let stored = {
            let (source, key) = (source.clone(), key.clone());
            self.outbox
                .read(move |r| Ok(r.positions(&source)?.into_iter().find(|(k, _)| *k == key)))
                .await
                .map_err(|e| e.to_string())?
        };
        let stored: Option<FilePosition> = stored.and_then(|(_, v)| serde_json::from_str(&v).ok());

        let result = {
            let this = FileJob {
                path: path.clone(),
                name: name.to_owned(),
                key: key.clone(),
                config: self.config.clone(),
                mapping: self.mapping.clone(),
                outbox: self.outbox.clone(),
                stats: self.stats.clone(),
                token: token.clone(),
            };
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || this.run(stored, &handle))
                .await
                .map_err(|e| format!("file task failed: {e}"))?
        };
        match result {
            Ok(()) => {
                self.finish(name, &path).await?;
                self.outbox
                    .write(Write {
                        positions: vec![PositionUpdate {
                            source,
                            key,
                            value: None,
                        }],
                        ..Write::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                self.stats.files_done.inc();
                Ok(())
            }
            Err(FileError::Cancelled) => Ok(()),
            Err(FileError::Retry(e)) => Err(format!("{name}: {e}")),
            Err(FileError::Unreadable(reason)) => {
                warn!(file = %name, %reason, "file rejected");
                self.reject(name, &path, &reason).map_err(|e| format!("{name}: {e}"))?;
                self.stats.files_rejected.inc();
                Ok(())
            }
        }
    }

    /// Moves (or deletes) a file whose records are all committed, and its
    /// marker.
    async fn finish(&self, name: &str, path: &Path) -> Result<(), String> {
        match self.config.after {
            AfterDone::Delete => std::fs::remove_file(path),
            AfterDone::Move => std::fs::rename(path, free_name(&self.done_dir(), name)),
        }
        .map_err(|e| format!("{name}: cannot move to done/: {e}"))?;
        let marker = self.config.path.join(format!("{name}.ok"));
        if marker.exists() {
            let _ = std::fs::remove_file(marker);
        }
        info!(file = %name, "file delivered to the outbox");
        Ok(())
    }

    fn reject(&self, name: &str, path: &Path, reason: &str) -> std::io::Result<()> {
        let target = free_name(&self.rejected_dir(), name);
        std::fs::rename(path, &target)?;
        let target_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = format!(
            "file: {name}\nsource: {}\nrejected at: {}\nreason: {reason}\n",
            self.config.name,
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        std::fs::write(self.rejected_dir().join(format!("{target_name}.error.txt")), text)?;
        let marker = self.config.path.join(format!("{name}.ok"));
        if marker.exists() {
            let _ = std::fs::remove_file(marker);
        }
        Ok(())
    }
}

/// Names that are never taken: hidden and temporary files being written,
/// and markers.
fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || [".tmp", ".part", ".partial", ".ok", ".swp", "~"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// `dir/name`, or `dir/name.N` if that exists already.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// One file's processing, on a blocking thread.
struct FileJob {
    path: PathBuf,
    name: String,
    key: String,
    config: SourceConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    stats: Arc<SourceStats>,
    token: CancellationToken,
}

impl FileJob {
    fn run(self, stored: Option<FilePosition>, rt: &tokio::runtime::Handle) -> Result<(), FileError> {
        let (identity, all_utf8) = identify(&self.path).map_err(|e| FileError::Retry(e.to_string()))?;
        let from = match stored {
            Some(p) if p.identity == identity && p.done => return Ok(()),
            Some(p) if p.identity == identity => {
                info!(file = %self.name, line = p.line, "resuming file");
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
                            "unknown file type {ext:?}: expected .csv, .jsonl or .xlsx (or set the source's format)"
                        )));
                    }
                }
            }
            f => f,
        };
        let charset = match self.config.encoding {
            Encoding::Utf8 => Charset::Utf8,
            Encoding::Gb18030 => Charset::Gb18030,
            Encoding::Auto if all_utf8 => Charset::Utf8,
            Encoding::Auto => Charset::Gb18030,
        };
        debug!(file = %self.name, ?format, ?charset, "reading file");
        let mut rows = match format {
            FileFormat::Csv => Rows::Csv(CsvRows::open(&self.path, charset, &self.mapping, from).map_err(unreadable)?),
            FileFormat::Xlsx => Rows::Xlsx(XlsxRows::open(&self.path, &self.mapping, from).map_err(unreadable)?),
            _ => Rows::Json(JsonRows::open(&self.path, charset, from).map_err(unreadable)?),
        };

        let mut receipts: std::collections::VecDeque<Receipt> = Default::default();
        let mut write = Write::default();
        let mut bytes = 0;
        let mut warnings = 0u64;
        let mut pos = from;
        loop {
            let now = outbox::now_us();
            let row = rows
                .next(&self.mapping, &self.name, now)
                .map_err(|e| FileError::Retry(format!("read error at line {}: {e}", pos.line)))?;
            let done = row.is_none();
            if let Some((row, next)) = row {
                pos = next;
                self.stats.rows.inc();
                match row {
                    Row::Outcome(Outcome::Record { bytes: r, warnings: w }) => {
                        bytes += r.len();
                        write.records.push(r);
                        warnings += w as u64;
                    }
                    Row::Outcome(Outcome::Quarantine(q)) | Row::Unreadable(q) => {
                        bytes += q.raw.len();
                        write.quarantine.push(q);
                    }
                }
            }
            let full = write.records.len() + write.quarantine.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES;
            if full || done {
                let (records, quarantined) = (write.records.len() as u64, write.quarantine.len() as u64);
                if records > 0 {
                    // The resource changed: its freshness commits with the records.
                    write
                        .positions
                        .push(crate::freshness::changed(&self.mapping.resource().code, now));
                }
                write.positions.push(PositionUpdate {
                    source: self.config.name.clone(),
                    key: self.key.clone(),
                    value: Some(
                        serde_json::to_string(&FilePosition {
                            identity: identity.clone(),
                            byte: pos.byte,
                            line: pos.line,
                            rows: pos.rows,
                            done,
                        })
                        .unwrap_or_default(),
                    ),
                });
                let chunk = std::mem::take(&mut write);
                bytes = 0;
                let receipt = rt.block_on(async {
                    tokio::select! {
                        () = self.outbox.room() => {}
                        () = self.token.cancelled() => return Err(FileError::Cancelled),
                    }
                    self.outbox
                        .submit(chunk)
                        .await
                        .map_err(|e| FileError::Retry(e.to_string()))
                })?;
                receipts.push_back(receipt);
                while receipts.len() > CHUNKS_AHEAD || (done && !receipts.is_empty()) {
                    if let Some(r) = receipts.pop_front() {
                        rt.block_on(r.committed())
                            .map_err(|e| FileError::Retry(e.to_string()))?;
                    }
                }
                self.stats.records.inc_by(records);
                self.stats.quarantined.inc_by(quarantined);
                self.stats.warnings.inc_by(std::mem::take(&mut warnings));
                if records > 0 {
                    self.stats.changed(&self.mapping.resource().code, now);
                }
                if done {
                    return Ok(());
                }
                if self.token.is_cancelled() {
                    for r in receipts {
                        rt.block_on(r.committed())
                            .map_err(|e| FileError::Retry(e.to_string()))?;
                    }
                    return Err(FileError::Cancelled);
                }
            }
        }
    }
}

fn unreadable(u: Unreadable) -> FileError {
    FileError::Unreadable(u.0)
}

/// The identity of a file's content (size, mtime, SHA-256) and whether all
/// of it is valid UTF-8, in one pass.
fn identify(path: &Path) -> std::io::Result<(String, bool)> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mtime = meta
        .modified()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut utf8 = true;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if utf8 {
            carry.extend_from_slice(&buf[..n]);
            match std::str::from_utf8(&carry) {
                Ok(_) => carry.clear(),
                Err(e) if e.error_len().is_none() => {
                    // An incomplete sequence at the end of the chunk.
                    carry.drain(..e.valid_up_to());
                }
                Err(_) => {
                    utf8 = false;
                    carry = Vec::new();
                }
            }
        }
    }
    if !carry.is_empty() {
        utf8 = false;
    }
    let digest = crate::catalog::hex(&hasher.finalize());
    Ok((format!("{}:{mtime}:{digest}", meta.len()), utf8))
}
