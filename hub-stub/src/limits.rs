//! What one agency may cost the hub: the `[limits]` table of hub.toml, and
//! the per-agency counters that enforce its connection and stream caps.
//!
//! The hub trusts an agency's certificate, not its behaviour: a batch of
//! millions of tiny entries, batches sent while the answers are left
//! unread, or a hundred streams must cost bounded memory, and must not stop
//! other agencies from being served. Each limit bounds one of these:
//! decoding (`max_message_bytes`, `max_batch_entries`, `max_value_bytes`),
//! queueing (`max_queued_bytes` per stream, `max_total_queued_bytes` for
//! all agencies together), fan-out (`max_streams`, `max_connections`) and
//! idleness (`hello_timeout`, `idle_timeout`). Together they bound an
//! agency to about `max_streams` × (stream window + 2 ×
//! `max_message_bytes` + `max_queued_bytes`), and the decoded batches of
//! all agencies waiting for the store to `max_total_queued_bytes`. The two
//! messages are one as received and one decoded: gRPC's decompression, or
//! the codec's inflation of `Batch.zstd_entries`, each at most
//! `max_message_bytes`; a queued batch holds its records, not the buffer
//! they came in (`codec::compact`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[cfg(test)]
mod tests;

/// The `[limits]` table. Every key has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest gRPC message the hub decodes (after decompression); a
    /// larger one ends the stream before it is read.
    #[serde(deserialize_with = "bytes")]
    pub max_message_bytes: usize,
    /// Entries in one batch, counted on the wire before the batch is
    /// decoded; the agent's `hub.batch_records` must not exceed it.
    pub max_batch_entries: usize,
    /// A key value, item id or item value longer than this is rejected
    /// without being checked or quoted.
    #[serde(deserialize_with = "bytes")]
    pub max_value_bytes: usize,
    /// Bytes of decoded batches a stream may have waiting for the store;
    /// past it the hub stops reading that stream (HTTP/2 flow control then
    /// stops the agent). It holds the batch being applied too, so the
    /// store's group commit takes about half of it: 48 MiB (about 75,000
    /// records of the people resource) lets a flood's groups reach 30,000
    /// records and more, where 16 MiB held them to 12,000 and the hub's
    /// reader and writer to each other's pace (BENCHMARKS.md, session 14).
    #[serde(deserialize_with = "bytes")]
    pub max_queued_bytes: usize,
    /// Bytes of decoded batches all streams together may have waiting for
    /// the store. Fifty agencies at their own limits would hold fifty
    /// times `max_queued_bytes`; past this the hub reads no stream until
    /// the store catches up, and the streams wait their turn in order.
    #[serde(deserialize_with = "bytes")]
    pub max_total_queued_bytes: usize,
    /// Concurrent Sync streams per agency; one more is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Concurrent connections per agency; one more is closed after the
    /// handshake.
    pub max_connections: usize,
    /// Time a new stream has to send its Hello.
    #[serde(deserialize_with = "duration")]
    pub hello_timeout: Duration,
    /// Time a connection may stay open with no Sync stream. A connection
    /// with a stream is never closed for idleness: a healthy agent with an
    /// empty queue sends nothing but HTTP/2 pings, and dead peers are
    /// found by the hub's own keepalive pings.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_batch_entries: 10_000,
            max_value_bytes: 64 << 10,
            max_queued_bytes: 48 << 20,
            max_total_queued_bytes: 64 << 20,
            max_streams: 4,
            max_connections: 8,
            hello_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A limit that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("limits.{key}: {reason}")]
pub struct InvalidLimit {
    pub key: &'static str,
    pub reason: &'static str,
}

impl Limits {
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let positive = [
            ("max_message_bytes", self.max_message_bytes),
            ("max_batch_entries", self.max_batch_entries),
            ("max_value_bytes", self.max_value_bytes),
            ("max_queued_bytes", self.max_queued_bytes),
            ("max_total_queued_bytes", self.max_total_queued_bytes),
            ("max_streams", self.max_streams),
            ("max_connections", self.max_connections),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(InvalidLimit {
                key,
                reason: "must be at least 1",
            });
        }
        let err = |key, reason| Err(InvalidLimit { key, reason });
        if u32::try_from(self.max_queued_bytes).is_err() {
            return err("max_queued_bytes", "must be below 4 GiB");
        }
        if u32::try_from(self.max_total_queued_bytes).is_err() {
            return err("max_total_queued_bytes", "must be below 4 GiB");
        }
        if u32::try_from(self.max_streams).is_err() {
            return err("max_streams", "is too large");
        }
        if self.hello_timeout.is_zero() {
            return err("hello_timeout", "must be longer than zero");
        }
        if self.idle_timeout.is_zero() {
            return err("idle_timeout", "must be longer than zero");
        }
        Ok(())
    }
}

/// A duration written as `"30s"`, `"500ms"`, `"5m"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
}

/// A size in bytes: an integer, or a string such as `"16MiB"`.
fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        N(u64),
        S(String),
    }
    let n = match Repr::deserialize(d)? {
        Repr::N(n) => Some(n),
        // Whole numbers with the `bytesize` crate's units, as the agent reads them.
        Repr::S(s) if !s.contains('.') => s.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
        Repr::S(_) => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom("not a size (examples: 1048576, \"16MiB\", \"64KiB\")"))
}

/// How many connections or streams each agency has open, against a cap.
pub struct Quota {
    /// What is counted, for messages: "connections", "streams".
    what: &'static str,
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection or stream of an agency; dropping it frees the place.
pub struct Slot {
    quota: Arc<Quota>,
    agency: String,
}

/// The agency is at its cap.
#[derive(Debug, thiserror::Error)]
#[error("agency {agency} already has {max} {what} open, the hub's limit")]
pub struct Exhausted {
    pub agency: String,
    pub what: &'static str,
    pub max: usize,
}

impl Quota {
    pub fn new(what: &'static str, max: usize) -> Arc<Quota> {
        Arc::new(Quota {
            what,
            max,
            open: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map is consistent at every await-free step; a panic elsewhere
        // cannot leave it half-updated.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `agency`, or says it has none left.
    pub fn take(self: &Arc<Self>, agency: &str) -> Result<Slot, Exhausted> {
        let mut open = self.counts();
        let n = open.entry(agency.to_owned()).or_default();
        if *n >= self.max {
            return Err(Exhausted {
                agency: crate::text::shown(agency),
                what: self.what,
                max: self.max,
            });
        }
        *n += 1;
        Ok(Slot {
            quota: self.clone(),
            agency: agency.to_owned(),
        })
    }

    /// Places `agency` holds now.
    pub fn open(&self, agency: &str) -> usize {
        self.counts().get(agency).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.quota.counts();
        if let Some(n) = open.get_mut(&self.agency) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.agency);
            }
        }
    }
}
