//! The link: one mutual-TLS gRPC stream to the hub that drains the outbox.
//!
//! A session says Hello, takes the hub's Welcome (the highest sequence it
//! holds for this outbox), acks that locally, and then streams batches of
//! queued records from the next sequence on, with up to `max_in_flight`
//! batches unacknowledged. The hub's Ack deletes records from the outbox;
//! its Rejected moves one record to the quarantine. Nothing is deleted
//! before the hub's ack. On any failure the session ends and a new one
//! starts after an exponential backoff with jitter (backon); the hub's
//! Welcome makes the resend exact.
//!
//! Architecture invariant: only this module (and `tls`) knows tonic and
//! rustls; the link never reads a source.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use hyper_util::rt::TokioIo;
use prost::Message;
use prost::bytes::Bytes;
use proto::v1::exchange_client::ExchangeClient;
use proto::v1::{
    AgentMessage, Batch, Delivery, Entry, Hello, HubMessage, Record, RejectCode, Rejected, Subscribe,
    SubscriberMessage, agent_message, delivery, hub_message, subscriber_message,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Endpoint, Uri};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::clock;
use crate::config::{Compression, HubConfig};
use crate::health::{LinkState, LinkStats};
use crate::normalize::Quarantined;
use crate::outbox::{self, Outbox};
use crate::sync::MutexExt;

#[cfg(test)]
mod tests;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates or keys cannot be used: an operator must fix a file.
    #[error("tls material: {0}")]
    Tls(#[from] pki::tls::Error),
    /// The TLS handshake failed (wrong CA, expired or revoked certificate,
    /// wrong name): an operator must act.
    #[error("tls handshake with the hub failed: {0}")]
    Handshake(String),
    /// TCP connect, a reset, a dead link noticed by keepalive.
    #[error("connection to the hub failed: {0}")]
    Connect(String),
    /// The hub answered with a gRPC status.
    #[error("hub refused: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The hub broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// zstd could not compress a batch (it runs out of memory, at most).
    #[error("compressing a batch failed: {0}")]
    Compress(std::io::Error),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
}

impl Error {
    /// Whether trying again soon can help. Fatal errors are retried too (an
    /// operator may fix the cause), but at the slowest backoff.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Tls(_) | Error::Handshake(_) => false,
            Error::Status(s) => !matches!(
                s.code(),
                tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Unimplemented
            ),
            Error::Connect(_) | Error::Protocol(_) | Error::Compress(_) | Error::Outbox(_) => true,
        }
    }
}

/// A handshake failure, told apart from other connect errors by downcast.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HandshakeError(String);

fn from_transport(e: tonic::transport::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut text = e.to_string();
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<HandshakeError>() {
            return Error::Handshake(h.0.clone());
        }
        text = c.to_string();
        cause = c.source();
    }
    Error::Connect(text)
}

fn from_status(s: tonic::Status) -> Error {
    // With TLS 1.3 the hub checks the client certificate after the client
    // has finished its half of the handshake. `tls_connect` waits for the
    // verdict; a server that does not speak first would deliver a refusal
    // here instead, as a broken stream whose cause is a TLS alert.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&s);
    let mut deepest = None;
    while let Some(c) = cause {
        deepest = Some(c.to_string());
        cause = c.source();
    }
    match deepest {
        Some(d) if d.contains("alert") => Error::Handshake(refused_certificate(d)),
        Some(d) if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Unavailable => {
            Error::Connect(format!("{}: {d}", s.message()))
        }
        _ => Error::Status(s),
    }
}

/// The refusal of this agent's certificate, in the words of `run`'s log
/// and `qianzhi check`: the TLS alert the hub sent.
fn refused_certificate(alert: impl std::fmt::Display) -> String {
    format!("the hub refused this agent's certificate: {alert}")
}

