//! The Prometheus registry (prefix `qianzhi`) and its text for `/metrics`:
//! per-source counters by label, the link's counters (shared with
//! [`LinkStats`]), and gauges of the outbox and of each resource's
//! freshness, set from their sources when `/metrics` is read.
//!
//! Not here: the counters' handles (`stats`) or the JSON status (`status`).
//! The order of registration is the order of the `/metrics` text.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::Health;
use super::stats::{LinkStats, SourceCounters};
use crate::sync::MutexExt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

/// The registry and the metrics [`Health`] sets itself.
pub(super) struct Metrics {
    registry: Registry,
    families: Families,
    outbox_records: Gauge,
    outbox_bytes: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    quarantine_records: Gauge,
    last_change: Family<ResourceLabel, Gauge<f64, AtomicU64>>,
    overdue: Family<ResourceLabel, Gauge>,
    received: Received,
}

/// Per-subscription gauges, by resource, set from the subscriptions'
/// handles when `/metrics` is read.
#[derive(Default)]
struct Received {
    applied_seq: Family<ResourceLabel, Gauge>,
    applied: Family<ResourceLabel, Gauge>,
    lag: Family<ResourceLabel, Gauge<f64, AtomicU64>>,
    lag_changes: Family<ResourceLabel, Gauge>,
    receiving: Family<ResourceLabel, Gauge>,
}

/// Per-source counters, one series per source label.
#[derive(Default)]
struct Families {
    warnings: Family<SourceLabel, Counter>,
    rows: Family<SourceLabel, Counter>,
    records: Family<SourceLabel, Counter>,
    quarantined: Family<SourceLabel, Counter>,
    files_done: Family<SourceLabel, Counter>,
    files_rejected: Family<SourceLabel, Counter>,
}

impl Metrics {
    /// Registers every metric, the link's counters included.
    pub(super) fn new(link: &LinkStats) -> Metrics {
        let mut registry = Registry::with_prefix("qianzhi");
        let families = Families::default();
        let per_source = [
            ("source_rows", "Rows read by a source", &families.rows),
            (
                "source_records",
                "Records a source committed to the outbox",
                &families.records,
            ),
            ("source_quarantined", "Rows a source quarantined", &families.quarantined),
            (
                "source_warnings",
                "Warnings that travel with valid records of a source",
                &families.warnings,
            ),
            ("source_files_done", "Files a source finished", &families.files_done),
            (
                "source_files_rejected",
                "Files a source moved to rejected/",
                &families.files_rejected,
            ),
        ];
        for (name, help, family) in per_source {
            registry.register(name, help, family.clone());
        }
        let mut m = Metrics {
            registry,
            families,
            outbox_records: Gauge::default(),
            outbox_bytes: Gauge::default(),
            oldest_age: Gauge::default(),
            quarantine_records: Gauge::default(),
            last_change: Family::default(),
            overdue: Family::default(),
            received: Received::default(),
        };
        let r = &mut m.registry;
        r.register("records_sent", "Records sent to the hub", link.sent.clone());
        r.register(
            "records_acked",
            "Records the hub acknowledged as durably stored",
            link.acked.clone(),
        );
        r.register(
            "records_rejected",
            "Records the hub rejected (moved to quarantine)",
            link.rejected.clone(),
        );
        r.register("link_up", "1 while the stream to the hub is up", link.up.clone());
        r.register_with_unit(
            "commit_to_ack",
            "From a record's commit to the outbox to the hub's durable ack (first record of each batch)",
            Unit::Seconds,
            link.commit_to_ack.clone(),
        );
        r.register(
            "outbox_records",
            "Records waiting in the outbox for the hub's ack",
            m.outbox_records.clone(),
        );
        r.register("outbox_bytes", "Bytes waiting in the outbox", m.outbox_bytes.clone());
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unacknowledged record",
            m.oldest_age.clone(),
        );
        r.register(
            "quarantine_records",
            "Records held in the local quarantine",
            m.quarantine_records.clone(),
        );
        r.register(
            "resource_last_change_timestamp_seconds",
            "When a provided resource last changed (Unix time; 0 if never)",
            m.last_change.clone(),
        );
        r.register(
            "resource_overdue",
            "1 while a provided resource is late for its update cycle (article 30)",
            m.overdue.clone(),
        );
        r.register(
            "subscription_applied_seq",
            "The hub sequence a subscription's sink has applied up to",
            m.received.applied_seq.clone(),
        );
        r.register(
            "subscription_applied_changes",
            "Changes a subscription applied since the agent started",
            m.received.applied.clone(),
        );
        r.register_with_unit(
            "subscription_lag",
            "From the provider's capture of the last change applied to its apply",
            Unit::Seconds,
            m.received.lag.clone(),
        );
        r.register(
            "subscription_lag_changes",
            "Changes the hub held after the last ones a subscription applied",
            m.received.lag_changes.clone(),
        );
        r.register(
            "subscription_receiving",
            "1 while a subscription is granted and its sink applies (0: refused, revoked, failing, waiting)",
            m.received.receiving.clone(),
        );
        m
    }

    /// The registered counters of source `name` (the same series again for
    /// a name seen before).
    pub(super) fn source_counters(&self, name: &str) -> SourceCounters {
        let l = SourceLabel {
            source: name.to_owned(),
        };
        let f = &self.families;
        SourceCounters {
            rows: f.rows.get_or_create(&l).clone(),
            records: f.records.get_or_create(&l).clone(),
            quarantined: f.quarantined.get_or_create(&l).clone(),
            warnings: f.warnings.get_or_create(&l).clone(),
            files_done: f.files_done.get_or_create(&l).clone(),
            files_rejected: f.files_rejected.get_or_create(&l).clone(),
        }
    }
}

impl Health {
    /// The OpenMetrics text of `/metrics`.
    pub fn metrics(&self) -> String {
        let m = &self.metrics;
        let q = self.outbox.stats();
        m.outbox_records.set(q.records as i64);
        m.outbox_bytes.set(q.bytes as i64);
        m.quarantine_records.set(q.quarantined as i64);
        m.oldest_age.set(
            q.oldest_us
                .map_or(0.0, |us| ((crate::clock::now_us() - us).max(0) as f64) / 1e6),
        );
        for r in self.freshness.lock_unpoisoned().report(crate::clock::now_us()) {
            let l = ResourceLabel { resource: r.resource };
            m.last_change
                .get_or_create(&l)
                .set(r.last_change_us.map_or(0.0, |us| us as f64 / 1e6));
            m.overdue.get_or_create(&l).set(i64::from(r.overdue));
        }
        for sub in self.status_of_subscriptions() {
            let l = ResourceLabel { resource: sub.resource };
            let r = &m.received;
            r.applied_seq.get_or_create(&l).set(sub.applied_seq as i64);
            r.applied.get_or_create(&l).set(sub.applied as i64);
            r.lag.get_or_create(&l).set(sub.lag_seconds.unwrap_or(0.0));
            r.lag_changes.get_or_create(&l).set(sub.lag_changes as i64);
            r.receiving.get_or_create(&l).set(i64::from(sub.state == "receiving"));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
        out
    }
}
