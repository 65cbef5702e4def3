//! SQLite: one long-lived connection (calls on the blocking pool), woken by
//! a watch on the folder holding the database and confirmed by
//! `PRAGMA data_version`, which changes when another connection commits.
//!
//! A file event is not a commit. In WAL mode a commit appends its frames to
//! the -wal file (the events) and only then, after the fsync, publishes them
//! in the -shm index, which is memory-mapped and makes no event: a source
//! that looks once right after the last event often sees nothing new, and
//! the commit waited for the next poll. So when an event came and
//! `data_version` has not moved, the source looks again after 1 ms, 2 ms,
//! 4 ms and so on (at most a second apart), and at once at every further
//! event. After 2 s without a change it
//! asks whether a writer is still at work: it tries the write lock without
//! waiting (`BEGIN IMMEDIATE` without a busy timeout, released at once
//! without writing; a writer holds that lock from its first write until its
//! commit is published). Free, nothing is in flight and the source sleeps
//! until the next event; taken, it goes on looking every second. In
//! rollback-journal mode the commit is the journal's deletion (or
//! truncation), an event of its own, and the same looks cover a writer that
//! still holds its lock. The write lock is never waited for: a business
//! writer that commits a thousand times a second holds it almost always.
//!
//! The watch is on the folder, not on the files: the -wal and -journal files
//! come and go (the last connection to close deletes the -wal, the next
//! writer creates it again), and a watch on a file follows its old inode.
//! The source reads the folder's inotify events itself, on the runtime, and
//! at most once per [`COALESCE`]: a business system that commits a thousand
//! times a second makes several events per commit, and a thread woken for
//! each of them (as `notify`'s is) cost more than the capture itself. The
//! first event after a quiet spell still wakes the source at once; those
//! that follow within `COALESCE` wait in the kernel's queue, which merges
//! repeats, and are read together.
//! A wake-up that arrives while the source is reading is kept (a stored
//! permit), and `data_version` is compared with the value of the last look,
//! so a commit during a read is seen by the next look.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use super::sql::{literal, quote};
use super::{Backend, CHUNK, Change, DbError, LOG_TABLE, Target, missing_columns};
use crate::config::DbKind;
use crate::sync::MutexExt;

/// How long the connection waits for a lock held by the business system.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// After a file event, the first look for a commit being published...
const FIRST_LOOK: Duration = Duration::from_millis(1);
/// ...and the longest pause between looks while a writer may be at work.
const LAST_LOOK: Duration = Duration::from_secs(1);
/// Looks without a change after which the source asks whether a writer
/// holds the write lock.
const SETTLE: Duration = Duration::from_secs(2);
/// After reading the folder's events, the watch waits this long before
/// reading again (the source lingers as long after a commit anyway).
const COALESCE: Duration = Duration::from_millis(20);

pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    /// Consumed rows are deleted on a second connection, so that a delete
    /// waiting for the business system's write lock never holds up reading.
    deleter: std::sync::mpsc::Sender<Vec<(i64, i64)>>,
    deleting: Arc<Mutex<Deleting>>,
    target: Target,
    /// `PRAGMA data_version` when the source last looked.
    version: i64,
    /// Set by the folder watch: something changed the database's files.
    wake: Arc<Notify>,
    /// The folder watch's task; None when the folder cannot be watched
    /// (then changes are seen every `poll`, and the log says so).
    _watch: Option<FolderWatch>,
}

/// Deletes handed to the deleter thread, oldest first, and its last error.
#[derive(Default)]
struct Deleting {
    queued: std::collections::VecDeque<Vec<(i64, i64)>>,
    error: Option<DbError>,
}

