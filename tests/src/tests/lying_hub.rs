//! A hub that lies: it acknowledges sequences the agent never sent, or
//! welcomes an outbox with a sequence beyond the highest it ever assigned.
//! The agent deletes nothing on such a word: a protocol error, logged, the
//! records kept, and a real hub later gets every one of them.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::exchange_server::{Exchange, ExchangeServer};
use proto::v1::{Ack, AgentMessage, Delivery, HubMessage, SubscriberMessage, Welcome, agent_message, hub_message};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::*;

/// How the fake hub lies.
#[derive(Clone, Copy)]
enum Lie {
    /// Welcome says it holds this sequence already.
    Welcome(u64),
    /// Every batch is acknowledged up to this sequence.
    Ack(u64),
}

struct Liar(Lie);

fn msg(body: hub_message::Body) -> Result<HubMessage, Status> {
    Ok(HubMessage { body: Some(body) })
}

#[tonic::async_trait]
impl Exchange for Liar {
    type SyncStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let lie = self.0;
        tokio::spawn(async move {
            let welcome_seq = match lie {
                Lie::Welcome(n) => n,
                Lie::Ack(_) => 0,
            };
            let _ = tx
                .send(msg(hub_message::Body::Welcome(Welcome {
                    last_seq: welcome_seq,
                    hub_version: "liar".into(),
                    catalog_digest: String::new(),
                    rejections: Vec::new(),
                    zstd_batches: false,
                })))
                .await;
            while let Ok(Some(m)) = inbound.message().await {
                if let (Some(agent_message::Body::Batch(_)), Lie::Ack(n)) = (m.body, lie) {
                    let _ = tx.send(msg(hub_message::Body::Ack(Ack { upto_seq: n }))).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = ReceiverStream<Result<Delivery, Status>>;

    async fn subscribe(
        &self,
        _request: Request<Streaming<SubscriberMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the liar only receives"))
    }
}

/// Serves the liar with the hub's certificate on `port` until cancelled.
async fn serve_liar(w: &World, port: u16, lie: Lie, token: CancellationToken) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let tls = pki::tls::server_config(&w.path("pki/ca.pem"), &w.path("pki/hub.pem"), &w.path("pki/hub.key")).unwrap();
    let incoming = hub_stub::conn::accept(
        listener,
        hub_stub::Live::new(Arc::new(rules::catalog::Catalog::from_toml_str(CATALOG).unwrap()), tls),
        Arc::new(hub_stub::Limits::default()),
        token.clone(),
    );
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(
                ExchangeServer::new(Liar(lie))
                    .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), token.cancelled_owned())
            .await;
    })
}

async fn lied_to(lie: Lie) {
    let w = World::new();
    let port = free_port();
    let agent = Agent::start(&w.agent_toml(&w.agent_spec(port))).await;
    w.drop_file("drop/people", "ten.csv", people_csv(0..10).as_bytes());
    eventually("ten records queued", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.records == 10).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    let token = CancellationToken::new();
    let liar = serve_liar(&w, port, lie, token.clone()).await;
    let status = eventually("the lie refused", Duration::from_secs(60), || {
        let s = agent.status();
        s.link
            .error
            .as_deref()
            .is_some_and(|e| e.contains("protocol error"))
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_eq!(
        status.queue.records, 10,
        "nothing deleted on the liar's word: {status:?}"
    );
    token.cancel();
    let _ = liar.await;
    eventually("the liar's port free", Duration::from_secs(10), || {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    // The real hub gets everything.
    let hub = Hub::start(&w, port).await;
    eventually("everything delivered", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.records == 0).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..10);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_beyond_what_was_sent_deletes_nothing() {
    lied_to(Lie::Ack(1_000_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_beyond_what_the_outbox_assigned_deletes_nothing() {
    lied_to(Lie::Welcome(1_000)).await;
}
