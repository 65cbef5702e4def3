//! The hub's store: SQLite (WAL, 16 KiB pages in a new file), idempotent by sequence.
//!
//! Each (agency, outbox) has a high-water mark: the highest sequence stored
//! or rejected. A batch is applied in one transaction that writes its
//! records, its rejections and the new high-water mark together, so a
//! resent batch stores nothing twice and an ack is only sent once that
//! transaction is durable.
//!
//! Durable is not the same as committed here. A stream's group is committed
//! without an fsync ([`Store::apply_unsynced`], `synchronous = NORMAL` for
//! that transaction) and made durable by [`Store::sync`], an `fdatasync` of
//! the WAL through the store's own descriptor, which the stream runs while
//! the next group is applied: the writer no longer waits for the disk
//! between groups. Whatever is told to anyone waits for that sync: the acks
//! and rejections (the stream), the high-water mark and rejections of a
//! Welcome (read, then synced), and the hub sequence receivers follow
//! ([`Store::watch`] moves only in [`Store::sync`], and receivers read
//! nothing above it). Every other write commits with `synchronous = FULL`,
//! whose fsync of the WAL also covers any group committed before it. After a
//! crash of the process, what it committed is still in the page cache, and
//! the next process syncs it at open before it tells anyone. Reads that may
//! see another process's commits (`qianzhi-hub export`, the report) pin
//! their snapshot and then sync the WAL whatever this process committed.
//!
//! A failed fsync is final: Linux reports a writeback error once, and a
//! later fsync may succeed over pages that never reached the disk. After one
//! the store syncs nothing more (every later sync fails, so nothing more is
//! acknowledged) until the hub is restarted and the next open syncs again.
//! Its accepted changes go into `feed`, `history` and `current` by
//! statements of up to 64 rows, in sequence order (SQLite's cost per
//! statement, and AUTOINCREMENT's bookkeeping, paid once per 64 records).
//!
//! Schema (integer outbox ids keep the hot b-tree keys short):
//! - `outboxes(id, agency, outbox_id, hwm)`: one row per (agency, outbox).
//! - `history(box, seq, resource, key, op, record, received_us)`: every
//!   accepted change, keyed (so unique) by (box, seq); `record` is the
//!   protobuf `Record` exactly as the agent sent it.
//! - `current(resource, key, box, seq)`: the latest change per (resource,
//!   key), pointing into `history`; a delete removes the row. Its columns
//!   have no NOT NULL besides the key, so that its upserts need no
//!   statement journal ([`CURRENT_COLUMNS`]).
//! - `rejections(box, seq, code, reason)`: kept until the agent's Hello shows
//!   it holds nothing below them, so a rejection whose message was lost in a
//!   crash is repeated in the next Welcome.
//! - `feed(hseq, resource, box, seq)`: the hub's own sequence over every
//!   accepted change, in commit order (AUTOINCREMENT: never reused, even
//!   after compaction: the store assigns it from AUTOINCREMENT's counter),
//!   which receivers follow ([`feed`]); `current.hseq`
//!   is the hub sequence of the change it points to.
//! - `agreements`, `subscribers`, `deliveries`, `horizons`: the receiving
//!   direction's bookkeeping ([`feed`]).
//!
//! Sequences are contiguous: an entry at or below the high-water mark is a
//! replay and skipped, the entry right after it is applied, and anything
//! else (a gap, a sequence SQLite cannot hold) stops the batch there
//! ([`SeqError`]): what came before it commits and is acknowledged, nothing
//! after it is looked at. So the hub never acknowledges a sequence it has
//! not stored.
//!
//! Rejection reasons quote what the agent sent, so they are bounded
//! ([`crate::text::reason`]) when they are made, before they are stored,
//! sent or logged; values over [`prepare`]'s `max_value_bytes` are refused
//! without being quoted at all.
//!
//! The store holds personal data: its folder is created 0700 and the
//! database files (`store.db`, `-wal`, `-shm`) are kept 0600 whatever the
//! umask.

use std::collections::BTreeMap;
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use proto::v1::{Entry, Operation, Record, RejectCode, Rejected};
use proto::view::RecordView;
use rules::catalog::{Catalog, Sharing};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use crate::text;

