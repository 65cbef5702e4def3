//! The health port: a local HTTP/1 server (axum on hyper) for the status
//! page at `/`, `/healthz`, `/readyz`, `/status` and `/metrics`, read-only.
//! Connections are bounded in number and time, so that half-open ones
//! cannot use up the agent's file descriptors.
//!
//! Not here: what the answers say (`status`, `page`, `metrics`,
//! `degraded`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Health;

/// Connections the health port serves at once; more are closed at once.
const HEALTH_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may take in all.
const HEALTH_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the health port. Done before anything is spawned so a taken port
/// is an init failure, not a silent gap.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the health port until the token is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>, token: CancellationToken) {
    let app = axum::Router::new()
        .route(
            "/",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    super::page::render(&h.status()),
                )
            }),
        )
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
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
