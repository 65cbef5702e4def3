//! Recovery of a damaged outbox at open: `PRAGMA quick_check`, and if the
//! file is damaged, the file moved aside and every row that can still be
//! read salvaged into a new one by rowid ranges (halved around what fails),
//! each missing sequence queued as an empty entry, and a report
//! (`outbox-recovered.txt`) that stays until an operator acknowledges it.
//!
//! A crash needs none of this: SQLite's WAL makes every transaction atomic
//! across kill -9 and power loss. It does not talk to the hub: the empty
//! entries tell the hub, and the report tells the operator (and the link,
//! which then accepts a hub ahead of the outbox).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::writer::initial_stats;
use super::{Error, Stats, chunk, create_schema, open_connection};
use crate::clock::now_us;

/// Opens the outbox file for the writer thread, checked. A damaged file is
/// moved aside and what can be read is salvaged into a new one first, and
/// the report is saved in `dir`.
pub(super) fn open_or_recover(dir: &Path, path: &Path) -> Result<(Connection, String, Stats), Error> {
    let sql = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    match open_checked(path) {
        Ok(opened) => Ok(opened),
        Err(e) if is_damage(&e) => {
            // Never a crash loop: move the file aside, keep what can be read.
            tracing::error!(path = %path.display(), damage = %e, "the outbox is damaged; recovering what can be read");
            let report = recover(path).map_err(sql)?;
            tracing::error!(path = %path.display(), "{}", report.text());
            report.save(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
            open_checked(path).map_err(sql)
        }
        Err(e) => Err(sql(e)),
    }
}

/// Opens the outbox file, checks it, and gives back the writer connection,
/// its identity and its figures.
fn open_checked(path: &Path) -> rusqlite::Result<(Connection, String, Stats)> {
    let mut conn = open_connection(path)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {check}")),
        ));
    }
    // SQLite checks its pages, not what a chunk holds: every queued chunk
    // must decode too, or the link would stop at it.
    if let Err(e) = chunk::check_all(&conn) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(e.to_string()),
        ));
    }
    create_schema(&conn)?;
    let tx = conn.unchecked_transaction()?;
    chunk::migrate_records(&tx)?;
    tx.commit()?;
    super::quarantine::never_reuse_ids(&mut conn)?;
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

/// `lo..=hi` in ranges of [`SALVAGE_RANGE`], as a stack that pops them in
/// ascending order.
fn ranges(lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut todo = Vec::new();
    let mut start = hi;
    while start >= lo {
        let a = start.saturating_sub(SALVAGE_RANGE - 1).max(lo);
        todo.push((a, start));
        start = a - 1;
    }
    todo
}

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
    let mut todo = ranges(lo, hi);
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

/// What [`salvage_chunks`] found: the sequence ranges lost, the records
/// salvaged, the highest sequence seen.
type Salvaged = (Vec<(i64, i64)>, u64, u64);

