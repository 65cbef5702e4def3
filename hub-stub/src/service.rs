//! The `Exchange` gRPC service: Hello/Welcome, then batches applied to the
//! store and acknowledged after commit.

use std::sync::Arc;

use agent::catalog::Catalog;
use proto::v1::exchange_server::Exchange;
use proto::v1::{Ack, AgentMessage, HubMessage, Welcome, agent_message, hub_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::store::{self, Prepared, Store};

/// Entries one store transaction takes at most.
const GROUP_MAX_ENTRIES: usize = 32 * 1024;

/// Applies a stream's batches to the store and answers them.
struct Writer {
    store: Arc<Store>,
    agency: String,
    outbox: String,
}

impl Writer {
    async fn run(self, mut batches: mpsc::Receiver<Vec<Prepared>>, tx: mpsc::Sender<Result<HubMessage, Status>>) {
        while let Some(mut entries) = batches.recv().await {
            while entries.len() < GROUP_MAX_ENTRIES {
                match batches.try_recv() {
                    Ok(b) => entries.extend(b),
                    Err(_) => break,
                }
            }
            let (store, agency, outbox) = (self.store.clone(), self.agency.clone(), self.outbox.clone());
            let applied = tokio::task::spawn_blocking(move || store.apply(&agency, &outbox, &entries)).await;
            let applied = match applied {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    warn!(error = %e, "store failed; the agent will resend");
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            for r in applied.rejected {
                warn!(seq = r.seq, reason = %r.reason, "record rejected");
                if tx.send(msg(hub_message::Body::Rejected(r))).await.is_err() {
                    return;
                }
            }
            if tx
                .send(msg(hub_message::Body::Ack(Ack { upto_seq: applied.hwm })))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

pub struct Hub {
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub shutdown: CancellationToken,
}

fn msg(body: hub_message::Body) -> Result<HubMessage, Status> {
    Ok(HubMessage { body: Some(body) })
}

#[tonic::async_trait]
impl Exchange for Hub {
    type SyncStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let identity = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))
            .and_then(|c| crate::tls::agency_of(c).map_err(Status::unauthenticated))?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                body: Some(agent_message::Body::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.agency_id != identity {
            warn!(certificate = %identity, hello = %hello.agency_id, "agency mismatch refused");
            return Err(Status::permission_denied(format!(
                "the client certificate is for agency {identity}, but Hello says {}",
                hello.agency_id
            )));
        }
        if hello.outbox_id.is_empty() {
            return Err(Status::invalid_argument("Hello has no outbox_id"));
        }
        let (agency, outbox) = (hello.agency_id.clone(), hello.outbox_id.clone());
        let store = self.store.clone();
        let (last_seq, rejections) = {
            let (a, o) = (agency.clone(), outbox.clone());
            tokio::task::spawn_blocking(move || store.welcome(&a, &o, hello.first_unacked_seq))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(e.to_string()))?
        };
        if hello.catalog_digest != self.catalog.digest() {
            warn!(%agency, agent = %hello.catalog_digest, hub = %self.catalog.digest(), "catalog digests differ");
        }
        let span = info_span!("session", %agency, %outbox);
        span.in_scope(|| info!(last_seq, version = %hello.software_version, "agent connected"));
        let (tx, rx) = mpsc::channel(64);
        // The channel is new and has room.
        let _ = tx
            .send(msg(hub_message::Body::Welcome(Welcome {
                last_seq,
                hub_version: env!("CARGO_PKG_VERSION").to_owned(),
                catalog_digest: self.catalog.digest().to_owned(),
                rejections,
            })))
            .await;
        // Two tasks per stream: a reader that takes batches off the wire,
        // and a writer that applies every batch waiting at once in one
        // transaction (group commit), so receiving overlaps the fsync.
        let (batches_tx, batches_rx) = mpsc::channel(32);
        let reader_tx = tx.clone();
        let shutdown = self.shutdown.clone();
        let (agency_r, catalog) = (agency.clone(), self.catalog.clone());
        tokio::spawn(
            async move {
                loop {
                    let next = tokio::select! {
                        m = inbound.message() => m,
                        () = shutdown.cancelled() => break,
                    };
                    match next {
                        Ok(Some(AgentMessage {
                            body: Some(agent_message::Body::Batch(b)),
                        })) => {
                            let (agency, catalog) = (agency_r.clone(), catalog.clone());
                            let prepared =
                                tokio::task::spawn_blocking(move || store::prepare(&agency, b.entries, &catalog)).await;
                            let Ok(prepared) = prepared else { break };
                            if batches_tx.send(prepared).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => {
                            info!("agent closed the stream");
                            break;
                        }
                        Ok(Some(_)) => {
                            let _ = reader_tx
                                .send(Err(Status::invalid_argument("only batches may follow Hello")))
                                .await;
                            break;
                        }
                        Err(e) => {
                            info!(error = %e, "stream ended");
                            break;
                        }
                    }
                }
            }
            .instrument(span.clone()),
        );
        let writer = Writer {
            store: self.store.clone(),
            agency,
            outbox,
        };
        tokio::spawn(writer.run(batches_rx, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
