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
//! # Schema (SQLite, WAL, synchronous=FULL, 16 KiB pages in a new file)
//! - `meta(key, value)`: `outbox_id`, a random id made when the file is
//!   created (sequences are scoped to it), `created_us`, when it was
//!   created (a resource's freshness counts from it until its first
//!   change), `last_seq`, the highest sequence ever assigned (never reused,
//!   even after the queue drains to empty), and `acked_seq`, the highest the
//!   hub has acknowledged.
//! - `chunks(first INTEGER PRIMARY KEY, last, enqueued_us, records, bytes, packing, data)`:
//!   the queue, consecutive records a row, each record a varint length and
//!   its bytes, up to 64 KiB a chunk, stored as one zstd frame when that is
//!   smaller (`chunk.rs`). An outbox from
//!   before chunks (`records`, a row per record) is moved into chunks at
//!   open, in one transaction.
//! - `positions(source, key, value)`: opaque capture positions per source
//!   (and, under the source `__freshness`, each resource's last change).
//! - `quarantine(id AUTOINCREMENT, at_us, source, object, line, resource, reasons, raw)`:
//!   records that could not be normalized, or that the hub rejected, with
//!   their raw values and reasons (a JSON array).
//! - `discarded(id, at_us, reason, who, entry)`: quarantine entries dropped
//!   for good by `qianzhi quarantine discard`, each kept as JSON with the
//!   reason and who dropped it.
//!
//! # Row states
//! A record is queued until an ack covers its seq; a chunk is deleted in
//! the writer's next transaction once an ack covers its last seq (a link's
//! acks wait up to a second for one, so that a trickle's deletes share the
//! writes' fsyncs). A record the hub rejected moves to `quarantine` in one
//! transaction, leaving an empty entry in its chunk. A `quarantine` entry
//! stays until `qianzhi quarantine retry` queues it as a new record (once it
//! normalizes) or `discard` moves it to `discarded`; both run with the agent
//! stopped, holding the data directory's lock.
//!
//! # Recovery
//! SQLite's WAL makes every transaction atomic across kill -9 and power
//! loss. Nothing in memory needs recovering: stats are recomputed at open.
//!
//! A damaged file (a disk that lost or scrambled pages) must not stop the
//! service. At open the writer's connection runs `PRAGMA quick_check`; a
//! file that fails it, or that SQLite finds corrupt or not a database, is
//! renamed `outbox.db.damaged-TIME` (with its `-wal` and `-shm`) and a new
//! file gets every row that can still be read. Each table is read by rowid
//! ranges of 4096 rows; a range whose read fails is halved until what fails
//! is single rowids, so a damaged page costs only the rows on it. For
//! `chunks`, whose sequences have no gaps, a range whose chunks leave
//! sequences uncovered is read again in parts too: a damaged interior page
//! can end a scan early without an error; a chunk whose entries do not
//! decode is lost like an unreadable one. Records keep their sequences, the
//! identity is kept, the sequence goes on from the highest ever assigned,
//! and each missing sequence is queued as an empty entry, which tells the
//! hub (it takes only contiguous sequences) that this outbox lost it. What
//! was lost is written to `outbox-recovered.txt`, which keeps `/readyz`
//! failing and `/status` listing it until `qianzhi outbox acknowledge`.
//!
//! # Where the code is
//! - here: the handle ([`Outbox`]), what callers send ([`Write`],
//!   [`PositionUpdate`]) and get back ([`Receipt`], [`Stats`], [`Error`]),
//!   the connection settings and the schema;
//! - `writer.rs`: the writer thread and group commit; `space.rs`: the disk
//!   reserve and the ballast it keeps;
//! - `chunk.rs`: the queue's rows, chunks of consecutive records;
//! - `reader.rs`: read-only queries ([`Reader`]);
//! - `recover.rs`: the check at open and the salvage of a damaged file
//!   ([`Recovery`]);
//! - `quarantine.rs`: the quarantine tool's API ([`QuarantineFilter`],
//!   [`Offline`]);
//! - `lock.rs`: the data directory's lock ([`DirLock`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::now_us;
use crate::normalize::Quarantined;
use crate::sync::MutexExt;

mod chunk;
mod lock;
mod quarantine;
mod reader;
mod recover;
mod space;
#[cfg(test)]
mod tests;
mod writer;