pub mod feed;
#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    /// The store's folder or files cannot be created or made private.
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Why a batch stopped before its end: the entry at which it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// Sequences must follow the high-water mark without a gap.
    #[error("sequence gap: expected {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    /// The store keeps sequences as SQLite integers (signed 64-bit).
    #[error(
        "sequence out of range: expected {expected}, got {got}, above the largest the hub stores ({})",
        i64::MAX
    )]
    OutOfRange { expected: u64, got: u64 },
}

/// The hub's durable store.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The highest hub sequence durable: receivers' streams wait on it, and
    /// read nothing above it.
    latest: watch::Sender<u64>,
    /// What [`Store::apply_unsynced`] committed: (commits, the highest hub
    /// sequence among them). Moved under the connection's lock, so in
    /// commit order.
    committed: Mutex<(u64, u64)>,
    /// The WAL's descriptor and the commits it has synced.
    synced: Mutex<Synced>,
}

/// The WAL file as [`Store::sync`] last found it, how many commits its
/// last fsync covered, and the failure that stopped syncing, if one did.
struct Synced {
    wal: Option<std::fs::File>,
    commits: u64,
    failed: Option<String>,
}

impl Synced {
    /// Records a failure after which no sync may succeed (the first one
    /// is kept).
    fn fail(&mut self, store: &Path, why: String) {
        tracing::error!(store = %store.display(), %why, "the hub acknowledges nothing more until it is restarted");
        self.failed.get_or_insert(why);
    }
}

/// A record decoded, checked and encoded for storage, or the reason it is
/// rejected. Made by [`prepare`] outside the store lock, so that decoding
/// runs in parallel with the previous group's commit.
#[derive(Debug)]
pub struct Prepared {
    pub seq: u64,
    /// `None`: a sequence the agent lost with a damaged outbox (an empty
    /// entry), stored nowhere.
    row: Option<Result<Row, (RejectCode, String)>>,
}

#[derive(Debug)]
struct Row {
    resource: String,
    key: String,
    delete: bool,
    /// A slice of the message it came in.
    record: prost::bytes::Bytes,
}