/// TCP connect, a TLS 1.3 handshake, and the hub's verdict on the client
/// certificate. Handshake failures and refusals come back as
/// `HandshakeError` so the caller can tell them apart.
///
/// With TLS 1.3 the client's handshake is done before the hub has judged
/// its certificate; the hub's verdict is its first word after it: a TLS
/// alert, or its HTTP/2 SETTINGS (an HTTP/2 server speaks first). So the
/// connector waits for that word, without consuming it, before it hands
/// the stream over. Otherwise the HTTP/2 client writes into a connection
/// the hub has closed and fails with "broken pipe" or "operation was
/// canceled", the alert unread: the operator would see a different error
/// at each attempt, none of them the cause.
async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    host: &str,
    port: u16,
) -> Result<BufReader<tokio_rustls::client::TlsStream<TcpStream>>, Box<dyn std::error::Error + Send + Sync>> {
    let host = host.trim_matches(['[', ']']);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| HandshakeError(e.to_string()))?;
    // A BufReader passes writes through; what it read ahead is read again.
    let mut stream = BufReader::new(stream);
    let closed = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the hub closed the connection right after the TLS handshake (see the hub's log)",
        )
    };
    match stream.fill_buf().await {
        Ok([]) => Err(closed())?,
        Ok(_) => Ok(stream),
        Err(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(alert @ rustls::Error::AlertReceived(_)) => Err(HandshakeError(refused_certificate(alert)))?,
            // Without close_notify: a hub that drops the connection (its
            // limit of connections per agency).
            _ if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(closed())?,
            _ => Err(e)?,
        },
    }
}

/// How long `qianzhi check` waits for the connection, and then for the
/// hub's answer.
const PROBE_WITHIN: Duration = Duration::from_secs(15);

