//! The handles the pipeline writes through: [`SourceStats`] for one source
//! (and [`FileRead`] for the file a drop folder reads), [`LinkStats`] for
//! the link. Each holds only what its writer may change (counters, an
//! error, the link's state), so neither sources nor the link see the rest
//! of [`Health`](super::Health).
//!
//! Not here: how the counters are registered and rendered (`metrics`) or
//! read back into the status document (`status`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::{Freshness, LinkState};
use crate::sync::MutexExt;

/// Counters and state of one source.
#[derive(Debug)]
pub struct SourceStats {
    pub rows: Counter,
    pub records: Counter,
    pub quarantined: Counter,
    /// Warnings that travel with valid records.
    pub warnings: Counter,
    pub files_done: Counter,
    pub files_rejected: Counter,
    /// Entries of a drop folder that are never taken (links, FIFOs,
    /// folders, hidden or temporary names), each counted once.
    pub files_skipped: Counter,
    error: Mutex<Option<String>>,
    /// Files that could not be taken and are retried, by name: the folder
    /// goes on with the others.
    problems: Mutex<BTreeMap<String, String>>,
    /// A drop folder's `rejected/` and the files it holds, as of the last
    /// scan (rejected by any run of the agent, until a person moves them).
    rejected_held: Mutex<Option<RejectedHeld>>,
    /// Rows quarantined since the agent started, by the code of each rule
    /// they broke: the outbox counts what is held, not why.
    quarantined_rules: Mutex<BTreeMap<String, u64>>,
    /// The file a drop folder is reading, while it reads it.
    reading: Mutex<Option<Reading>>,
    freshness: Freshness,
}

/// What a drop folder's `rejected/` holds.
#[derive(Debug, Clone)]
pub(super) struct RejectedHeld {
    pub folder: PathBuf,
    pub files: u64,
    /// The first few names, in name order, made safe to show.
    pub names: Vec<String>,
}

/// Distinct rule codes counted per source at most. The codes are the
/// rules' own (a few dozen); the bound only keeps a mistake from growing
/// the map.
const MAX_RULES: usize = 64;

/// The file a drop folder is reading, as its reader last reported it.
#[derive(Debug, Clone)]
pub(super) struct Reading {
    pub file: String,
    pub size: u64,
    pub measure: ByteMeasure,
    pub started: Instant,
    /// Where this read began (a resumed file at its last commit).
    pub first: ReadAt,
    /// As of the last chunk read.
    pub last: ReadAt,
}

/// How far a file's read is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadAt {
    /// Rows of the file read, those of earlier runs included.
    pub rows: u64,
    /// Bytes read and of how many (see [`ByteMeasure`]); `None` when the
    /// reader cannot tell.
    pub bytes: Option<(u64, u64)>,
}

/// What a file's bytes read count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteMeasure {
    /// CSV, JSON Lines: the offset of the next row, of the file's size.
    File,
    /// A workbook: its worksheet's compressed bytes read, of their size.
    CompressedSheet,
}

/// A file's read as `/status` shows it, until the handle is dropped (the
/// file done, rejected, retried later or the source stopped).
pub struct FileRead {
    stats: Arc<SourceStats>,
}

impl FileRead {
    /// The read got to `at`. Called once per chunk: a lock, no I/O.
    pub fn advance(&self, at: ReadAt) {
        if let Some(r) = self.stats.reading.lock_unpoisoned().as_mut() {
            r.last = at;
        }
    }
}

impl Drop for FileRead {
    fn drop(&mut self) {
        *self.stats.reading.lock_unpoisoned() = None;
    }
}

/// The counters of one source that are registered per source label.
pub(super) struct SourceCounters {
    pub rows: Counter,
    pub records: Counter,
    pub quarantined: Counter,
    pub warnings: Counter,
    pub files_done: Counter,
    pub files_rejected: Counter,
}

impl SourceStats {
    pub(super) fn new(c: SourceCounters, freshness: Freshness) -> SourceStats {
        SourceStats {
            rows: c.rows,
            records: c.records,
            quarantined: c.quarantined,
            files_done: c.files_done,
            files_rejected: c.files_rejected,
            files_skipped: Counter::default(),
            warnings: c.warnings,
            error: Mutex::default(),
            problems: Mutex::default(),
            rejected_held: Mutex::default(),
            quarantined_rules: Mutex::default(),
            reading: Mutex::default(),
            freshness,
        }
    }

