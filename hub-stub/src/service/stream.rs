//! One Sync stream after its Welcome: a reader that takes batches off the
//! wire and prepares them, and a writer that applies every batch waiting at
//! once in one transaction (group commit), so receiving overlaps the fsync.
//!
//! The writer commits a group without an fsync and answers it after the
//! store's next sync ([`Store::sync`]), which it runs beside the next
//! group's apply: the disk's flush and the next group's inserts overlap,
//! and no ack or rejection goes out before its group is durable.
//!
//! Memory: the reader takes a batch's size in permits from the stream's
//! budget (`limits.max_queued_bytes`) and then from the hub's, shared by
//! every stream (`limits.max_total_queued_bytes`), before preparing it, and
//! the writer gives them back once the batch is applied. A stream whose
//! agent leaves the answers unread therefore stops being read, and HTTP/2
//! flow control stops the agent, instead of the hub queueing without end;
//! and many agencies at once wait for the store in turn (the semaphore is
//! fair) instead of each queueing its own budget.
//!
//! Ending: the reader hands the reason it stopped to the writer behind the
//! batches before it, so those are applied and acknowledged first; a batch
//! that breaks the sequence ends the stream after what came before it is
//! acknowledged. Takeover and shutdown cancel both tasks: the writer
//! finishes the transaction it is in, and its session's drop then tells a
//! successor the outbox is free. The writer alone decides the status the
//! stream ends with.

use std::net::SocketAddr;
use std::sync::Arc;

use proto::v1::{Ack, AgentMessage, Batch, HubMessage, agent_message, hub_message};
use rules::catalog::Catalog;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::{Status, Streaming};
use tracing::{Instrument, Span, info, warn};

use crate::conn::OpenStream;
use crate::limits::{Limits, Slot};
use crate::session::{Session, State};
use crate::store::{self, Applied, Prepared, SeqError, Store};
use crate::text;

/// Entries one store transaction takes at most: with the default
/// `max_queued_bytes`, about what one group finds waiting in a flood.
const GROUP_MAX_ENTRIES: usize = 64 * 1024;

/// Batches waiting for the writer, at most (the byte budget is the real
/// bound).
const WORK_QUEUE: usize = 32;

/// What an entry costs the queue beyond its record's bytes: the prepared
/// row, its key, a bounded rejection.
const ENTRY_COST: usize = 384;

/// What a batch costs the queue beyond its entries.
const BATCH_COST: usize = 4096;

/// Characters of an error message passed on to the agent.
const MESSAGE_CHARS: usize = 256;

/// What a stream's two tasks share.
pub struct Stream {
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub limits: Arc<Limits>,
    /// The hub's queue budget, shared by every stream.
    pub queued: Arc<Semaphore>,
    pub agency: String,
    pub outbox: String,
    pub session: Session,
    /// The agency's stream place and the connection's open-stream count,
    /// held until both tasks have ended.
    pub guards: Arc<(Slot, OpenStream)>,
}

enum Work {
    Batch {
        entries: Vec<Prepared>,
        /// The batch's share of the stream's and the hub's queue budgets,
        /// given back once applied.
        permit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    /// The reader stopped: end the stream with this status once the
    /// batches before it are answered.
    End(Status),
}

/// Starts the reader and the writer of a stream.
pub fn spawn(
    s: Stream,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<HubMessage>,
    end: oneshot::Sender<Status>,
    span: Span,
) {
    let (work_tx, work_rx) = mpsc::channel(WORK_QUEUE);
    let reader = Reader {
        inbound,
        agency: s.agency.clone(),
        catalog: s.catalog,
        budget: Arc::new(Semaphore::new(s.limits.max_queued_bytes)),
        queued: s.queued,
        limits: s.limits,
        state: s.session.state.clone(),
        work: work_tx,
        _guards: s.guards.clone(),
    };
    tokio::spawn(reader.run().instrument(span.clone()));
    let writer = Writer {
        store: s.store,
        agency: s.agency,
        outbox: s.outbox,
        session: s.session,
        tx,
        _guards: s.guards,
    };
    tokio::spawn(writer.run(work_rx, end).instrument(span));
}

/// The status an old stream ends with when a new session took it over.
pub fn replaced(peer: SocketAddr) -> Status {
    Status::aborted(format!("replaced by a newer session of this outbox from {peer}"))
}

/// `e` with its message bounded and escaped, to pass on.
pub fn bounded(e: &Status) -> Status {
    Status::new(e.code(), text::clip(e.message(), MESSAGE_CHARS))
}

/// The status a batch that broke the sequence ends the stream with.
fn seq_status(stop: &SeqError, hwm: u64) -> Status {
    let message = format!("{stop}; stored and acknowledged up to {hwm}");
    match stop {
        SeqError::Gap { .. } => Status::failed_precondition(message),
        SeqError::OutOfRange { .. } => Status::invalid_argument(message),
    }
}

/// What a batch counts against the stream's queue budget (at most all of
/// it, so that a batch larger than the budget still passes, alone).
fn cost(b: &Batch, max: usize) -> u32 {
    let bytes = b.entries.iter().map(|e| e.record.len() + ENTRY_COST).sum::<usize>() + BATCH_COST;
    // `max` is below u32::MAX (checked by `Limits::validate`).
    u32::try_from(bytes.min(max)).unwrap_or(u32::MAX)
}

/// Takes batches off the wire, prepares them and queues them for the
/// writer.
struct Reader {
    inbound: Streaming<AgentMessage>,
    agency: String,
    catalog: Arc<Catalog>,
    limits: Arc<Limits>,
    budget: Arc<Semaphore>,
    /// The hub's budget, shared by every stream.
    queued: Arc<Semaphore>,
    state: Arc<State>,
    work: mpsc::Sender<Work>,
    _guards: Arc<(Slot, OpenStream)>,
}

impl Reader {
    async fn run(mut self) {
        let Some(status) = self.serve().await else { return };
        tokio::select! {
            () = self.state.cancel.cancelled() => {}
            _ = self.work.send(Work::End(status)) => {}
        }
    }