/// Opens a session as `run` would and asks the hub whether it admits this
/// agent, for `qianzhi check`: connects as the link does ([`connect`]) and
/// sends a probe (a Subscribe with `probe` set and no subscriptions), which
/// the hub admits exactly as it admits the link's Hello (a client
/// certificate its CA verifies, naming an agency, equal to `agency`) and
/// answers with an empty Grants. A Hello would not do: the hub would take
/// over the running agent's session of the same outbox, and forget the
/// rejections below its `first_unacked_seq`. The probe changes nothing at
/// the hub. Errors are the link's, so check prints what `run` logs.
pub async fn probe(hub: &HubConfig, agency: &str, catalog_digest: &str) -> Result<(), Error> {
    let late = |what: &str| Error::Connect(format!("no {what} from {} within {PROBE_WITHIN:?}", hub.url));
    let channel = tokio::time::timeout(PROBE_WITHIN, connect(hub))
        .await
        .map_err(|_| late("connection"))??;
    let subscribe = SubscriberMessage {
        body: Some(subscriber_message::Body::Subscribe(Subscribe {
            agency_id: agency.to_owned(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            catalog_digest: catalog_digest.to_owned(),
            subscriptions: Vec::new(),
            probe: true,
        })),
    };
    let answer = async {
        let mut inbound = ExchangeClient::new(channel)
            .subscribe(tokio_stream::iter([subscribe]))
            .await
            .map_err(from_status)?
            .into_inner();
        match inbound.message().await.map_err(from_status)? {
            Some(Delivery {
                body: Some(delivery::Body::Grants(_)),
            }) => {}
            other => return Err(Error::Protocol(format!("expected Grants, got {other:?}"))),
        }
        // The hub ends a probe after its answer: read to the end, so the
        // stream closes cleanly before the connection does.
        while inbound.message().await.map_err(from_status)?.is_some() {}
        Ok(())
    };
    tokio::time::timeout(PROBE_WITHIN, answer)
        .await
        .map_err(|_| late("answer"))?
}

/// Connects a channel to the hub (the link's and the receiver's): our own connector does TCP + rustls so that the
/// TLS config (TLS 1.3, ring, files re-read) is entirely ours.
pub async fn connect(hub: &HubConfig) -> Result<tonic::transport::Channel, Error> {
    let config = pki::tls::client_config(&hub.ca, &hub.cert, &hub.key)?;
    let server_name = ServerName::try_from(hub.server_name.clone())
        .map_err(|e| Error::Handshake(format!("invalid server name {:?}: {e}", hub.server_name)))?;
    // tonic must not try TLS itself: give it the plain scheme.
    let plain = hub.url.replacen("https://", "http://", 1);
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| Error::Connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(hub.keepalive)
        .keep_alive_timeout(hub.keepalive)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        let name = server_name.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let stream = tls_connect(config, name, &host, port).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(from_transport)
}

/// Everything a link needs.
pub struct Link {
    pub hub: HubConfig,
    pub agency: String,
    pub catalog_digest: String,
    pub outbox: Outbox,
    /// Where the link reports its state and counters.
    pub stats: LinkStats,
    /// The highest sequence sent to the hub or acknowledged by its Welcome
    /// in the current session: no ack may go beyond it.
    pub sent: std::sync::atomic::AtomicU64,
}

/// Batches sent and not yet acknowledged: (last seq, records, window slot).
/// Batches sent and not yet acknowledged: (last seq, records, commit time of
/// the first record, window slot).
type InFlight = Arc<Mutex<VecDeque<(u64, u64, i64, OwnedSemaphorePermit)>>>;

impl Link {
    /// Runs sessions until the token is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let mut backoff = self.backoff();
        let mut session_no = 0u64;
        loop {
            session_no += 1;
            self.stats.set_state(LinkState::Connecting, None);
            let started = Instant::now();
            let span = info_span!("link", hub = %self.hub.url, session = session_no);
            let result = self.session(&token).instrument(span).await;
            let e = match result {
                Ok(()) => break,
                Err(e) => e,
            };
            if token.is_cancelled() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = self.backoff();
            }
            let delay = if e.is_retryable() {
                warn!(error = %e, "link down; will retry");
                backoff.next().unwrap_or(self.hub.backoff_max)
            } else {
                error!(error = %e, "link refused; retrying slowly until fixed");
                self.hub.backoff_max
            };
            self.stats.set_state(LinkState::Down, Some(e.to_string()));
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.stats.set_state(LinkState::Down, None);
        info!("link stopped");
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.hub.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn session(&self, token: &CancellationToken) -> Result<(), Error> {
        let channel = tokio::select! {
            c = connect(&self.hub) => c?,
            () = token.cancelled() => return Ok(()),
        };
        let mut client = ExchangeClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        // zstd is this module's own (`Packer`), once the Welcome offers it.
        if self.hub.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let stats = self.outbox.stats();
        let first_unacked = self.outbox.read(|r| r.first_seq()).await?.unwrap_or(stats.last_seq + 1);
        let (tx, rx) = mpsc::channel::<AgentMessage>(self.hub.max_in_flight + 2);
        let hello = Hello {
            agency_id: self.agency.clone(),
            outbox_id: self.outbox.id().to_owned(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            catalog_digest: self.catalog_digest.clone(),
            first_unacked_seq: first_unacked,
        };
        // The channel has room: nothing else was sent yet.
        let _ = tx
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })
            .await;
        let mut inbound = client
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(from_status)?
            .into_inner();
        let welcome = match inbound.message().await.map_err(from_status)? {
            Some(HubMessage {
                body: Some(hub_message::Body::Welcome(w)),
            }) => w,
            other => return Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
        };
        let local = self.outbox.stats().last_seq;
        if welcome.last_seq > local {
            if self.outbox.unacknowledged_recovery().is_none() {
                // Never delete on the word of a hub that claims more than this
                // outbox ever assigned: a wrong hub, a forged one, or a data
                // directory restored from an old backup. An operator decides.
                return Err(Error::Protocol(format!(
                    "the hub says it holds sequence {} of outbox {}, beyond the highest this outbox ever \
                     assigned ({local}); nothing is deleted. A data directory restored from an older backup \
                     needs an operator: see the operations guide, 'restoring the data directory'",
                    welcome.last_seq,
                    self.outbox.id()
                )));
            }
            // The outbox was damaged and lost its tail: what the hub holds
            // was delivered; new records must follow it, or the hub would take
            // them for replays.
            error!(
                hub = welcome.last_seq,
                local,
                outbox = %self.outbox.id(),
                "the hub holds more of this recovered outbox than it remembers; continuing after the hub's sequence"
            );
            self.outbox.advance_to(welcome.last_seq).await?;
        }
        if welcome.catalog_digest != self.catalog_digest {
            warn!(hub = %welcome.catalog_digest, agent = %self.catalog_digest, "hub and agent catalogs differ");
        }
        for r in &welcome.rejections {
            self.quarantine(r).await?;
        }
        if welcome.last_seq > 0 {
            self.outbox.ack(welcome.last_seq).await?;
        }
        self.sent.store(welcome.last_seq, std::sync::atomic::Ordering::Release);
        let packer = match self.hub.compression {
            Compression::Zstd if welcome.zstd_batches => Some(Packer::new()?),
            Compression::Zstd => {
                warn!(hub_version = %welcome.hub_version, "the hub takes no compressed batches; sending them plain");
                None
            }
            Compression::Gzip | Compression::None => None,
        };
        info!(resume_after = welcome.last_seq, hub_version = %welcome.hub_version, "link up");
        self.stats.set_state(LinkState::Up, None);

        let window = Arc::new(Semaphore::new(self.hub.max_in_flight));
        let in_flight: InFlight = Arc::default();
        // A delete after an ack that fails (a full disk) ends the session:
        // the next one's Welcome redoes it.
        let (failed_tx, mut failed) = mpsc::channel::<outbox::Error>(1);
        let sender = self.send_loop(
            welcome.last_seq + 1,
            packer,
            tx.clone(),
            window.clone(),
            in_flight.clone(),
        );
        tokio::pin!(sender);
        loop {
            tokio::select! {
                r = &mut sender => return r,
                msg = inbound.message() => {
                    let msg = msg.map_err(from_status)?;
                    self.handle(msg, &in_flight, &failed_tx).await?;
                }
                Some(e) = failed.recv() => return Err(e.into()),
                () = token.cancelled() => break,
            }
        }
        // Shutdown: stop sending, and collect the acks of what is in flight
        // (the caller bounds this by the grace period).
        while !in_flight.lock_unpoisoned().is_empty() {
            let msg = inbound.message().await.map_err(from_status)?;
            self.handle(msg, &in_flight, &failed_tx).await?;
        }
        drop(tx);
        Ok(())
    }

    async fn handle(
        &self,
        msg: Option<HubMessage>,
        in_flight: &InFlight,
        failed: &mpsc::Sender<outbox::Error>,
    ) -> Result<(), Error> {
        match msg.and_then(|m| m.body) {
            None => Err(Error::Connect("the hub closed the stream".into())),
            Some(hub_message::Body::Ack(ack)) => {
                let sent = self.sent.load(std::sync::atomic::Ordering::Acquire);
                if ack.upto_seq > sent {
                    // Never delete what was not sent.
                    return Err(Error::Protocol(format!(
                        "the hub acknowledged up to sequence {} but only up to {sent} was sent; nothing deleted",
                        ack.upto_seq
                    )));
                }
                // Queued behind any rejection before it; the commit is not
                // awaited here, but a failure ends the session (whose next
                // Welcome redoes the delete).
                let receipt = self.outbox.submit_ack(ack.upto_seq).await?;
                let failed = failed.clone();
                tokio::spawn(async move {
                    if let Err(e) = receipt.committed().await {
                        warn!(error = %e, "outbox delete after ack failed; the session restarts to redo it");
                        let _ = failed.try_send(e);
                    }
                });
                let mut acked = 0;
                let mut q = in_flight.lock_unpoisoned();
                let now = clock::now_us();
                while q.front().is_some_and(|(end, _, _, _)| *end <= ack.upto_seq) {
                    if let Some((_, n, committed_us, permit)) = q.pop_front() {
                        self.stats.commit_to_ack((now - committed_us).max(0) as f64 / 1e6);
                        acked += n;
                        drop(permit);
                    }
                }
                self.stats.acked(acked);
                debug!(upto = ack.upto_seq, "ack");
                Ok(())
            }
            Some(hub_message::Body::Rejected(r)) => self.quarantine(&r).await,
            Some(hub_message::Body::Welcome(_)) => Err(Error::Protocol("a second Welcome".into())),
        }
    }

    /// Moves a record the hub rejected to the local quarantine.
    async fn quarantine(&self, r: &Rejected) -> Result<(), Error> {
        let seq = r.seq;
        let Some(bytes) = self.outbox.read(move |rd| rd.record(seq)).await? else {
            return Ok(()); // Already quarantined by an earlier session.
        };
        let code = RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified);
        warn!(seq, code = code.as_str_name(), reason = %r.reason, "hub rejected a record");
        let entry = match Record::decode(bytes.as_slice()) {
            Ok(rec) => {
                let pos = rec.source.clone().unwrap_or_default();
                Quarantined {
                    source: pos.source,
                    object: pos.object,
                    line: pos.line,
                    resource: rec.resource.clone(),
                    reasons: vec![format!("HUB_{}: {}", code.as_str_name(), r.reason)],
                    raw: serde_json::to_string(&rec.items).unwrap_or_default(),
                }
            }
            Err(e) => Quarantined {
                reasons: vec![format!("HUB_{}: {} (undecodable: {e})", code.as_str_name(), r.reason)],
                ..Default::default()
            },
        };
        // Awaited (rejections are rare): an ack that covers this record must
        // never commit if the move to the quarantine did not.
        self.outbox.reject(seq, entry).await?;
        self.stats.rejected();
        Ok(())
    }

    /// Streams batches from `cursor` on, keeping at most `max_in_flight`
    /// unacknowledged. Returns only on error.
    async fn send_loop(
        &self,
        mut cursor: u64,
        mut packer: Option<Packer>,
        tx: mpsc::Sender<AgentMessage>,
        window: Arc<Semaphore>,
        in_flight: InFlight,
    ) -> Result<(), Error> {
        let mut stats = self.outbox.subscribe();
        loop {
            let permit = window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Protocol("window closed".into()))?;
            // Wait for a record at or past the cursor.
            stats
                .wait_for(|s| s.last_seq >= cursor)
                .await
                .map_err(|_| outbox::Error::Closed)?;
            // A short linger lets a burst fill the batch; a trickle still
            // leaves within milliseconds. Whether the batch would be short
            // is known from the sequence alone, so it is read once, after.
            let queued = stats.borrow().last_seq.saturating_add(1).saturating_sub(cursor);
            if queued < self.hub.batch_records as u64 && !self.hub.linger.is_zero() {
                tokio::time::sleep(self.hub.linger).await;
            }
            let (batch, oldest_us) = self.read_batch(cursor).await?;
            let Some(&(last, _)) = batch.last() else { continue };
            let n = batch.len() as u64;
            cursor = last + 1;
            self.sent.fetch_max(last, std::sync::atomic::Ordering::AcqRel);
            in_flight.lock_unpoisoned().push_back((last, n, oldest_us, permit));
            let entries = batch.into_iter().map(|(seq, record)| Entry { seq, record }).collect();
            let batch = match &mut packer {
                Some(p) => p.pack(entries)?,
                None => Batch {
                    entries,
                    ..Batch::default()
                },
            };
            tx.send(AgentMessage {
                body: Some(agent_message::Body::Batch(batch)),
            })
            .await
            .map_err(|_| Error::Connect("request stream closed".into()))?;
            self.stats.sent(n);
        }
    }

    /// A batch from `cursor`, and when its first record was committed.
    async fn read_batch(&self, cursor: u64) -> Result<(Vec<(u64, Bytes)>, i64), Error> {
        let (max, bytes) = (self.hub.batch_records, self.hub.batch_bytes);
        Ok(self
            .outbox
            .read(move |r| {
                let (batch, first) = r.batch_from(cursor, max, bytes)?;
                Ok((batch, first.unwrap_or_else(clock::now_us)))
            })
            .await?)
    }
}

