//! The `Exchange` gRPC service: Hello/Welcome, then batches applied to the
//! store and acknowledged once durable ([`stream`]).
//!
//! A stream is admitted in steps: a connection whose certificate names an
//! agency, a place in that agency's stream quota, a Hello within
//! `limits.hello_timeout` whose identifiers are short and printable and
//! whose agency is the certificate's, and then the outbox: a live session
//! of the same outbox is taken over ([`crate::session`]) before the Welcome
//! reads the high-water mark. Every refusal and every later error reaches
//! the agent as a gRPC status whose message quotes untrusted values only
//! bounded and escaped ([`crate::text`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::v1::exchange_server::Exchange;
use proto::v1::{
    AgentMessage, Delivery, Hello, HubMessage, Subscribe, SubscriberMessage, Welcome, agent_message, hub_message,
    subscriber_message,
};
use rules::catalog::Catalog;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::conn::{ConnInfo, OpenStream};
use crate::limits::{Limits, Quota, Slot};
use crate::session::Sessions;
use crate::store::Store;
use crate::text::shown;

mod stream;
mod subscribe;

/// Subscriptions one Subscribe may name.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Items one subscription may ask for.
pub const MAX_ITEMS: usize = 1024;

/// Bytes an identifier in Hello may have.
pub const MAX_ID_BYTES: usize = 128;

pub struct Hub {
    store: Arc<Store>,
    /// The catalog in force; each session takes it at its Hello.
    live: Arc<crate::Live>,
    limits: Arc<Limits>,
    sessions: Arc<Sessions>,
    /// Open streams per agency (`limits.max_streams`).
    streams: Arc<Quota>,
    /// Decoded batches of all streams waiting for the store
    /// (`limits.max_total_queued_bytes`).
    queued: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(store: Arc<Store>, live: Arc<crate::Live>, limits: Arc<Limits>, shutdown: CancellationToken) -> Hub {
        Hub {
            streams: Quota::new("streams", limits.max_streams),
            queued: Arc::new(tokio::sync::Semaphore::new(limits.max_total_queued_bytes)),
            store,
            live,
            limits,
            sessions: Arc::default(),
            shutdown,
        }
    }
}

/// What the hub sends on a stream: the writer's messages, then the status
/// the stream ends with (OK when the writer sends none). The status goes
/// out even when the agent leaves the messages unread.
pub struct Responses {
    messages: mpsc::Receiver<HubMessage>,
    end: Option<oneshot::Receiver<Status>>,
}

impl tokio_stream::Stream for Responses {
    type Item = Result<HubMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(m) = std::task::ready!(self.messages.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(m)));
        }
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(Pin::new(end).poll(cx)).ok();
        self.end = None;
        Poll::Ready(status.map(Err))
    }
}

