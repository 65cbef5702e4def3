//! The queue's rows: chunks of consecutive records.
//!
//! A `chunks` row holds the records of sequences `first..=last`, each as a
//! varint length and its bytes, up to [`CHUNK_BYTES`] before compression,
//! stored as one zstd frame when that is smaller (`packing` 1; 0 is
//! plain). One row per chunk instead of one per record takes SQLite's cost
//! per row (the insert, the delete, the b-tree's cells) off each record,
//! and compression most of its cost per byte (the WAL, the checkpoints, the
//! kernel's copies): they were most of the outbox writer's CPU in a flood
//! (BENCHMARKS.md, the ninth step). A damaged page costs the chunks on it:
//! the same bytes as before, more records.
//!
//! An empty entry carries no record: a sequence lost with a damaged outbox,
//! or a record the hub rejected (moved to the quarantine). The link sends
//! it as an empty entry, which the hub skips.
//!
//! Sequences: `meta.last_seq` is the highest ever assigned (never reused,
//! even once the queue drains; written once a transaction), `meta.acked_seq`
//! the highest the hub has acknowledged. A chunk leaves when the hub has acknowledged its last
//! sequence; until then the figures ([`super::Stats`]) leave out its
//! acknowledged part.

use prost::bytes::Buf;
use rusqlite::{Connection, OptionalExtension, params};

/// Bytes of a chunk's entries at most, before compression (a record larger
/// than this is a chunk of its own). Compressed, a chunk of the flood's
/// records is about a tenth of this: it fits a 16 KiB page whole, so a
/// damaged page costs the records of a few chunks.
pub(super) const CHUNK_BYTES: usize = 64 << 10;

/// Entries of a chunk at most (lost sequences are empty entries of a byte).
const CHUNK_ENTRIES: usize = 4096;

/// How a chunk's entries are stored: as they are, or in one zstd frame
/// (with its content size and checksum) when that is smaller.
const PACKING_PLAIN: i64 = 0;
const PACKING_ZSTD: i64 = 1;

/// Chunks smaller than this are stored plain: a trickle's chunk of one
/// record gains nothing from compression.
const PACK_FROM_BYTES: usize = 1024;

/// zstd's level for chunks: level 1 made the link's batches smaller and
/// cheaper than level 3 (BENCHMARKS.md, the eighth step).
const ZSTD_LEVEL: i32 = 1;

/// The largest chunk a frame may say it holds: a damaged frame's size must
/// not make us allocate without bound.
const UNPACKED_MAX: usize = 256 << 20;

thread_local! {
    /// One zstd context per thread (the writer's, a reader's), kept: a new
    /// one costs more than compressing a chunk.
    static PACKER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static UNPACKER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A chunk's entries as stored: (packing, bytes).
fn pack(plain: &[u8]) -> (i64, std::borrow::Cow<'_, [u8]>) {
    if plain.len() < PACK_FROM_BYTES {
        return (PACKING_PLAIN, plain.into());
    }
    let packed = PACKER.with_borrow_mut(|slot| {
        if slot.is_none() {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?;
            c.include_checksum(true).ok()?;
            *slot = Some(c);
        }
        slot.as_mut()?.compress(plain).ok()
    });
    match packed {
        Some(p) if p.len() < plain.len() => (PACKING_ZSTD, p.into()),
        _ => (PACKING_PLAIN, plain.into()),
    }
}

/// A chunk's entries from their stored form.
fn unpack(packing: i64, data: Vec<u8>) -> Result<Vec<u8>, String> {
    match packing {
        PACKING_PLAIN => Ok(data),
        PACKING_ZSTD => {
            let size = zstd::zstd_safe::get_frame_content_size(&data)
                .ok()
                .flatten()
                .ok_or("the zstd frame does not state its size")?;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= UNPACKED_MAX)
                .ok_or_else(|| format!("the zstd frame says it holds {size} bytes"))?;
            UNPACKER.with_borrow_mut(|slot| {
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
                }
                let d = slot.as_mut().ok_or("no zstd context")?;
                let out = d.decompress(&data, size).map_err(|e| format!("zstd: {e}"))?;
                if out.len() != size {
                    return Err(format!("the zstd frame held {} bytes, not {size}", out.len()));
                }
                Ok(out)
            })
        }
        other => Err(format!("packing {other} is unknown (an outbox from a newer qianzhi?)")),
    }
}

/// A chunk row as read.
pub(super) struct Chunk {
    pub first: u64,
    pub last: u64,
    pub enqueued_us: i64,
    pub data: Vec<u8>,
}