    /// Reads until the agent closes its side (`None`), the session is
    /// cancelled (`None`: the writer knows why), or an error to end the
    /// stream with.
    async fn serve(&mut self) -> Option<Status> {
        loop {
            let next = tokio::select! {
                () = self.state.cancel.cancelled() => return None,
                m = self.inbound.message() => m,
            };
            let batch = match next {
                Ok(Some(AgentMessage {
                    body: Some(agent_message::Body::Batch(b)),
                })) => b,
                Ok(None) => {
                    info!("agent closed the stream");
                    return None;
                }
                Ok(Some(_)) => return Some(Status::invalid_argument("only batches may follow Hello")),
                Err(e) => {
                    let e = bounded(&e);
                    info!(code = ?e.code(), error = %e.message(), "reading the stream failed");
                    return Some(e);
                }
            };
            self.state.touch();
            let cost = cost(&batch, self.limits.max_queued_bytes);
            let stream = tokio::select! {
                () = self.state.cancel.cancelled() => return None,
                // The semaphores are never closed.
                p = self.budget.clone().acquire_many_owned(cost) => p.ok()?,
            };
            let total = u32::try_from(self.limits.max_total_queued_bytes).unwrap_or(u32::MAX);
            let hub = tokio::select! {
                () = self.state.cancel.cancelled() => return None,
                p = self.queued.clone().acquire_many_owned(cost.min(total)) => p.ok()?,
            };
            let permit = (stream, hub);
            let (agency, catalog, max_value) = (self.agency.clone(), self.catalog.clone(), self.limits.max_value_bytes);
            let prepared =
                tokio::task::spawn_blocking(move || store::prepare(&agency, batch.entries, &catalog, max_value)).await;
            let entries = match prepared {
                Ok(entries) => entries,
                Err(e) => return Some(Status::internal(format!("preparing a batch failed: {e}"))),
            };
            let sent = tokio::select! {
                () = self.state.cancel.cancelled() => return None,
                r = self.work.send(Work::Batch { entries, permit }) => r,
            };
            if sent.is_err() {
                return None;
            }
        }
    }
}

/// Applies queued batches and answers them; the stream's only sender.
struct Writer {
    store: Arc<Store>,
    agency: String,
    outbox: String,
    session: Session,
    tx: mpsc::Sender<HubMessage>,
    _guards: Arc<(Slot, OpenStream)>,
}

impl Writer {
    async fn run(self, mut work: mpsc::Receiver<Work>, end: oneshot::Sender<Status>) {
        let status = self.serve(&mut work).await;
        // A group applied and never answered (the stream ended first) is
        // synced all the same, so that receivers need not wait for another
        // stream's sync to see it.
        let _ = self.sync().await;
        // Stops the reader, if it still reads.
        self.session.state.cancel.cancel();
        match status {
            Some(s) => {
                info!(code = ?s.code(), message = %s.message(), "stream ended");
                let _ = end.send(s);
            }
            None => info!("stream ended"),
        }
        // Dropping `self` releases the session: a successor may start.
    }

