//! hub-stub: a small but real exchange hub, for tests, demos and
//! integrators. mTLS with agency identity from the client certificate, one
//! data one source (a resource only from its provider), a durable
//! idempotent store, an export, and the receiving direction: sharing
//! agreements and delivery to subscribers, recorded for the report.
//!
//! It depends on the protocol and the two leaf crates only: `rules` (the
//! catalog and the data elements it checks records with) and `pki` (its TLS
//! config and the agency identity in a client certificate). It knows nothing
//! of the agent's sources, queue or configuration.
//!
//! Module map: [`config`] (hub.toml), [`live`] (the catalog and TLS config
//! a SIGHUP replaces), [`limits`] (what one agency may cost the hub), [`conn`] (accepting connections, TLS, idle timeout),
//! [`codec`] (the methods on the wire), [`service`] (the gRPC service:
//! Sync and Subscribe), [`session`] (one live session per outbox),
//! [`store`] (SQLite; `store::feed` for the receiving direction),
//! [`share`] (the sharing rules), [`admin`] (agreement and report
//! commands), [`text`] (untrusted text made safe to show).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::sync::Arc;
use std::time::Duration;

use rules::catalog::Catalog;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub mod admin;
pub mod codec;
pub mod config;
pub mod conn;
pub mod limits;
pub mod live;
pub mod service;
pub mod session;
pub mod share;
pub mod store;
pub mod text;

pub use limits::Limits;
pub use live::Live;
pub use store::Store;

/// Serves the exchange on `listener` with the default limits until
/// `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, tls, store, catalog, Limits::default(), shutdown).await
}

/// Serves the exchange on `listener` within `limits` until `shutdown` is
/// cancelled.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_live(listener, Live::new(catalog, tls), store, limits, shutdown).await
}

/// Serves the exchange on `listener` with the catalog and TLS config in
/// `live`, which the caller may replace while it serves (SIGHUP).
pub async fn serve_live(
    listener: TcpListener,
    live: Arc<Live>,
    store: Arc<Store>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let limits = Arc::new(limits);
    let incoming = conn::accept(listener, live.clone(), limits.clone(), shutdown.clone());
    let exchange = codec::ExchangeService::new(
        service::Hub::new(store, live, limits.clone(), shutdown.clone()),
        limits.max_batch_entries,
        limits.max_message_bytes,
    );
    tonic::transport::Server::builder()
        // Dead peers: a ping every 10 s, unanswered for 5 s, closes the
        // connection (an idle healthy agent answers them).
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_concurrent_streams(Some(u32::try_from(limits.max_streams).unwrap_or(u32::MAX)))
        // One service, served without a router: unknown paths are answered
        // UNIMPLEMENTED by the service itself.
        .serve_with_incoming_shutdown(exchange, ReceiverStream::new(incoming), shutdown.cancelled_owned())
        .await
}
