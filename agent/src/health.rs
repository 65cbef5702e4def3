//! Health, status and metrics: the agent's state as the operator sees it,
//! and the local HTTP port that serves it (`/healthz`, `/readyz`, `/status`,
//! `/metrics`).
//!
//! Sources and the link write counters and states here; nothing here feeds
//! back into the pipeline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

type Freshness = Arc<Mutex<crate::freshness::Tracker>>;

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
    problems: Mutex<std::collections::BTreeMap<String, String>>,
    freshness: Freshness,
}

impl SourceStats {
    /// A committed change of `resource` at `at_us`.
    pub fn changed(&self, resource: &str, at_us: i64) {
        self.freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .changed(resource, at_us);
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes (or with `None` clears) a problem with one file.
    pub fn set_problem(&self, file: &str, problem: Option<String>) {
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(text) => {
                p.insert(file.to_owned(), text);
            }
            None => {
                p.remove(file);
            }
        }
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(f, e)| format!("{f}: {e}"))
            .collect()
    }
}

/// The link's state as shown in /status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Up,
    Down,
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    since: SystemTime,
    /// Since when the link has not been up (through every reconnect
    /// attempt); `None` while it is up.
    down_since: Option<SystemTime>,
    last_ack: Option<SystemTime>,
    error: Option<String>,
}

/// Shared state of the running agent.
pub struct Health {
    agency: String,
    hub: String,
    outbox: Outbox,
    sources: Mutex<Vec<(String, Arc<SourceStats>)>>,
    link: Mutex<Link>,
    registry: Registry,
    families: Families,
    watch: Option<Watch>,
    trend: Mutex<QuarantineTrend>,
    /// Why the last config reload was refused, until one succeeds.
    reload_error: Mutex<Option<String>>,
    freshness: Freshness,
    last_change: Family<ResourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    overdue: Family<ResourceLabel, Gauge>,
    pub records_sent: Counter,
    pub records_acked: Counter,
    pub records_rejected: Counter,
    /// From the outbox commit of a batch's first record to the hub's ack.
    pub commit_to_ack: prometheus_client::metrics::histogram::Histogram,
    link_up: Gauge,
    outbox_records: Gauge,
    outbox_bytes: Gauge,
    oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    quarantine_records: Gauge,
}

struct Families {
    warnings: Family<SourceLabel, Counter>,
    rows: Family<SourceLabel, Counter>,
    records: Family<SourceLabel, Counter>,
    quarantined: Family<SourceLabel, Counter>,
    files_done: Family<SourceLabel, Counter>,
    files_rejected: Family<SourceLabel, Counter>,
}

