//! The outbox: a durable queue on local disk between the sources and the link.
//!
//! # Constraints
//! - Nothing is acknowledged to a source before it is on disk (fsync), and a
//!   row leaves the queue only after the hub has acknowledged its sequence.
//! - A source's capture position commits in the same transaction as the
//!   records and quarantine entries it produced, so a crash at any instant
//!   resumes with no loss and no duplicate.
//! - Group commit: one writer thread takes every pending command off its
//!   channel and applies them in one transaction with one fsync.
//! - Memory does not grow with the backlog: the link reads pages from disk.
//! - The outbox stores opaque bytes and never learns the schema (the link
//!   decodes a record only to quarantine one the hub rejected).
//!
//! # Schema (SQLite, WAL, synchronous=FULL)
//! - `meta(key, value)`: `outbox_id`, a random id made when the file is
//!   created. Sequences are scoped to it.
//! - `records(seq INTEGER PRIMARY KEY AUTOINCREMENT, enqueued_us, data)`:
//!   AUTOINCREMENT so a sequence is never reused, even after the queue
//!   drains to empty.
//! - `positions(source, key, value)`: opaque capture positions per source.
//! - `quarantine(...)`: records that could not be normalized, or that the
//!   hub rejected, with their raw values and reasons.
//!
//! # Row states
//! A `records` row is queued until an ack covers its seq, then deleted in
//! the writer's next transaction. A row the hub rejected moves to
//! `quarantine` in one transaction.
//!
//! # Recovery
//! SQLite's WAL makes every transaction atomic across kill -9 and power
//! loss. Nothing in memory needs recovering: stats are recomputed at open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::now_us;
use crate::normalize::Quarantined;

#[cfg(test)]
mod tests;

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("outbox {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create outbox folder {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// A group commit failed; every command of the group gets this.
    #[error("outbox {path}: commit failed: {reason}")]
    Commit {
        path: PathBuf,
        reason: String,
        disk_full: bool,
    },
    /// The writer thread has stopped (the outbox was closed).
    #[error("outbox is closed")]
    Closed,
    /// The write would take the data directory's filesystem below its
    /// reserve; it was not applied. Wait for [`Outbox::room`] and submit it
    /// again.
    #[error("outbox {path}: {free} bytes free, below the reserve of {reserve} bytes plus this write: sources pause")]
    DiskLow { path: PathBuf, free: u64, reserve: u64 },
    /// A position the write expected was not there: an earlier write of the
    /// same source failed, so this one must not commit after it.
    #[error(
        "outbox: position {key} of source {source_name} is not the one this write follows (an earlier write failed)"
    )]
    Conflict { source_name: String, key: String },
    /// Another process holds the data directory.
    #[error("{path} is locked: a qianzhi agent is running with this data directory (stop it first)")]
    Locked { path: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// The data directory's lock: held by the running agent for its lifetime,
/// and by offline tools that change the outbox.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        crate::fsx::create_private_dir(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Lock {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Lock { path, source }),
        }
    }

    /// Like [`DirLock::acquire`], but waits up to `patience` for a holder
    /// that is closing (an outbox of this process whose writer thread is
    /// still finishing).
    pub fn acquire_within(dir: &Path, patience: std::time::Duration) -> Result<DirLock, Error> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match DirLock::acquire(dir) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }
}

impl Error {
    /// True when the disk is full: the caller should pause and try again.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Sqlite { source, .. } => sqlite_disk_full(source),
            Error::Commit { disk_full, .. } => *disk_full,
            Error::DiskLow { .. } => true,
            _ => false,
        }
    }
}

fn sqlite_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// One transaction's worth of work from a source.
#[derive(Debug, Default)]
pub struct Write {
    /// Encoded records, in order; each gets the next sequence number.
    pub records: Vec<Vec<u8>>,
    pub quarantine: Vec<Quarantined>,
    /// The source's capture positions after these records (a file's
    /// offset, a resource's last-change time).
    pub positions: Vec<PositionUpdate>,
    /// Positions that must hold their given value (`None`: absent) for this
    /// write to apply; otherwise it fails with [`Error::Conflict`] and
    /// changes nothing. A source that submits chunk N+1 before chunk N has
    /// committed expects chunk N's position, so a failed chunk can never be
    /// followed by a later one.
    pub expect: Vec<PositionUpdate>,
}

impl Write {
    /// Bytes this write adds to the outbox file, about.
    fn size(&self) -> u64 {
        let records: usize = self.records.iter().map(|r| r.len() + 24).sum();
        let quarantine: usize = self
            .quarantine
            .iter()
            .map(|q| q.raw.len() + q.reasons.iter().map(String::len).sum::<usize>() + q.object.len() + 64)
            .sum();
        let positions: usize = self
            .positions
            .iter()
            .map(|p| p.key.len() + p.value.as_ref().map_or(0, String::len) + 32)
            .sum();
        (records + quarantine + positions) as u64
    }
}

/// Sets (`value: Some`) or clears (`None`) one position of a source.
#[derive(Debug, Clone)]
pub struct PositionUpdate {
    pub source: String,
    pub key: String,
    pub value: Option<String>,
}

/// Queue figures, published after every transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records waiting for the hub's ack.
    pub records: u64,
    pub bytes: u64,
    /// Enqueue time (µs since the epoch) of the oldest queued record.
    pub oldest_us: Option<i64>,
    /// The highest sequence ever assigned.
    pub last_seq: u64,
    /// The highest sequence the hub has acknowledged in this process.
    pub acked_seq: u64,
    pub quarantined: u64,
    /// The last commit failure, cleared by the next success.
    pub error: Option<String>,
    /// Set when the outbox was found damaged at start and rebuilt: what was
    /// moved aside and what was recovered.
    pub recovered: Option<String>,
    /// True while the data directory's filesystem is below its reserve:
    /// sources are paused.
    pub disk_low: bool,
}