/// Decodes and checks a batch's entries for `agency`. A record with a key
/// value, item id or item value over `max_value_bytes` is rejected without
/// being checked, so that no rule quotes (and copies, and escapes) a huge
/// value.
pub fn prepare(agency: &str, entries: Vec<Entry>, catalog: &Catalog, max_value_bytes: usize) -> Vec<Prepared> {
    entries
        .into_iter()
        .map(|e| Prepared {
            seq: e.seq,
            row: (!e.record.is_empty()).then(|| {
                check(agency, &e.record, catalog, max_value_bytes).map(|r| Row {
                    resource: r.resource.to_owned(),
                    key: serde_json::to_string(&r.key).unwrap_or_default(),
                    delete: r.op == Operation::Delete as i32,
                    // Another handle on the message's bytes, not a copy.
                    record: e.record.clone(),
                })
            }),
        })
        .collect()
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Records stored.
    pub stored: u64,
    /// Entries at or below the high-water mark, skipped as replays.
    pub replayed: u64,
    /// Sequences the agent lost with a damaged outbox (empty entries).
    pub lost: u64,
    pub rejected: Vec<Rejected>,
    /// The high-water mark after the batch: the ack.
    pub hwm: u64,
    /// The entry that stopped the batch, if one did; nothing from it on
    /// was applied.
    pub stop: Option<SeqError>,
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Error> {
        let err = |source| Error::Sqlite {
            path: path.to_owned(),
            source,
        };
        private_files(path)?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        plan_once(&conn).map_err(err)?;
        // 16 KiB pages for a new store (an existing one keeps its own): four
        // times the rows per page, so each record's five b-tree entries and
        // the checkpoints touch fewer pages (12 % less CPU per record).
        conn.pragma_update(None, "page_size", 16 << 10).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        // Group commits write tens of thousands of rows: keep their pages in
        // memory instead of spilling mid-transaction.
        conn.pragma_update(None, "cache_size", -65536).map_err(err)?;
        // Checkpoint every 128 MiB of WAL rather than 4 MiB: a page rewritten
        // by many commits between checkpoints is copied once. With keys in
        // random order every group commit rewrites most of `current`'s
        // pages: 128 MiB instead of 32 took 18 % off the store's CPU there
        // (10 % with keys in order; 256 MiB gained nothing more). The WAL
        // file keeps that size on disk, and grows past it while a receiver's
        // read holds a checkpoint back. The pragma counts pages, of the
        // file's own size.
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_BYTES / page.max(512))
            .map_err(err)?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS outboxes (
                 id INTEGER PRIMARY KEY,
                 agency TEXT NOT NULL, outbox_id TEXT NOT NULL, hwm INTEGER NOT NULL,
                 first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL,
                 UNIQUE (agency, outbox_id));
             CREATE TABLE IF NOT EXISTS history (
                 box INTEGER NOT NULL, seq INTEGER NOT NULL,
                 resource TEXT NOT NULL, key TEXT NOT NULL, op INTEGER NOT NULL,
                 record BLOB NOT NULL, received_us INTEGER NOT NULL,
                 PRIMARY KEY (box, seq)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS current ({CURRENT_COLUMNS}) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS rejections (
                 box INTEGER NOT NULL, seq INTEGER NOT NULL,
                 code INTEGER NOT NULL, reason TEXT NOT NULL, at_us INTEGER NOT NULL,
                 PRIMARY KEY (box, seq));",
        ))
        .map_err(err)?;
        feed::migrate(&conn).map_err(err)?;
        relax_current(&conn).map_err(err)?;
        let latest: i64 = conn
            .query_row("SELECT coalesce(max(hseq), 0) FROM feed", [], |r| r.get(0))
            .map_err(err)?;
        // WAL mode made the -wal and -shm files: SQLite gives them the main
        // file's mode, and an old store's may predate that.
        for p in [sidecar(path, "-wal"), sidecar(path, "-shm")] {
            make_private(&p)?;
        }
        let store = Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            latest: watch::Sender::new(0),
            // One commit not known durable: what a process that crashed
            // before its sync committed, still in the page cache.
            committed: Mutex::new((1, latest as u64)),
            synced: Mutex::new(Synced {
                wal: None,
                commits: 0,
                failed: None,
            }),
        };
        store.sync()?;
        Ok(store)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Watches the highest durable hub sequence (moved by [`Store::sync`]).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open:
        // rusqlite rolls back on drop. It may have left the connection
        // without its fsync ([`Store::apply_unsynced`]): that is put back.
        self.conn.lock().unwrap_or_else(|p| {
            let conn = p.into_inner();
            let _ = conn.pragma_update(None, "synchronous", "FULL");
            conn
        })
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The high-water mark of an outbox, and the rejections at or above
    /// `first_unacked` (older ones are forgotten: the agent has them);
    /// durable when returned, though a group they include may have been
    /// committed without a sync.
    pub fn welcome(&self, agency: &str, outbox: &str, first_unacked: u64) -> Result<(u64, Vec<Rejected>), Error> {
        let found = self.welcome_unsynced(agency, outbox, first_unacked)?;
        self.sync()?;
        Ok(found)
    }

    fn welcome_unsynced(&self, agency: &str, outbox: &str, first_unacked: u64) -> Result<(u64, Vec<Rejected>), Error> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> rusqlite::Result<(u64, Vec<Rejected>)> {
            let tx = conn.transaction()?;
            let Some((id, hwm)) = find_outbox(&tx, agency, outbox)? else {
                return Ok((0, Vec::new()));
            };
            tx.execute(
                "DELETE FROM rejections WHERE box = ?1 AND seq < ?2",
                params![id, first_unacked.min(i64::MAX as u64) as i64],
            )?;
            // Reasons are bounded when made; a store written before that was
            // is bounded here, so an old huge reason is not repeated.
            let rejections = {
                let mut stmt =
                    tx.prepare("SELECT seq, code, substr(reason, 1, ?2) FROM rejections WHERE box = ?1 ORDER BY seq")?;
                stmt.query_map(params![id, text::REASON_BYTES as i64 + 1], |r| {
                    Ok(Rejected {
                        seq: r.get::<_, i64>(0)? as u64,
                        code: r.get(1)?,
                        reason: text::reason(&r.get::<_, String>(2)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok((hwm, rejections))
        };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// Applies prepared entries from `agency`'s outbox in one transaction,
    /// durable when this returns.
    pub fn apply(&self, agency: &str, outbox: &str, entries: &[Prepared]) -> Result<Applied, Error> {
        let applied = self.apply_unsynced(agency, outbox, entries)?;
        self.sync()?;
        Ok(applied)
    }

    /// Applies prepared entries from `agency`'s outbox in one transaction
    /// committed without an fsync: nothing of it may be told to anyone
    /// before a [`Store::sync`] that began after this returned.
    pub fn apply_unsynced(&self, agency: &str, outbox: &str, entries: &[Prepared]) -> Result<Applied, Error> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let run = |conn: &mut Connection| -> rusqlite::Result<(Applied, Option<i64>)> {
            let tx = conn.transaction()?;
            let now = now_us();
            let (id, hwm) = match find_outbox(&tx, agency, outbox)? {
                Some(found) => found,
                None => {
                    tx.execute(
                        "INSERT INTO outboxes (agency, outbox_id, hwm, first_seen_us, last_seen_us) VALUES (?1, ?2, 0, ?3, ?3)",
                        params![agency, outbox, now],
                    )?;
                    (tx.last_insert_rowid(), 0)
                }
            };
            let mut applied = Applied {
                hwm,
                ..Applied::default()
            };
            let mut accepted = Vec::with_capacity(entries.len());
            for e in entries {
                if e.seq <= applied.hwm {
                    applied.replayed += 1;
                    continue;
                }
                if let Err(stop) = next_in_line(applied.hwm, e.seq) {
                    applied.stop = Some(stop);
                    break;
                }
                match &e.row {
                    None => applied.lost += 1,
                    Some(Ok(row)) => {
                        accepted.push((e.seq, row));
                        applied.stored += 1;
                    }
                    Some(Err((code, reason))) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO rejections (box, seq, code, reason, at_us) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![id, e.seq as i64, *code as i32, reason, now])?;
                        applied.rejected.push(Rejected {
                            seq: e.seq,
                            code: *code as i32,
                            reason: reason.clone(),
                        });
                    }
                }
                applied.hwm = e.seq;
            }
            let last_hseq = store_rows(&tx, id, &accepted, now)?;
            tx.execute(
                "UPDATE outboxes SET hwm = ?2, last_seen_us = ?3 WHERE id = ?1",
                params![id, applied.hwm as i64, now],
            )?;
            tx.commit()?;
            Ok((applied, last_hseq))
        };
        let result = run(&mut conn);
        // Every other write keeps its own fsync; if that cannot be put back,
        // no write of this store may count as durable any more.
        let full = conn.pragma_update(None, "synchronous", "FULL");
        if let Err(e) = &full {
            self.fail(format!("setting synchronous = FULL again failed: {e}"));
        }
        let (applied, last_hseq) = result.map_err(|e| self.err(e))?;
        {
            let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            c.0 += 1;
            if let Some(h) = last_hseq {
                c.1 = c.1.max(h as u64);
            }
        }
        full.map_err(|e| self.err(e))?;
        Ok(applied)
    }

    /// Makes every group committed before this call durable (one
    /// `fdatasync` of the WAL, shared by every stream waiting for it), then
    /// lets receivers see their changes.
    pub fn sync(&self) -> Result<(), Error> {
        self.sync_wal(false)
    }

    /// Syncs the WAL whatever this process committed: for a read that may
    /// see another process's commits (made after its snapshot was pinned).
    fn sync_everything(&self) -> Result<(), Error> {
        self.sync_wal(true)
    }

    fn sync_wal(&self, everything: bool) -> Result<(), Error> {
        let (commits, hseq) = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let io = |source| Error::Io {
            path: sidecar(&self.path, "-wal"),
            source,
        };
        if let Some(why) = &synced.failed {
            return Err(io(std::io::Error::other(format!(
                "{why}; the store syncs nothing more until the hub is restarted"
            ))));
        }
        if everything || synced.commits < commits {
            let had_wal = synced.wal.is_some();
            match current_wal(&self.path, &mut synced.wal) {
                Ok(wal) => {
                    if let Err(e) = wal.sync_data() {
                        synced.fail(&self.path, format!("an fsync of the WAL failed: {e}"));
                        return Err(io(e));
                    }
                }
                // No WAL before this process ever held one: everything is
                // in the database file (SQLite removes the WAL only after
                // checkpointing it with an fsync). Once held, the WAL of a
                // connection still open cannot go missing but by accident.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !had_wal => {}
                Err(e) => return Err(io(e)),
            }
            synced.commits = synced.commits.max(commits);
        }
        drop(synced);
        self.latest.send_if_modified(|l| {
            let newer = hseq > *l;
            if newer {
                *l = hseq;
            }
            newer
        });
        Ok(())
    }

    /// Records a failure after which no sync may succeed.
    fn fail(&self, why: String) {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail(&self.path, why);
    }

    /// Starts a read transaction on `conn`, pins its snapshot, and makes
    /// everything in it durable (the hub process may have committed a
    /// group without its sync yet): what the caller then reads and shows
    /// survives a power cut.
    pub(crate) fn durable_read<'c>(&self, conn: &'c Connection) -> Result<rusqlite::Transaction<'c>, Error> {
        let tx = conn.unchecked_transaction().map_err(|e| self.err(e))?;
        pin_read(&tx).map_err(|e| self.err(e))?;
        self.sync_everything()?;
        Ok(tx)
    }

    /// Writes the store as JSON Lines: the current state, or with `history`
    /// every change in arrival order. Returns the number of lines.
    pub fn export(&self, resource: Option<&str>, history: bool, out: &mut dyn Write) -> anyhow::Result<u64> {
        let conn = self.lock();
        let tx = self.durable_read(&conn)?;
        let conn = &*tx;
        let sql = if history {
            "SELECT h.record, o.agency, o.outbox_id, h.seq FROM history h JOIN outboxes o ON o.id = h.box
             WHERE ?1 IS NULL OR h.resource = ?1 ORDER BY h.received_us, h.box, h.seq"
        } else {
            "SELECT h.record, o.agency, o.outbox_id, h.seq FROM current c
             JOIN history h ON h.box = c.box AND h.seq = c.seq JOIN outboxes o ON o.id = c.box
             WHERE ?1 IS NULL OR c.resource = ?1 ORDER BY c.resource, c.key"
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([resource])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let bytes: Vec<u8> = row.get(0)?;
            let record = Record::decode(bytes.as_slice())?;
            let items: BTreeMap<&String, &String> = record.items.iter().collect();
            let source = record.source.as_ref().map(|s| {
                serde_json::json!({"source": s.source, "object": s.object, "line": s.line, "change_id": s.change_id})
            });
            let line = serde_json::json!({
                "resource": record.resource,
                "key": record.key,
                "op": if record.op == Operation::Delete as i32 { "delete" } else { "upsert" },
                "items": items,
                "agency": row.get::<_, String>(1)?,
                "outbox": row.get::<_, String>(2)?,
                "seq": row.get::<_, i64>(3)?,
                "source": source,
                "warnings": record.warnings,
                "captured_at_us": record.captured_at_us,
            });
            writeln!(out, "{line}")?;
            n += 1;
        }
        Ok(n)
    }
}