/// The deleter thread: one transaction per batch of ranges, in order.
fn delete_in_background(path: PathBuf, jobs: std::sync::mpsc::Receiver<Vec<(i64, i64)>>, state: Arc<Mutex<Deleting>>) {
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
        .and_then(|c| crate::sqlite::plan_once(&c).map(|()| c));
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            state.lock_unpoisoned().error = Some(err("open for deletes")(e));
            return;
        }
    };
    while let Ok(ranges) = jobs.recv() {
        let result = (|| {
            let tx = conn.transaction()?;
            for s in super::sql::forget_sql(&ranges) {
                tx.execute(&s, [])?;
            }
            tx.commit()
        })();
        let mut st = state.lock_unpoisoned();
        match result {
            Ok(()) => {
                st.queued.pop_front();
            }
            // The rows stay queued (left out of reads, listed in positions);
            // the source restarts on the error and deletes them at start.
            Err(e) => st.error = Some(err("delete consumed changes")(e)),
        }
    }
}

fn err(what: &str) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |e| {
        let text = e.to_string();
        let hint = if text.contains("readonly") || text.contains("permission") {
            " (the service user needs write access to the database file and its folder)"
        } else {
            ""
        };
        DbError(format!("SQLite: {what}: {text}{hint}"))
    }
}

impl Sqlite {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock_unpoisoned();
            f(&mut c)
        })
        .await
        .map_err(|e| DbError(format!("SQLite task failed: {e}")))?
    }

    fn image_sql(target: &Target, row: &str) -> String {
        super::sql::image_sql(DbKind::Sqlite, "json_object", target, row)
    }

    /// (trigger name as stored in sqlite_master, CREATE statement).
    fn triggers(target: &Target) -> Vec<(String, String)> {
        let table = quote(DbKind::Sqlite, &target.table);
        super::sql::row_triggers(DbKind::Sqlite, "json_object", target)
            .into_iter()
            .map(|(name, event, body)| {
                let create = format!("CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {body}; END");
                (name.trim_matches('"').to_owned(), create)
            })
            .collect()
    }

    /// Watches the folder holding the database, not recursively, for events
    /// on the database, its -wal and its -journal file.
    fn watch(path: &Path, wake: Arc<Notify>) -> Result<FolderWatch, String> {
        use inotify::WatchMask;
        // SQLite puts the -wal beside the file a symbolic link points to.
        let path = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!("{} has no folder", path.display()));
        };
        let name = name.to_string_lossy().into_owned();
        let names = [format!("{name}-wal"), format!("{name}-journal"), name];
        let mut inotify = inotify::Inotify::init().map_err(|e| format!("inotify: {e}"))?;
        // Writes, and files appearing or going; not reads, opens or closes
        // without writing, which change nothing.
        let mask = WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO;
        let mut watches = inotify.watches();
        let watch = watches.add(dir, mask).map_err(|e| format!("{}: {e}", dir.display()))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("qianzhi-sqlite-watch".into())
            .spawn(move || read_events(&mut inotify, &names, &wake, &stopped))
            .map_err(|e| format!("cannot start the watch thread: {e}"))?;
        Ok(FolderWatch { watches, watch, stop })
    }
}

/// The folder watch's thread, ended with the source: removing the watch
/// makes the kernel send a last event, which the thread reads and stops.
struct FolderWatch {
    watches: inotify::Watches,
    watch: inotify::WatchDescriptor,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.watches.remove(self.watch.clone());
    }
}

/// Reads the folder's events and wakes the source for those about `names`,
/// at most once per [`COALESCE`]. A lost event (the kernel's queue
/// overflowed) or a failing watch wakes it too: it looks anyway.
fn read_events(
    inotify: &mut inotify::Inotify,
    names: &[String; 3],
    wake: &Notify,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let mut ours = false;
        match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => {
                for e in events {
                    ours |= e.mask.contains(inotify::EventMask::Q_OVERFLOW)
                        || e.name.is_some_and(|n| names.iter().any(|ours| n == ours.as_str()));
                }
            }
            Err(e) => {
                if !stop.load(std::sync::atomic::Ordering::Acquire) {
                    warn!(error = %e, "cannot read the database folder's events: changes are seen every poll");
                }
                wake.notify_one();
                return;
            }
        }
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if ours {
            wake.notify_one();
        }
        std::thread::sleep(COALESCE);
    }
}