pub use lock::DirLock;
pub use quarantine::{Held, Offline, QuarantineFilter, QuarantineStore};
pub use reader::Reader;
pub use recover::Recovery;
use space::Space;
use writer::{Command, Discard, Retry};

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
    /// The writer thread could not be started (the process is out of
    /// threads or memory): the outbox is not opened.
    #[error("cannot start the outbox writer thread: {source}")]
    Spawn { source: std::io::Error },
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
        let (writer, id, mut stats) = recover::open_or_recover(dir, &path)?;
        space.bound_wal(&writer).map_err(|source| Error::Sqlite {
            path: path.clone(),
            source,
        })?;
        let reader = open_connection(&path).map_err(|source| Error::Sqlite {
            path: path.clone(),
            source,
        })?;
        stats.recovered = Recovery::pending(dir);

        let (stats_tx, stats_rx) = watch::channel(stats);
        let (commands, rx) = mpsc::channel(64);
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || {
                writer::writer_loop(writer, thread_path, rx, stats_tx, space);
                // The lock goes last, after the writer's connection closed
                // (the read connection closed before: its owner dropped the
                // last sender, which ended the loop).
                drop(lock);
            })
            .map_err(|source| Error::Spawn { source })?;
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
        self.send(Command::CheckDisk).await?.committed().await
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
        self.send(|tx| Command::Write(write, tx)).await
    }

    /// Queues a write and waits until it is on disk.
    pub async fn write(&self, write: Write) -> Result<(), Error> {
        self.submit(write).await?.committed().await
    }

    /// Deletes every record up to and including `seq`: the hub has them.
    /// Commits at once.
    pub async fn ack(&self, seq: u64) -> Result<(), Error> {
        self.send(|tx| Command::Ack(seq, tx)).await?.committed().await
    }

    /// Queues an ack behind every command queued before it; the receipt
    /// resolves at its commit, which may wait for the next write's commit or
    /// up to a second (a trickle's acks then cost no transaction of their
    /// own). Lets the link go on reading the hub's answers meanwhile.
    pub async fn submit_ack(&self, seq: u64) -> Result<Receipt, Error> {
        self.send(|tx| Command::AckLater(seq, tx)).await
    }

    /// Moves the record `seq` to the quarantine (the hub rejected it).
    pub async fn reject(&self, seq: u64, entry: Quarantined) -> Result<(), Error> {
        self.send(|tx| Command::Reject(seq, entry, tx)).await?.committed().await
    }

    /// Makes the next sequence follow `seq`: the hub already holds every
    /// sequence up to it (the outbox lost its tail, or was restored from an
    /// older backup). Queued records at or below it were delivered before.
    pub async fn advance_to(&self, seq: u64) -> Result<(), Error> {
        self.send(|tx| Command::Advance(seq, tx)).await?.committed().await
    }

    /// Resolves once the writer thread has taken a command off its queue:
    /// the watchdog's proof that the outbox is not stuck.
    pub async fn ping(&self) -> Result<(), Error> {
        self.send(Command::Ping).await?.committed().await
    }

    /// Queues a command for the writer thread; the receipt resolves at its
    /// commit.
    async fn send(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<Receipt, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner.commands.send(command(tx)).await.map_err(|_| Error::Closed)?;
        Ok(Receipt(rx))
    }

    /// Sends a command from blocking code (not an async task) and waits
    /// for its commit.
    fn command_blocking(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .blocking_send(command(tx))
            .map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
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
        let conn = self.reader.lock_unpoisoned();
        f(&Reader::new(&conn)).map_err(|source| Error::Sqlite {
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

/// The page size of a new outbox file.
pub(crate) const PAGE_SIZE: i64 = 16 << 10;

/// A connection with the outbox's settings: the writer's, the handle's
/// read connection, recovery's and the offline tools'.
fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    crate::sqlite::plan_once(&conn)?;
    // 16 KiB pages for a new file (an existing one keeps its own): a page
    // holds four times the records, so a flood's inserts, deletes and
    // checkpoints touch a quarter of the pages (12 % less CPU per record in
    // the outbox and in the hub, see BENCHMARKS.md).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoint every 16 MiB of WAL, not 4 MiB: fewer copies of the pages
    // a queue rewrites over and over. The WAL file is cut back to that size
    // afterwards. With a small disk reserve the writer's connection
    // checkpoints sooner ([`Space::bound_wal`]). The pragma counts pages, of
    // the file's own size.
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", (16 << 20) / page.max(512))?;
    conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
    conn.pragma_update(None, "cache_size", -8192)?;
    Ok(conn)
}

/// Creates what the schema above lists, where missing, and the identity.
fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS chunks (
             first INTEGER PRIMARY KEY,
             last INTEGER NOT NULL,
             enqueued_us INTEGER NOT NULL,
             records INTEGER NOT NULL,
             bytes INTEGER NOT NULL,
             packing INTEGER NOT NULL,
             data BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS positions (
             source TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
             PRIMARY KEY (source, key));
         CREATE TABLE IF NOT EXISTS quarantine (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
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
