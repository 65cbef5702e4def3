//! The quarantine tool's side of the outbox (`qianzhi quarantine`): which
//! entries a command is about (`QuarantineFilter`), and the two changes a
//! person makes: fixed entries queued as records (a retry) and entries
//! discarded into the `discarded` table with the reason and who did it.
//! [`QuarantineStore`] applies them either to a stopped agent's file
//! ([`Offline`], holding the data directory's lock) or through a running
//! agent's writer thread ([`Outbox`], over the control socket); both run
//! the same statements ([`retry_in`], [`discard_in`]).
//!
//! It does not decide what is fixed (`crate::quarantine` normalizes the
//! entries again), and it adds no entries: sources and the link quarantine
//! through the writer thread.
//!
//! Entry ids are never reused: the operator and the discard records refer
//! to entries by number. SQLite gives a plain `INTEGER PRIMARY KEY` the
//! highest id plus one, so deleting the newest entry would hand its number
//! to the next one. New files make the table `AUTOINCREMENT`; older ones
//! are migrated whenever the agent or an offline tool opens them
//! ([`never_reuse_ids`]), before anything is deleted.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::{DirLock, Error, Outbox, create_schema, open_connection};
use crate::clock::now_us;
use crate::normalize::Quarantined;

/// A quarantine entry as stored, with its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    pub at_us: i64,
    pub entry: Quarantined,
}

/// Which quarantine entries a command is about (also sent over the
/// control socket).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct QuarantineFilter {
    pub ids: Vec<i64>,
    pub source: Option<String>,
    pub resource: Option<String>,
    /// A rule code such as `CHECK_DIGIT`, in any case: entries with a
    /// reason that starts with it.
    pub rule: Option<String>,
}

impl QuarantineFilter {
    pub fn matches(&self, h: &Held) -> bool {
        (self.ids.is_empty() || self.ids.contains(&h.id))
            && self.source.as_ref().is_none_or(|s| *s == h.entry.source)
            && self.resource.as_ref().is_none_or(|r| *r == h.entry.resource)
            && self
                .rule
                .as_ref()
                .is_none_or(|rule| h.rules().any(|code| code.eq_ignore_ascii_case(rule)))
    }
}

impl Held {
    /// The codes of the rules the entry broke (`CHECK_DIGIT` of
    /// `CHECK_DIGIT: …`); a reason without a code (a row that could not be
    /// split into fields) has none.
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        self.entry.reasons.iter().filter_map(|r| crate::normalize::rule_code(r))
    }
}

pub(super) fn held_entries(conn: &Connection, filter: &QuarantineFilter) -> rusqlite::Result<Vec<Held>> {
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
            .and_then(|mut c| never_reuse_ids(&mut c).map(|()| c))
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
}

/// Where a retry or a discard is applied: a stopped agent's outbox file
/// ([`Offline`]) or a running agent's writer ([`Outbox`]).
pub trait QuarantineStore {
    /// Every held entry, oldest first.
    fn held(&self) -> Result<Vec<Held>, Error>;
    /// In one transaction: queues the fixed records (each replaces its
    /// entry) and rewrites the reasons of entries that still fail.
    fn retry(&mut self, fixed: Vec<(i64, Vec<u8>)>, still: Vec<(i64, Vec<String>)>) -> Result<(), Error>;
    /// In one transaction: drops entries for good, keeping each with the
    /// reason and who did it.
    fn discard(&mut self, entries: Vec<Held>, reason: &str, who: &str) -> Result<(), Error>;
}

impl QuarantineStore for Offline {
    fn held(&self) -> Result<Vec<Held>, Error> {
        self.quarantine(&QuarantineFilter::default())
    }

    fn retry(&mut self, fixed: Vec<(i64, Vec<u8>)>, still: Vec<(i64, Vec<String>)>) -> Result<(), Error> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let last = super::chunk::last_seq(&tx)?;
            let (.., after) = retry_in(&tx, last, &fixed, &still, now_us())?;
            super::chunk::set_meta(&tx, "last_seq", after)?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.err(e))
    }

    fn discard(&mut self, entries: Vec<Held>, reason: &str, who: &str) -> Result<(), Error> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            discard_in(&tx, &entries, reason, who, now_us())?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.err(e))
    }
}