impl Chunk {
    /// Its entries in order, sequence `first` on; an error if the bytes do
    /// not hold exactly `last - first + 1` entries.
    pub fn entries(&self) -> rusqlite::Result<Vec<&[u8]>> {
        let Some(want) = self.last.checked_sub(self.first).map(|n| n as usize + 1) else {
            return Err(self.damaged("its last sequence is below its first".into()));
        };
        let mut out = Vec::with_capacity(want.min(CHUNK_ENTRIES));
        let mut rest: &[u8] = &self.data;
        while !rest.is_empty() {
            let len = prost::encoding::decode_varint(&mut rest).map_err(|e| self.damaged(e.to_string()))?;
            let len = usize::try_from(len).ok().filter(|&l| l <= rest.len());
            let Some(len) = len else {
                return Err(self.damaged("an entry runs past the chunk's end".into()));
            };
            out.push(&rest[..len]);
            rest.advance(len);
            if out.len() > want {
                break;
            }
        }
        if out.len() != want {
            return Err(self.damaged(format!("{} entries for {want} sequences", out.len())));
        }
        Ok(out)
    }

    fn damaged(&self, why: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!(
                "outbox chunk of sequences {}-{} is damaged: {why}",
                self.first, self.last
            )
            .into(),
        )
    }
}

/// Appends `entry` to a chunk's bytes.
fn push(data: &mut Vec<u8>, entry: &[u8]) {
    prost::encoding::encode_varint(entry.len() as u64, data);
    data.extend_from_slice(entry);
}

/// Writes `entries` as chunks from sequence `first` on; returns the records
/// (non-empty entries) and their bytes.
pub(super) fn insert_at<E: AsRef<[u8]>>(
    tx: &Connection,
    first: u64,
    entries: &[E],
    enqueued_us: i64,
) -> rusqlite::Result<(u64, u64)> {
    let mut insert = tx.prepare_cached(
        "INSERT OR FAIL INTO chunks (first, last, enqueued_us, records, bytes, packing, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let (mut records, mut bytes) = (0, 0);
    let mut data = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        data.clear();
        let (mut n, mut b, mut end) = (0u64, 0u64, start);
        while end < entries.len() && end - start < CHUNK_ENTRIES {
            let e = entries[end].as_ref();
            if end > start && data.len() + e.len() + 10 > CHUNK_BYTES {
                break;
            }
            push(&mut data, e);
            if !e.is_empty() {
                n += 1;
                b += e.len() as u64;
            }
            end += 1;
        }
        let from = first + start as u64;
        let to = first + end as u64 - 1;
        let (packing, stored) = pack(&data);
        insert.execute(params![
            from as i64,
            to as i64,
            enqueued_us,
            n as i64,
            b as i64,
            packing,
            stored.as_ref()
        ])?;
        records += n;
        bytes += b;
        start = end;
    }
    Ok((records, bytes))
}

/// Queues `records` under the sequences after `last` (the highest assigned
/// so far, [`last_seq`]); returns the new highest.
pub(super) fn append(tx: &Connection, last: u64, records: &[Vec<u8>], now: i64) -> rusqlite::Result<u64> {
    if !records.is_empty() {
        insert_at(tx, last + 1, records, now)?;
    }
    Ok(last + records.len() as u64)
}

/// The highest sequence ever assigned: `meta.last_seq`, which the writer
/// sets once a transaction, or the last chunk's last if that is higher (an
/// outbox written by the offline tools).
pub(super) fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let queued: Option<i64> = conn
        .prepare_cached("SELECT last FROM chunks ORDER BY first DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(meta(conn, "last_seq")?.max(queued.map_or(0, |l| l as u64)))
}

/// The highest sequence the hub has acknowledged (0 before the first ack).
pub(super) fn acked_seq(conn: &Connection) -> rusqlite::Result<u64> {
    meta(conn, "acked_seq")
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

pub(super) fn set_meta(tx: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value.to_string()])?;
    Ok(())
}

/// The chunk that holds `seq`, if one does.
pub(super) fn containing(conn: &Connection, seq: u64) -> rusqlite::Result<Option<Chunk>> {
    let Ok(seq) = i64::try_from(seq) else { return Ok(None) };
    let chunk = conn
        .prepare_cached(
            "SELECT first, last, enqueued_us, packing, data FROM chunks WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
        )?
        .query_row([seq], read)
        .optional()?;
    Ok(chunk.filter(|c| c.last >= seq as u64))
}

/// The columns `first, last, enqueued_us, packing, data` of a row, its
/// entries unpacked.
pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Chunk> {
    let (first, last) = (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64);
    let data = unpack(r.get(3)?, r.get(4)?).map_err(|why| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            format!("outbox chunk of sequences {first}-{last} is damaged: {why}").into(),
        )
    })?;
    Ok(Chunk {
        first,
        last,
        enqueued_us: r.get(2)?,
        data,
    })
}

/// Whether the file has the table `name`.
pub(super) fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

/// Reads every queued chunk and decodes its entries; the first that does
/// not decode is the error. (A file made before chunks has none.)
pub(super) fn check_all(conn: &Connection) -> rusqlite::Result<()> {
    if !has_table(conn, "chunks")? {
        return Ok(());
    }
    let mut stmt = conn.prepare("SELECT first, last, enqueued_us, packing, data FROM chunks ORDER BY first")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        read(row)?.entries()?;
    }
    Ok(())
}

