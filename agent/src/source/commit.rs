//! The one commit path of every source: a [`Chunk`] collects what rows
//! became, a [`Committer`] commits it with the source's capture position.
//!
//! The committer owns the protocol a source must not get wrong: the
//! resource's freshness commits in the same transaction as the records that
//! changed it, a chunk waits for room in the queue (the disk reserve, the
//! queue's cap) before it is handed over, a chunk can be made to follow the
//! position its predecessor wrote (so a failed chunk is never followed by a
//! later one), and the source's counters move only once the chunk is
//! durable. Sources read and split; they do not assemble outbox writes.
//!
//! It does not normalize (that is [`Mapping::apply`], the pure stage) and it
//! does not decide what a position means (each source serializes its own).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::health::SourceStats;
use crate::normalize::{Mapping, Outcome, Row};
use crate::outbox::{self, Outbox, PositionUpdate, Receipt, Write};

/// Rows of one chunk at most, and bytes about (the records and quarantine
/// entries it holds): bounds the memory of a chunk and of a transaction.
pub const CHUNK_ROWS: usize = 4096;
pub const CHUNK_BYTES: usize = 1 << 20;

/// What rows became since the last commit, not yet handed to the outbox.
#[derive(Default)]
pub struct Chunk {
    write: Write,
    bytes: usize,
    warnings: u64,
    /// Quarantined rows by rule code, for `/status`.
    rules: BTreeMap<String, u64>,
}

impl Chunk {
    /// Normalizes `row` (read from `object`) and keeps what it became.
    /// Returns true for a record.
    pub fn push_row(&mut self, mapping: &Mapping, row: Row<'_>, object: &str, now_us: i64) -> bool {
        self.push(mapping.apply(row, object, now_us))
    }

    /// Keeps one row's outcome. Returns true for a record.
    pub fn push(&mut self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Record { bytes, warnings } => {
                self.bytes += bytes.len();
                self.warnings += warnings as u64;
                self.write.records.push(bytes);
                true
            }
            Outcome::Quarantine(q) => {
                self.bytes += q.raw.len();
                for rule in q.rules() {
                    *self.rules.entry(rule.to_owned()).or_default() += 1;
                }
                self.write.quarantine.push(q);
                false
            }
        }
    }

    /// Rows kept (records and quarantine entries).
    pub fn rows(&self) -> usize {
        self.write.records.len() + self.write.quarantine.len()
    }

    /// Records kept.
    pub fn records(&self) -> usize {
        self.write.records.len()
    }

    /// True when the chunk should be committed before it takes more.
    pub fn is_full(&self) -> bool {
        self.rows() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES
    }
}

/// Where a source stands after a chunk: one of its outbox positions.
pub struct Position {
    pub key: String,
    pub value: String,
    /// The value the key must still hold for the chunk to apply (`None`:
    /// absent), when chunks are submitted before their predecessors
    /// committed; `None` when the source commits one chunk at a time.
    pub follows: Option<Option<String>>,
}

/// Commits one source's chunks.
#[derive(Clone)]
pub struct Committer {
    source: String,
    resource: String,
    outbox: Outbox,
    stats: Arc<SourceStats>,
}

/// A chunk handed to the outbox: its counters move when it is durable.
pub struct Submitted {
    receipt: Receipt,
    counts: Counts,
}

struct Counts {
    records: u64,
    quarantined: u64,
    rules: BTreeMap<String, u64>,
    warnings: u64,
    at_us: i64,
}

impl Committer {
    pub fn new(source: &str, resource: &str, outbox: &Outbox, stats: &Arc<SourceStats>) -> Committer {
        Committer {
            source: source.to_owned(),
            resource: resource.to_owned(),
            outbox: outbox.clone(),
            stats: stats.clone(),
        }
    }

    /// Hands `chunk` and the position after it to the outbox, once the
    /// queue has room. Dropping the returned future before it resolves
    /// hands nothing over.
    pub async fn submit(&self, chunk: Chunk, position: Position) -> Result<Submitted, outbox::Error> {
        let Chunk {
            mut write,
            warnings,
            rules,
            ..
        } = chunk;
        let at_us = crate::clock::now_us();
        let counts = Counts {
            records: write.records.len() as u64,
            quarantined: write.quarantine.len() as u64,
            rules,
            warnings,
            at_us,
        };
        if counts.records > 0 {
            // The resource changed: its freshness commits with the records.
            write.positions.push(crate::freshness::changed(&self.resource, at_us));
        }
        if let Some(follows) = position.follows {
            write.expect.push(self.update(&position.key, follows));
        }
        write.positions.push(self.update(&position.key, Some(position.value)));
        self.outbox.room().await;
        let receipt = self.outbox.submit(write).await?;
        Ok(Submitted { receipt, counts })
    }

    /// Submits `chunk` and waits until it is durable.
    pub async fn commit(&self, chunk: Chunk, position: Position) -> Result<(), outbox::Error> {
        let pending = self.submit(chunk, position).await?;
        self.committed(pending).await
    }

    /// Waits until a submitted chunk is durable, then counts it.
    pub async fn committed(&self, pending: Submitted) -> Result<(), outbox::Error> {
        pending.receipt.committed().await?;
        let c = &pending.counts;
        self.stats.records.inc_by(c.records);
        self.stats.quarantined.inc_by(c.quarantined);
        self.stats
            .quarantined_by_rule(c.rules.iter().map(|(rule, n)| (rule.as_str(), *n)));
        self.stats.warnings.inc_by(c.warnings);
        if c.records > 0 {
            self.stats.changed(&self.resource, c.at_us);
        }
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) positions of this source, with no
    /// records, committed at once: a file's bookkeeping (an attempt
    /// counted, a finished or rejected file forgotten).
    pub async fn set(
        &self,
        positions: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Result<(), outbox::Error> {
        let positions: Vec<PositionUpdate> = positions.into_iter().map(|(k, v)| self.update(&k, v)).collect();
        if positions.is_empty() {
            return Ok(());
        }
        self.outbox
            .write(Write {
                positions,
                ..Write::default()
            })
            .await
    }

    fn update(&self, key: &str, value: Option<String>) -> PositionUpdate {
        PositionUpdate {
            source: self.source.clone(),
            key: key.to_owned(),
            value,
        }
    }
}
