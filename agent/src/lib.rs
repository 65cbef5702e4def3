//! Qianzhi (前置), the front-end exchange agent: watches the agency's data
//! (drop folders, databases), normalizes every record to the catalog's data
//! elements, queues it durably and delivers it to the hub exactly once; and
//! receives what other agencies share with it, into its own database or a
//! folder, exactly once.
//!
//! Module map (the pipeline, in order, then what runs it):
//! - [`config`]: the one TOML file → validated [`config::Config`].
//! - `source`: one task per source (drop folder, SQLite, PostgreSQL, MySQL)
//!   that reads rows and commits them through `source::commit`.
//! - [`normalize`]: pure row → record or quarantine entry.
//! - [`outbox`]: the durable queue (SQLite): records, positions, quarantine.
//! - `link`: the mTLS gRPC stream that drains the outbox into the hub.
//! - `receive`: the Subscribe stream from the hub and a worker per
//!   `[[subscription]]` that applies it into its [`sink`] (a table or a
//!   folder) with the position in one transaction.
//! - [`health`]: counters, `/status`, `/metrics` and the health port.
//! - [`cli`]: the `qianzhi` subcommands (`main.rs` only dispatches).
//! - `control`: the control socket through which the CLI changes the
//!   quarantine of the running agent.
//! - `check`, `quarantine`, `freshness`, `systemd`, `disk`, `fsx`, `sqlite`, `sync`,
//!   [`clock`], [`signal`]: what those use.
//!
//! The record rules and the TLS are the `rules` and `pki` crates, shared
//! with the hub. Modules are private unless the binary, the demo, the
//! benchmark, the fuzz targets or the end-to-end tests need them.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod check;
pub mod cli;
pub mod clock;
pub mod config;
mod control;
pub mod disk;
mod freshness;
mod fsx;
pub mod health;
mod link;
pub mod normalize;
pub mod outbox;
mod quarantine;
mod receive;
pub mod signal;
pub mod sink;
pub mod source;
mod sqlite;
mod sync;
mod systemd;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    #[error("cannot bind the health port {addr} (`listen` in the config's [health]): {source}")]
    Health { addr: SocketAddr, source: std::io::Error },
}

/// A started agent, for callers that want to look inside (tests, the demo).
pub struct Running {
    pub health: Arc<health::Health>,
    pub outbox: outbox::Outbox,
    /// The bound health port (useful when the config asked for port 0).
    pub health_addr: SocketAddr,
    reload: tokio::sync::Mutex<Reloadable>,
    /// The running config, for the control socket.
    config: tokio::sync::watch::Sender<Arc<config::Config>>,
}

/// What a config reload can change while the agent runs.
struct Reloadable {
    config: config::Config,
    sources: source::Sources,
    link: (CancellationToken, tokio::task::JoinHandle<()>),
    tasks: TaskTracker,
    token: CancellationToken,
}

/// Why a new config was refused on reload (the running one stays).
#[derive(Debug, thiserror::Error)]
#[error("`{key}` cannot change while the agent runs (restart the service to change it)")]
pub struct ReloadError {
    pub key: &'static str,
}

fn spawn_link(
    config: &config::Config,
    outbox: &outbox::Outbox,
    health: &Arc<health::Health>,
    tasks: &TaskTracker,
    token: &CancellationToken,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let link = link::Link {
        hub: config.hub.clone(),
        agency: config.agency.clone(),
        catalog_digest: config.catalog.digest().to_owned(),
        outbox: outbox.clone(),
        stats: health.link_stats(),
        sent: Default::default(),
    };
    let token = token.child_token();
    let task = tasks.spawn(link.run(token.clone()));
    (token, task)
}