#[tonic::async_trait]
impl Exchange for Hub {
    type SyncStream = Responses;

    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Responses>, Status> {
        let Admitted {
            conn,
            identity,
            slot,
            open,
        } = self.admit(&request)?;
        let mut inbound = request.into_inner();
        // The catalog in force at the Hello stays the session's.
        let catalog = self.live.catalog();
        let hello = self.hello(&mut inbound, &identity, &conn, &catalog).await?;
        let (agency, outbox) = (hello.agency_id.clone(), hello.outbox_id.clone());
        // The outbox id is printable ASCII (checked); the agency is the
        // certificate's.
        let span = info_span!("session", agency = %shown(&agency), %outbox, peer = %conn.peer);
        let session = self
            .sessions
            .open(&agency, &outbox, conn.peer, &self.shutdown)
            .instrument(span.clone())
            .await;
        if let Some(peer) = session.state.replaced_by() {
            return Err(stream::replaced(peer));
        }
        let store = self.store.clone();
        let (last_seq, rejections) = {
            let (a, o) = (agency.clone(), outbox.clone());
            tokio::task::spawn_blocking(move || store.welcome(&a, &o, hello.first_unacked_seq))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(e.to_string()))?
        };
        span.in_scope(|| info!(last_seq, version = %shown(&hello.software_version), "agent connected"));
        let (tx, messages) = mpsc::channel(64);
        let (end_tx, end) = oneshot::channel();
        // The channel is new and has room.
        let _ = tx
            .send(HubMessage {
                body: Some(hub_message::Body::Welcome(Welcome {
                    last_seq,
                    hub_version: env!("CARGO_PKG_VERSION").to_owned(),
                    catalog_digest: catalog.digest().to_owned(),
                    rejections,
                    zstd_batches: true,
                })),
            })
            .await;
        stream::spawn(
            stream::Stream {
                store: self.store.clone(),
                catalog,
                limits: self.limits.clone(),
                queued: self.queued.clone(),
                agency,
                outbox,
                session,
                guards: Arc::new((slot, open)),
            },
            inbound,
            tx,
            end_tx,
            span,
        );
        Ok(Response::new(Responses {
            messages,
            end: Some(end),
        }))
    }

    type SubscribeStream = ReceiverStream<Result<Delivery, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscriberMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let Admitted {
            conn,
            identity,
            slot,
            open,
        } = self.admit(&request)?;
        let mut inbound = request.into_inner();
        let subscribe = match self.first(&mut inbound, "Subscribe", &identity, &conn).await? {
            SubscriberMessage {
                body: Some(subscriber_message::Body::Subscribe(s)),
            } => s,
            _ => return Err(Status::invalid_argument("the first message must be Subscribe")),
        };
        check_subscribe(&subscribe).inspect_err(|e| {
            warn!(peer = %conn.peer, agency = %shown(&identity), reason = %e.message(), "Subscribe refused");
        })?;
        same_agency(&identity, &subscribe.agency_id, "Subscribe")?;
        let reader = self.store.reader().map_err(|e| Status::unavailable(e.to_string()))?;
        let span = info_span!("receiver", agency = %shown(&identity), peer = %conn.peer);
        let (tx, rx) = mpsc::channel(16);
        let stream = subscribe::Stream {
            store: self.store.clone(),
            catalog: self.live.catalog(),
            agency: identity,
            reader: Arc::new(std::sync::Mutex::new(reader)),
            cancel: self.shutdown.child_token(),
        };
        tokio::spawn(
            stream
                .run(subscribe.subscriptions, subscribe.probe, inbound, tx, (slot, open))
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Hub {
    /// Admits a stream: a connection whose certificate names an agency, and
    /// a place in that agency's stream quota.
    fn admit<T>(&self, request: &Request<T>) -> Result<Admitted, Status> {
        let conn = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("no connection info"))?;
        let identity = conn.agency.clone().map_err(Status::unauthenticated)?;
        let slot = self.streams.take(&identity).map_err(|e| {
            warn!(peer = %conn.peer, "{e}; stream refused");
            Status::resource_exhausted(e.to_string())
        })?;
        let open = conn.open_stream();
        Ok(Admitted {
            conn,
            identity,
            slot,
            open,
        })
    }

    /// The stream's first message (`what`: Hello or Subscribe), within
    /// `limits.hello_timeout`.
    async fn first<T>(
        &self,
        inbound: &mut Streaming<T>,
        what: &str,
        identity: &str,
        conn: &ConnInfo,
    ) -> Result<T, Status> {
        let first = tokio::select! {
            m = tokio::time::timeout(self.limits.hello_timeout, inbound.message()) => m,
            () = self.shutdown.cancelled() => return Err(Status::unavailable("the hub is shutting down")),
        };
        match first {
            Err(_) => {
                info!(peer = %conn.peer, agency = %shown(identity), "no {what} in time; stream closed");
                Err(Status::deadline_exceeded(format!(
                    "no {what} within {:?} (limits.hello_timeout)",
                    self.limits.hello_timeout
                )))
            }
            Ok(Err(e)) => Err(stream::bounded(&e)),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(Status::invalid_argument(format!("the first message must be {what}"))),
        }
    }

    /// Reads and checks the stream's Hello.
    async fn hello(
        &self,
        inbound: &mut Streaming<AgentMessage>,
        identity: &str,
        conn: &ConnInfo,
        catalog: &Catalog,
    ) -> Result<Hello, Status> {
        let hello = match self.first(inbound, "Hello", identity, conn).await? {
            AgentMessage {
                body: Some(agent_message::Body::Hello(h)),
            } => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        check_hello(&hello).inspect_err(|e| {
            warn!(peer = %conn.peer, agency = %shown(identity), reason = %e.message(), "Hello refused");
        })?;
        same_agency(identity, &hello.agency_id, "Hello")?;
        if hello.catalog_digest != catalog.digest() {
            warn!(
                agency = %shown(identity),
                agent = %shown(&hello.catalog_digest),
                hub = %catalog.digest(),
                "catalog digests differ"
            );
        }
        Ok(hello)
    }
}

/// A stream admitted by [`Hub::admit`]: its connection, the agency of its
/// certificate, and the places it holds until it ends.
struct Admitted {
    conn: ConnInfo,
    identity: String,
    slot: Slot,
    open: OpenStream,
}

/// Refuses a first message that names another agency than the certificate.
/// The refusal reads the same for a Hello and a Subscribe, so that
/// `qianzhi check` (a Subscribe probe) shows the words `run` logs.
fn same_agency(identity: &str, claimed: &str, what: &str) -> Result<(), Status> {
    if claimed == identity {
        return Ok(());
    }
    warn!(certificate = %shown(identity), claimed = %shown(claimed), request = %what, "agency mismatch refused");
    Err(Status::permission_denied(format!(
        "the client certificate is for agency {}, but the agent says it is agency {}",
        shown(identity),
        shown(claimed)
    )))
}

/// Refuses a Hello whose identifiers are empty, longer than
/// [`MAX_ID_BYTES`], or (the outbox id, which names every log line of the
/// session) not printable ASCII.
pub fn check_hello(h: &Hello) -> Result<(), Status> {
    let fields = [
        ("agency_id", &h.agency_id),
        ("outbox_id", &h.outbox_id),
        ("software_version", &h.software_version),
        ("catalog_digest", &h.catalog_digest),
    ];
    for (name, value) in fields {
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "Hello.{name} is {} bytes, over {MAX_ID_BYTES}: {}",
                value.len(),
                shown(value)
            )));
        }
    }
    if h.outbox_id.is_empty() {
        return Err(Status::invalid_argument("Hello has no outbox_id"));
    }
    if !h.outbox_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "Hello.outbox_id must be printable ASCII: {}",
            shown(&h.outbox_id)
        )));
    }
    Ok(())
}

