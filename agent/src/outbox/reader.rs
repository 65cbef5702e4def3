//! Read-only queries on the outbox: pages of records for the link, capture
//! positions for the sources, figures and quarantine entries for `/status`
//! and the tools.
//!
//! It owns no connection: the queries run on the handle's read connection
//! (`Outbox::read`) or on a tool's own. It never writes: every change goes
//! through the writer thread (`writer.rs`) or, with the agent stopped,
//! through `Offline` (`quarantine.rs`).

use prost::bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::chunk;
use super::quarantine::{Held, QuarantineFilter, held_entries};
use crate::normalize::Quarantined;

/// Queued entries read for the link: (sequence, record bytes; empty for a
/// sequence with no record).
pub type Entries = Vec<(u64, Bytes)>;

/// Read-only queries on the outbox's read connection.
pub struct Reader<'a>(&'a Connection);

impl<'a> Reader<'a> {
    /// Queries on a connection of the caller's (tools reading the outbox).
    pub fn new(conn: &'a Connection) -> Reader<'a> {
        Reader(conn)
    }

    /// Entries with `seq >= from`, in order, at most `max_records` and
    /// about `max_bytes` (always at least one if there is one). An empty
    /// entry is a sequence with no record (lost with a damaged outbox, or
    /// rejected by the hub).
    ///
    /// Their bytes are copied into one buffer that every entry's `Bytes`
    /// shares: one allocation per batch instead of one per record, freed
    /// whole once the last of them is dropped (when the batch is sent).
    pub fn records_from(&self, from: u64, max_records: usize, max_bytes: usize) -> rusqlite::Result<Entries> {
        Ok(self.batch_from(from, max_records, max_bytes)?.0)
    }

    /// [`Reader::records_from`], and when the first entry's chunk was
    /// committed (µs since the epoch): the link's read, two statements.
    pub fn batch_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> rusqlite::Result<(Entries, Option<i64>)> {
        // What the hub acknowledged may still be in the first chunk.
        let from = from.max(chunk::acked_seq(self.0)? + 1).min(i64::MAX as u64);
        // From the chunk that holds `from`, which starts at or before it.
        let mut stmt = self.0.prepare_cached(
            "SELECT first, last, enqueued_us, packing, data FROM chunks
             WHERE first >= coalesce((SELECT max(first) FROM chunks WHERE first <= ?1), ?1)
             ORDER BY first LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![from as i64, max_records as i64])?;
        let mut buf = Vec::new();
        // (seq, where its bytes end in `buf`)
        let mut ends = Vec::new();
        let mut first_enqueued = None;
        'chunks: while let Some(row) = rows.next()? {
            let chunk = chunk::read(row)?;
            for (i, entry) in chunk.entries()?.into_iter().enumerate() {
                let seq = chunk.first + i as u64;
                if seq < from {
                    continue;
                }
                first_enqueued.get_or_insert(chunk.enqueued_us);
                buf.extend_from_slice(entry);
                ends.push((seq, buf.len()));
                if buf.len() >= max_bytes || ends.len() >= max_records {
                    break 'chunks;
                }
            }
        }
        let buf = Bytes::from(buf);
        let mut start = 0;
        let entries = ends
            .into_iter()
            .map(|(seq, end)| {
                let record = buf.slice(start..end);
                start = end;
                (seq, record)
            })
            .collect();
        Ok((entries, first_enqueued))
    }

    /// The record `seq`, if it is still queued (not acknowledged, rejected
    /// or lost).
    pub fn record(&self, seq: u64) -> rusqlite::Result<Option<Vec<u8>>> {
        if seq <= chunk::acked_seq(self.0)? {
            return Ok(None);
        }
        let Some(c) = chunk::containing(self.0, seq)? else {
            return Ok(None);
        };
        let entries = c.entries()?;
        let entry = entries[(seq - c.first) as usize];
        Ok((!entry.is_empty()).then(|| entry.to_vec()))
    }

    /// Bytes of free pages inside the database file: space the outbox
    /// reuses before it grows the file (a file never shrinks on delete).
    pub fn reusable_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self
            .0
            .prepare_cached("PRAGMA freelist_count")?
            .query_row([], |r| r.get(0))?;
        let size: i64 = self.0.prepare_cached("PRAGMA page_size")?.query_row([], |r| r.get(0))?;
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

    /// The lowest queued sequence not yet acknowledged, if any.
    pub fn first_seq(&self) -> rusqlite::Result<Option<u64>> {
        let first: Option<i64> = self.0.query_row("SELECT min(first) FROM chunks", [], |r| r.get(0))?;
        let acked = chunk::acked_seq(self.0)?;
        Ok(first.map(|f| (f as u64).max(acked + 1)))
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