/// Plans each statement once, from its text: SQLite reads a bound value its
/// plan may depend on (a `LIMIT ?`) as part of the plan, and binding that
/// parameter again expires a cached statement, which is then parsed and
/// planned again at its next step.
pub(crate) fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}

/// The WAL's size at which a commit checkpoints it into the database file.
const WAL_CHECKPOINT_BYTES: i64 = 128 << 20;

/// The columns of `current`. `box` and `seq` may not be NULL, but are not
/// declared NOT NULL: the UPDATE of an upsert checks such a constraint with
/// ABORT, so every upsert of many rows kept a statement journal, a copy of
/// each page it changed. With keys in random order that is a 16 KiB page
/// per record: a fifth of the samples, and 28 % of the store's CPU, with a
/// million keys (`qianzhi-bench store`). The store binds both from
/// integers, never NULL.
const CURRENT_COLUMNS: &str =
    "resource TEXT NOT NULL, key TEXT NOT NULL, box INTEGER, seq INTEGER, hseq INTEGER, PRIMARY KEY (resource, key)";

/// Rebuilds a `current` made with NOT NULL `box` and `seq` (every store
/// before [`CURRENT_COLUMNS`]) in one transaction, with its rows and index.
fn relax_current(conn: &Connection) -> rusqlite::Result<()> {
    let strict = conn
        .prepare("SELECT 1 FROM pragma_table_info('current') WHERE name IN ('box', 'seq') AND \"notnull\"")?
        .exists([])?;
    if !strict {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE current_relaxed ({CURRENT_COLUMNS}) WITHOUT ROWID;
         INSERT INTO current_relaxed (resource, key, box, seq, hseq) SELECT resource, key, box, seq, hseq FROM current;
         DROP TABLE current;
         ALTER TABLE current_relaxed RENAME TO current;
         {}",
        feed::CURRENT_BY_HSEQ
    ))?;
    tx.commit()
}

