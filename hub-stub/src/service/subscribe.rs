//! One Subscribe stream: a receiver's resources, delivered in hub sequence
//! order from the position it has applied.
//!
//! Per subscription the stream keeps what the receiver acknowledged
//! (`acked`), what was sent (`sent`) and, while a snapshot is being sent,
//! the sequence it reaches (`snapshot`). A snapshot is the resource's
//! current rows ordered by the hub sequence of the change that made each;
//! it is read in pieces, and a key changed meanwhile drops out of it and
//! comes with the changes after the snapshot's end. So the position after
//! any piece is a valid place to resume from, and the snapshot and the
//! changes after it neither miss nor repeat a change.
//!
//! At most [`WINDOW`] changes in [`WINDOW_MESSAGES`] messages per
//! subscription are sent and not yet acknowledged, so a slow receiver holds
//! the hub's memory (and its own queue) to that.
//!
//! Grants are checked again every [`RECHECK`]: a revoked or expired
//! agreement ends delivery of its resource with `Revoked` (changes already
//! on the wire may still be applied), a new one starts it with a `Grant`.
//! Acknowledged deliveries are written to the store at most every
//! [`RECHECK`] and when the stream ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use proto::v1::{
    Applied, Change, Changes, Delivery, Grant as WireGrant, Grants, Record, Reset, Revoked, SubscriberMessage,
    delivery, subscriber_message,
};
use rules::catalog::Catalog;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use crate::share::{self, Grant};
use crate::store::feed::{self, Feed, Reader, Stored};
use crate::store::{Store, now_us};
use crate::text::shown;

/// The lag is counted up to this many changes.
const BEHIND_CAP: u64 = 100_000;
/// Changes per `Changes` message, at most.
const CHUNK: usize = 1024;
/// Changes sent and not yet acknowledged per subscription, at most...
pub const WINDOW: u64 = 8 * 1024;
/// ...and messages (a receiver queues this many per subscription).
pub const WINDOW_MESSAGES: usize = 8;
/// How often grants are checked again and acknowledgements recorded.
pub const RECHECK: Duration = Duration::from_secs(1);

type Out = mpsc::Sender<Result<Delivery, Status>>;

/// One subscription of the stream.
struct Sub {
    resource: String,
    wanted: Vec<String>,
    grant: Option<Grant>,
    /// The reason the last grant check refused it.
    refused: Option<String>,
    acked: u64,
    /// Taken by the sink, not yet committed (at least `acked`): counts out
    /// of the window.
    received: u64,
    sent: u64,
    /// While a snapshot is sent: the sequence it reaches.
    snapshot: Option<u64>,
    /// Sent, not yet acknowledged: (position reached, changes, agreement).
    in_flight: VecDeque<(u64, u64, String)>,
    /// Acknowledged, not yet recorded.
    unrecorded: Option<feed::Delivery>,
    /// Changes after `sent`, as last counted (the receiver's lag).
    behind: u64,
}

impl Sub {
    /// Whether fewer than [`WINDOW`] changes and [`WINDOW_MESSAGES`]
    /// messages are sent and not yet taken by the receiver's sink.
    fn window_open(&self) -> bool {
        let open = self.in_flight.iter().filter(|f| f.0 > self.received);
        let (changes, messages) = open.fold((0, 0), |(n, m), f| (n + f.1, m + 1));
        changes < WINDOW && messages < WINDOW_MESSAGES
    }
}

/// The stream's state between messages.
pub struct Stream {
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub agency: String,
    pub reader: Arc<Mutex<Reader>>,
    pub cancel: CancellationToken,
}