enum Command {
    Write(Write, oneshot::Sender<Result<(), Error>>),
    Ack(u64, oneshot::Sender<Result<(), Error>>),
    Reject(u64, Quarantined, oneshot::Sender<Result<(), Error>>),
    /// Answered by the writer thread at once: proves it is not stuck.
    Ping(oneshot::Sender<Result<(), Error>>),
    /// Moves the sequence past a value (the hub holds it already).
    Advance(u64, oneshot::Sender<Result<(), Error>>),
    /// Answered after the writer has looked at the free space: sets or
    /// clears `Stats::disk_low`, and puts the ballast back when space is.
    CheckDisk(oneshot::Sender<Result<(), Error>>),
}

/// A handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    // Fields drop in declaration order: the read connection closes before
    // the last sender ends the writer loop, so the writer's connection is the
    // last one and checkpoints the WAL into outbox.db as it closes.
    reader: Mutex<Connection>,
    commands: mpsc::Sender<Command>,
    dir: PathBuf,
    path: PathBuf,
    id: String,
    max_bytes: u64,
    stats: watch::Receiver<Stats>,
}

/// Commands one transaction takes at most: bounds the memory of a group.
const GROUP_MAX_COMMANDS: usize = 256;

impl Outbox {
    /// Opens (or creates) `DIR/outbox.db` and starts the writer thread,
    /// with no disk reserve.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox, Error> {
        Outbox::open_with_reserve(dir, max_bytes, 0)
    }

    /// Opens (or creates) `DIR/outbox.db` and starts the writer thread. No
    /// write is applied that would leave less than `reserve` bytes free on
    /// the filesystem of `dir`; a ballast file of part of the reserve keeps
    /// room for deletes after acks even when something else fills the disk.
    pub fn open_with_reserve(dir: &Path, max_bytes: u64, reserve: u64) -> Result<Outbox, Error> {
        let lock = DirLock::acquire_within(dir, std::time::Duration::from_secs(10))?;
        let path = dir.join("outbox.db");
        crate::fsx::ensure_private_file(&path).map_err(|source| Error::CreateDir {
            path: path.clone(),
            source,
        })?;
        let space = Space::new(dir, reserve);
        if space.reserve > 0 && crate::disk::free_bytes(dir).is_ok_and(|f| f < space.reserve) {
            // Opening writes (the WAL, the shared-memory file): make room.
            space.release_ballast();
        }
        let sql = |source| Error::Sqlite {
            path: path.clone(),
            source,
        };
        let (writer, id, mut stats) = match open_checked(&path) {
            Ok(opened) => opened,
            Err(e) if is_damage(&e) => {
                // Never a crash loop: move the file aside, keep what can be read.
                tracing::error!(path = %path.display(), damage = %e, "the outbox is damaged; recovering what can be read");
                let report = recover(&path).map_err(sql)?;
                tracing::error!(path = %path.display(), "{}", report.text());
                report.save(dir).map_err(|source| Error::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
                open_checked(&path).map_err(sql)?
            }
            Err(e) => return Err(sql(e)),
        };
        let reader = open_connection(&path).map_err(sql)?;
        stats.recovered = Recovery::pending(dir);

        let (stats_tx, stats_rx) = watch::channel(stats);
        let (commands, rx) = mpsc::channel(64);
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || {
                writer_loop(writer, thread_path, rx, stats_tx, space);
                // The lock goes last, after the writer's connection closed
                // (the read connection closed before: its owner dropped the
                // last sender, which ended the loop).
                drop(lock);
            })
            .map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                path,
                id,
                max_bytes,
                commands,
                stats: stats_rx,
                reader: Mutex::new(reader),
            }),
        })
    }

    /// The outbox's own identity, made when the file was created.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats.borrow().clone()
    }

    /// A receiver that changes after every committed transaction.
    pub fn subscribe(&self) -> watch::Receiver<Stats> {
        self.inner.stats.clone()
    }

    /// Waits while the queue holds `max_bytes` or more, or the disk is
    /// below its reserve (backpressure).
    pub async fn room(&self) {
        let max = self.inner.max_bytes;
        let mut rx = self.inner.stats.clone();
        // The sender lives as long as the writer thread; if it is gone, the
        // next write reports `Closed`.
        let _ = rx.wait_for(|s| s.bytes < max && !s.disk_low).await;
    }

    /// Has the writer look at the free space now: pauses or resumes the
    /// sources (`Stats::disk_low`). Called every second by `disk::watch`,
    /// for space freed by others; the writer also checks before every
    /// write.
    pub async fn check_disk(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::CheckDisk(tx))
            .await
            .map_err(|_| Error::Closed)?;
        Receipt(rx).committed().await
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The recovery of a damaged outbox that no operator has acknowledged
    /// yet, read anew (an operator may acknowledge it while the agent runs).
    pub fn unacknowledged_recovery(&self) -> Option<String> {
        Recovery::pending(&self.inner.dir)
    }

    /// True while the queue is at or over `max_bytes`.
    pub fn is_full(&self) -> bool {
        self.inner.stats.borrow().bytes >= self.inner.max_bytes
    }

    /// Queues a write and returns once it is queued; the receipt resolves
    /// when it has committed. Lets a source parse ahead while its previous
    /// chunk commits.
    pub async fn submit(&self, write: Write) -> Result<Receipt, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Write(write, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Receipt(rx))
    }

    /// Queues a write and waits until it is on disk.
    pub async fn write(&self, write: Write) -> Result<(), Error> {
        self.submit(write).await?.committed().await
    }

    /// Deletes every record up to and including `seq`: the hub has them.
    pub async fn ack(&self, seq: u64) -> Result<(), Error> {
        self.submit_ack(seq).await?.committed().await
    }

    /// Queues an ack behind every command queued before it; the receipt
    /// resolves at its commit. Lets the link go on reading the hub's answers
    /// while the delete commits.
    pub async fn submit_ack(&self, seq: u64) -> Result<Receipt, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Ack(seq, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Receipt(rx))
    }

    /// Moves the record `seq` to the quarantine (the hub rejected it).
    pub async fn reject(&self, seq: u64, entry: Quarantined) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Reject(seq, entry, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Receipt(rx).committed().await
    }

    /// Makes the next sequence follow `seq`: the hub already holds every
    /// sequence up to it (the outbox lost its tail, or was restored from an
    /// older backup). Queued records at or below it were delivered before.
    pub async fn advance_to(&self, seq: u64) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Advance(seq, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Receipt(rx).committed().await
    }

    /// Resolves once the writer thread has taken a command off its queue:
    /// the watchdog's proof that the outbox is not stuck.
    pub async fn ping(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Ping(tx))
            .await
            .map_err(|_| Error::Closed)?;
        Receipt(rx).committed().await
    }

    /// Runs `f` on the read connection on a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_now(f))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// Like [`Outbox::read`], on the calling thread (for blocking code).
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Reader<'_>) -> rusqlite::Result<T>) -> Result<T, Error> {
        self.inner.read_now(f)
    }
}