/// The records (non-empty entries) at or below `upto` in the chunk that
/// holds `upto`, and their bytes: the acknowledged part of a chunk the hub
/// has not acknowledged whole.
pub(super) fn acked_part(conn: &Connection, upto: u64) -> rusqlite::Result<(u64, u64)> {
    let Some(chunk) = containing(conn, upto)? else {
        return Ok((0, 0));
    };
    let entries = chunk.entries()?;
    let upto = (upto - chunk.first) as usize;
    Ok(entries[..=upto]
        .iter()
        .filter(|e| !e.is_empty())
        .fold((0, 0), |(n, b), e| (n + 1, b + e.len() as u64)))
}

/// Empties the entry of `seq` (the hub rejected its record); returns the
/// bytes it held, or `None` if there was no record there (acknowledged,
/// or emptied before).
pub(super) fn empty_entry(tx: &Connection, seq: u64) -> rusqlite::Result<Option<u64>> {
    if seq <= acked_seq(tx)? {
        return Ok(None);
    }
    let Some(chunk) = containing(tx, seq)? else {
        return Ok(None);
    };
    let entries = chunk.entries()?;
    let at = (seq - chunk.first) as usize;
    let bytes = entries[at].len() as u64;
    if bytes == 0 {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(chunk.data.len());
    for (i, e) in entries.iter().enumerate() {
        push(&mut data, if i == at { &[] } else { e });
    }
    let (packing, stored) = pack(&data);
    tx.prepare_cached(
        "UPDATE chunks SET data = ?2, records = records - 1, bytes = bytes - ?3, packing = ?4 WHERE first = ?1",
    )?
    .execute(params![chunk.first as i64, stored.as_ref(), bytes as i64, packing])?;
    Ok(Some(bytes))
}

/// Deletes the chunks the hub has acknowledged whole (every sequence up to
/// `seq`) and records the ack; returns the records and bytes that left the
/// queue's figures.
pub(super) fn ack(tx: &Connection, seq: u64) -> rusqlite::Result<(u64, u64)> {
    let before = acked_seq(tx)?;
    if seq <= before {
        return Ok((0, 0));
    }
    let seq = seq.min(i64::MAX as u64);
    // What earlier acks already took off the figures.
    let (counted_n, counted_b) = acked_part(tx, before)?;
    let (whole_n, whole_b): (i64, i64) = tx
        .prepare_cached(
            "SELECT coalesce(sum(records), 0), coalesce(sum(bytes), 0) FROM chunks WHERE first <= ?1 AND last <= ?1",
        )?
        .query_row([seq as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (mut n, mut b) = (whole_n as u64, whole_b as u64);
    tx.prepare_cached("DELETE FROM chunks WHERE first <= ?1 AND last <= ?1")?
        .execute([seq as i64])?;
    let (part_n, part_b) = acked_part(tx, seq)?;
    // The chunk that held `before` is either gone (and `whole_*` counted it
    // all) or still the first (and `part_*` counts it anew).
    n = (n + part_n).saturating_sub(counted_n);
    b = (b + part_b).saturating_sub(counted_b);
    set_meta(tx, "acked_seq", seq)?;
    Ok((n, b))
}

/// The figures of the queue as stored: (records, bytes, oldest enqueue
/// time), without the acknowledged part of the first chunk.
pub(super) fn figures(conn: &Connection) -> rusqlite::Result<(u64, u64, Option<i64>)> {
    let (n, b): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(records), 0), coalesce(sum(bytes), 0) FROM chunks",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (acked_n, acked_b) = acked_part(conn, acked_seq(conn)?)?;
    Ok((
        (n as u64).saturating_sub(acked_n),
        (b as u64).saturating_sub(acked_b),
        oldest(conn)?,
    ))
}

/// When the first queued chunk was committed.
pub(super) fn oldest(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT enqueued_us FROM chunks ORDER BY first LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()
}

/// Moves the rows of an outbox made with a row per record (`records`,
/// before chunks) into chunks, keeping every sequence, in the caller's
/// transaction; the sequence counter moves to `meta.last_seq`.
pub(super) fn migrate_records(tx: &Connection) -> rusqlite::Result<()> {
    if !has_table(tx, "records")? {
        return Ok(());
    }
    let counter: i64 = tx
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'records'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let mut run: Vec<Vec<u8>> = Vec::new();
    let (mut first, mut at) = (0u64, 0i64);
    let mut max = 0u64;
    {
        let mut stmt = tx.prepare("SELECT seq, enqueued_us, data FROM records ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            if !run.is_empty() && (seq != first + run.len() as u64 || run.len() >= CHUNK_ENTRIES) {
                insert_at(tx, first, &run, at)?;
                run.clear();
            }
            if run.is_empty() {
                (first, at) = (seq, row.get(1)?);
            }
            run.push(row.get(2)?);
            max = seq;
        }
    }
    if !run.is_empty() {
        insert_at(tx, first, &run, at)?;
    }
    let last = max.max(counter as u64).max(last_seq(tx)?);
    set_meta(tx, "last_seq", last)?;
    tx.execute_batch("DROP TABLE records; DELETE FROM sqlite_sequence WHERE name = 'records';")
}