/// zstd's level for batches. On the flood benchmark's batches of 1 MiB,
/// level 1 made frames of 8.6 % of the plain batch at 238 ns a record,
/// level 3 (tonic's) 10.0 % at 316 ns (BENCHMARKS.md, the eighth step).
const ZSTD_LEVEL: i32 = 1;

/// Compresses a session's batches into `Batch.zstd_entries` with one zstd
/// context and two buffers, all kept for the session. gRPC's own zstd
/// (tonic's) builds a new context of several MiB for every message, which
/// was a sixth of the agent's CPU in a flood and much of its peak memory.
struct Packer {
    zstd: zstd::bulk::Compressor<'static>,
    plain: Vec<u8>,
    /// Room for the largest frame (zstd's bound for the batch): the frame
    /// sent is a copy of its size, not this.
    frame: Vec<u8>,
}

impl Packer {
    fn new() -> Result<Self, Error> {
        Ok(Packer {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(Error::Compress)?,
            plain: Vec::new(),
            frame: Vec::new(),
        })
    }

    /// A batch that carries `entries` compressed. The frame states its
    /// size (the hub sizes its buffer from it).
    fn pack(&mut self, entries: Vec<Entry>) -> Result<Batch, Error> {
        self.plain.clear();
        Batch {
            entries,
            ..Batch::default()
        }
        .encode_raw(&mut self.plain);
        self.frame.clear();
        self.frame.reserve(zstd::zstd_safe::compress_bound(self.plain.len()));
        self.zstd
            .compress_to_buffer(&self.plain, &mut self.frame)
            .map_err(Error::Compress)?;
        Ok(Batch {
            entries: Vec::new(),
            zstd_entries: Bytes::copy_from_slice(&self.frame),
        })
    }
}