impl Health {
    pub fn new(
        agency: &str,
        hub: &str,
        outbox: Outbox,
        freshness: crate::freshness::Tracker,
        watch: Option<Watch>,
    ) -> Arc<Health> {
        let mut registry = Registry::with_prefix("qianzhi");
        let families = Families {
            warnings: Family::default(),
            rows: Family::default(),
            records: Family::default(),
            quarantined: Family::default(),
            files_done: Family::default(),
            files_rejected: Family::default(),
        };
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
        let h = Health {
            agency: agency.to_owned(),
            hub: hub.to_owned(),
            outbox,
            sources: Mutex::default(),
            link: Mutex::new(Link {
                state: LinkState::Connecting,
                since: SystemTime::now(),
                down_since: Some(SystemTime::now()),
                last_ack: None,
                error: None,
            }),
            records_sent: Counter::default(),
            records_acked: Counter::default(),
            records_rejected: Counter::default(),
            commit_to_ack: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
            ),
            link_up: Gauge::default(),
            outbox_records: Gauge::default(),
            outbox_bytes: Gauge::default(),
            oldest_age: Gauge::default(),
            quarantine_records: Gauge::default(),
            registry,
            families,
            freshness: Arc::new(Mutex::new(freshness)),
            watch,
            trend: Mutex::default(),
            reload_error: Mutex::default(),
            last_change: Family::default(),
            overdue: Family::default(),
        };
        let mut h = h;
        let r = &mut h.registry;
        r.register("records_sent", "Records sent to the hub", h.records_sent.clone());
        r.register(
            "records_acked",
            "Records the hub acknowledged as durably stored",
            h.records_acked.clone(),
        );
        r.register(
            "records_rejected",
            "Records the hub rejected (moved to quarantine)",
            h.records_rejected.clone(),
        );
        r.register("link_up", "1 while the stream to the hub is up", h.link_up.clone());
        r.register_with_unit(
            "commit_to_ack",
            "From a record's commit to the outbox to the hub's durable ack (first record of each batch)",
            prometheus_client::registry::Unit::Seconds,
            h.commit_to_ack.clone(),
        );
        r.register(
            "outbox_records",
            "Records waiting in the outbox for the hub's ack",
            h.outbox_records.clone(),
        );
        r.register("outbox_bytes", "Bytes waiting in the outbox", h.outbox_bytes.clone());
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unacknowledged record",
            h.oldest_age.clone(),
        );
        r.register(
            "quarantine_records",
            "Records held in the local quarantine",
            h.quarantine_records.clone(),
        );
        r.register(
            "resource_last_change_timestamp_seconds",
            "When a provided resource last changed (Unix time; 0 if never)",
            h.last_change.clone(),
        );
        r.register(
            "resource_overdue",
            "1 while a provided resource is late for its update cycle (article 30)",
            h.overdue.clone(),
        );
        Arc::new(h)
    }

    pub fn set_reload_error(&self, e: Option<String>) {
        *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Forgets a source that was removed from the config.
    pub fn remove_source(&self, name: &str) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| n != name);
    }

    /// The stats of a source, created on first use.
    pub fn source(&self, name: &str) -> Arc<SourceStats> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = sources.iter().find(|(n, _)| n == name) {
            return s.clone();
        }
        let l = SourceLabel {
            source: name.to_owned(),
        };
        let f = &self.families;
        let s = Arc::new(SourceStats {
            rows: f.rows.get_or_create(&l).clone(),
            records: f.records.get_or_create(&l).clone(),
            quarantined: f.quarantined.get_or_create(&l).clone(),
            files_done: f.files_done.get_or_create(&l).clone(),
            files_rejected: f.files_rejected.get_or_create(&l).clone(),
            files_skipped: Counter::default(),
            warnings: f.warnings.get_or_create(&l).clone(),
            error: Mutex::default(),
            problems: Mutex::default(),
            freshness: self.freshness.clone(),
        });
        sources.push((name.to_owned(), s.clone()));
        s
    }

    pub fn set_link(&self, state: LinkState, error: Option<String>) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
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
        self.link_up.set(i64::from(state == LinkState::Up));
    }

    pub fn acked(&self, records: u64) {
        self.records_acked.inc_by(records);
        self.link.lock().unwrap_or_else(|p| p.into_inner()).last_ack = Some(SystemTime::now());
    }

    /// Ready when the outbox is writable, no damage recovery waits for an
    /// operator, and no source is failing.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(e) = self.outbox.stats().error {
            return Err(format!("outbox not writable: {e}"));
        }
        if let Some(r) = self.outbox.unacknowledged_recovery() {
            return Err(r);
        }
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        for (name, s) in sources.iter() {
            if let Some(e) = s.error() {
                return Err(format!("source {name} failing: {e}"));
            }
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        // Computed first: it takes the sources lock itself.
        let ready = self.ready().err().unwrap_or_else(|| "ok".into());
        let q = self.outbox.stats();
        let now = SystemTime::now();
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let oldest_age = q.oldest_us.map(|us| {
            let now_us = crate::outbox::now_us();
            ((now_us - us).max(0) as f64) / 1e6
        });
        // Before the sources lock: it takes that lock itself.
        let degraded = self.degraded(&q, link.down_since, link.error.as_deref());
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        Status {
            agency: self.agency.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            outbox_id: self.outbox.id().to_owned(),
            ready,
            degraded,
            link: LinkStatus {
                hub: self.hub.clone(),
                state: link.state,
                since_seconds: now.duration_since(link.since).map_or(0.0, |d| d.as_secs_f64()),
                last_ack_seconds_ago: link
                    .last_ack
                    .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                error: link.error.clone(),
                sent: self.records_sent.get(),
                acked: self.records_acked.get(),
                rejected: self.records_rejected.get(),
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
            resources: self
                .freshness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .report(crate::outbox::now_us()),
            sources: sources
                .iter()
                .map(|(name, s)| SourceStatus {
                    name: name.clone(),
                    rows: s.rows.get(),
                    records: s.records.get(),
                    quarantined: s.quarantined.get(),
                    warnings: s.warnings.get(),
                    files_done: s.files_done.get(),
                    files_rejected: s.files_rejected.get(),
                    files_skipped: s.files_skipped.get(),
                    problems: s.problems(),
                    error: s.error(),
                })
                .collect(),
        }
    }

    pub fn metrics(&self) -> String {
        let q = self.outbox.stats();
        self.outbox_records.set(q.records as i64);
        self.outbox_bytes.set(q.bytes as i64);
        self.quarantine_records.set(q.quarantined as i64);
        self.oldest_age.set(
            q.oldest_us
                .map_or(0.0, |us| ((crate::outbox::now_us() - us).max(0) as f64) / 1e6),
        );
        for r in self
            .freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(crate::outbox::now_us())
        {
            let l = ResourceLabel { resource: r.resource };
            self.last_change
                .get_or_create(&l)
                .set(r.last_change_us.map_or(0.0, |us| us as f64 / 1e6));
            self.overdue.get_or_create(&l).set(i64::from(r.overdue));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub hub: String,
    pub state: LinkState,
    pub since_seconds: f64,
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
    /// Files retried with a backoff, each with its reason.
    #[serde(default)]
    pub problems: Vec<String>,
    pub error: Option<String>,
}

/// Binds the health port. Done before anything is spawned so a taken port
/// is an init failure, not a silent gap.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the health port until the token is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>, token: CancellationToken) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                match h.ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
                }
            }),
        )
        .route(
            "/status",
            get(|State(h): State<Arc<Health>>| async move { axum::Json(h.status()) }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics(),
                )
                    .into_response()
            }),
        )
        .with_state(health);
    // Each connection is bounded in number and time: half-open connections
    // must not use up the agent's file descriptors (the drop folders and the
    // outbox need them).
    let slots = Arc::new(tokio::sync::Semaphore::new(HEALTH_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            () = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "health port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the limit: closed at once.
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let token = token.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEALTH_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(HEALTH_CONNECTION_TIMEOUT, conn) => {}
                () = token.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Connections the health port serves at once; more are closed at once.
const HEALTH_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
const HEALTH_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time one connection may take in all.
const HEALTH_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the degraded checks need to know, beyond the counters.
#[derive(Debug, Clone)]
pub struct Watch {
    pub thresholds: crate::config::Thresholds,
    pub data_dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
}

/// How long ago the quarantine last grew, noticed by [`Health::sample`].
#[derive(Debug, Default)]
struct QuarantineTrend {
    count: u64,
    grew_at: Option<SystemTime>,
    grew_by: u64,
}

/// How long a growing quarantine stays in the degraded list.
const QUARANTINE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

impl Health {
    /// Notes changes that only show over time (the quarantine growing).
    /// Called every few seconds by the systemd task.
    pub fn sample(&self) {
        let count = self.outbox.stats().quarantined;
        let mut t = self.trend.lock().unwrap_or_else(|p| p.into_inner());
        if count > t.count {
            let recent = t
                .grew_at
                .is_some_and(|at| at.elapsed().unwrap_or_default() < QUARANTINE_WINDOW);
            t.grew_by = if recent {
                t.grew_by + (count - t.count)
            } else {
                count - t.count
            };
            t.grew_at = Some(SystemTime::now());
        }
        t.count = count;
    }

    /// Conditions an operator must know about, each with its reason.
    fn degraded(
        &self,
        q: &crate::outbox::Stats,
        link_down_since: Option<SystemTime>,
        link_error: Option<&str>,
    ) -> Vec<String> {
        let mut out: Vec<String> = self.outbox.unacknowledged_recovery().into_iter().collect();
        if let Some(e) = self.reload_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            out.push(format!(
                "RELOAD_REFUSED: the new config was refused, the previous one runs: {e}"
            ));
        }
        for (name, source) in self.sources.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for problem in source.problems() {
                out.push(format!("FILE_RETRYING: source {name}: {problem}"));
            }
        }
        if q.disk_low {
            out.push(
                "SOURCES_PAUSED: the data directory's filesystem is below outbox.reserve_free; delivery goes on".into(),
            );
        }
        let Some(w) = &self.watch else { return out };
        let t = &w.thresholds;
        let down_for = link_down_since.map(|s| s.elapsed().unwrap_or_default());
        if let Some(down_for) = down_for
            && down_for >= t.link_down_after
        {
            out.push(format!(
                "LINK_DOWN: no link to the hub for {}s{}",
                down_for.as_secs(),
                link_error.map_or_else(String::new, |e| format!(": {e}"))
            ));
        }
        if let Some(us) = q.oldest_us {
            let age = ((crate::outbox::now_us() - us).max(0) / 1_000_000) as u64;
            if age >= t.queue_age_after.as_secs() {
                out.push(format!("QUEUE_AGE: the oldest unacknowledged record is {age}s old"));
            }
        }
        match crate::disk::free_bytes(&w.data_dir) {
            Ok(free) if free < t.disk_min_free => out.push(format!(
                "DISK_LOW: {} MiB free on the filesystem of {} (below {} MiB)",
                free >> 20,
                w.data_dir.display(),
                t.disk_min_free >> 20
            )),
            Ok(_) => {}
            Err(e) => out.push(format!(
                "DISK_UNKNOWN: cannot read free space of {}: {e}",
                w.data_dir.display()
            )),
        }
        match pki::identity::not_after(&w.cert) {
            Ok(not_after) => {
                let now = SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let days = (not_after - now).div_euclid(86_400);
                if days < i64::from(t.cert_warn_days) {
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64),
                    );
                    out.push(if days < 0 {
                        format!(
                            "CERT_EXPIRED: the agency certificate {} expired at {when}",
                            w.cert.display()
                        )
                    } else {
                        format!(
                            "CERT_EXPIRING: the agency certificate {} expires at {when} (in {days} days)",
                            w.cert.display()
                        )
                    });
                }
            }
            Err(e) => out.push(format!("CERT_UNREADABLE: {e}")),
        }
        {
            let trend = self.trend.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = trend.grew_at
                && at.elapsed().unwrap_or_default() < QUARANTINE_WINDOW
            {
                out.push(format!(
                    "QUARANTINE_GROWING: {} records quarantined in the last {} minutes ({} held); see qianzhi quarantine list",
                    trend.grew_by,
                    QUARANTINE_WINDOW.as_secs() / 60,
                    q.quarantined
                ));
            }
        }
        for r in self
            .freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(crate::outbox::now_us())
        {
            if r.overdue {
                out.push(format!(
                    "RESOURCE_OVERDUE: {} {} has not changed within its update cycle ({}; article 30)",
                    r.resource, r.name, r.cycle
                ));
            }
        }
        out
    }
}
