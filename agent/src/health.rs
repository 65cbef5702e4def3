//! Health, status and metrics: the agent's state as the operator sees it,
//! and the local HTTP port that serves it (`/` the status page, `/healthz`,
//! `/readyz`, `/status`, `/metrics`).
//!
//! This module owns the [`Health`] handle: the registry of sources, the
//! link's state, the reload error and the freshness tracker, shared by the
//! parts below. Sources and the link write into it only through narrow
//! handles ([`SourceStats`], [`LinkStats`]); nothing here feeds back into
//! the pipeline.
//!
//! - `stats`: the handles the pipeline writes through.
//! - `metrics`: the Prometheus registry, rendered for `/metrics`.
//! - `status`: the `/status` document and readiness (`/readyz`).
//! - `page`: the status page, HTML made from the `/status` document.
//! - `units`: figures in human units, for the page and `qianzhi status`.
//! - `degraded`: the conditions an operator must act on. The checks that
//!   touch the disk or parse the certificate run on the [`Health::sample`]
//!   tick and are cached; a request only reads the cache.
//! - `server`: the health port.
//! - `port_file`: `health.json`, where `qianzhi status` finds the port.
//!
//! Not here: the text rendering of `/status` and the HTTP client of
//! `qianzhi status` (`cli::status`).

use std::sync::{Arc, Mutex};

use crate::outbox::Outbox;
use crate::sync::MutexExt;

mod degraded;
mod metrics;
mod page;
mod port_file;
mod server;
mod stats;
mod status;
pub(crate) mod units;

pub use degraded::Watch;
pub use port_file::PortFile;
pub use server::{bind, serve};
pub use stats::{ByteMeasure, FileRead, LinkStats, ReadAt, SourceStats, SubscriptionStats};
pub use status::{FileProgress, LinkState, LinkStatus, QueueStatus, SourceStatus, Status, SubscriptionStatus};

/// The freshness tracker, shared with every source's handle.
type Freshness = Arc<Mutex<crate::freshness::Tracker>>;

/// Shared state of the running agent.
pub struct Health {
    agency: String,
    hub: String,
    outbox: Outbox,
    /// Each source's handle by name, in the order they started: `/status`
    /// lists them in that order.
    sources: Mutex<Vec<(String, Arc<SourceStats>)>>,
    /// Each subscription's handle by resource, in config order.
    subscriptions: Mutex<Vec<(String, SubscriptionStats)>>,
    /// The link's state and counters; the link holds a clone.
    link: LinkStats,
    metrics: metrics::Metrics,
    degraded: degraded::Checks,
    /// Why the last config reload was refused, until one succeeds.
    reload_error: Mutex<Option<String>>,
    freshness: Freshness,
}

impl Health {
    pub fn new(
        agency: &str,
        hub: &str,
        outbox: Outbox,
        freshness: crate::freshness::Tracker,
        watch: Option<Watch>,
    ) -> Arc<Health> {
        let link = LinkStats::new();
        Arc::new(Health {
            agency: agency.to_owned(),
            hub: hub.to_owned(),
            outbox,
            sources: Mutex::default(),
            subscriptions: Mutex::default(),
            metrics: metrics::Metrics::new(&link),
            link,
            degraded: degraded::Checks::new(watch),
            reload_error: Mutex::default(),
            freshness: Arc::new(Mutex::new(freshness)),
        })
    }

    pub fn set_reload_error(&self, e: Option<String>) {
        *self.reload_error.lock_unpoisoned() = e;
    }

    /// Forgets a source that was removed from the config.
    pub fn remove_source(&self, name: &str) {
        self.sources.lock_unpoisoned().retain(|(n, _)| n != name);
    }

    /// The stats of a source, created on first use.
    pub fn source(&self, name: &str) -> Arc<SourceStats> {
        let mut sources = self.sources.lock_unpoisoned();
        if let Some((_, s)) = sources.iter().find(|(n, _)| n == name) {
            return s.clone();
        }
        let s = Arc::new(SourceStats::new(
            self.metrics.source_counters(name),
            self.freshness.clone(),
        ));
        sources.push((name.to_owned(), s.clone()));
        s
    }

    /// The stats of a subscription, created on first use.
    pub fn subscription(&self, resource: &str) -> SubscriptionStats {
        let mut subs = self.subscriptions.lock_unpoisoned();
        if let Some((_, s)) = subs.iter().find(|(r, _)| r == resource) {
            return s.clone();
        }
        let s = SubscriptionStats::new();
        subs.push((resource.to_owned(), s.clone()));
        s
    }

    /// The handle the link writes its state and counters through.
    pub fn link_stats(&self) -> LinkStats {
        self.link.clone()
    }
}

#[cfg(test)]
mod tests;