impl Inner {
    fn read_now<T>(&self, f: impl FnOnce(&Reader<'_>) -> rusqlite::Result<T>) -> Result<T, Error> {
        // A poisoned lock only means another reader panicked; the connection
        // itself is still sound.
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&Reader(&conn)).map_err(|source| Error::Sqlite {
            path: self.path.clone(),
            source,
        })
    }
}

/// Resolves when a submitted write has committed (or failed).
pub struct Receipt(oneshot::Receiver<Result<(), Error>>);

impl Receipt {
    pub async fn committed(self) -> Result<(), Error> {
        self.0.await.map_err(|_| Error::Closed)?
    }
}

/// Read-only queries on the outbox's read connection.
pub struct Reader<'a>(&'a Connection);

impl<'a> Reader<'a> {
    /// Queries on a connection of the caller's (tools reading the outbox).
    pub fn new(conn: &'a Connection) -> Reader<'a> {
        Reader(conn)
    }

    /// Records with `seq >= from`, in order, at most `max_records` and about
    /// `max_bytes` (always at least one record if there is one).
    pub fn records_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT seq, data FROM records WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let mut rows = stmt.query(params![from as i64, max_records as i64])?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let data: Vec<u8> = row.get(1)?;
            bytes += data.len();
            out.push((row.get::<_, i64>(0)? as u64, data));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// When the record `seq` was committed (µs since the epoch).
    pub fn enqueued_us(&self, seq: u64) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached("SELECT enqueued_us FROM records WHERE seq = ?1")?
            .query_row([seq as i64], |r| r.get(0))
            .optional()
    }

    pub fn record(&self, seq: u64) -> rusqlite::Result<Option<Vec<u8>>> {
        self.0
            .query_row("SELECT data FROM records WHERE seq = ?1", [seq as i64], |r| r.get(0))
            .optional()
    }

    /// Bytes of free pages inside the database file: space the outbox
    /// reuses before it grows the file (a file never shrinks on delete).
    pub fn reusable_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self.0.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.0.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages.max(0) * size.max(0)) as u64)
    }

    /// When the outbox was created (µs since the epoch).
    pub fn created_us(&self) -> rusqlite::Result<i64> {
        self.0
            .query_row("SELECT value FROM meta WHERE key = 'created_us'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The lowest queued sequence, if any.
    pub fn first_seq(&self) -> rusqlite::Result<Option<u64>> {
        self.0
            .query_row("SELECT min(seq) FROM records", [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.map(|s| s as u64))
    }

    pub fn positions(&self, source: &str) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT key, value FROM positions WHERE source = ?1 ORDER BY key")?;
        let rows = stmt.query_map([source], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Quarantine entries matching a filter, with their ids, oldest first.
    pub fn held(&self, filter: &QuarantineFilter) -> rusqlite::Result<Vec<Held>> {
        held_entries(self.0, filter)
    }

    /// Quarantine entries, oldest first.
    pub fn quarantine(&self, limit: usize) -> rusqlite::Result<Vec<Quarantined>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT source, object, line, resource, reasons, raw FROM quarantine ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let reasons: String = r.get(4)?;
            Ok(Quarantined {
                source: r.get(0)?,
                object: r.get(1)?,
                line: r.get::<_, i64>(2)? as u64,
                resource: r.get(3)?,
                reasons: serde_json::from_str(&reasons).unwrap_or_else(|_| vec![reasons]),
                raw: r.get(5)?,
            })
        })?;
        rows.collect()
    }
}

/// Opens the outbox file, checks it, and gives back the writer connection,
/// its identity and its figures.
fn open_checked(path: &Path) -> rusqlite::Result<(Connection, String, Stats)> {
    let conn = open_connection(path)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {check}")),
        ));
    }
    create_schema(&conn)?;
    let id: String = conn.query_row("SELECT value FROM meta WHERE key = 'outbox_id'", [], |r| r.get(0))?;
    let stats = initial_stats(&conn)?;
    Ok((conn, id, stats))
}

/// True for errors that mean the file itself is damaged (not, say, a full
/// disk or a permission problem, which must not make us move it aside).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// What the recovery of a damaged outbox found. Kept in
/// `DIR/outbox-recovered.txt` until an operator acknowledges it
/// (`qianzhi outbox acknowledge`): until then `/readyz` fails and `/status`
/// lists it, however often the agent restarts.
#[derive(Debug, Default)]
pub struct Recovery {
    aside: PathBuf,
    records: u64,
    positions: u64,
    quarantined: u64,
    /// Sequences on pages that could not be read: the records there, if
    /// any, are lost.
    lost: Vec<(i64, i64)>,
    /// Positions and quarantine entries on unreadable pages.
    lost_other: Vec<String>,
}

