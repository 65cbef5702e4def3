//! The hub's store: SQLite (WAL, synchronous=FULL), idempotent by sequence.
//!
//! Each (agency, outbox) has a high-water mark: the highest sequence stored
//! or rejected. A batch is applied in one transaction that writes its
//! records, its rejections and the new high-water mark together, so a
//! resent batch stores nothing twice and an ack is only sent after commit.
//!
//! Schema:
//! - `outboxes(agency, outbox_id, hwm)`
//! - `history(agency, outbox_id, seq, resource, key, op, items, source, ...)`:
//!   every accepted change, keyed (so unique) by (agency, outbox_id, seq).
//! - `current(resource, key, agency, items, ...)`: the latest state per
//!   (resource, key); a delete removes the row.
//! - `rejections(agency, outbox_id, seq, code, reason)`: kept until the
//!   agent's Hello shows it holds nothing below them, so a rejection whose
//!   message was lost in a crash is repeated in the next Welcome.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use agent::catalog::{Catalog, Sharing};
use prost::Message;
use proto::v1::{Entry, Operation, Record, RejectCode, Rejected};
use rusqlite::{Connection, OptionalExtension, params};

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
#[error("store {path}: {source}")]
pub struct Error {
    path: PathBuf,
    source: rusqlite::Error,
}