impl Running {
    /// Applies a new, already validated config: sources added, removed or
    /// changed, the link restarted if the hub settings or the catalog
    /// changed. The queue is untouched. Settings that need a restart (the
    /// agency, the data directory, the health port, the outbox limits) are
    /// refused, and the running config stays.
    pub async fn reload(&self, new: config::Config) -> Result<String, ReloadError> {
        let mut r = self.reload.lock().await;
        let old = &r.config;
        let fixed = [
            ("agency", old.agency != new.agency),
            ("data_dir", old.data_dir != new.data_dir),
            ("health.listen", old.health_listen != new.health_listen),
            ("outbox.max_bytes", old.outbox.max_bytes != new.outbox.max_bytes),
            (
                "outbox.reserve_free",
                old.outbox.reserve_free != new.outbox.reserve_free,
            ),
            // Each sink is owned by one worker; a second one on the same
            // table or folder must not start while the first still runs.
            ("subscription", old.subscriptions != new.subscriptions),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            self.health
                .set_reload_error(Some(format!("`{key}` cannot change while the agent runs")));
            return Err(ReloadError { key });
        }
        let relink = old.hub != new.hub || old.catalog.digest() != new.catalog.digest();
        let (started, stopped) = r.sources.apply(&new.sources, &new.catalog).await;
        if relink {
            // The old session ends (its in-flight acks collected) before the
            // new one starts: one stream per outbox at a time.
            // Bounded: aborting a session is safe (the outbox keeps every
            // record until an ack, and the hub drops what it has).
            r.link.0.cancel();
            let finished = &mut r.link.1;
            if tokio::time::timeout(std::time::Duration::from_secs(10), &mut *finished)
                .await
                .is_err()
            {
                finished.abort();
                tracing::warn!("the old hub session did not end within 10s; aborted");
            }
            r.link = spawn_link(&new, &self.outbox, &self.health, &r.tasks, &r.token);
        }
        let receiver = if relink && !new.subscriptions.is_empty() {
            "; the receiver keeps the old hub settings until a restart"
        } else {
            ""
        };
        self.config.send_replace(Arc::new(new.clone()));
        r.config = new;
        self.health.set_reload_error(None);
        Ok(format!(
            "sources started: [{}]; stopped: [{}]; link {}{receiver}",
            started.join(", "),
            stopped.join(", "),
            if relink { "restarted" } else { "unchanged" }
        ))
    }
}

/// Opens the outbox, binds the health port and spawns every task on
/// `tasks`. Each task stops when `token` is cancelled.
pub async fn start(
    config: config::Config,
    tasks: &TaskTracker,
    token: CancellationToken,
) -> Result<Running, StartError> {
    let outbox =
        outbox::Outbox::open_with_reserve(&config.data_dir, config.outbox.max_bytes, config.outbox.reserve_free)?;
    let listener = health::bind(config.health_listen)
        .await
        .map_err(|source| StartError::Health {
            addr: config.health_listen,
            source,
        })?;
    let health_addr = listener.local_addr().map_err(|source| StartError::Health {
        addr: config.health_listen,
        source,
    })?;
    let (stored, since_us) = outbox.read_blocking(|r| Ok((r.positions(freshness::POSITIONS)?, r.created_us()?)))?;
    let last = stored.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?)));
    let tracker = freshness::Tracker::new(&config.catalog, &config.agency, last, since_us);
    let watch = health::Watch {
        thresholds: config.thresholds.clone(),
        data_dir: config.data_dir.clone(),
        cert: config.hub.cert.clone(),
    };
    let health = health::Health::new(&config.agency, &config.hub.url, outbox.clone(), tracker, Some(watch));
    // Where `qianzhi status` finds this agent: written once the port is
    // bound and the data directory is ours, removed when the port closes.
    let port_file = health::PortFile {
        addr: health_addr,
        agency: config.agency.clone(),
        config: std::path::absolute(&config.origin).unwrap_or_else(|_| config.origin.clone()),
        pid: std::process::id(),
    };
    if let Err(e) = port_file.write(&config.data_dir) {
        let file = health::PortFile::path(&config.data_dir);
        tracing::warn!(error = %e, file = %file.display(), "cannot record the health port; qianzhi status will not find this agent");
    }
    let data_dir = config.data_dir.clone();
    let serving = health::serve(listener, health.clone(), token.clone());
    tasks.spawn(async move {
        serving.await;
        port_file.remove(&data_dir);
    });
    let mut sources = source::Sources::new(&config.agency, &outbox, &health, tasks, &token);
    sources.apply(&config.sources, &config.catalog).await;
    let link = spawn_link(&config, &outbox, &health, tasks, &token);
    receive::start(&config, &health, tasks, token.clone());
    tasks.spawn(systemd::run(health.clone(), outbox.clone(), token.clone()));
    tasks.spawn(disk::watch(outbox.clone(), token.clone()));
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
    match control::serve(&config.data_dir, outbox.clone(), config_rx, token.clone()) {
        Ok(serving) => drop(tasks.spawn(serving)),
        // Not fatal: the quarantine can still be changed with the agent stopped.
        Err(e) => tracing::warn!(
            error = %e,
            socket = %control::path(&config.data_dir).display(),
            "cannot open the control socket; `qianzhi quarantine retry|discard` will need the agent stopped"
        ),
    }
    if let Some(w) = pki::tls::key_warning(&config.hub.key) {
        tracing::warn!("{w}");
    }
    tracing::info!(
        agency = %config.agency,
        outbox = %outbox.id(),
        queued = outbox.stats().records,
        health = %health_addr,
        "agent started"
    );
    Ok(Running {
        health,
        outbox,
        health_addr,
        reload: tokio::sync::Mutex::new(Reloadable {
            config,
            sources,
            link,
            tasks: tasks.clone(),
            token,
        }),
        config: config_tx,
    })
}