impl Recovery {
    const FILE: &'static str = "outbox-recovered.txt";

    fn lost_sequences(&self) -> u64 {
        self.lost.iter().map(|(a, b)| (b - a + 1) as u64).sum()
    }

    /// One line for `/status`.
    fn summary(&self) -> String {
        let lost = if self.lost.is_empty() && self.lost_other.is_empty() {
            "nothing was unreadable".to_owned()
        } else {
            format!(
                "{} sequences missing ({}){}: their records are lost, unless the hub holds them or rejected them \
                 (then they are in the quarantine)",
                self.lost_sequences(),
                ranges_text(&self.lost, 8),
                if self.lost_other.is_empty() {
                    String::new()
                } else {
                    format!(", and {}", self.lost_other.join(", "))
                }
            )
        };
        format!(
            "the outbox was damaged and moved to {}; recovered {} queued records, {} positions and {} quarantine entries; {lost}",
            self.aside.display(),
            self.records,
            self.positions,
            self.quarantined
        )
    }

    /// The whole report, for the log and the file.
    pub fn text(&self) -> String {
        let mut out = self.summary();
        if self.lost.len() > 8 {
            out.push_str(&format!(
                "\nall unreadable sequence ranges: {}",
                ranges_text(&self.lost, usize::MAX)
            ));
        }
        out
    }

    fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = format!(
            "{}\nfound at: {}\nacknowledge with `qianzhi outbox acknowledge` once the loss is checked against the hub's export and the sources\n",
            self.text(),
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        crate::fsx::write_private(&dir.join(Recovery::FILE), text.as_bytes())
    }

    /// The first line of an unacknowledged recovery report in `dir`.
    pub fn pending(dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(dir.join(Recovery::FILE)).ok()?;
        let first = text.lines().next().unwrap_or_default();
        Some(format!(
            "OUTBOX_RECOVERED: {first}; check, then run `qianzhi outbox acknowledge`"
        ))
    }

    /// Marks the recovery report in `dir` as read by an operator: it moves
    /// to `outbox-recovered.acknowledged-TIME.txt`. Returns the new name, or
    /// `None` if there was nothing to acknowledge.
    pub fn acknowledge(dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let from = dir.join(Recovery::FILE);
        if !from.exists() {
            return Ok(None);
        }
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "");
        let to = dir.join(format!("outbox-recovered.acknowledged-{stamp}.txt"));
        std::fs::rename(&from, &to)?;
        Ok(Some(to))
    }
}

/// `a-b, c, …` for at most `max` ranges.
fn ranges_text(ranges: &[(i64, i64)], max: usize) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(max)
        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect();
    if ranges.len() > max {
        parts.push(format!("and {} more ranges", ranges.len() - max));
    }
    parts.join(", ")
}

/// Rows read per range while salvaging.
const SALVAGE_RANGE: i64 = 4096;

/// Reads every row of `table` that can still be read, by ranges of rowid: a
/// range whose read fails is halved until what fails is single rowids, so a
/// damaged page costs only the rows on it. A damaged interior page can also
/// make a range read end early without an error: for a `dense` table (one
/// whose rowids have no gaps, as the queue's sequences) a short range is
/// halved too. `sink` takes each row read; returns the rowid ranges not
/// recovered (for a dense table every gap, else the reads that failed).
fn salvage<T>(
    old: &Connection,
    table: &str,
    columns: &str,
    at_least_to: i64,
    dense: bool,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut sink: impl FnMut(i64, T) -> rusqlite::Result<()>,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let bound = |sql: &str| old.query_row(sql, [], |r| r.get::<_, Option<i64>>(0));
    let (lo, lo_known) = match bound(&format!("SELECT min(rowid) FROM {table}")) {
        Ok(None) => return Ok(Vec::new()), // An empty table.
        Ok(Some(lo)) => (lo, true),
        Err(_) => (1, false),
    };
    let hi = bound(&format!("SELECT max(rowid) FROM {table}"))
        .ok()
        .flatten()
        .unwrap_or(lo + (1 << 20))
        .max(at_least_to);
    let sql = format!("SELECT rowid, {columns} FROM {table} WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid");
    let read_range = |a: i64, b: i64| -> rusqlite::Result<Vec<(i64, T)>> {
        let mut stmt = old.prepare_cached(&sql)?;
        let rows = stmt.query_map([a, b], |r| Ok((r.get::<_, i64>(0)?, read(r)?)))?;
        rows.collect()
    };
    let mut lost: Vec<(i64, i64)> = Vec::new();
    // With the lowest rowid unknown, a gap before the first row read may be
    // rows deleted long ago: not reported.
    let mut any_read = lo_known;
    let mut note = |a: i64, b: i64, any_read: bool| {
        if !any_read {
            return;
        }
        match lost.last_mut() {
            Some(last) if last.1 + 1 == a => last.1 = b,
            _ => lost.push((a, b)),
        }
    };
    let mut todo: Vec<(i64, i64)> = Vec::new();
    let mut start = hi;
    // Pushed from the top so that ranges pop in ascending order.
    while start >= lo {
        let a = start.saturating_sub(SALVAGE_RANGE - 1).max(lo);
        todo.push((a, start));
        start = a - 1;
    }
    while let Some((a, b)) = todo.pop() {
        let read = read_range(a, b);
        let short = read.as_ref().is_ok_and(|rows| dense && (rows.len() as i64) < b - a + 1);
        match read {
            Ok(rows) if !short || a == b => {
                let mut expected = a;
                for (rowid, row) in rows {
                    if dense && rowid > expected {
                        note(expected, rowid - 1, any_read);
                    }
                    expected = rowid + 1;
                    any_read = true;
                    sink(rowid, row)?;
                }
                if dense && expected <= b {
                    note(expected, b, any_read);
                }
            }
            Err(_) if a == b => note(a, a, true),
            _ => {
                let mid = a + (b - a) / 2;
                todo.push((mid + 1, b));
                todo.push((a, mid));
            }
        }
    }
    Ok(lost)
}