/// Whether `seq` may follow the high-water mark `hwm`.
fn next_in_line(hwm: u64, seq: u64) -> Result<(), SeqError> {
    let expected = hwm.saturating_add(1);
    if seq > i64::MAX as u64 {
        Err(SeqError::OutOfRange { expected, got: seq })
    } else if seq != expected {
        Err(SeqError::Gap { expected, got: seq })
    } else {
        Ok(())
    }
}

/// The store's WAL file, opened anew when the one held is no longer the
/// file at its path (SQLite removes the WAL when its last connection
/// closes, and a later one makes a new file): an fsync must reach the file
/// SQLite writes.
fn current_wal<'a>(path: &Path, held: &'a mut Option<std::fs::File>) -> std::io::Result<&'a std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let wal = sidecar(path, "-wal");
    let now = std::fs::metadata(&wal)?;
    let same = match held.as_ref() {
        Some(f) => f.metadata().is_ok_and(|m| m.dev() == now.dev() && m.ino() == now.ino()),
        None => false,
    };
    if same && let Some(file) = held {
        return Ok(file);
    }
    let file = std::fs::File::open(&wal)?;
    // SQLite syncs the folder after it makes a WAL; a file synced through
    // this descriptor is only durable with its name.
    if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(held.insert(file))
}