    /// A committed change of `resource` at `at_us`.
    pub fn changed(&self, resource: &str, at_us: i64) {
        self.freshness.lock_unpoisoned().changed(resource, at_us);
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.error.lock_unpoisoned() = e;
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock_unpoisoned().clone()
    }

    /// Notes (or with `None` clears) a problem with one file.
    pub fn set_problem(&self, file: &str, problem: Option<String>) {
        let mut p = self.problems.lock_unpoisoned();
        match problem {
            Some(text) => {
                p.insert(file.to_owned(), text);
            }
            None => {
                p.remove(file);
            }
        }
    }

    /// The files a drop folder's `rejected/` holds, and the first few of
    /// their names (made safe to show).
    pub fn set_rejected_held(&self, folder: &Path, files: u64, names: Vec<String>) {
        *self.rejected_held.lock_unpoisoned() = Some(RejectedHeld {
            folder: folder.to_owned(),
            files,
            names,
        });
    }

    pub(super) fn rejected_held(&self) -> Option<RejectedHeld> {
        self.rejected_held.lock_unpoisoned().clone()
    }

    /// Rows now durable in the quarantine, by rule code (a row that broke
    /// two rules counts under each).
    pub fn quarantined_by_rule<'a>(&self, rules: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut counts = self.quarantined_rules.lock_unpoisoned();
        for (rule, n) in rules {
            if let Some(c) = counts.get_mut(rule) {
                *c += n;
            } else if counts.len() < MAX_RULES {
                counts.insert(rule.to_owned(), n);
            }
        }
    }

    pub(super) fn quarantined_rules(&self) -> BTreeMap<String, u64> {
        self.quarantined_rules.lock_unpoisoned().clone()
    }

    /// A file's read begins at `first`: `/status` shows it, with its
    /// progress, until the returned handle is dropped.
    pub fn start_reading(self: &Arc<Self>, file: &str, size: u64, measure: ByteMeasure, first: ReadAt) -> FileRead {
        *self.reading.lock_unpoisoned() = Some(Reading {
            file: file.to_owned(),
            size,
            measure,
            started: Instant::now(),
            first,
            last: first,
        });
        FileRead { stats: self.clone() }
    }

    pub(super) fn reading(&self) -> Option<Reading> {
        self.reading.lock_unpoisoned().clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock_unpoisoned()
            .iter()
            .map(|(f, e)| format!("{f}: {e}"))
            .collect()
    }
}

/// The link's state and counters, as the link reports them. Cloning gives
/// another handle to the same state (the way a source's [`SourceStats`] is
/// shared); [`LinkStats::noop`] gives one that nothing reads, for tests
/// (vector's `BufferUsageHandle::noop`).
#[derive(Clone, Debug)]
pub struct LinkStats {
    pub(super) info: Arc<Mutex<LinkInfo>>,
    pub(super) up: Gauge,
    pub(super) sent: Counter,
    pub(super) acked: Counter,
    pub(super) rejected: Counter,
    /// From the outbox commit of a batch's first record to the hub's ack.
    pub(super) commit_to_ack: Histogram,
}

/// The link's state as `/status` shows it.
#[derive(Debug, Clone)]
pub(super) struct LinkInfo {
    pub state: LinkState,
    pub since: SystemTime,
    /// Since when the link has not been up (through every reconnect
    /// attempt); `None` while it is up.
    pub down_since: Option<SystemTime>,
    pub last_ack: Option<SystemTime>,
    pub error: Option<String>,
}