/// Moves a damaged outbox aside and salvages everything that can still be
/// read into a new file at `path`: the identity, queued records with their
/// sequences, positions and quarantine entries.
fn recover(path: &Path) -> rusqlite::Result<Recovery> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let aside = path.with_file_name(format!("outbox.db.damaged-{stamp}"));
    std::fs::rename(path, &aside).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, PathBuf::from(format!("{}{ext}", aside.display())));
        }
    }
    let fresh = open_connection(path)?;
    create_schema(&fresh)?;
    let mut report = Recovery {
        aside: aside.clone(),
        ..Recovery::default()
    };
    let Ok(old) = Connection::open_with_flags(
        &aside,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        report.lost_other.push("the whole file (it cannot be opened)".into());
        return Ok(report);
    };
    let tx = fresh.unchecked_transaction()?;
    let meta_lost = salvage(
        &old,
        "meta",
        "key, value",
        0,
        false,
        |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
        |_, (k, v)| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
            .map(drop)
        },
    )?;
    if !meta_lost.is_empty() {
        report.lost_other.push("some of the outbox's identity (meta)".into());
    }
    let old_max: i64 = old
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'records'", [], |r| {
            r.get(0)
        })
        .unwrap_or(0);
    let mut max_seq = 0;
    report.lost = salvage(
        &old,
        "records",
        "enqueued_us, data",
        old_max,
        true,
        |r| Ok((r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)),
        |seq, (at, data)| {
            tx.prepare_cached("INSERT INTO records (seq, enqueued_us, data) VALUES (?1, ?2, ?3)")?
                .execute(params![seq, at, data])?;
            report.records += 1;
            max_seq = max_seq.max(seq);
            Ok(())
        },
    )?;
    // The hub takes only contiguous sequences: each missing one is queued
    // as an empty entry, which tells the hub that this outbox lost it (a
    // sequence the hub already holds is skipped there as a replay).
    for &(a, b) in &report.lost {
        for seq in a..=b {
            tx.prepare_cached("INSERT INTO records (seq, enqueued_us, data) VALUES (?1, ?2, x'')")?
                .execute(params![seq, now_us()])?;
        }
    }
    let lost_top = report.lost.last().map_or(0, |r| r.1);
    tx.execute(
        "INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES ('records', ?1)",
        [max_seq.max(old_max).max(lost_top)],
    )?;
    let positions_lost = salvage(
        &old,
        "positions",
        "source, key, value",
        0,
        false,
        |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)),
        |_, (s, k, v)| {
            report.positions += 1;
            tx.execute(
                "INSERT OR REPLACE INTO positions (source, key, value) VALUES (?1, ?2, ?3)",
                params![s, k, v],
            )
            .map(drop)
        },
    )?;
    if !positions_lost.is_empty() {
        report
            .lost_other
            .push("some capture positions (their files or tables are read again from the start)".into());
    }
    type Held = (i64, String, String, i64, String, String, String);
    let quarantine_lost = salvage::<Held>(
        &old,
        "quarantine",
        "at_us, source, object, line, resource, reasons, raw",
        0,
        false,
        |r| {
            Ok((
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        },
        |_, (at, s, o, l, res, why, raw)| {
            report.quarantined += 1;
            tx.execute(
                "INSERT INTO quarantine (at_us, source, object, line, resource, reasons, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![at, s, o, l, res, why, raw],
            )
            .map(drop)
        },
    )?;
    if !quarantine_lost.is_empty() {
        let n: i64 = quarantine_lost.iter().map(|(a, b)| b - a + 1).sum();
        report.lost_other.push(format!("up to {n} quarantine entries"));
    }
    tx.commit()?;
    Ok(report)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS records (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             enqueued_us INTEGER NOT NULL,
             data BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS positions (
             source TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
             PRIMARY KEY (source, key));
         CREATE TABLE IF NOT EXISTS quarantine (
             id INTEGER PRIMARY KEY,
             at_us INTEGER NOT NULL,
             source TEXT NOT NULL,
             object TEXT NOT NULL,
             line INTEGER NOT NULL,
             resource TEXT NOT NULL,
             reasons TEXT NOT NULL,
             raw TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS discarded (
             id INTEGER PRIMARY KEY,
             at_us INTEGER NOT NULL,
             reason TEXT NOT NULL,
             who TEXT NOT NULL,
             entry TEXT NOT NULL);",
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('outbox_id', ?1)",
        [uuid::Uuid::new_v4().to_string()],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_us', ?1)",
        [now_us().to_string()],
    )?;
    Ok(())
}

/// A quarantine entry as stored, with its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    pub at_us: i64,
    pub entry: Quarantined,
}

/// Which quarantine entries a command is about.
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    pub ids: Vec<i64>,
    pub source: Option<String>,
    pub resource: Option<String>,
    /// A rule code such as `CHECK_DIGIT`: entries with a reason that starts
    /// with it.
    pub rule: Option<String>,
}