impl Stream {
    /// Serves the stream until the receiver leaves, the hub shuts down or
    /// the receiver breaks the protocol (ended with that status).
    pub async fn run(
        self,
        subscriptions: Vec<proto::v1::Subscription>,
        probe: bool,
        mut inbound: Streaming<SubscriberMessage>,
        out: Out,
        _guards: impl Send,
    ) {
        let mut subs: Vec<Sub> = subscriptions
            .into_iter()
            .map(|s| Sub {
                resource: s.resource,
                wanted: s.items,
                grant: None,
                refused: None,
                acked: s.applied_seq,
                received: s.applied_seq,
                sent: s.applied_seq,
                snapshot: None,
                in_flight: VecDeque::new(),
                unrecorded: None,
                behind: 0,
            })
            .collect();
        let mut latest: watch::Receiver<u64> = self.store.watch();
        let mut grants = Vec::new();
        for sub in &mut subs {
            if let Some(g) = self.regrant(sub).await {
                grants.push(g);
            }
            // Only a granted subscription is a receiver: a refused one must
            // neither hold history back from compaction nor appear in the
            // report (a later grant comes with a new stream).
            if probe || sub.grant.is_none() {
                continue;
            }
            let d = feed::Delivery {
                agency: self.agency.clone(),
                resource: sub.resource.clone(),
                provider: sub.grant.as_ref().map(|g| g.provider.clone()).unwrap_or_default(),
                agreement: sub.grant.as_ref().map(|g| g.agreement.clone()).unwrap_or_default(),
                from: 0,
                to: sub.acked,
                records: 0,
            };
            self.blocking(move |store, _| store.subscribed(&d).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| warn!(error = %e, "cannot record the subscription"));
        }
        let granted = subs.iter().filter(|s| s.grant.is_some()).count();
        let refused = subs.iter().filter(|s| s.refused.is_some()).count();
        // A probe is `qianzhi check` asking: no receiver came.
        let said = if probe { "probe answered" } else { "receiver subscribed" };
        info!(granted, refused, "{said}");
        let sent = out.send(Ok(body(delivery::Body::Grants(Grants { grants })))).await;
        if sent.is_err() || probe {
            return;
        }
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            if let Err(status) = self.pump(&mut subs, &out).await {
                break Some(status);
            }
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Err(status) = on_message(&mut subs, m) {
                            break Some(status);
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        info!(error = %shown(e.message()), "receiver stream ended");
                        break None;
                    }
                },
                r = latest.changed() => {
                    if r.is_err() {
                        break None;
                    }
                    latest.borrow_and_update();
                }
                _ = tick.tick() => {
                    if let Err(status) = self.recheck(&mut subs, &out).await {
                        break Some(status);
                    }
                }
                () = self.cancel.cancelled() => break Some(Status::unavailable("the hub is shutting down")),
            }
        };
        self.record(&mut subs).await;
        if let Some(status) = end {
            let _ = out.send(Err(status)).await;
        }
    }

    /// Runs `f` on the blocking pool with the store and the reader.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &mut Reader) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let (store, reader) = (self.store.clone(), self.reader.clone());
        tokio::task::spawn_blocking(move || {
            let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&store, &mut r)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Checks a subscription's grant; returns the `Grant` message to send
    /// when it is new or changed.
    async fn regrant(&self, sub: &mut Sub) -> Option<WireGrant> {
        let agreements = {
            let (a, r) = (self.agency.clone(), sub.resource.clone());
            self.blocking(move |_, reader| reader.agreements(&a, &r).map_err(|e| e.to_string()))
                .await
        };
        let now = now_us();
        let verdict = agreements
            .and_then(|list| share::grant(&self.catalog, &self.agency, &sub.resource, &sub.wanted, &list, now));
        match verdict {
            Ok(g) if sub.grant.as_ref() == Some(&g) => None,
            Ok(g) => {
                info!(resource = %shown(&sub.resource), agreement = %g.agreement, items = g.items.len(), "subscription granted");
                let wire = WireGrant {
                    resource: sub.resource.clone(),
                    granted: true,
                    reason: String::new(),
                    items: g.items.clone(),
                    agreement_id: g.agreement.clone(),
                    provider: g.provider.clone(),
                };
                // Delivery goes on from what was sent: a receiver restarts
                // its stream on a grant that follows a revocation.
                sub.grant = Some(g);
                sub.refused = None;
                Some(wire)
            }
            Err(reason) if sub.refused.as_ref() == Some(&reason) => None,
            Err(reason) => {
                info!(resource = %shown(&sub.resource), %reason, "subscription refused");
                sub.refused = Some(reason.clone());
                Some(WireGrant {
                    resource: sub.resource.clone(),
                    granted: false,
                    reason,
                    ..WireGrant::default()
                })
            }
        }
    }

    /// Checks every grant again: a grant withdrawn ends delivery with
    /// `Revoked`, a new or changed one starts it with a `Grant`.
    async fn recheck(&self, subs: &mut [Sub], out: &Out) -> Result<(), Status> {
        self.record(subs).await;
        let latest = *self.store.watch().borrow();
        for sub in subs.iter_mut().filter(|s| s.grant.is_some() && s.sent < latest) {
            let (resource, sent) = (sub.resource.clone(), sub.sent);
            if let Ok(n) = self
                .blocking(move |_, r| r.behind(&resource, sent, BEHIND_CAP).map_err(|e| e.to_string()))
                .await
            {
                sub.behind = n;
            }
        }
        let mut grants = Vec::new();
        for sub in subs.iter_mut() {
            let before = sub.grant.clone();
            let Some(wire) = self.regrant(sub).await else {
                continue;
            };
            if let Some(old) = before {
                let reason = sub
                    .refused
                    .clone()
                    .unwrap_or_else(|| "the agreement changed; a new grant follows".into());
                warn!(resource = %shown(&sub.resource), agreement = %old.agreement, %reason, "delivery revoked");
                if !wire.granted {
                    sub.grant = None;
                }
                send(
                    out,
                    delivery::Body::Revoked(Revoked {
                        resource: sub.resource.clone(),
                        agreement_id: old.agreement,
                        reason,
                    }),
                )
                .await?;
                if !wire.granted {
                    continue;
                }
            }
            grants.push(wire);
        }
        if !grants.is_empty() {
            send(out, delivery::Body::Grants(Grants { grants })).await?;
        }
        Ok(())
    }

    /// Sends what each granted subscription has room for.
    async fn pump(&self, subs: &mut [Sub], out: &Out) -> Result<(), Status> {
        for sub in subs.iter_mut() {
            while let Some(grant) = sub.grant.clone()
                && sub.window_open()
            {
                if !self.pump_one(sub, &grant, out).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sends one piece of a subscription; false when there is nothing to
    /// send.
    async fn pump_one(&self, sub: &mut Sub, grant: &Grant, out: &Out) -> Result<bool, Status> {
        let (resource, sent, snapshot) = (sub.resource.clone(), sub.sent, sub.snapshot);
        // Caught up with everything the hub holds: nothing to read.
        if snapshot.is_none() && sent > 0 && sent == *self.store.watch().borrow() {
            return Ok(false);
        }
        let read = self
            .blocking(move |store, reader| read(store, reader, &resource, sent, snapshot).map_err(|e| format!("{e:#}")))
            .await
            .map_err(|e| Status::unavailable(format!("the hub cannot read its store: {e}")))?;
        match read {
            // A snapshot starts when everything sent before it is
            // acknowledged: positions start again from 0 with it.
            Read::Reset { .. } if sub.sent != sub.acked => Ok(false),
            Read::Reset { upto, reason } => {
                info!(resource = %shown(&sub.resource), upto, %reason, "sending a snapshot");
                sub.snapshot = Some(upto);
                sub.sent = 0;
                sub.acked = 0;
                sub.received = 0;
                send(
                    out,
                    delivery::Body::Reset(Reset {
                        resource: sub.resource.clone(),
                        reason,
                        snapshot_seq: upto,
                    }),
                )
                .await?;
                Ok(true)
            }
            Read::Rows { rows, upto } => {
                if rows.is_empty() && upto.is_none() {
                    if sub.behind != 0 {
                        // Caught up: say so, or the receiver shows the last
                        // count it was sent.
                        sub.behind = 0;
                        send(
                            out,
                            delivery::Body::Changes(Changes {
                                changes: Vec::new(),
                                upto_seq: sub.sent,
                                resource: sub.resource.clone(),
                                behind: 0,
                            }),
                        )
                        .await?;
                    }
                    return Ok(false);
                }
                if upto.is_none() && rows.len() < CHUNK {
                    sub.behind = 0;
                }
                let n = rows.len() as u64;
                let reached = upto.or(rows.last().map(|r| r.hseq)).unwrap_or(sub.sent);
                let changes = rows.into_iter().filter_map(|r| change(r, grant)).collect();
                if upto.is_some() {
                    sub.snapshot = None;
                }
                sub.sent = reached;
                sub.in_flight.push_back((reached, n, grant.agreement.clone()));
                send(
                    out,
                    delivery::Body::Changes(Changes {
                        changes,
                        upto_seq: reached,
                        resource: sub.resource.clone(),
                        behind: sub.behind,
                    }),
                )
                .await?;
                Ok(true)
            }
        }
    }

    /// Writes the acknowledged deliveries to the store (called on the tick
    /// and at the end, so one transaction a second at most).
    async fn record(&self, subs: &mut [Sub]) {
        for sub in subs.iter_mut() {
            let Some(mut d) = sub.unrecorded.take() else {
                continue;
            };
            d.agency = self.agency.clone();
            if let Err(e) = self
                .blocking(move |store, _| store.delivered(&d).map_err(|e| e.to_string()))
                .await
            {
                warn!(resource = %shown(&sub.resource), error = %e, "cannot record a delivery");
            }
        }
    }
}

/// What a subscription's next read found.
enum Read {
    /// A snapshot must be sent first, reaching `upto`.
    Reset { upto: u64, reason: String },
    /// Rows to send; `upto` is set when they end a snapshot.
    Rows { rows: Vec<Stored>, upto: Option<u64> },
}

fn read(store: &Store, reader: &mut Reader, resource: &str, sent: u64, snapshot: Option<u64>) -> anyhow::Result<Read> {
    if let Some(upto) = snapshot {
        let rows = reader.snapshot(resource, sent, upto, CHUNK, || store.sync())?;
        let done = rows.len() < CHUNK;
        return Ok(Read::Rows {
            rows,
            upto: done.then_some(upto),
        });
    }
    let latest = *store.watch().borrow();
    if sent > latest {
        return Ok(Read::Reset {
            upto: reader.latest(resource)?,
            reason: format!(
                "the receiver's position {sent} is beyond the hub's latest sequence {latest} (a new hub store?): a fresh snapshot follows"
            ),
        });
    }
    if sent == 0 {
        let upto = reader.latest(resource)?;
        if upto > 0 {
            return Ok(Read::Reset {
                upto,
                reason: "a first subscription: the current state follows".into(),
            });
        }
    }
    match reader.feed(resource, sent, CHUNK)? {
        Feed::Changes(rows) => Ok(Read::Rows { rows, upto: None }),
        Feed::Compacted { horizon } => Ok(Read::Reset {
            upto: reader.latest(resource)?,
            reason: format!(
                "the hub compacted its history up to {horizon}, past the receiver's position {sent}: a fresh snapshot follows"
            ),
        }),
    }
}

/// A stored change as the receiver may see it: only the granted items.
fn change(row: Stored, grant: &Grant) -> Option<Change> {
    let record = match Record::decode(row.record.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            // Stored records were decoded before they were stored.
            warn!(hseq = row.hseq, error = %e, "a stored record cannot be decoded; not delivered");
            return None;
        }
    };
    Some(Change {
        seq: row.hseq,
        resource: record.resource,
        key: record.key,
        op: record.op,
        items: share::filter(record.items, grant),
        provider: row.provider,
        agreement_id: grant.agreement.clone(),
        captured_at_us: record.captured_at_us,
    })
}

/// An `Applied` from the receiver: what it has durably applied.
fn on_message(subs: &mut [Sub], m: SubscriberMessage) -> Result<(), Status> {
    let Some(subscriber_message::Body::Applied(Applied {
        resource,
        upto_seq,
        received_seq,
    })) = m.body
    else {
        return Err(Status::invalid_argument(
            "after Subscribe, only Applied messages are expected",
        ));
    };
    let Some(sub) = subs.iter_mut().find(|s| s.resource == resource) else {
        return Err(Status::invalid_argument(format!(
            "Applied names resource {}, which this stream did not subscribe to",
            shown(&resource)
        )));
    };
    if upto_seq < sub.acked {
        return Err(Status::invalid_argument(format!(
            "Applied {upto_seq} for {} is below what it acknowledged before ({})",
            sub.resource, sub.acked
        )));
    }
    // A receiver may hold more than this stream sent: a message of its
    // previous stream applied after it subscribed again. It has everything
    // up to its position, so sending goes on from there.
    if upto_seq > sub.sent {
        sub.sent = upto_seq;
        if sub.snapshot.is_some_and(|end| upto_seq >= end) {
            sub.snapshot = None;
        }
    }
    // A sink may hold more than this stream sent (a folder's open file
    // from before a reconnect): only what was sent counts.
    sub.received = sub.received.max(received_seq.max(upto_seq).min(sub.sent));
    let from = sub.acked + 1;
    let mut records = 0;
    let mut agreement = sub.grant.as_ref().map(|g| g.agreement.clone()).unwrap_or_default();
    while let Some((reached, n, a)) = sub.in_flight.front()
        && *reached <= upto_seq
    {
        records += n;
        agreement = a.clone();
        sub.in_flight.pop_front();
    }
    sub.acked = upto_seq;
    let provider = sub.grant.as_ref().map(|g| g.provider.clone()).unwrap_or_default();
    let d = sub.unrecorded.get_or_insert_with(|| feed::Delivery {
        agency: String::new(),
        resource: sub.resource.clone(),
        provider,
        agreement: agreement.clone(),
        from,
        to: upto_seq,
        records: 0,
    });
    d.to = upto_seq;
    d.records += records;
    d.agreement = agreement;
    Ok(())
}

fn body(b: delivery::Body) -> Delivery {
    Delivery { body: Some(b) }
}

async fn send(out: &Out, b: delivery::Body) -> Result<(), Status> {
    out.send(Ok(body(b)))
        .await
        .map_err(|_| Status::cancelled("the receiver left"))
}
