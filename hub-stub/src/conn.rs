//! Connections: the accept loop, the TLS handshake, and what the service
//! learns of a connection ([`ConnInfo`]: the peer, the agency its
//! certificate names, its open streams).
//!
//! Owns the connection-level limits: connections per agency
//! (`limits.max_connections`, counted once the handshake names the
//! agency), and the idle timeout. A connection is closed when it has had no
//! Sync stream open for `limits.idle_timeout`; a connection with a stream is
//! never closed for idleness, because a healthy agent with an empty queue
//! sends nothing on its stream (only HTTP/2 pings). The stream itself must
//! say Hello within `limits.hello_timeout` (see `service`), and dead peers
//! are found by the server's HTTP/2 keepalive.
//!
//! Unauthenticated handshakes are bounded in time only (10 s each).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tracing::{info, warn};

use crate::limits::{Limits, Quota, Slot};

/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service knows of the connection a request came on (a request
/// extension, through tonic's `Connected`).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The agency the client certificate names, or why it names none.
    pub agency: Result<String, String>,
    /// Sync streams open on this connection, watched by the idle timer.
    streams: Arc<watch::Sender<usize>>,
}

/// One open stream on a connection; dropping it ends it for the idle timer.
pub struct OpenStream(Arc<watch::Sender<usize>>);

impl ConnInfo {
    /// Counts a stream as open until the returned guard drops.
    pub fn open_stream(&self) -> OpenStream {
        self.streams.send_modify(|n| *n += 1);
        OpenStream(self.streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A TLS connection as tonic serves it: reads fail once the idle timer
/// closes it, which makes the HTTP/2 server drop it.
pub struct Conn {
    io: TlsStream<TcpStream>,
    info: ConnInfo,
    close: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Stops the idle timer when the connection is dropped.
    _gone: DropGuard,
    /// This connection's place in its agency's quota.
    _slot: Option<Slot>,
}

/// Accepts connections on `listener` until `shutdown`, handshakes each, and
/// yields the ones within their agency's quota.
pub fn accept(
    listener: TcpListener,
    live: Arc<crate::Live>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let quota = Quota::new("connections", limits.max_connections);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // The TLS config in force now: a reload reaches the next handshake.
            let acceptor = tokio_rustls::TlsAcceptor::from(live.tls());
            let (tx, quota, idle) = (tx.clone(), quota.clone(), limits.idle_timeout);
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        if let Some(conn) = Conn::new(stream, peer, &quota, idle) {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

impl Conn {
    /// Wraps a handshaken stream, or drops it when its agency has no
    /// connection left.
    fn new(io: TlsStream<TcpStream>, peer: SocketAddr, quota: &Arc<Quota>, idle: Duration) -> Option<Conn> {
        let agency = match io.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => pki::identity::agency_of(cert),
            None => Err("no client certificate".to_owned()),
        };
        let slot = match &agency {
            Ok(a) => match quota.take(a) {
                Ok(slot) => Some(slot),
                Err(e) => {
                    warn!(%peer, "{e}; connection closed");
                    return None;
                }
            },
            Err(_) => None,
        };
        let (streams, open) = watch::channel(0);
        let (close, gone) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(close_when_idle(open, idle, close.clone(), gone.clone(), peer));
        Some(Conn {
            io,
            info: ConnInfo {
                peer,
                agency,
                streams: Arc::new(streams),
            },
            closed: Box::pin(close.clone().cancelled_owned()),
            close,
            _gone: gone.drop_guard(),
            _slot: slot,
        })
    }

    /// Whether the idle timer closed this connection; registers the waker
    /// for when it does.
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        self.close.is_cancelled() || self.closed.as_mut().poll(cx).is_ready()
    }
}

/// Closes a connection once it has had no stream open for `idle`.
async fn close_when_idle(
    mut open: watch::Receiver<usize>,
    idle: Duration,
    close: CancellationToken,
    gone: CancellationToken,
    peer: SocketAddr,
) {
    loop {
        tokio::select! {
            r = open.wait_for(|n| *n == 0) => if r.is_err() { return },
            () = gone.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(idle) => {
                info!(%peer, ?idle, "connection closed: no stream for the idle timeout");
                close.cancel();
                return;
            }
            r = open.wait_for(|n| *n > 0) => if r.is_err() { return },
            () = gone.cancelled() => return,
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle without a stream")
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.close.is_cancelled() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.close.is_cancelled() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}