impl QuarantineFilter {
    fn matches(&self, h: &Held) -> bool {
        (self.ids.is_empty() || self.ids.contains(&h.id))
            && self.source.as_ref().is_none_or(|s| *s == h.entry.source)
            && self.resource.as_ref().is_none_or(|r| *r == h.entry.resource)
            && self
                .rule
                .as_ref()
                .is_none_or(|rule| h.entry.reasons.iter().any(|x| x.starts_with(&format!("{rule}:"))))
    }
}

fn held_entries(conn: &Connection, filter: &QuarantineFilter) -> rusqlite::Result<Vec<Held>> {
    let mut stmt =
        conn.prepare("SELECT id, at_us, source, object, line, resource, reasons, raw FROM quarantine ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let reasons: String = r.get(6)?;
        Ok(Held {
            id: r.get(0)?,
            at_us: r.get(1)?,
            entry: Quarantined {
                source: r.get(2)?,
                object: r.get(3)?,
                line: r.get::<_, i64>(4)? as u64,
                resource: r.get(5)?,
                reasons: serde_json::from_str(&reasons).unwrap_or_else(|_| vec![reasons]),
                raw: r.get(7)?,
            },
        })
    })?;
    let mut out = Vec::new();
    for h in rows {
        let h = h?;
        if filter.matches(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// The outbox opened by a tool while the agent is stopped, to change the
/// quarantine. Holds the data directory's lock.
pub struct Offline {
    _lock: DirLock,
    path: PathBuf,
    conn: Connection,
}

impl Offline {
    pub fn open(dir: &Path) -> Result<Offline, Error> {
        let lock = DirLock::acquire(dir)?;
        let path = dir.join("outbox.db");
        let conn = open_connection(&path)
            .and_then(|c| create_schema(&c).map(|()| c))
            .map_err(|source| Error::Sqlite {
                path: path.clone(),
                source,
            })?;
        Ok(Offline {
            _lock: lock,
            path,
            conn,
        })
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<Held>, Error> {
        held_entries(&self.conn, filter).map_err(|e| self.err(e))
    }

    /// In one transaction: queues the fixed records and drops their entries,
    /// and rewrites the reasons of entries that still fail.
    pub fn retry(&mut self, fixed: &[(i64, Vec<u8>)], still: &[(i64, Vec<String>)]) -> Result<(), Error> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let now = now_us();
            for (id, record) in fixed {
                tx.execute(
                    "INSERT INTO records (enqueued_us, data) VALUES (?1, ?2)",
                    params![now, record],
                )?;
                tx.execute("DELETE FROM quarantine WHERE id = ?1", [id])?;
            }
            for (id, reasons) in still {
                let reasons = serde_json::to_string(reasons).unwrap_or_default();
                tx.execute("UPDATE quarantine SET reasons = ?2 WHERE id = ?1", params![id, reasons])?;
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.err(e))
    }

    /// Drops entries for good, keeping each with the reason and who did it.
    pub fn discard(&mut self, entries: &[Held], reason: &str, who: &str) -> Result<(), Error> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let now = now_us();
            for h in entries {
                let entry = serde_json::json!({
                    "quarantine_id": h.id, "source": h.entry.source, "object": h.entry.object, "line": h.entry.line,
                    "resource": h.entry.resource, "reasons": h.entry.reasons, "raw": h.entry.raw,
                })
                .to_string();
                tx.execute(
                    "INSERT INTO discarded (at_us, reason, who, entry) VALUES (?1, ?2, ?3, ?4)",
                    params![now, reason, who, entry],
                )?;
                tx.execute("DELETE FROM quarantine WHERE id = ?1", [h.id])?;
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.err(e))
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoint every 16 MiB of WAL, not 4 MiB: fewer copies of the pages
    // a queue rewrites over and over. It stays far below the disk reserve
    // (outbox.reserve_free), so a checkpoint can always complete, and the
    // WAL file is cut back to that size afterwards.
    conn.pragma_update(None, "wal_autocheckpoint", 4096)?;
    conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
    conn.pragma_update(None, "cache_size", -8192)?;
    Ok(conn)
}

fn initial_stats(conn: &Connection) -> rusqlite::Result<Stats> {
    let (records, bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(data)), 0) FROM records",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let oldest_us = oldest(conn)?;
    let last_seq: i64 = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'records'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let quarantined: i64 = conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(Stats {
        records: records as u64,
        bytes: bytes as u64,
        oldest_us,
        last_seq: last_seq as u64,
        acked_seq: 0,
        quarantined: quarantined as u64,
        error: None,
        recovered: None,
        disk_low: false,
    })
}

fn oldest(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT enqueued_us FROM records ORDER BY seq LIMIT 1", [], |r| r.get(0))
        .optional()
}

/// The writer thread's view of the free space on the data directory's
/// filesystem: the reserve no write may take, and the ballast that keeps
/// room for deletes when something else fills the disk.
struct Space {
    dir: PathBuf,
    reserve: u64,
    ballast: PathBuf,
    ballast_size: u64,
}

impl Space {
    fn new(dir: &Path, reserve: u64) -> Space {
        Space {
            dir: dir.to_owned(),
            reserve,
            ballast: dir.join("outbox.ballast"),
            // Room for many ack transactions and a WAL checkpoint.
            ballast_size: (reserve / 2).min(64 << 20),
        }
    }

    /// Free bytes for the outbox: the filesystem's (for unprivileged users:
    /// root's extra reserved blocks are not ours), plus the free pages
    /// inside the outbox file, which it reuses before it grows, less what
    /// the next checkpoint may add to the file (up to the WAL's size: the
    /// pages committed to the WAL are copied into the database file later,
    /// and may grow it).
    fn free(&self, conn: &Connection) -> u64 {
        let inside = Reader(conn).reusable_bytes().unwrap_or(0);
        let wal = std::fs::metadata(self.dir.join("outbox.db-wal")).map_or(0, |m| m.len());
        crate::disk::free_bytes(&self.dir)
            .unwrap_or(u64::MAX)
            .saturating_add(inside)
            .saturating_sub(wal)
    }

    fn has_ballast(&self) -> bool {
        self.ballast_size == 0 || std::fs::metadata(&self.ballast).is_ok_and(|m| m.len() >= self.ballast_size)
    }

    /// Gives the ballast's space back; true if there was one.
    fn release_ballast(&self) -> bool {
        let released = std::fs::remove_file(&self.ballast).is_ok();
        if released {
            tracing::warn!(path = %self.ballast.display(), "disk full: released the outbox ballast so that acknowledged records can be deleted");
        }
        released
    }

    /// Makes the ballast: real blocks, not a sparse file (allocated with
    /// `fallocate`, or written where a filesystem cannot), synced.
    fn restore_ballast(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = self.ballast.with_extension("ballast.tmp");
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let len = self.ballast_size;
            if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len).is_err() {
                let zeros = vec![0u8; 1 << 20];
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.ballast)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Decides whether writes adding `adds` bytes may be applied, and
    /// updates `low` (sources paused). Resumes only with a quarter of the
    /// reserve to spare and the ballast back in place.
    fn admit(&self, conn: &Connection, adds: u64, low: &mut bool) -> Result<(), (u64, u64)> {
        if self.reserve == 0 {
            return Ok(());
        }
        let free = self.free(conn);
        if *low {
            let ballast = if self.has_ballast() { 0 } else { self.ballast_size };
            let resume_at = self.reserve + self.reserve / 4 + ballast + adds.saturating_mul(2);
            if free < resume_at {
                return Err((free, self.reserve));
            }
            if ballast > 0 && self.restore_ballast().is_err() {
                return Err((free, self.reserve));
            }
            tracing::info!(free_mib = free >> 20, dir = %self.dir.display(), "disk space is back: sources resume");
            *low = false;
            return Ok(());
        }
        // Twice the bytes: the WAL holds the new pages before the checkpoint
        // copies them into the database file.
        if free < self.reserve.saturating_add(adds.saturating_mul(2)) {
            tracing::warn!(
                free_mib = free >> 20,
                reserve_mib = self.reserve >> 20,
                dir = %self.dir.display(),
                "disk below the reserve: sources paused, delivery goes on"
            );
            *low = true;
            return Err((free, self.reserve));
        }
        if !self.has_ballast() {
            let _ = self.restore_ballast();
        }
        Ok(())
    }
}

/// The writer thread: group commit of everything pending.
fn writer_loop(
    mut conn: Connection,
    path: PathBuf,
    mut rx: mpsc::Receiver<Command>,
    stats: watch::Sender<Stats>,
    space: Space,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX_COMMANDS {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let mut next = stats.borrow().clone();
        let adds: u64 = group
            .iter()
            .map(|c| match c {
                Command::Write(w, _) => w.size(),
                _ => 0,
            })
            .sum();
        let check = group.iter().any(|c| matches!(c, Command::CheckDisk(_)));
        let mut admitted = Ok(());
        if adds > 0 || check || next.disk_low {
            let was_low = next.disk_low;
            admitted = space.admit(&conn, adds, &mut next.disk_low);
            if next.disk_low != was_low {
                // Pausing must not wait for a commit on a disk that may be full.
                let low = next.disk_low;
                stats.send_modify(|s| s.disk_low = low);
            }
        }
        let refusal = |(free, reserve): (u64, u64)| Error::DiskLow {
            path: path.clone(),
            free,
            reserve,
        };
        let mut outcome = apply(&mut conn, &group, &mut next, admitted.err().map(refusal), &path);
        if let Err(e) = &outcome
            && sqlite_disk_full(e)
        {
            // The disk filled under us (something else writes there too).
            // Deletes must still run: apply everything but the writes, after
            // giving back the WAL, and if that is not enough, the ballast.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            stats.send_modify(|s| s.disk_low = true);
            for release in [false, true] {
                if release && !space.release_ballast() {
                    break;
                }
                next = stats.borrow().clone();
                let free = space.free(&conn);
                outcome = apply(
                    &mut conn,
                    &group,
                    &mut next,
                    Some(refusal((free, space.reserve))),
                    &path,
                );
                if !outcome.as_ref().is_err_and(sqlite_disk_full) {
                    break;
                }
            }
        }
        if outcome.is_ok()
            && next.disk_low
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "cannot checkpoint the outbox WAL");
        }
        let outcomes = match outcome {
            Ok(outcomes) => {
                next.error = None;
                stats.send_replace(next);
                outcomes
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "outbox commit failed");
                stats.send_modify(|s| s.error = Some(e.to_string()));
                let disk_full = sqlite_disk_full(&e);
                group
                    .iter()
                    .map(|_| {
                        Some(Error::Commit {
                            path: path.clone(),
                            reason: e.to_string(),
                            disk_full,
                        })
                    })
                    .collect()
            }
        };
        for (command, outcome) in group.into_iter().zip(outcomes) {
            let reply = match command {
                Command::Write(_, r)
                | Command::Ack(_, r)
                | Command::Reject(_, _, r)
                | Command::Ping(r)
                | Command::Advance(_, r)
                | Command::CheckDisk(r) => r,
            };
            // A caller that gave up waiting is not an error here.
            let _ = reply.send(outcome.map_or(Ok(()), Err));
        }
    }
}