/// The hub's durable store.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Records stored.
    pub stored: u64,
    /// Entries at or below the high-water mark, skipped as replays.
    pub replayed: u64,
    pub rejected: Vec<Rejected>,
    /// The high-water mark after the batch: the ack.
    pub hwm: u64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Error> {
        let err = |source| Error {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            // A missing folder shows up as the open error below.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        // Group commits write tens of thousands of rows: keep their pages in
        // memory instead of spilling mid-transaction.
        conn.pragma_update(None, "cache_size", -65536).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outboxes (
                 agency TEXT NOT NULL, outbox_id TEXT NOT NULL, hwm INTEGER NOT NULL,
                 first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL,
                 PRIMARY KEY (agency, outbox_id));
             CREATE TABLE IF NOT EXISTS history (
                 agency TEXT NOT NULL, outbox_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 resource TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL,
                 items TEXT NOT NULL, source TEXT NOT NULL,
                 captured_us INTEGER NOT NULL, received_us INTEGER NOT NULL,
                 PRIMARY KEY (agency, outbox_id, seq)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS current (
                 resource TEXT NOT NULL, key TEXT NOT NULL, agency TEXT NOT NULL,
                 items TEXT NOT NULL, outbox_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 updated_us INTEGER NOT NULL,
                 PRIMARY KEY (resource, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS rejections (
                 agency TEXT NOT NULL, outbox_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 code INTEGER NOT NULL, reason TEXT NOT NULL, at_us INTEGER NOT NULL,
                 PRIMARY KEY (agency, outbox_id, seq));",
        )
        .map_err(err)?;
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open:
        // rusqlite rolls back on drop.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error {
            path: self.path.clone(),
            source,
        }
    }

    /// The high-water mark of an outbox, and the rejections at or above
    /// `first_unacked` (older ones are forgotten: the agent has them).
    pub fn welcome(&self, agency: &str, outbox: &str, first_unacked: u64) -> Result<(u64, Vec<Rejected>), Error> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> rusqlite::Result<(u64, Vec<Rejected>)> {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM rejections WHERE agency = ?1 AND outbox_id = ?2 AND seq < ?3",
                params![agency, outbox, first_unacked as i64],
            )?;
            let hwm: i64 = tx
                .query_row(
                    "SELECT hwm FROM outboxes WHERE agency = ?1 AND outbox_id = ?2",
                    params![agency, outbox],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let rejections = {
                let mut stmt = tx.prepare(
                    "SELECT seq, code, reason FROM rejections WHERE agency = ?1 AND outbox_id = ?2 ORDER BY seq",
                )?;
                stmt.query_map(params![agency, outbox], |r| {
                    Ok(Rejected {
                        seq: r.get::<_, i64>(0)? as u64,
                        code: r.get(1)?,
                        reason: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok((hwm as u64, rejections))
        };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// Applies one batch from `agency`'s outbox in one transaction.
    pub fn apply(&self, agency: &str, outbox: &str, entries: &[Entry], catalog: &Catalog) -> Result<Applied, Error> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> rusqlite::Result<Applied> {
            let tx = conn.transaction()?;
            let now = now_us();
            let mut applied = Applied {
                hwm: tx
                    .query_row(
                        "SELECT hwm FROM outboxes WHERE agency = ?1 AND outbox_id = ?2",
                        params![agency, outbox],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .unwrap_or(0) as u64,
                ..Applied::default()
            };
            for e in entries {
                if e.seq <= applied.hwm {
                    applied.replayed += 1;
                    continue;
                }
                if e.seq != applied.hwm + 1 {
                    tracing::warn!(agency, outbox, expected = applied.hwm + 1, got = e.seq, "sequence gap");
                }
                match check(agency, &e.record, catalog) {
                    Ok(record) => {
                        store_record(&tx, agency, outbox, e.seq, &record, now)?;
                        applied.stored += 1;
                    }
                    Err((code, reason)) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO rejections (agency, outbox_id, seq, code, reason, at_us)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![agency, outbox, e.seq as i64, code as i32, reason, now])?;
                        applied.rejected.push(Rejected {
                            seq: e.seq,
                            code: code as i32,
                            reason,
                        });
                    }
                }
                applied.hwm = e.seq;
            }
            tx.execute(
                "INSERT INTO outboxes (agency, outbox_id, hwm, first_seen_us, last_seen_us)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (agency, outbox_id) DO UPDATE SET hwm = excluded.hwm, last_seen_us = excluded.last_seen_us",
                params![agency, outbox, applied.hwm as i64, now],
            )?;
            tx.commit()?;
            Ok(applied)
        };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// Writes the store as JSON Lines: the current state, or with `history`
    /// every change in arrival order. Returns the number of lines.
    pub fn export(&self, resource: Option<&str>, history: bool, out: &mut dyn Write) -> anyhow::Result<u64> {
        let conn = self.lock();
        let sql = if history {
            "SELECT resource, key, op, items, agency, outbox_id, seq FROM history
             WHERE ?1 IS NULL OR resource = ?1 ORDER BY received_us, agency, outbox_id, seq"
        } else {
            "SELECT resource, key, 'upsert', items, agency, outbox_id, seq FROM current
             WHERE ?1 IS NULL OR resource = ?1 ORDER BY resource, key"
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([resource])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let key: String = row.get(1)?;
            let items: String = row.get(3)?;
            let line = serde_json::json!({
                "resource": row.get::<_, String>(0)?,
                "key": serde_json::from_str::<serde_json::Value>(&key)?,
                "op": row.get::<_, String>(2)?,
                "items": serde_json::from_str::<serde_json::Value>(&items)?,
                "agency": row.get::<_, String>(4)?,
                "outbox": row.get::<_, String>(5)?,
                "seq": row.get::<_, i64>(6)?,
            });
            writeln!(out, "{line}")?;
            n += 1;
        }
        Ok(n)
    }
}

/// Decodes and checks a record against the catalog.
fn check(agency: &str, bytes: &[u8], catalog: &Catalog) -> Result<Record, (RejectCode, String)> {
    let record = Record::decode(bytes).map_err(|e| (RejectCode::Malformed, format!("not a Record: {e}")))?;
    let Some(resource) = catalog.resource(&record.resource) else {
        return Err((
            RejectCode::UnknownResource,
            format!("resource {:?} is not in the hub's catalog", record.resource),
        ));
    };
    resource.check(agency, &record).map_err(|v| (v.code, v.reason))?;
    if resource.sharing == Sharing::NotShared {
        return Err((
            RejectCode::InvalidRecord,
            format!("resource {} is 不予共享 and is not exchanged", resource.code),
        ));
    }
    Ok(record)
}

fn store_record(
    tx: &rusqlite::Transaction<'_>,
    agency: &str,
    outbox: &str,
    seq: u64,
    record: &Record,
    now: i64,
) -> rusqlite::Result<()> {
    let key = serde_json::to_string(&record.key).unwrap_or_default();
    let items: BTreeMap<&String, &String> = record.items.iter().collect();
    let items = serde_json::to_string(&items).unwrap_or_default();
    let op = if record.op == Operation::Delete as i32 { "delete" } else { "upsert" };
    let source = record.source.as_ref().map_or_else(String::new, |s| {
        format!(
            "{{\"source\":{},\"object\":{},\"line\":{},\"change_id\":{}}}",
            serde_json::Value::from(s.source.as_str()),
            serde_json::Value::from(s.object.as_str()),
            s.line,
            serde_json::Value::from(s.change_id.as_str())
        )
    });
    tx.prepare_cached(
        "INSERT INTO history (agency, outbox_id, seq, resource, key, op, items, source, captured_us, received_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![agency, outbox, seq as i64, record.resource, key, op, items, source, record.captured_at_us, now])?;
    if op == "delete" {
        tx.prepare_cached("DELETE FROM current WHERE resource = ?1 AND key = ?2")?
            .execute(params![record.resource, key])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO current (resource, key, agency, items, outbox_id, seq, updated_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (resource, key) DO UPDATE SET agency = excluded.agency, items = excluded.items,
                 outbox_id = excluded.outbox_id, seq = excluded.seq, updated_us = excluded.updated_us",
        )?
        .execute(params![record.resource, key, agency, items, outbox, seq as i64, now])?;
    }
    Ok(())
}