    /// Applies and answers groups of batches until the stream ends; the
    /// status to end it with (`None`: the agent closed it).
    async fn serve(&self, work: &mut mpsc::Receiver<Work>) -> Option<Status> {
        // The group applied last, answered once durable: beside the next
        // group's apply if one is waiting, at once if none is.
        let mut unanswered: Option<Result<Applied, Status>> = None;
        loop {
            let first = match unanswered.take() {
                Some(applied) if self.session.state.cancel.is_cancelled() => {
                    // Answered if it can be; no new group is started.
                    let _ = self.settle(applied).await;
                    return Some(self.cancelled());
                }
                Some(applied) => match work.try_recv() {
                    Ok(w) => {
                        unanswered = Some(applied);
                        w
                    }
                    Err(_) => {
                        if let Err(s) = self.settle(applied).await {
                            return Some(s);
                        }
                        continue;
                    }
                },
                None => tokio::select! {
                    biased;
                    () = self.session.state.cancel.cancelled() => return Some(self.cancelled()),
                    w = work.recv() => w?,
                },
            };
            let (mut entries, mut permits, mut end) = (Vec::new(), Vec::new(), None);
            let mut next = Some(first);
            while let Some(w) = next.take() {
                match w {
                    Work::Batch { entries: e, permit } => {
                        if entries.is_empty() {
                            entries = e;
                        } else {
                            entries.extend(e);
                        }
                        permits.push(permit);
                    }
                    Work::End(s) => {
                        end = Some(s);
                        break;
                    }
                }
                if entries.len() < GROUP_MAX_ENTRIES {
                    next = work.try_recv().ok();
                }
            }
            // A group that broke the sequence, or that the store failed,
            // ends the stream once answered: nothing after it is applied.
            if unanswered
                .as_ref()
                .is_some_and(|u| u.as_ref().map_or(true, |a| a.stop.is_some()))
                && let Some(applied) = unanswered.take()
                && let Err(s) = self.settle(applied).await
            {
                return Some(s);
            }
            if !permits.is_empty() {
                let previous = unanswered.take();
                let (applied, settled) = tokio::join!(self.apply(entries), async {
                    match previous {
                        Some(p) => self.settle(p).await,
                        None => Ok(()),
                    }
                });
                drop(permits);
                if let Err(s) = settled {
                    return Some(s);
                }
                unanswered = Some(applied);
            }
            if end.is_some() {
                if let Some(applied) = unanswered.take()
                    && let Err(s) = self.settle(applied).await
                {
                    return Some(s);
                }
                return end;
            }
        }
    }

    /// Makes an applied group durable, then answers it.
    async fn settle(&self, applied: Result<Applied, Status>) -> Result<(), Status> {
        if applied.is_ok() {
            self.sync().await?;
        }
        self.answer(applied).await
    }

    /// Makes every group committed so far durable ([`Store::sync`]).
    async fn sync(&self) -> Result<(), Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.sync()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                warn!(error = %e, "store sync failed; the agent will resend");
                Err(Status::unavailable(e.to_string()))
            }
            Err(e) => Err(Status::internal(format!("syncing the store failed: {e}"))),
        }
    }

    /// Applies one group in one transaction (the entries are freed there),
    /// committed but not yet durable.
    async fn apply(&self, entries: Vec<Prepared>) -> Result<Applied, Status> {
        let (store, agency, outbox) = (self.store.clone(), self.agency.clone(), self.outbox.clone());
        match tokio::task::spawn_blocking(move || store.apply_unsynced(&agency, &outbox, &entries)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                warn!(error = %e, "store failed; the agent will resend");
                Err(Status::unavailable(e.to_string()))
            }
            Err(e) => Err(Status::internal(format!("applying a batch failed: {e}"))),
        }
    }

    /// Sends an applied group's rejections and ack; the status to end the
    /// stream with if it stopped at a sequence error.
    async fn answer(&self, applied: Result<Applied, Status>) -> Result<(), Status> {
        let a = applied?;
        if a.lost > 0 {
            warn!(
                count = a.lost,
                upto_seq = a.hwm,
                "the agent lost sequences with a damaged outbox; nothing stored for them"
            );
        }
        if let Some(first) = a.rejected.first() {
            warn!(
                count = a.rejected.len(),
                first_seq = first.seq,
                reason = %first.reason,
                "records rejected"
            );
        }
        for r in a.rejected {
            self.send(hub_message::Body::Rejected(r)).await?;
        }
        self.send(hub_message::Body::Ack(Ack { upto_seq: a.hwm })).await?;
        match a.stop {
            Some(stop) => {
                warn!(error = %stop, acked = a.hwm, "batch breaks the sequence; stream ended");
                Err(seq_status(&stop, a.hwm))
            }
            None => Ok(()),
        }
    }

    async fn send(&self, body: hub_message::Body) -> Result<(), Status> {
        tokio::select! {
            biased;
            () = self.session.state.cancel.cancelled() => Err(self.cancelled()),
            r = self.tx.send(HubMessage { body: Some(body) }) => {
                r.map_err(|_| Status::cancelled("the agent went away"))
            }
        }
    }

    /// Why the session was cancelled: a takeover, or the hub's shutdown.
    fn cancelled(&self) -> Status {
        match self.session.state.replaced_by() {
            Some(peer) => replaced(peer),
            None => Status::unavailable("the hub is shutting down"),
        }
    }
}