/// Applies a group in one transaction. A command that SQLite fails (a value
/// it refuses) fails alone: the group is then applied again with each
/// command in a savepoint of its own. A refused command (a position
/// conflict) changes nothing and fails alone at once. `refuse_writes`
/// answers every write without applying it. Returns each command's failure,
/// or the error that failed the whole transaction. `stats` takes the effects
/// of the commands that applied (the caller publishes them only if the
/// commit succeeds).
fn apply(
    conn: &mut Connection,
    group: &[Command],
    stats: &mut Stats,
    refuse_writes: Option<Error>,
    path: &Path,
) -> rusqlite::Result<Vec<Option<Error>>> {
    let before = stats.clone();
    match apply_group(conn, group, stats, refuse_writes.as_ref(), path, false) {
        Err(e) if group.len() > 1 && !sqlite_disk_full(&e) => {
            *stats = before;
            apply_group(conn, group, stats, refuse_writes.as_ref(), path, true)
        }
        other => other,
    }
}

fn apply_group(
    conn: &mut Connection,
    group: &[Command],
    stats: &mut Stats,
    refuse_writes: Option<&Error>,
    path: &Path,
    isolate: bool,
) -> rusqlite::Result<Vec<Option<Error>>> {
    let mut tx = conn.transaction()?;
    let now = now_us();
    let mut outcomes = Vec::with_capacity(group.len());
    for command in group {
        if let (Command::Write(..), Some(refusal)) = (command, refuse_writes) {
            outcomes.push(Some(match refusal {
                Error::DiskLow { path, free, reserve } => Error::DiskLow {
                    path: path.clone(),
                    free: *free,
                    reserve: *reserve,
                },
                other => Error::Commit {
                    path: path.to_owned(),
                    reason: other.to_string(),
                    disk_full: true,
                },
            }));
            continue;
        }
        if !isolate {
            // Refusals are decided before a command writes anything.
            outcomes.push(apply_one(&tx, command, stats, now)?);
            continue;
        }
        let mut after = stats.clone();
        let savepoint = tx.savepoint()?;
        match apply_one(&savepoint, command, &mut after, now) {
            Ok(None) => {
                savepoint.commit()?;
                *stats = after;
                outcomes.push(None);
            }
            Ok(Some(refused)) => {
                drop(savepoint);
                outcomes.push(Some(refused));
            }
            Err(e) => {
                drop(savepoint);
                if sqlite_disk_full(&e) || tx.is_autocommit() {
                    // SQLite may have rolled the whole transaction back.
                    return Err(e);
                }
                tracing::error!(error = %e, path = %path.display(), "an outbox write failed alone");
                outcomes.push(Some(Error::Commit {
                    path: path.to_owned(),
                    reason: e.to_string(),
                    disk_full: false,
                }));
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Applies one command; `Ok(Some(_))` is a refusal that changed nothing.
fn apply_one(tx: &Connection, command: &Command, stats: &mut Stats, now: i64) -> rusqlite::Result<Option<Error>> {
    match command {
        Command::Write(w, _) => {
            for e in &w.expect {
                let current: Option<String> = tx
                    .prepare_cached("SELECT value FROM positions WHERE source = ?1 AND key = ?2")?
                    .query_row(params![e.source, e.key], |r| r.get(0))
                    .optional()?;
                if current != e.value {
                    return Ok(Some(Error::Conflict {
                        source_name: e.source.clone(),
                        key: e.key.clone(),
                    }));
                }
            }
            {
                let mut insert = tx.prepare_cached("INSERT INTO records (enqueued_us, data) VALUES (?1, ?2)")?;
                for data in &w.records {
                    insert.execute(params![now, data])?;
                    stats.last_seq = tx.last_insert_rowid() as u64;
                    stats.records += 1;
                    stats.bytes += data.len() as u64;
                }
            }
            if !w.records.is_empty() && stats.oldest_us.is_none() {
                stats.oldest_us = Some(now);
            }
            for q in &w.quarantine {
                insert_quarantine(tx, now, q)?;
                stats.quarantined += 1;
            }
            for p in &w.positions {
                match &p.value {
                    Some(v) => tx
                        .prepare_cached(
                            "INSERT INTO positions (source, key, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (source, key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![p.source, p.key, v])?,
                    None => tx
                        .prepare_cached("DELETE FROM positions WHERE source = ?1 AND key = ?2")?
                        .execute(params![p.source, p.key])?,
                };
            }
        }
        Command::Ack(seq, _) => {
            let (n, bytes): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM records WHERE seq <= ?1",
                [*seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if n > 0 {
                tx.execute("DELETE FROM records WHERE seq <= ?1", [*seq as i64])?;
                stats.records -= n as u64;
                stats.bytes -= bytes as u64;
                stats.oldest_us = oldest(tx)?;
            }
            stats.acked_seq = stats.acked_seq.max(*seq);
        }
        Command::Ping(_) | Command::CheckDisk(_) => {}
        Command::Advance(seq, _) => {
            if *seq > stats.last_seq {
                let n = tx.execute(
                    "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'records'",
                    [*seq as i64],
                )?;
                if n == 0 {
                    tx.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?1)",
                        [*seq as i64],
                    )?;
                }
                stats.last_seq = *seq;
            }
        }
        Command::Reject(seq, q, _) => {
            let bytes: Option<i64> = tx
                .query_row("SELECT length(data) FROM records WHERE seq = ?1", [*seq as i64], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(bytes) = bytes {
                tx.execute("DELETE FROM records WHERE seq = ?1", [*seq as i64])?;
                insert_quarantine(tx, now, q)?;
                stats.records -= 1;
                stats.bytes -= bytes as u64;
                stats.quarantined += 1;
                stats.oldest_us = oldest(tx)?;
            }
        }
    }
    Ok(None)
}

fn insert_quarantine(tx: &Connection, now: i64, q: &Quarantined) -> rusqlite::Result<()> {
    let reasons = serde_json::to_string(&q.reasons).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO quarantine (at_us, source, object, line, resource, reasons, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        now,
        q.source,
        q.object,
        q.line as i64,
        q.resource,
        reasons,
        q.raw
    ])?;
    Ok(())
}