/// Starts the snapshot of the read transaction `tx` (SQLite takes it at
/// the first read), so that a sync after this covers all it will see.
pub(crate) fn pin_read(tx: &Connection) -> rusqlite::Result<()> {
    tx.query_row("SELECT count(*) FROM outboxes", [], |_| Ok(()))
}

/// A sequence as an SQLite integer (signed 64-bit), the largest above it.
pub(crate) fn sql_seq(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

/// `store.db-wal` and the like.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates the store's folder (0700) if missing and the database file
/// (0600), and makes an existing file 0600: set explicitly, so the umask
/// has no say.
fn private_files(path: &Path) -> Result<(), Error> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| Error::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            missing.push(p);
            d = p.parent();
        }
        for p in missing.into_iter().rev() {
            match std::fs::DirBuilder::new().mode(0o700).create(p) {
                Ok(()) => std::fs::set_permissions(p, Permissions::from_mode(0o700)).map_err(io(p))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(p)(e)),
            }
        }
    }
    // Only a missing file is opened here: closing a descriptor of a
    // database that this process (an in-process hub, a test) has open would
    // drop that connection's POSIX locks.
    if !path.exists() {
        match std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    make_private(path)
}

/// Makes an existing file 0600 (a missing one is left missing).
fn make_private(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
            std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// The integer id and high-water mark of an outbox, if the hub knows it.
fn find_outbox(tx: &rusqlite::Transaction<'_>, agency: &str, outbox: &str) -> rusqlite::Result<Option<(i64, u64)>> {
    tx.prepare_cached("SELECT id, hwm FROM outboxes WHERE agency = ?1 AND outbox_id = ?2")?
        .query_row(params![agency, outbox], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .optional()
}
/// Reads a record in place and checks it against the catalog. Every reason
/// is bounded: it may quote what the agent sent.
fn check<'a>(
    agency: &str,
    bytes: &'a [u8],
    catalog: &Catalog,
    max_value_bytes: usize,
) -> Result<RecordView<'a>, (RejectCode, String)> {
    let record =
        RecordView::decode(bytes).map_err(|e| (RejectCode::Malformed, text::reason(&format!("not a Record: {e}"))))?;
    oversized(&record, max_value_bytes).map_err(|reason| (RejectCode::InvalidRecord, reason))?;
    let Some(resource) = catalog.resource(record.resource) else {
        return Err((
            RejectCode::UnknownResource,
            format!("resource {} is not in the hub's catalog", text::shown(record.resource)),
        ));
    };
    resource
        .check(agency, &record)
        .map_err(|v| (v.code, text::reason(&v.reason)))?;
    if resource.sharing == Sharing::NotShared {
        return Err((
            RejectCode::InvalidRecord,
            format!("resource {} is 不予共享 and is not exchanged", resource.code),
        ));
    }
    Ok(record)
}