impl LinkStats {
    /// A link that is connecting, with zero counters.
    pub(super) fn new() -> LinkStats {
        LinkStats {
            info: Arc::new(Mutex::new(LinkInfo {
                state: LinkState::Connecting,
                since: SystemTime::now(),
                down_since: Some(SystemTime::now()),
                last_ack: None,
                error: None,
            })),
            up: Gauge::default(),
            sent: Counter::default(),
            acked: Counter::default(),
            rejected: Counter::default(),
            commit_to_ack: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }

    /// A handle whose state and counters nothing reads.
    pub fn noop() -> LinkStats {
        LinkStats::new()
    }

    /// The link's new state. An error is kept until the next error or
    /// until the link is up.
    pub fn set_state(&self, state: LinkState, error: Option<String>) {
        let mut link = self.info.lock_unpoisoned();
        if link.state != state {
            link.state = state;
            link.since = SystemTime::now();
        }
        if state == LinkState::Up {
            link.down_since = None;
        } else if link.down_since.is_none() {
            link.down_since = Some(SystemTime::now());
        }
        if error.is_some() || state == LinkState::Up {
            link.error = error;
        }
        self.up.set(i64::from(state == LinkState::Up));
    }

    /// Records sent to the hub.
    pub fn sent(&self, records: u64) {
        self.sent.inc_by(records);
    }

    /// Records the hub acknowledged.
    pub fn acked(&self, records: u64) {
        self.acked.inc_by(records);
        self.info.lock_unpoisoned().last_ack = Some(SystemTime::now());
    }

    /// One record the hub rejected (moved to the quarantine).
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// An acknowledged batch: `seconds` from its first record's commit to
    /// the hub's ack.
    pub fn commit_to_ack(&self, seconds: f64) {
        self.commit_to_ack.observe(seconds);
    }
}

/// What one subscription's worker reports: its state, the last position it
/// committed, the changes it applied and its lag.
#[derive(Clone)]
pub struct SubscriptionStats(Arc<Mutex<SubscriptionInfo>>);

#[derive(Debug, Clone, Default)]
pub(super) struct SubscriptionInfo {
    pub(super) state: &'static str,
    pub(super) provider: String,
    pub(super) agreement: String,
    pub(super) applied_seq: u64,
    pub(super) applied: u64,
    /// Provider's capture time of the last change applied, and when it was.
    pub(super) last_captured_us: Option<i64>,
    pub(super) last_applied: Option<SystemTime>,
    /// Changes the hub held after the last ones applied.
    pub(super) behind: u64,
    pub(super) error: Option<String>,
}

impl SubscriptionStats {
    pub(super) fn new() -> SubscriptionStats {
        SubscriptionStats(Arc::new(Mutex::new(SubscriptionInfo {
            state: "starting",
            ..SubscriptionInfo::default()
        })))
    }

    pub(super) fn info(&self) -> SubscriptionInfo {
        self.0.lock_unpoisoned().clone()
    }

    /// The sink is open at `position`.
    pub fn opened(&self, position: u64) {
        let mut i = self.0.lock_unpoisoned();
        i.applied_seq = position;
        i.state = "waiting for the hub";
        i.error = None;
    }

    pub fn granted(&self, provider: &str, agreement: &str) {
        let mut i = self.0.lock_unpoisoned();
        i.state = "receiving";
        i.provider = provider.to_owned();
        i.agreement = agreement.to_owned();
        i.error = None;
    }

    pub fn refused(&self, reason: &str) {
        let mut i = self.0.lock_unpoisoned();
        i.state = "refused";
        i.error = Some(reason.to_owned());
    }

    pub fn revoked(&self, reason: &str) {
        let mut i = self.0.lock_unpoisoned();
        i.state = "revoked";
        i.error = Some(reason.to_owned());
    }

    /// The stream to the hub failed (`refused`: the hub refused it, for
    /// example the certificate's agency is not the config's). A sink that
    /// is failing keeps saying why.
    pub fn unreachable(&self, error: &str, refused: bool) {
        let mut i = self.0.lock_unpoisoned();
        if i.state == "failing" {
            return;
        }
        i.state = if refused { "refused" } else { "waiting for the hub" };
        i.error = Some(error.to_owned());
    }

    /// The sink cannot be opened or a change cannot be applied.
    pub fn failing(&self, error: &str) {
        let mut i = self.0.lock_unpoisoned();
        i.state = "failing";
        i.error = Some(error.to_owned());
    }

    /// A change was applied after a failure.
    pub fn ok(&self) {
        let mut i = self.0.lock_unpoisoned();
        if i.state == "failing" {
            i.state = "receiving";
            i.error = None;
        }
    }

    /// `n` changes were applied; the position is `seq`; the hub held
    /// `behind` more.
    pub fn applied(&self, n: u64, seq: u64, captured_us: Option<i64>, behind: u64) {
        let mut i = self.0.lock_unpoisoned();
        i.behind = behind;
        i.applied_seq = seq;
        if let Some(c) = captured_us {
            i.applied += n;
            i.last_captured_us = Some(c);
            i.last_applied = Some(SystemTime::now());
        }
    }
}