/// Refuses a Subscribe whose identifiers are too long, that names too many
/// subscriptions or items, or one resource twice.
pub fn check_subscribe(s: &Subscribe) -> Result<(), Status> {
    for (name, value) in [
        ("agency_id", &s.agency_id),
        ("software_version", &s.software_version),
        ("catalog_digest", &s.catalog_digest),
    ] {
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "Subscribe.{name} is {} bytes, over {MAX_ID_BYTES}: {}",
                value.len(),
                shown(value)
            )));
        }
    }
    // A probe with no subscriptions asks only whether the agency is
    // admitted (`qianzhi check`); a receiver must subscribe to something.
    let least = usize::from(!s.probe);
    if s.subscriptions.len() < least || s.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Status::invalid_argument(format!(
            "Subscribe names {} subscriptions: {least} to {MAX_SUBSCRIPTIONS} are allowed",
            s.subscriptions.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for sub in &s.subscriptions {
        let too_long = std::iter::once(&sub.resource)
            .chain(&sub.items)
            .find(|v| v.len() > MAX_ID_BYTES);
        if let Some(v) = too_long {
            return Err(Status::invalid_argument(format!(
                "a subscription identifier is {} bytes, over {MAX_ID_BYTES}: {}",
                v.len(),
                shown(v)
            )));
        }
        if sub.items.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "the subscription to {} asks for {} items, over {MAX_ITEMS}",
                shown(&sub.resource),
                sub.items.len()
            )));
        }
        if !seen.insert(sub.resource.as_str()) {
            return Err(Status::invalid_argument(format!(
                "resource {} is subscribed twice",
                shown(&sub.resource)
            )));
        }
    }
    Ok(())
}