/// Refuses a record with a resource code, key value, item id or item value
/// over `max` bytes, naming it by position and length only.
fn oversized(record: &RecordView<'_>, max: usize) -> Result<(), String> {
    let over = |what: String, len: usize| Err(format!("{what} is {len} bytes, over the hub's limit of {max}"));
    if record.resource.len() > max {
        return over("the resource code".into(), record.resource.len());
    }
    if let Some((i, v)) = record.key.iter().enumerate().find(|(_, v)| v.len() > max) {
        return over(format!("key value {}", i + 1), v.len());
    }
    for (id, value) in record.items() {
        if id.len() > max {
            return over("an item id".into(), id.len());
        }
        if value.len() > max {
            return over(format!("the value of item {}", text::shown(id)), value.len());
        }
    }
    Ok(())
}

/// Rows per INSERT statement into `feed`, `history` and `current`, largest
/// first. `feed` is AUTOINCREMENT, so every INSERT statement into it reads
/// and writes back its row of `sqlite_sequence`; and each statement run has
/// a fixed cost. A statement of 64 rows pays both once for 64 records.
///
/// The statements are OR FAIL: one of many rows that may abort needs
/// SQLite's statement journal (a copy of every page it changes, to undo only
/// itself), and an error here always rolls back the whole transaction.
const INSERT_ROWS: [usize; 3] = [64, 8, 1];

/// The statements of one size.
struct InsertSql {
    rows: usize,
    feed: String,
    history: String,
    upsert: String,
}

/// The VALUES of a statement of `rows` rows: `row` is one row, where each
/// `#` is one of the row's own parameters, numbered from `first` on, row
/// after row (`?1`, `?2` are the ones all rows share).
fn values(rows: usize, first: usize, row: &str) -> String {
    let own = row.matches('#').count();
    let rows: Vec<String> = (0..rows)
        .map(|i| {
            let mut n = first + own * i;
            row.split('#')
                .enumerate()
                .map(|(k, part)| {
                    if k == 0 {
                        part.to_owned()
                    } else {
                        n += 1;
                        format!("?{}{part}", n - 1)
                    }
                })
                .collect()
        })
        .collect();
    rows.join(", ")
}

/// The statements of `rows` rows.
fn insert_sql(rows: usize) -> InsertSql {
    InsertSql {
        rows,
        // ?1 the outbox; each row (hseq, resource, seq).
        feed: format!(
            "INSERT OR FAIL INTO feed (hseq, resource, box, seq) VALUES {}",
            values(rows, 2, "(#, #, ?1, #)")
        ),
        // ?1 the outbox, ?2 the time; each row (seq, resource, key, op,
        // record).
        history: format!(
            "INSERT OR FAIL INTO history (box, seq, resource, key, op, record, received_us) VALUES {}",
            values(rows, 3, "(?1, #, #, #, #, #, ?2)")
        ),
        // ?1 the outbox; each row (resource, key, seq, hseq).
        upsert: format!(
            "INSERT OR FAIL INTO current (resource, key, box, seq, hseq) VALUES {}
             ON CONFLICT (resource, key) DO UPDATE
             SET box = excluded.box, seq = excluded.seq, hseq = excluded.hseq",
            values(rows, 2, "(#, #, ?1, #, #)")
        ),
    }
}