/// Salvages the `chunks` of a damaged outbox into `tx`, by ranges of their
/// first sequences. A range whose read fails, or whose chunks leave
/// sequences uncovered (a damaged interior page can end a read early without
/// an error), is read again in smaller parts, down to single first
/// sequences, so that a damaged page costs only the chunks on it. A chunk
/// whose entries do not decode is lost with its page. Returns the
/// sequences no chunk covers from `first` (the first unacknowledged one,
/// when the identity's counters were read; else from the lowest chunk)
/// up to `at_least_to` (the highest ever assigned), the records salvaged
/// and the highest sequence seen.
fn salvage_chunks(
    old: &Connection,
    tx: &Connection,
    first: Option<u64>,
    at_least_to: u64,
) -> rusqlite::Result<Salvaged> {
    let bound = |sql: &str| old.query_row(sql, [], |r| r.get::<_, Option<i64>>(0));
    // The first chunk may start up to a chunk's entries before the first
    // unacknowledged sequence.
    let (lo, lo_known) = match (first, bound("SELECT min(first) FROM chunks")) {
        (Some(f), Ok(Some(min))) => (min.min(f as i64), true),
        (Some(f), _) => ((f as i64 - 4096).max(1), true),
        (None, Ok(None)) => (at_least_to as i64 + 1, true),
        (None, Ok(Some(min))) => (min, true),
        (None, Err(_)) => (1, false),
    };
    let hi = bound("SELECT max(first) FROM chunks")
        .ok()
        .flatten()
        .unwrap_or(lo + (1 << 20))
        .max(at_least_to as i64);
    let read_range = |a: i64, b: i64| -> rusqlite::Result<Vec<chunk::Chunk>> {
        let mut stmt = old.prepare_cached(
            "SELECT first, last, enqueued_us, packing, data FROM chunks WHERE first BETWEEN ?1 AND ?2 ORDER BY first",
        )?;
        let rows = stmt.query_map([a, b], |r| {
            let c = chunk::read(r)?;
            c.entries()?;
            Ok(c)
        })?;
        rows.collect()
    };
    // first → last of every chunk salvaged.
    let mut covered: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let uncovered = |covered: &std::collections::BTreeMap<u64, u64>, a: u64, b: u64| {
        let mut gaps = Vec::new();
        let mut at = a;
        let start = covered.range(..=a).next_back().map_or(a, |(&f, _)| f);
        for (&f, &l) in covered.range(start..=b) {
            if f > at {
                gaps.push((at, f - 1));
            }
            at = at.max(l.saturating_add(1));
        }
        if at <= b {
            gaps.push((at, b));
        }
        gaps
    };
    let (mut records, mut top) = (0u64, 0u64);
    let mut todo = ranges(lo, hi);
    while let Some((a, b)) = todo.pop() {
        match read_range(a, b) {
            Ok(chunks) => {
                for c in chunks {
                    if c.last < c.first || uncovered(&covered, c.first, c.last) != [(c.first, c.last)] {
                        continue; // Damaged bookkeeping: its sequences count as lost.
                    }
                    let entries = c.entries()?;
                    records += chunk::insert_at(tx, c.first, &entries, c.enqueued_us)?.0;
                    covered.insert(c.first, c.last);
                    top = top.max(c.last);
                }
                let gaps = uncovered(&covered, a as u64, b as u64);
                if gaps.as_slice() == [(a as u64, b as u64)] {
                    if a < b {
                        let mid = a + (b - a) / 2;
                        todo.push((mid + 1, b));
                        todo.push((a, mid));
                    }
                } else {
                    for &(ga, gb) in gaps.iter().rev() {
                        todo.push((ga as i64, gb as i64));
                    }
                }
            }
            Err(_) if a < b => {
                let mid = a + (b - a) / 2;
                todo.push((mid + 1, b));
                todo.push((a, mid));
            }
            Err(_) => {}
        }
    }
    // With the lowest sequence unknown, a gap before the first chunk read
    // may be chunks deleted long ago: not reported.
    let from = match first {
        Some(f) => f,
        None if lo_known => lo as u64,
        None => covered.keys().next().copied().unwrap_or(u64::MAX),
    };
    let to = (at_least_to).max(top);
    let lost = if from <= to {
        uncovered(&covered, from, to)
            .into_iter()
            .map(|(a, b)| (a as i64, b as i64))
            .collect()
    } else {
        Vec::new()
    };
    Ok((lost, records, top))
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
    // An outbox from before chunks keeps a row per record.
    let old_max: i64 = old
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'records'", [], |r| {
            r.get(0)
        })
        .unwrap_or(0);
    let mut max_seq = chunk::last_seq(&tx)?.max(old_max.max(0) as u64);
    if chunk::has_table(&old, "records").unwrap_or(true) {
        let mut run: Vec<Vec<u8>> = Vec::new();
        let (mut first, mut at) = (0u64, 0i64);
        let mut salvaged = 0;
        report.lost = salvage(
            &old,
            "records",
            "enqueued_us, data",
            old_max,
            true,
            |r| Ok((r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)),
            |seq, (enqueued, data)| {
                let seq = seq as u64;
                if !run.is_empty() && (seq != first + run.len() as u64 || run.len() >= 4096) {
                    salvaged += chunk::insert_at(&tx, first, &run, at)?.0;
                    run.clear();
                }
                if run.is_empty() {
                    (first, at) = (seq, enqueued);
                }
                run.push(data);
                max_seq = max_seq.max(seq);
                Ok(())
            },
        )?;
        if !run.is_empty() {
            salvaged += chunk::insert_at(&tx, first, &run, at)?.0;
        }
        report.records += salvaged;
    }
    if chunk::has_table(&old, "chunks").unwrap_or(true) {
        // The identity's counters, if they were read, say which sequences
        // must be there: everything after the last ack (from 1 if none
        // came), up to the last one assigned.
        let first = meta_lost
            .is_empty()
            .then(|| chunk::acked_seq(&tx))
            .transpose()?
            .map(|a| a + 1);
        let (lost, records, top) = salvage_chunks(&old, &tx, first, max_seq)?;
        report.lost.extend(lost);
        report.records += records;
        max_seq = max_seq.max(top);
    }
    // The hub takes only contiguous sequences: each missing one is queued
    // as an empty entry, which tells the hub that this outbox lost it (a
    // sequence the hub already holds is skipped there as a replay).
    let now = now_us();
    for &(a, b) in &report.lost {
        let (a, b) = (a as u64, b as u64);
        let mut from = a;
        while from <= b {
            let n = (b - from + 1).min(4096) as usize;
            chunk::insert_at(&tx, from, &vec![[0u8; 0]; n], now)?;
            from += n as u64;
        }
        max_seq = max_seq.max(b);
    }
    chunk::set_meta(&tx, "last_seq", max_seq)?;
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
