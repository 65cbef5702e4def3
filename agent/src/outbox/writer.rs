//! The writer thread, the outbox's one writer: it takes every pending
//! command off the handle's channel and applies them in one transaction
//! (group commit, one fsync), each command in a savepoint of its own when
//! one of them fails, and publishes the queue figures (`Stats`) after every
//! commit.
//!
//! It does not read for the link (the handle's read connection does) and
//! does not measure the disk (it asks `space.rs` whether a group may write).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::quarantine::{Held, discard_in, retry_in};
use super::space::Space;
use super::{Error, Stats, Write, chunk, sqlite_disk_full};
use crate::clock::now_us;
use crate::normalize::Quarantined;

/// What the handle asks of the writer thread, each with its reply.
pub(super) enum Command {
    Write(Write, oneshot::Sender<Result<(), Error>>),
    Ack(u64, oneshot::Sender<Result<(), Error>>),
    /// An ack whose delete may wait for the next commit, or a second.
    AckLater(u64, oneshot::Sender<Result<(), Error>>),
    Reject(u64, Quarantined, oneshot::Sender<Result<(), Error>>),
    /// Answered by the writer thread at once: proves it is not stuck.
    Ping(oneshot::Sender<Result<(), Error>>),
    /// Moves the sequence past a value (the hub holds it already).
    Advance(u64, oneshot::Sender<Result<(), Error>>),
    /// Answered after the writer has looked at the free space: sets or
    /// clears `Stats::disk_low`, and puts the ballast back when space is.
    CheckDisk(oneshot::Sender<Result<(), Error>>),
    /// A person's retry of quarantine entries (`qianzhi quarantine retry`).
    Retry(Retry, oneshot::Sender<Result<(), Error>>),
    /// A person's discard of quarantine entries.
    Discard(Discard, oneshot::Sender<Result<(), Error>>),
}

/// Entries that normalize now, as records to queue in their place, and the
/// new reasons of those that still fail.
pub(super) struct Retry {
    pub fixed: Vec<(i64, Vec<u8>)>,
    pub still: Vec<(i64, Vec<String>)>,
}

/// Entries to drop for good, with the reason and who.
pub(super) struct Discard {
    pub entries: Vec<Held>,
    pub reason: String,
    pub who: String,
}

impl Command {
    /// Bytes the command adds to the outbox file, about (what the disk
    /// reserve is checked against).
    fn adds(&self) -> u64 {
        match self {
            Command::Write(w, _) => w.size(),
            Command::Retry(r, _) => r.fixed.iter().map(|(_, data)| data.len() as u64 + 24).sum(),
            _ => 0,
        }
    }

    /// True for the commands that add records, which a disk below its
    /// reserve refuses.
    fn adds_records(&self) -> bool {
        matches!(self, Command::Write(..) | Command::Retry(..))
    }
}

/// Commands one transaction takes at most: bounds the memory of a group.
const GROUP_MAX_COMMANDS: usize = 256;

/// The queue figures, counted from the file at open.
pub(super) fn initial_stats(conn: &Connection) -> rusqlite::Result<Stats> {
    let (records, bytes, oldest_us) = chunk::figures(conn)?;
    let quarantined: i64 = conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(Stats {
        records,
        bytes,
        oldest_us,
        last_seq: chunk::last_seq(conn)?,
        acked_seq: 0,
        quarantined: quarantined as u64,
        error: None,
        recovered: None,
        disk_low: false,
    })
}