/// `PRAGMA data_version`: changes when another connection commits.
fn data_version(c: &Connection) -> Result<i64, DbError> {
    c.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map_err(err("data_version"))
}

/// Whether no connection holds the write lock: tries it without waiting
/// and lets it go at once, without writing.
fn no_writer(c: &Connection) -> Result<bool, DbError> {
    c.busy_timeout(Duration::ZERO).map_err(err("busy_timeout"))?;
    let taken = c.execute_batch("BEGIN IMMEDIATE");
    let released = if taken.is_ok() {
        c.execute_batch("ROLLBACK")
    } else {
        Ok(())
    };
    c.busy_timeout(BUSY_TIMEOUT).map_err(err("busy_timeout"))?;
    released.map_err(err("release the write lock"))?;
    match taken {
        Ok(()) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => Ok(false),
        Err(e) => Err(err("try the write lock")(e)),
    }
}

impl Backend for Sqlite {
    async fn connect(target: &Target) -> Result<Self, DbError> {
        let path = PathBuf::from(&target.url);
        if !path.is_file() {
            return Err(DbError(format!("SQLite database {} does not exist", path.display())));
        }
        let t = target.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(err("cannot open the database"))?;
            // The business system may hold the write lock for a while.
            conn.busy_timeout(BUSY_TIMEOUT).map_err(err("busy_timeout"))?;
            crate::sqlite::plan_once(&conn).map_err(err("query planner settings"))?;
            let table = quote(DbKind::Sqlite, &t.table);
            let mut stmt = conn
                .prepare(&format!("SELECT name FROM pragma_table_info({})", literal(&t.table)))
                .map_err(err(&format!("cannot read the columns of {table}")))?;
            let have: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(err("table_info"))?;
            drop(stmt);
            missing_columns(&t, &have)?;
            Ok::<_, DbError>(conn)
        })
        .await
        .map_err(|e| DbError(format!("SQLite task failed: {e}")))??;
        let wake = Arc::new(Notify::new());
        let watch = match Self::watch(Path::new(&target.url), wake.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the database's folder: changes are seen every poll");
                None
            }
        };
        let (deleter, jobs) = std::sync::mpsc::channel();
        let deleting = Arc::new(Mutex::new(Deleting::default()));
        {
            let (path, state) = (PathBuf::from(&target.url), deleting.clone());
            std::thread::Builder::new()
                .name("qianzhi-sqlite-delete".into())
                .spawn(move || delete_in_background(path, jobs, state))
                .map_err(|e| DbError(format!("cannot start the delete thread: {e}")))?;
        }
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            deleter,
            deleting,
            target: target.clone(),
            version: -1,
            wake,
            _watch: watch,
        })
    }

    fn install_sql(target: &Target) -> Vec<String> {
        let log = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 tbl TEXT NOT NULL, op TEXT NOT NULL, old TEXT, new TEXT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {LOG_TABLE}_tbl ON {LOG_TABLE} (tbl, id)"),
        ];
        super::sql::install_row_triggers(DbKind::Sqlite, log, Self::triggers(target))
    }

    fn uninstall_sql(target: &Target) -> Vec<String> {
        let names = Self::triggers(target).into_iter().map(|(name, _)| name).collect();
        super::sql::uninstall_row_triggers(DbKind::Sqlite, target, names)
    }

    async fn execute(&mut self, sql: &[String]) -> Result<(), DbError> {
        let sql = sql.to_vec();
        self.call(move |c| {
            let tx = c.transaction().map_err(err("begin"))?;
            for s in &sql {
                if s.starts_with("DELETE FROM") {
                    // The log may not exist when uninstalling twice.
                    let exists: Option<i64> = tx
                        .query_row(
                            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                            [LOG_TABLE],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(err("sqlite_master"))?;
                    if exists.is_none() {
                        continue;
                    }
                }
                tx.execute_batch(s).map_err(err(s))?;
            }
            tx.commit().map_err(err("commit"))
        })
        .await
    }

    async fn installed(&mut self) -> Result<bool, DbError> {
        let wanted = Self::triggers(&self.target);
        self.call(move |c| {
            let log: Option<String> = c
                .query_row(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [LOG_TABLE],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err("sqlite_master"))?;
            if log.is_none() {
                return Ok(false);
            }
            for (name, create) in &wanted {
                let have: Option<String> = c
                    .query_row(
                        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err("sqlite_master"))?;
                if have.as_deref() != Some(create.as_str()) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }

    async fn changes(&mut self, limit: usize, skip: &[(i64, i64)]) -> Result<Vec<Change>, DbError> {
        if let Some(e) = self.deleting.lock_unpoisoned().error.take() {
            return Err(e);
        }
        let tbl = self.target.log_name().to_owned();
        let mut skip = skip.to_vec();
        skip.extend(self.unconfirmed());
        // The runner consumes changes in id order, a prefix of what is
        // left, and SQLite has one writer at a time with AUTOINCREMENT ids:
        // every change at or below the highest skipped id is consumed (or
        // deleted), so reading above it needs no list of ids to leave out.
        // That spares stepping over each consumed row still waiting for its
        // delete (up to a second's worth), and the statement stays the same
        // (prepared once).
        let above = skip.iter().map(|&(_, hi)| hi).max().unwrap_or(0);
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    // A log table made again (uninstalled and installed)
                    // numbers from 1 again: then everything is read.
                    "SELECT id, op, old, new FROM {LOG_TABLE} WHERE tbl = ?1 AND id > (CASE WHEN \
                     (SELECT seq FROM sqlite_sequence WHERE name = '{LOG_TABLE}') >= ?3 THEN ?3 ELSE 0 END) \
                     ORDER BY id LIMIT ?2"
                ))
                .map_err(err("read the change log"))?;
            let rows = stmt
                .query_map(rusqlite::params![tbl, limit as i64, above], |r| {
                    Ok(Change {
                        id: r.get(0)?,
                        op: r.get(1)?,
                        old: r.get(2)?,
                        new: r.get(3)?,
                    })
                })
                .and_then(|rows| rows.collect())
                .map_err(err("read the change log"))?;
            Ok(rows)
        })
        .await
    }

    async fn forget(&mut self, ranges: &[(i64, i64)]) -> Result<(), DbError> {
        let mut st = self.deleting.lock_unpoisoned();
        st.queued.push_back(ranges.to_vec());
        self.deleter
            .send(ranges.to_vec())
            .map_err(|_| DbError("SQLite: the delete thread stopped".into()))
    }

    fn unconfirmed(&self) -> Vec<(i64, i64)> {
        let st = self.deleting.lock_unpoisoned();
        st.queued.iter().flatten().copied().collect()
    }

    async fn snapshot(&mut self, rows: mpsc::Sender<Vec<String>>) -> Result<Vec<i64>, DbError> {
        let image = Self::image_sql(&self.target, "");
        let table = quote(DbKind::Sqlite, &self.target.table);
        let tbl = self.target.log_name().to_owned();
        self.call(move |c| {
            // One read transaction: the rows and the change-log ids they
            // already reflect.
            let tx = c.transaction().map_err(err("begin snapshot"))?;
            let mut stmt = tx
                .prepare(&format!("SELECT id FROM {LOG_TABLE} WHERE tbl = ?1"))
                .map_err(err("snapshot"))?;
            let visible: Vec<i64> = stmt
                .query_map([&tbl], |r| r.get(0))
                .and_then(|r| r.collect())
                .map_err(err("snapshot"))?;
            drop(stmt);
            let mut stmt = tx
                .prepare(&format!("SELECT {image} FROM {table}"))
                .map_err(err("snapshot"))?;
            let mut cursor = stmt.query([]).map_err(err("snapshot"))?;
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(row) = cursor.next().map_err(err("snapshot"))? {
                chunk.push(row.get::<_, String>(0).map_err(err("snapshot"))?);
                if chunk.len() == CHUNK && rows.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Err(DbError("snapshot stopped".into()));
                }
            }
            if !chunk.is_empty() && rows.blocking_send(chunk).is_err() {
                return Err(DbError("snapshot stopped".into()));
            }
            drop(cursor);
            drop(stmt);
            tx.commit().map_err(err("end snapshot"))?;
            Ok(visible)
        })
        .await
    }

    async fn max_watermark(&mut self) -> Result<Option<String>, DbError> {
        let (table, wm) = self.mark();
        self.call(move |c| {
            c.query_row(&format!("SELECT CAST(MAX({wm}) AS TEXT) FROM {table}"), [], |r| {
                r.get(0)
            })
            .map_err(err("read the watermark"))
        })
        .await
    }

    async fn rows_between(
        &mut self,
        after: Option<String>,
        upto: String,
        limit: usize,
    ) -> Result<Vec<(String, String)>, DbError> {
        let (table, wm) = self.mark();
        let image = Self::image_sql(&self.target, "");
        let lower = if after.is_some() {
            format!("{wm} > ?3 AND ")
        } else {
            String::new()
        };
        let sql =
            format!("SELECT {image}, CAST({wm} AS TEXT) FROM {table} WHERE {lower}{wm} <= ?1 ORDER BY {wm} LIMIT ?2");
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&sql).map_err(err("incremental read"))?;
            let limit = limit as i64;
            let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
            let rows = match &after {
                Some(a) => stmt.query_map(rusqlite::params![upto, limit, a], read),
                None => stmt.query_map(rusqlite::params![upto, limit], read),
            };
            rows.and_then(|r| r.collect()).map_err(err("incremental read"))
        })
        .await
    }

    async fn rows_at(&mut self, at: String) -> Result<Vec<(String, String)>, DbError> {
        let (table, wm) = self.mark();
        let image = Self::image_sql(&self.target, "");
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {image}, CAST({wm} AS TEXT) FROM {table} WHERE {wm} = ?1"
                ))
                .map_err(err("incremental read"))?;
            stmt.query_map([at], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|r| r.collect())
                .map_err(err("incremental read"))
        })
        .await
    }

    async fn wait(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        // Since a file event: (pause before the next look, when it came).
        // A writer may be between its last write and the published commit.
        let mut settling: Option<(Duration, tokio::time::Instant)> = None;
        loop {
            let known = self.version;
            let ask = settling.is_some_and(|(_, since)| since.elapsed() >= SETTLE);
            let look = self
                .call(move |c| {
                    let v = data_version(c)?;
                    if v != known || !ask {
                        return Ok((v, false));
                    }
                    // With the write lock free, every commit is published:
                    // this look is final until the next event.
                    Ok(if no_writer(c)? {
                        (data_version(c)?, true)
                    } else {
                        (v, false)
                    })
                })
                .await;
            match look {
                Ok((v, _)) if v != self.version => {
                    self.version = v;
                    return;
                }
                // No writer at work and nothing new: sleep until an event.
                Ok((_, true)) => settling = None,
                Ok((_, false)) => {}
                // Let the next read report it.
                Err(_) => return,
            }
            let pause = settling.map_or(LAST_LOOK, |(p, _)| p);
            tokio::select! {
                // Another event: look at once, then soon again.
                () = self.wake.notified() => {
                    let since = settling.map_or_else(tokio::time::Instant::now, |(_, since)| since);
                    settling = Some((FIRST_LOOK, since));
                }
                () = tokio::time::sleep(pause), if settling.is_some() => {
                    settling = settling.map(|(p, since)| ((p * 2).min(LAST_LOOK), since));
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

impl Sqlite {
    fn mark(&self) -> (String, String) {
        (
            quote(DbKind::Sqlite, &self.target.table),
            quote(DbKind::Sqlite, self.target.watermark.as_deref().unwrap_or("rowid")),
        )
    }
}
