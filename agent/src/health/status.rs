//! The `/status` JSON document ([`Status`]) and readiness (`/readyz`), both
//! read from [`Health`] at request time. Reading them does no I/O beyond
//! the outbox's recovery report: the slow checks are cached (`degraded`).
//!
//! Not here: the text the CLI makes of the document (`cli::status`).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::Health;
use super::stats::{ByteMeasure, Reading};
use crate::sync::MutexExt;

/// The link's state as shown in /status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Up,
    Down,
}

/// The JSON document of `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub agency: String,
    pub version: String,
    pub outbox_id: String,
    /// "ok", or why the agent is not ready.
    pub ready: String,
    /// Conditions an operator must know about while the agent keeps working.
    pub degraded: Vec<String>,
    pub link: LinkStatus,
    pub queue: QueueStatus,
    pub quarantine: u64,
    /// Freshness of every resource this agency provides.
    pub resources: Vec<crate::freshness::ResourceFreshness>,
    pub sources: Vec<SourceStatus>,
    /// What this agency receives (`[[subscription]]`).
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionStatus {
    pub resource: String,
    /// starting, waiting for the hub, receiving, refused, revoked, failing.
    pub state: String,
    pub provider: String,
    pub agreement: String,
    /// The last hub sequence applied (the sink's position).
    pub applied_seq: u64,
    /// Changes applied since the agent started.
    pub applied: u64,
    /// From the provider's capture of the last change applied to its apply.
    pub lag_seconds: Option<f64>,
    /// Changes the hub held after the last ones applied (counted by the
    /// hub at most once a second, up to 100,000).
    #[serde(default)]
    pub lag_changes: u64,
    pub last_applied_seconds_ago: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub hub: String,
    pub state: LinkState,
    /// In this state (each reconnect attempt is a new state).
    pub since_seconds: f64,
    /// When the link was last up or first failed (RFC 3339, UTC), through
    /// every reconnect attempt since; `None` while it is up.
    #[serde(default)]
    pub down_since: Option<String>,
    /// Seconds since `down_since`.
    #[serde(default)]
    pub down_seconds: Option<f64>,
    pub last_ack_seconds_ago: Option<f64>,
    pub error: Option<String>,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    pub records: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    /// True while sources are paused because the queue is full.
    pub full: bool,
    pub oldest_age_seconds: Option<f64>,
    pub last_seq: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub rows: u64,
    pub records: u64,
    pub quarantined: u64,
    pub warnings: u64,
    pub files_done: u64,
    pub files_rejected: u64,
    /// Folder entries never taken (links, FIFOs, folders, hidden names).
    #[serde(default)]
    pub files_skipped: u64,
    /// Files a drop folder's `rejected/` holds now (from any run), waiting
    /// for a person; `None` for a source that is not a folder.
    #[serde(default)]
    pub rejected_held: Option<u64>,
    /// The first few of those files by name, made safe to show.
    #[serde(default)]
    pub rejected_files: Vec<String>,
    /// Rows quarantined since the agent started, by rule code (a row that
    /// broke two rules counts under each). What the quarantine holds in
    /// all is `Status::quarantine`.
    #[serde(default)]
    pub quarantined_by_rule: BTreeMap<String, u64>,
    /// The file a drop folder is reading now.
    #[serde(default)]
    pub reading: Option<FileProgress>,
    /// Files retried with a backoff, each with its reason.
    #[serde(default)]
    pub problems: Vec<String>,
    pub error: Option<String>,
}

/// How far the read of one file is, as of its last chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileProgress {
    /// The file's name, made safe to show.
    pub file: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Rows read (a resumed file counts those of earlier runs).
    pub rows: u64,
    /// Bytes read of `bytes_of`, in the unit `measure` says; `None` when
    /// the reader cannot tell.
    pub bytes: Option<u64>,
    pub bytes_of: Option<u64>,
    pub measure: ByteMeasure,
    /// Since this read began.
    pub seconds: f64,
    /// Over this read so far.
    pub rows_per_second: f64,
    pub bytes_per_second: Option<f64>,
    /// What is left of `bytes_of` at `bytes_per_second`.
    pub seconds_left: Option<f64>,
}

impl FileProgress {
    fn of(r: Reading, now: Instant) -> FileProgress {
        let seconds = now.saturating_duration_since(r.started).as_secs_f64();
        let per_second = |done: u64| if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        let rows_per_second = per_second(r.last.rows.saturating_sub(r.first.rows));
        // A workbook's reader finds its worksheet only once it streams it:
        // then the read began at the worksheet's start.
        let first_byte = r.first.bytes.map_or(0, |(read, _)| read);
        let bytes_per_second = r
            .last
            .bytes
            .map(|(read, _)| per_second(read.saturating_sub(first_byte)));
        let seconds_left = match (r.last.bytes, bytes_per_second) {
            (Some((read, of)), Some(rate)) if rate > 0.0 => Some(of.saturating_sub(read) as f64 / rate),
            _ => None,
        };
        FileProgress {
            file: r.file,
            size: r.size,
            rows: r.last.rows,
            bytes: r.last.bytes.map(|(read, _)| read),
            bytes_of: r.last.bytes.map(|(_, of)| of),
            measure: r.measure,
            seconds,
            rows_per_second,
            bytes_per_second,
            seconds_left,
        }
    }
}