/// The running agent: reads through its read connection, changes through
/// its writer thread (so the queue figures, the sequence and the link see
/// the change at once). For blocking code (a `spawn_blocking` task).
impl QuarantineStore for Outbox {
    fn held(&self) -> Result<Vec<Held>, Error> {
        self.read_blocking(|r| r.held(&QuarantineFilter::default()))
    }

    fn retry(&mut self, fixed: Vec<(i64, Vec<u8>)>, still: Vec<(i64, Vec<String>)>) -> Result<(), Error> {
        self.command_blocking(|reply| super::Command::Retry(super::Retry { fixed, still }, reply))
    }

    fn discard(&mut self, entries: Vec<Held>, reason: &str, who: &str) -> Result<(), Error> {
        let discard = super::Discard {
            entries,
            reason: reason.to_owned(),
            who: who.to_owned(),
        };
        self.command_blocking(|reply| super::Command::Discard(discard, reply))
    }
}

/// Queues each fixed record in place of its entry and rewrites the reasons
/// of the others, under the sequences after `last`. An entry no longer held
/// (taken by an earlier command) queues nothing. Returns what was queued,
/// (records, bytes), and the new highest sequence.
pub(super) fn retry_in(
    tx: &Connection,
    last: u64,
    fixed: &[(i64, Vec<u8>)],
    still: &[(i64, Vec<String>)],
    now: i64,
) -> rusqlite::Result<(u64, u64, u64)> {
    let mut queued = Vec::with_capacity(fixed.len());
    for (id, record) in fixed {
        if tx.execute("DELETE FROM quarantine WHERE id = ?1", [id])? == 0 {
            continue;
        }
        queued.push(record.clone());
    }
    let last = super::chunk::append(tx, last, &queued, now)?;
    for (id, reasons) in still {
        let reasons = serde_json::to_string(reasons).unwrap_or_default();
        tx.execute("UPDATE quarantine SET reasons = ?2 WHERE id = ?1", params![id, reasons])?;
    }
    Ok((queued.len() as u64, queued.iter().map(|r| r.len() as u64).sum(), last))
}

/// Moves entries to `discarded` with the reason and who; an entry no
/// longer held is skipped. Returns how many were discarded.
pub(super) fn discard_in(
    tx: &Connection,
    entries: &[Held],
    reason: &str,
    who: &str,
    now: i64,
) -> rusqlite::Result<u64> {
    let mut discarded = 0;
    for h in entries {
        if tx.execute("DELETE FROM quarantine WHERE id = ?1", [h.id])? == 0 {
            continue;
        }
        let entry = serde_json::json!({
            "quarantine_id": h.id, "source": h.entry.source, "object": h.entry.object, "line": h.entry.line,
            "resource": h.entry.resource, "reasons": h.entry.reasons, "raw": h.entry.raw,
        })
        .to_string();
        tx.execute(
            "INSERT INTO discarded (at_us, reason, who, entry) VALUES (?1, ?2, ?3, ?4)",
            params![now, reason, who, entry],
        )?;
        discarded += 1;
    }
    Ok(discarded)
}

/// Makes the quarantine's ids `AUTOINCREMENT` (see the module doc), once:
/// the table is copied, ids kept, and the sequence starts above every id
/// ever given, including those of entries discarded before (their ids are in
/// the discard records; retried entries left no trace, so an id retried away
/// from the top of an old file may still come back once).
pub(super) fn never_reuse_ids(conn: &mut Connection) -> rusqlite::Result<()> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("AUTOINCREMENT") {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE quarantine_ids (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             at_us INTEGER NOT NULL,
             source TEXT NOT NULL,
             object TEXT NOT NULL,
             line INTEGER NOT NULL,
             resource TEXT NOT NULL,
             reasons TEXT NOT NULL,
             raw TEXT NOT NULL);
         INSERT INTO quarantine_ids (id, at_us, source, object, line, resource, reasons, raw)
             SELECT id, at_us, source, object, line, resource, reasons, raw FROM quarantine;
         DROP TABLE quarantine;
         ALTER TABLE quarantine_ids RENAME TO quarantine;",
    )?;
    let highest: i64 = tx.query_row(
        "SELECT max(
             coalesce((SELECT max(id) FROM quarantine), 0),
             coalesce((SELECT max(json_extract(entry, '$.quarantine_id')) FROM discarded), 0))",
        [],
        |r| r.get(0),
    )?;
    tx.execute("DELETE FROM sqlite_sequence WHERE name = 'quarantine'", [])?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('quarantine', ?1)",
        [highest],
    )?;
    tx.commit()
}