/// The writer thread: group commit of everything pending.
pub(super) fn writer_loop(
    mut conn: Connection,
    path: PathBuf,
    mut rx: mpsc::Receiver<Command>,
    stats: watch::Sender<Stats>,
    space: Space,
) {
    let mut later = Later::default();
    // Only to wait for a command with a deadline (tokio's channel has no
    // blocking receive with a timeout).
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
    loop {
        let first = match (later.due, &timer) {
            (Some(due), Ok(timer)) => {
                // The timer is made inside `block_on`: it needs the runtime.
                match timer.block_on(async { tokio::time::timeout_at(due.into(), rx.recv()).await }) {
                    Ok(received) => received,
                    Err(_) => {
                        commit_group(&mut conn, &path, later.take(), &stats, &space);
                        continue;
                    }
                }
            }
            _ => rx.blocking_recv(),
        };
        let Some(first) = first else { break };
        let mut group = later.take();
        group.push(first);
        while group.len() < GROUP_MAX_COMMANDS {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        if group.iter().all(|c| matches!(c, Command::AckLater(..))) && timer.is_ok() && !stats.borrow().disk_low {
            let acked = stats.borrow().acked_seq;
            if !later.hold(group, acked) {
                continue;
            }
            group = later.take();
        }
        commit_group(&mut conn, &path, group, &stats, &space);
    }
    // Closing: what was held is deleted now, so a restart does not send it
    // again.
    let held = later.take();
    if !held.is_empty() {
        commit_group(&mut conn, &path, held, &stats, &space);
    }
}

/// Acks whose deletes wait for the next commit. At a trickle every batch's
/// ack would otherwise be a transaction and an fsync of its own, as costly
/// as the write that queued the batch; a delete that waits loses nothing
/// (after a crash the hub's Welcome says what it holds, and it takes each
/// sequence once).
#[derive(Default)]
struct Later {
    acks: Vec<Command>,
    /// When the held deletes commit at the latest.
    due: Option<std::time::Instant>,
}

/// A held ack commits within this time even when nothing else does.
const ACK_LATER_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Held acks commit once they cover this many sequences (a bulk flow does
/// not wait; its acks share the writes' transactions anyway).
const ACK_LATER_MAX_RECORDS: u64 = 4096;

impl Later {
    /// Holds `acks` (all `AckLater`); true when what is held should commit
    /// now. `committed` is the highest ack committed so far.
    fn hold(&mut self, acks: Vec<Command>, committed: u64) -> bool {
        self.acks.extend(acks);
        let highest = self
            .acks
            .iter()
            .filter_map(|c| match c {
                Command::AckLater(seq, _) => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(committed);
        self.due
            .get_or_insert_with(|| std::time::Instant::now() + ACK_LATER_MAX_WAIT);
        highest.saturating_sub(committed) >= ACK_LATER_MAX_RECORDS
    }

    fn take(&mut self) -> Vec<Command> {
        self.due = None;
        std::mem::take(&mut self.acks)
    }
}

/// Applies `group` in one transaction and answers each command.
fn commit_group(conn: &mut Connection, path: &Path, group: Vec<Command>, stats: &watch::Sender<Stats>, space: &Space) {
    let mut next = stats.borrow().clone();
    let adds: u64 = group.iter().map(Command::adds).sum();
    let check = group.iter().any(|c| matches!(c, Command::CheckDisk(_)));
    let mut admitted = Ok(());
    if adds > 0 || check || next.disk_low {
        let was_low = next.disk_low;
        admitted = space.admit(conn, adds, &mut next.disk_low);
        if next.disk_low != was_low {
            // Pausing must not wait for a commit on a disk that may be full.
            let low = next.disk_low;
            stats.send_modify(|s| s.disk_low = low);
        }
    }
    let refusal = |(free, reserve): (u64, u64)| Error::DiskLow {
        path: path.to_owned(),
        free,
        reserve,
    };
    let mut outcome = apply(conn, &group, &mut next, admitted.err().map(refusal), path);
    if let Err(e) = &outcome
        && sqlite_disk_full(e)
    {
        // The disk filled under us (something else writes there too).
        // Deletes must still run: apply everything but the writes, after
        // giving back the WAL, and if that is not enough, the ballast.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        stats.send_modify(|s| s.disk_low = true);
        for release in [false, true] {
            if release {
                if !space.release_ballast() {
                    break;
                }
                // The ballast's room lets the checkpoint that failed above
                // move the WAL into outbox.db (growing it by up to the WAL,
                // which `Space::bound_wal` keeps within the ballast) and cut
                // the WAL back, which gives its room to the deletes.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            next = stats.borrow().clone();
            let free = space.free(conn);
            outcome = apply(conn, &group, &mut next, Some(refusal((free, space.reserve))), path);
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
                        path: path.to_owned(),
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
            | Command::AckLater(_, r)
            | Command::Reject(_, _, r)
            | Command::Ping(r)
            | Command::Advance(_, r)
            | Command::CheckDisk(r)
            | Command::Retry(_, r)
            | Command::Discard(_, r) => r,
        };
        // A caller that gave up waiting is not an error here.
        let _ = reply.send(outcome.map_or(Ok(()), Err));
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
    let assigned = stats.last_seq;
    let mut outcomes = Vec::with_capacity(group.len());
    for command in group {
        if let (true, Some(refusal)) = (command.adds_records(), refuse_writes) {
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
    if stats.last_seq != assigned {
        // Once a transaction, however many writes it holds: recovery reads
        // it when the last chunks are on damaged pages.
        chunk::set_meta(&tx, "last_seq", stats.last_seq)?;
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Queues `records` in order, each under the next sequence.
fn insert_records(tx: &Connection, records: &[Vec<u8>], now: i64, stats: &mut Stats) -> rusqlite::Result<()> {
    if !records.is_empty() {
        stats.last_seq = chunk::append(tx, stats.last_seq, records, now)?;
        stats.records += records.len() as u64;
        stats.bytes += records.iter().map(|d| d.len() as u64).sum::<u64>();
    }
    Ok(())
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
            insert_records(tx, &w.records, now, stats)?;
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
        Command::Ack(seq, _) | Command::AckLater(seq, _) => {
            let (n, bytes) = chunk::ack(tx, *seq)?;
            stats.records = stats.records.saturating_sub(n);
            stats.bytes = stats.bytes.saturating_sub(bytes);
            stats.oldest_us = chunk::oldest(tx)?;
            stats.acked_seq = stats.acked_seq.max(*seq);
        }
        Command::Ping(_) | Command::CheckDisk(_) => {}
        Command::Advance(seq, _) => {
            stats.last_seq = stats.last_seq.max(*seq);
        }
        Command::Retry(r, _) => {
            let (n, bytes, last) = retry_in(tx, stats.last_seq, &r.fixed, &r.still, now)?;
            if n > 0 {
                stats.last_seq = last;
                stats.records += n;
                stats.bytes += bytes;
                stats.quarantined = stats.quarantined.saturating_sub(n);
                stats.oldest_us = stats.oldest_us.or(Some(now));
            }
        }
        Command::Discard(d, _) => {
            let n = discard_in(tx, &d.entries, &d.reason, &d.who, now)?;
            stats.quarantined = stats.quarantined.saturating_sub(n);
        }
        Command::Reject(seq, q, _) => {
            if let Some(bytes) = chunk::empty_entry(tx, *seq)? {
                insert_quarantine(tx, now, q)?;
                stats.records -= 1;
                stats.bytes -= bytes;
                stats.quarantined += 1;
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