impl Health {
    /// Ready when the outbox is writable, no damage recovery waits for an
    /// operator, and no source is failing.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(e) = self.outbox.stats().error {
            return Err(format!("outbox not writable: {e}"));
        }
        if let Some(r) = self.outbox.unacknowledged_recovery() {
            return Err(r);
        }
        let sources = self.sources.lock_unpoisoned();
        for (name, s) in sources.iter() {
            if let Some(e) = s.error() {
                return Err(format!("source {name} failing: {e}"));
            }
        }
        Ok(())
    }

    /// Each subscription's state, in config order.
    pub(super) fn status_of_subscriptions(&self) -> Vec<SubscriptionStatus> {
        let now = SystemTime::now();
        self.subscriptions
            .lock_unpoisoned()
            .iter()
            .map(|(resource, s)| {
                let i = s.info();
                let lag = match (i.last_captured_us, i.last_applied) {
                    (Some(c), Some(t)) => {
                        let at = t
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as i64);
                        Some(((at - c).max(0) as f64) / 1e6)
                    }
                    _ => None,
                };
                SubscriptionStatus {
                    resource: resource.clone(),
                    state: i.state.to_owned(),
                    provider: i.provider,
                    agreement: i.agreement,
                    applied_seq: i.applied_seq,
                    applied: i.applied,
                    lag_seconds: lag,
                    lag_changes: i.behind,
                    last_applied_seconds_ago: i
                        .last_applied
                        .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                    error: i.error,
                }
            })
            .collect()
    }

    pub fn status(&self) -> Status {
        // Computed first: it takes the sources lock itself.
        let ready = self.ready().err().unwrap_or_else(|| "ok".into());
        let q = self.outbox.stats();
        let now = SystemTime::now();
        let link = self.link.info.lock_unpoisoned().clone();
        let oldest_age = q.oldest_us.map(|us| {
            let now_us = crate::clock::now_us();
            ((now_us - us).max(0) as f64) / 1e6
        });
        // Before the sources lock: it takes that lock itself.
        let degraded = self.degraded(&q, link.down_since, link.error.as_deref());
        let sources = self.sources.lock_unpoisoned();
        let subscriptions = self.status_of_subscriptions();
        let mut degraded = degraded;
        for sub in subscriptions
            .iter()
            .filter(|s| matches!(s.state.as_str(), "failing" | "refused" | "revoked"))
        {
            degraded.push(format!(
                "SUBSCRIPTION_{}: {}: {}",
                sub.state.to_uppercase(),
                sub.resource,
                sub.error.as_deref().unwrap_or("")
            ));
        }
        Status {
            subscriptions,
            agency: self.agency.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            outbox_id: self.outbox.id().to_owned(),
            ready,
            degraded,
            link: LinkStatus {
                hub: self.hub.clone(),
                state: link.state,
                since_seconds: now.duration_since(link.since).map_or(0.0, |d| d.as_secs_f64()),
                down_since: link
                    .down_since
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                down_seconds: link
                    .down_since
                    .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                last_ack_seconds_ago: link
                    .last_ack
                    .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                error: link.error,
                sent: self.link.sent.get(),
                acked: self.link.acked.get(),
                rejected: self.link.rejected.get(),
            },
            queue: QueueStatus {
                records: q.records,
                bytes: q.bytes,
                max_bytes: self.outbox.max_bytes(),
                full: q.bytes >= self.outbox.max_bytes(),
                oldest_age_seconds: oldest_age,
                last_seq: q.last_seq,
                error: q.error,
            },
            quarantine: q.quarantined,
            resources: self.freshness.lock_unpoisoned().report(crate::clock::now_us()),
            sources: sources
                .iter()
                .map(|(name, s)| {
                    let held = s.rejected_held();
                    SourceStatus {
                        name: name.clone(),
                        rows: s.rows.get(),
                        records: s.records.get(),
                        quarantined: s.quarantined.get(),
                        warnings: s.warnings.get(),
                        files_done: s.files_done.get(),
                        files_rejected: s.files_rejected.get(),
                        files_skipped: s.files_skipped.get(),
                        rejected_held: held.as_ref().map(|h| h.files),
                        rejected_files: held.map(|h| h.names).unwrap_or_default(),
                        quarantined_by_rule: s.quarantined_rules(),
                        reading: s.reading().map(|r| FileProgress::of(r, Instant::now())),
                        problems: s.problems(),
                        error: s.error(),
                    }
                })
                .collect(),
        }
    }
}