/// Stores the accepted changes of one batch, in sequence order, under hub
/// sequences that follow the highest ever used; returns the last one.
fn store_rows(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    rows: &[(u64, &Row)],
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    static SQL: std::sync::OnceLock<Vec<InsertSql>> = std::sync::OnceLock::new();
    if rows.is_empty() {
        return Ok(None);
    }
    // AUTOINCREMENT's own counter, or the highest row if a store predates
    // it: a hub sequence is never used twice, even after the feed's
    // superseded rows are pruned.
    let first: i64 = tx
        .prepare_cached(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'feed'), 0),
                        coalesce((SELECT max(hseq) FROM feed), 0)) + 1",
        )?
        .query_row([], |r| r.get(0))?;
    let statements = SQL.get_or_init(|| INSERT_ROWS.iter().map(|&rows| insert_sql(rows)).collect());
    // Each statement is taken from the cache once per size, not once per
    // run: the cache finds it by hashing and comparing its text, a few
    // kilobytes for 64 rows, and clears its bindings when it goes back.
    // A run's parameters replace the previous run's; the shared ones stay.
    for group in runs(statements, 0, rows.len()).chunk_by(|a, b| a.0.rows == b.0.rows) {
        let sql = group[0].0;
        let mut feed = tx.prepare_cached(&sql.feed)?;
        let mut history = tx.prepare_cached(&sql.history)?;
        feed.raw_bind_parameter(1, id)?;
        history.raw_bind_parameter(1, id)?;
        history.raw_bind_parameter(2, now)?;
        for (_, run) in group {
            for (i, (seq, row)) in rows[run.clone()].iter().enumerate() {
                let seq = *seq as i64;
                feed.raw_bind_parameter(2 + 3 * i, first + (run.start + i) as i64)?;
                feed.raw_bind_parameter(3 + 3 * i, &row.resource)?;
                feed.raw_bind_parameter(4 + 3 * i, seq)?;
                let p = 3 + 5 * i;
                history.raw_bind_parameter(p, seq)?;
                history.raw_bind_parameter(p + 1, &row.resource)?;
                history.raw_bind_parameter(p + 2, &row.key)?;
                history.raw_bind_parameter(p + 3, i32::from(row.delete))?;
                history.raw_bind_parameter(p + 4, row.record.as_ref())?;
            }
            feed.raw_execute()?;
            history.raw_execute()?;
        }
    }
    // `current` in order: each run of upserts by statements of many rows (a
    // later row of the same key updates the earlier one), each delete on
    // its own.
    let mut remove = tx.prepare_cached("DELETE FROM current WHERE resource = ?1 AND key = ?2")?;
    let mut done = 0;
    while done < rows.len() {
        let (_, row) = rows[done];
        if row.delete {
            remove.execute(params![row.resource, row.key])?;
            done += 1;
            continue;
        }
        let end = done + rows[done..].iter().take_while(|(_, r)| !r.delete).count();
        for group in runs(statements, done, end).chunk_by(|a, b| a.0.rows == b.0.rows) {
            let mut upsert = tx.prepare_cached(&group[0].0.upsert)?;
            upsert.raw_bind_parameter(1, id)?;
            for (_, run) in group {
                for (i, (seq, row)) in rows[run.clone()].iter().enumerate() {
                    let p = 2 + 4 * i;
                    upsert.raw_bind_parameter(p, &row.resource)?;
                    upsert.raw_bind_parameter(p + 1, &row.key)?;
                    upsert.raw_bind_parameter(p + 2, *seq as i64)?;
                    upsert.raw_bind_parameter(p + 3, first + (run.start + i) as i64)?;
                }
                upsert.raw_execute()?;
            }
        }
        done = end;
    }
    Ok(Some(first + rows.len() as i64 - 1))
}

/// Splits `start..end` into runs of the statements' sizes, largest first,
/// each with its statements.
fn runs(statements: &[InsertSql], mut start: usize, end: usize) -> Vec<(&InsertSql, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for sql in statements {
        while end - start >= sql.rows {
            out.push((sql, start..start + sql.rows));
            start += sql.rows;
        }
    }
    out
}
