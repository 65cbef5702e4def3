//! Qianzhi (前置), the front-end exchange agent.
//!
//! Module map:
//! - [`config`]: the one TOML file → validated [`config::Config`].
//! - [`catalog`]: the resource catalog and the record rules, shared with the hub.
//! - [`source`]: one task per source (drop folder) that reads, normalizes
//!   and commits to the outbox.
//! - [`normalize`]: pure row → record or quarantine entry.
//! - [`outbox`]: the durable queue (SQLite), positions and quarantine.
//! - [`link`]: the mTLS gRPC stream that drains the outbox into the hub.
//! - [`health`]: status, metrics and the health port.
//! - [`pki`]: a development PKI (rcgen).
//! - [`signal`]: shutdown signals.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod catalog;
pub mod check;
pub mod config;
pub mod disk;
pub mod element;
pub mod freshness;
pub mod health;
pub mod link;
pub mod normalize;
pub mod outbox;
pub mod pki;
pub mod quarantine;
pub mod signal;
pub mod source;
pub mod systemd;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    #[error("cannot bind the health port {addr}: {source}")]
    Health { addr: SocketAddr, source: std::io::Error },
}

/// A started agent, for callers that want to look inside (tests, the demo).
pub struct Running {
    pub health: Arc<health::Health>,
    pub outbox: outbox::Outbox,
    /// The bound health port (useful when the config asked for port 0).
    pub health_addr: SocketAddr,
}

/// Opens the outbox, binds the health port and spawns every task on
/// `tasks`. Each task stops when `token` is cancelled.
pub async fn start(
    config: config::Config,
    tasks: &TaskTracker,
    token: CancellationToken,
) -> Result<Running, StartError> {
    let outbox = outbox::Outbox::open(&config.data_dir, config.outbox.max_bytes)?;
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
    tasks.spawn(health::serve(listener, health.clone(), token.clone()));
    source::spawn(&config, &outbox, &health, tasks, &token);
    let link = link::Link {
        hub: config.hub.clone(),
        agency: config.agency.clone(),
        catalog_digest: config.catalog.digest().to_owned(),
        outbox: outbox.clone(),
        health: health.clone(),
    };
    tasks.spawn(link.run(token.clone()));
    tasks.spawn(systemd::run(health.clone(), outbox.clone(), token.clone()));
    tasks.spawn(disk::watch(
        outbox.clone(),
        config.data_dir.clone(),
        config.outbox.reserve_free,
        token.clone(),
    ));
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
    })
}
