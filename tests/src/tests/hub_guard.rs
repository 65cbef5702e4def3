//! The hub against agencies that misbehave: sequences with gaps, two
//! agents on one outbox, malformed and oversized messages, memory attacks,
//! hostile text, idle connections, and a permissive umask. Each test runs
//! the real `qianzhi-hub` binary (its log and its memory are what is
//! asserted) and talks to it over real mutual TLS with the test's PKI,
//! through a raw gRPC client that can send what no agent would.
//!
//! `QIANZHI_HUB_BIN` runs these tests against another hub binary (an older
//! build, to compare its memory figures).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use prost::bytes::BufMut;
use proto::v1::{
    AgentMessage, Batch, Entry, Hello, HubMessage, Operation, Record, Welcome, agent_message, hub_message,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};

use crate::*;

/// Deadline for anything the hub should do promptly.
const PROMPTLY: Duration = Duration::from_secs(30);

/// A `qianzhi-hub serve` child process with its own config and log.
struct HubProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl HubProcess {
    /// Starts the hub with `limits` (TOML lines, e.g. a `[limits]` table).
    async fn start(w: &World, limits: &str) -> HubProcess {
        HubProcess::start_with_umask(w, limits, None).await
    }

    /// Starts the hub, under `umask` if given (set through `sh`, so that
    /// the test process's own umask is left alone).
    async fn start_with_umask(w: &World, limits: &str, umask: Option<&str>) -> HubProcess {
        let port = free_port();
        let config = w.write(
            "hub.toml",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nstore = \"hub/store.db\"\ncatalog = \"catalog.toml\"\n\
                 [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/hub.pem\"\nkey = \"pki/hub.key\"\n{limits}"
            ),
        );
        let log = w.path("hub.log");
        let out = std::fs::File::create(&log).expect("hub log");
        let err = out.try_clone().expect("hub log");
        let bin = std::env::var_os("QIANZHI_HUB_BIN").map_or_else(|| bin("qianzhi-hub"), PathBuf::from);
        let mut cmd = match umask {
            Some(m) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {m} && exec \"$0\" serve --config \"$1\""))
                    .arg(&bin)
                    .arg(&config);
                c
            }
            None => {
                let mut c = Command::new(&bin);
                c.args(["serve", "--config"]).arg(&config);
                c
            }
        };
        let child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn qianzhi-hub");
        wait_listening(port).await;
        HubProcess { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The hub's peak resident memory (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM");
        kib * 1024
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mutual-TLS channel (one HTTP/2 connection) to the hub as `agency`.
async fn try_channel(w: &World, port: u16, agency: &str) -> Result<Channel, tonic::transport::Error> {
    let read = |rel: &str| std::fs::read_to_string(w.path(rel)).expect("pem file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("pki/ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("pki/{agency}.pem")),
            read(&format!("pki/{agency}.key")),
        ))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await
}

async fn channel(w: &World, port: u16, agency: &str) -> Channel {
    try_channel(w, port, agency).await.expect("connect to the hub")
}

/// Sends raw encoded `AgentMessage`s, decodes `HubMessage`s.
#[derive(Clone, Copy)]
struct Raw;

struct RawEncoder;
struct HubDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = HubMessage;
    type Encoder = RawEncoder;
    type Decoder = HubDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> HubDecoder {
        HubDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for HubDecoder {
    type Item = HubMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<HubMessage>, Status> {
        HubMessage::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// One Sync stream of the raw client.
struct Sync {
    tx: mpsc::Sender<Vec<u8>>,
    rx: Streaming<HubMessage>,
}

/// Opens a Sync stream that starts with `first` (if any); the hub answers
/// (headers or a refusal) only once it has read a Hello.
async fn sync(channel: Channel, first: Option<Vec<u8>>) -> Result<Sync, Status> {
    let (tx, rx) = mpsc::channel(4);
    if let Some(m) = first {
        tx.send(m).await.expect("room for the first message");
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static("/qianzhi.exchange.v1.Exchange/Sync");
    let response = grpc.streaming(Request::new(ReceiverStream::new(rx)), path, Raw).await?;
    Ok(Sync {
        tx,
        rx: response.into_inner(),
    })
}

impl Sync {
    /// Opens a stream for `outbox` and takes its Welcome.
    async fn open(channel: Channel, agency: &str, outbox: &str) -> (Sync, Welcome) {
        let mut s = sync(channel, Some(hello(agency, outbox)))
            .await
            .expect("stream accepted");
        let w = match s.next().await {
            Ok(Some(hub_message::Body::Welcome(w))) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        (s, w)
    }

    async fn send(&self, message: Vec<u8>) {
        self.tx.send(message).await.expect("request stream open");
    }

    /// The next message, `None` when the stream ended with OK, or the
    /// status it ended with.
    async fn next(&mut self) -> Result<Option<hub_message::Body>, Status> {
        let m = tokio::time::timeout(PROMPTLY, self.rx.message())
            .await
            .expect("the hub answers promptly")?;
        Ok(m.and_then(|m| m.body))
    }

    /// Reads until the stream ends; returns the highest ack, the
    /// rejections and how the stream ended.
    async fn drain(&mut self) -> (u64, Vec<proto::v1::Rejected>, Result<(), Status>) {
        let (mut acked, mut rejected) = (0, Vec::new());
        loop {
            match self.next().await {
                Ok(Some(hub_message::Body::Ack(a))) => acked = a.upto_seq,
                Ok(Some(hub_message::Body::Rejected(r))) => rejected.push(r),
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => return (acked, rejected, Ok(())),
                Err(s) => return (acked, rejected, Err(s)),
            }
        }
    }
}

fn encode(body: agent_message::Body) -> Vec<u8> {
    AgentMessage { body: Some(body) }.encode_to_vec()
}

fn hello(agency: &str, outbox: &str) -> Vec<u8> {
    encode(agent_message::Body::Hello(Hello {
        agency_id: agency.into(),
        outbox_id: outbox.into(),
        software_version: "hub-guard".into(),
        catalog_digest: String::new(),
        first_unacked_seq: 1,
    }))
}

fn batch(entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Vec<u8> {
    encode(agent_message::Body::Batch(Batch {
        entries: entries
            .into_iter()
            .map(|(seq, record)| Entry {
                seq,
                record: record.into(),
            })
            .collect(),
        ..Batch::default()
    }))
}

/// Person `i` as the agent of 320282-gaj would send it: canonical, valid.
fn person_record(i: u64) -> Vec<u8> {
    let serde_json::Value::Object(items) = expected_items(i) else {
        unreachable!("expected_items is an object")
    };
    Record {
        resource: PEOPLE.into(),
        key: vec![citizen_id(i)],
        op: Operation::Upsert as i32,
        items: items
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// People records `seqs`, person `offset + seq` at each sequence.
fn people(seqs: impl IntoIterator<Item = u64>, offset: u64) -> Vec<u8> {
    batch(seqs.into_iter().map(|s| (s, person_record(offset + s))))
}

/// A record of a resource no catalog has, `len` bytes long: rejected.
fn junk_record(len: usize) -> Vec<u8> {
    let mut r = Record {
        resource: "no/such".into(),
        ..Default::default()
    };
    r.items.insert("X".into(), "j".repeat(len.saturating_sub(16)));
    r.encode_to_vec()
}

/// A batch of `n` junk records of `len` bytes from sequence 1.
fn junk_batch(n: u64, len: usize) -> Vec<u8> {
    let record = junk_record(len);
    batch((1..=n).map(|s| (s, record.clone())))
}

/// A batch message of about `bytes` bytes of four-byte entries (sequence
/// 1 to 127, empty record), written directly: the test does not hold
/// millions of `Entry` values to make it.
fn tiny_batch(bytes: usize) -> Vec<u8> {
    let n = bytes / 4;
    let mut payload = Vec::with_capacity(n * 4);
    for i in 0..n {
        payload.extend_from_slice(&[0x0a, 0x02, 0x08, 1 + (i % 127) as u8]);
    }
    let mut m = Vec::with_capacity(payload.len() + 16);
    m.push(0x12);
    prost::encoding::encode_varint(payload.len() as u64, &mut m);
    m.extend_from_slice(&payload);
    m
}

/// The history's (outbox, seq, key) lines.
fn history(w: &World) -> Vec<(String, i64, String)> {
    export(&w.store_path(), true)
        .iter()
        .map(|l| {
            (
                l["outbox"].as_str().unwrap_or_default().to_owned(),
                l["seq"].as_i64().unwrap_or(-99),
                l["key"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn seqs_of(w: &World, outbox: &str) -> Vec<i64> {
    history(w)
        .into_iter()
        .filter(|(o, _, _)| o == outbox)
        .map(|(_, s, _)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_errors_end_the_stream_after_what_is_stored() {
    let w = World::new();
    let hub = HubProcess::start(&w, "").await;

    // A gap: 1..=3 are stored and acknowledged, then the stream ends.
    let (mut s, welcome) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-gap").await;
    assert_eq!(welcome.last_seq, 0);
    s.send(people([1, 2, 3, 5, 6], 0)).await;
    let (acked, _, end) = s.drain().await;
    let e = end.expect_err("a gap ends the stream with a status");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("expected 4, got 5"), "{}", e.message());
    assert_eq!(acked, 3);
    assert_eq!(seqs_of(&w, "ob-gap"), [1, 2, 3]);

    // The same gap with the batch that would fill it right behind: the hub
    // answers each group only once it is durable, beside the next group's
    // apply, but nothing after a group that broke the sequence is applied.
    let (mut s, _) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-gap-2").await;
    s.send(people([1, 2, 3, 5, 6], 0)).await;
    s.send(people([4, 5, 6, 7], 0)).await;
    let (acked, _, end) = s.drain().await;
    let e = end.expect_err("a gap ends the stream with a status");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(acked, 3);
    assert_eq!(seqs_of(&w, "ob-gap-2"), [1, 2, 3]);

    // u64::MAX: nothing at or after it is acknowledged, and the outbox goes
    // on from where it was.
    let (mut s, _) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-max").await;
    s.send(batch([
        (1, person_record(100)),
        (u64::MAX, person_record(101)),
        (2, person_record(102)),
    ]))
    .await;
    let (acked, _, end) = s.drain().await;
    let e = end.expect_err("u64::MAX ends the stream with a status");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("expected 2, got 18446744073709551615"),
        "{}",
        e.message()
    );
    assert_eq!(acked, 1);
    let (mut s, welcome) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-max").await;
    assert_eq!(welcome.last_seq, 1);
    s.send(batch([(2, person_record(102))])).await;
    assert!(matches!(s.next().await, Ok(Some(hub_message::Body::Ack(a))) if a.upto_seq == 2));
    assert_eq!(seqs_of(&w, "ob-max"), [1, 2]);
    assert!(history(&w).iter().all(|(_, seq, _)| *seq > 0), "{:?}", history(&w));
}

/// Streams `from+1..=total` in batches of `per` while reading answers and
/// publishing the highest ack. Ends when the hub ends the stream, or (if
/// `close_when_done`) once `total` is acknowledged.
async fn feed(
    mut s: Sync,
    from: u64,
    total: u64,
    per: u64,
    offset: u64,
    acked: watch::Sender<u64>,
    close_when_done: bool,
) -> (u64, Result<(), Status>) {
    let (mut cursor, mut max) = (from + 1, from);
    if close_when_done && from >= total {
        return (max, Ok(()));
    }
    let mut pending = None;
    loop {
        if pending.is_none() && cursor <= total {
            let last = (cursor + per - 1).min(total);
            pending = Some(people(cursor..=last, offset));
            cursor = last + 1;
        }
        tokio::select! {
            m = s.rx.message() => match m {
                Ok(Some(HubMessage { body: Some(hub_message::Body::Ack(a)) })) => {
                    max = a.upto_seq;
                    acked.send_replace(max);
                    if close_when_done && max >= total {
                        return (max, Ok(()));
                    }
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => return (max, Ok(())),
                Err(e) => return (max, Err(e)),
            },
            permit = s.tx.reserve(), if pending.is_some() => match permit {
                Ok(p) => p.send(pending.take().unwrap_or_default()),
                Err(_) => pending = None,
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_an_outbox_takes_it_over_and_nothing_unstored_is_acked() {
    const TOTAL: u64 = 20_000;
    const PER: u64 = 250;
    const B_OFFSET: u64 = 1_000_000;
    let w = World::new();
    let hub = HubProcess::start(&w, "").await;
    let (a, welcome) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-twin").await;
    let (a_tx, mut a_acked) = watch::channel(0);
    let a_task = tokio::spawn(feed(a, welcome.last_seq, TOTAL, PER, 0, a_tx, false));
    // B (another connection: another peer) says Hello once A's first batch
    // is acknowledged, so A is streaming.
    a_acked.wait_for(|n| *n > 0).await.expect("A is acknowledged");
    let (b, b_welcome) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-twin").await;
    let (b_tx, _) = watch::channel(0);
    let (b_max, b_end) = tokio::time::timeout(
        Duration::from_secs(120),
        feed(b, b_welcome.last_seq, TOTAL, PER, B_OFFSET, b_tx, true),
    )
    .await
    .expect("B delivers everything");
    let (a_max, a_end) = tokio::time::timeout(PROMPTLY, a_task)
        .await
        .expect("A's stream ends")
        .expect("A's task");

    let e = a_end.expect_err("A's stream ends with a status");
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert!(e.message().contains("replaced by a newer session"), "{}", e.message());
    b_end.expect("B's stream ends well");
    assert_eq!(b_max, TOTAL);
    // B's Welcome came after A's last transaction: it covers every ack A got.
    let handover = b_welcome.last_seq;
    eprintln!("A acked up to {a_max}; B welcomed after {handover} and delivered the rest to {TOTAL}");
    assert!(
        handover >= a_max,
        "A was acked up to {a_max}, B welcomed after {handover}"
    );
    // Every sequence once, each acked one stored as its acknowledger sent it.
    let mut lines = history(&w);
    lines.sort_by_key(|(_, seq, _)| *seq);
    assert_eq!(lines.len() as u64, TOTAL);
    for (n, (_, seq, key)) in lines.iter().enumerate() {
        let seq = *seq as u64;
        assert_eq!(seq, n as u64 + 1, "every sequence once");
        let sender = if seq <= handover { seq } else { B_OFFSET + seq };
        assert_eq!(
            key,
            &citizen_id(sender),
            "seq {seq} (A acked to {a_max}, handover {handover})"
        );
    }
    let log = hub.log();
    assert!(log.contains("a new session takes the outbox over"), "{log}");
    assert!(
        log.contains("two agents stream outbox ob-twin (peers 127.0.0.1:"),
        "A was sending when B took over: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_after_hello_end_the_stream_with_a_status() {
    let w = World::new();
    let limits = "[limits]\nmax_batch_entries = 100\nmax_message_bytes = \"1MiB\"\n";
    let hub = HubProcess::start(&w, limits).await;
    let ch = channel(&w, hub.port, GAJ).await;

    // Bytes that are not an AgentMessage.
    let (mut s, _) = Sync::open(ch.clone(), GAJ, "ob-c1").await;
    s.send(vec![0x12, 0x05, 0x0a]).await;
    let e = s
        .drain()
        .await
        .2
        .expect_err("a malformed message ends the stream with a status");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not an AgentMessage"), "{}", e.message());

    // A batch over max_batch_entries: the batch before it is stored and
    // acknowledged, nothing of it.
    let (mut s, _) = Sync::open(ch.clone(), GAJ, "ob-c2").await;
    s.send(people(1..=50, 0)).await;
    s.send(people(51..=151, 0)).await;
    let (acked, _, end) = s.drain().await;
    let e = end.expect_err("an oversized batch ends the stream with a status");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("101 entries is over the hub's limit of 100"),
        "{}",
        e.message()
    );
    assert_eq!(acked, 50);
    assert_eq!(seqs_of(&w, "ob-c2"), (1..=50).collect::<Vec<_>>());

    // A message over max_message_bytes.
    let (mut s, _) = Sync::open(ch.clone(), GAJ, "ob-c3").await;
    s.send(batch([(1, junk_record(2 << 20))])).await;
    let e = s
        .drain()
        .await
        .2
        .expect_err("an oversized message ends the stream with a status");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());

    // A second Hello.
    let (mut s, _) = Sync::open(ch, GAJ, "ob-c4").await;
    s.send(hello(GAJ, "ob-c4")).await;
    let e = s
        .drain()
        .await
        .2
        .expect_err("a second Hello ends the stream with a status");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(history(&w).iter().all(|(o, _, _)| o == "ob-c2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_attacks_are_bounded_and_other_agencies_are_served() {
    const PEAK_LIMIT: u64 = 256 << 20;
    let w = World::new();
    // The default limits: they are what must hold.
    let hub = HubProcess::start(&w, "").await;
    let agent = Agent::start(&w.agent_toml(&w.agent_spec(hub.port))).await;

    // 1. One 63 MiB batch of four-byte entries.
    let (mut big, _) = Sync::open(channel(&w, hub.port, SCJGJ).await, SCJGJ, "ob-big").await;
    let tx = big.tx.clone();
    let sender = tokio::spawn(async move { tx.send(tiny_batch(63 << 20)).await });
    // Its answer: an ack, or the status the stream ends with.
    let big_end = loop {
        match big.next().await {
            Ok(Some(hub_message::Body::Ack(a))) => break Ok(a.upto_seq),
            Ok(Some(_)) => continue,
            Ok(None) => break Err(Status::ok("")),
            Err(e) => break Err(e),
        }
    };
    sender.abort();

    // 2. Batches of 10,000 entries (16 MB each) with the answers left
    //    unread after the first: the first batch was applied when it comes.
    let junk = junk_batch(10_000, 1_600);
    let flood = |s: &Sync| {
        let (tx, junk) = (s.tx.clone(), junk.clone());
        tokio::spawn(async move {
            for _ in 0..8 {
                if tx.send(junk.clone()).await.is_err() {
                    break;
                }
            }
        })
    };
    let (mut unread, _) = Sync::open(channel(&w, hub.port, SCJGJ).await, SCJGJ, "ob-unread").await;
    let mut floods = vec![flood(&unread)];
    let first_answer = unread.next().await;

    // 3. Many connections, many streams, each flooding like the one above.
    let (mut channels, mut streams, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..10 {
        let ch = match try_channel(&w, hub.port, SCJGJ).await {
            Ok(ch) => ch,
            Err(e) => {
                refused.push(Status::unavailable(e.to_string()));
                continue;
            }
        };
        for s in 0..4 {
            match sync(ch.clone(), Some(hello(SCJGJ, &format!("ob-many-{c}-{s}")))).await {
                Ok(mut stream) => {
                    floods.push(flood(&stream));
                    // The Welcome, then an answer to the first batch: the
                    // hub has taken this flood in.
                    for _ in 0..2 {
                        stream.next().await.expect("an answer");
                    }
                    streams.push(stream);
                }
                Err(e) => refused.push(e),
            }
        }
        channels.push(ch);
    }
    let opened = streams.len();

    // Meanwhile 320282-gaj's agent delivers a file.
    w.drop_file("drop/people", "a.csv", people_csv(0..2000).as_bytes());
    eventually(
        "2000 records acknowledged during the attack",
        Duration::from_secs(120),
        || {
            let s = agent.status();
            (s.link.acked == 2000 && s.queue.records == 0)
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    let peak = hub.peak_rss();
    eprintln!(
        "hub peak RSS {} MiB; the big batch ended {:?}; {opened} more attack streams opened, refused: {:?}",
        peak >> 20,
        big_end.as_ref().map_err(Status::code),
        refused.iter().map(Status::code).collect::<Vec<_>>()
    );
    assert_hub_holds(&w.store_path(), 0..2000);
    assert!(peak < PEAK_LIMIT, "hub peak RSS {} MiB", peak >> 20);
    let e = big_end.expect_err("the 63 MiB batch is refused with a status, nothing of it acknowledged");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(first_answer.is_ok(), "{first_answer:?}");
    // The flood holds one of the agency's four streams.
    assert!(opened <= 3, "{opened} streams opened beside the flood");
    assert!(
        refused.iter().any(|e| e.code() == Code::ResourceExhausted),
        "{refused:?}"
    );
    // Twelve connections were kept open: four were closed.
    assert!(
        hub.log()
            .contains("has 8 connections open, the hub's limit; connection closed")
    );
    for f in floods {
        f.abort();
    }
    drop((streams, channels, unread));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_bounded_and_escaped_everywhere_it_is_shown() {
    let w = World::new();
    let hub = HubProcess::start(&w, "").await;
    let ch = channel(&w, hub.port, GAJ).await;
    let forged = "1999-01-01T00:00:00.000000Z  INFO forged: all good";

    // An outbox id that would forge a log line, and one of 10 KB.
    for outbox in [format!("ob\n{forged}\u{1b}[31m"), "o".repeat(10_000)] {
        let e = sync(ch.clone(), Some(hello(GAJ, &outbox)))
            .await
            .err()
            .expect("the Hello is refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().len() < 512, "{}", e.message().len());
        assert!(!e.message().chars().any(char::is_control), "{:?}", e.message());
    }

    // A value quoted by the record rules (60 KB, with a newline and an
    // escape), and a value of 3 MiB.
    let hostile = format!("\n{forged}\u{1b}[2J{}", "9".repeat(60_000));
    let mut quoted = Record::decode(person_record(1).as_slice()).expect("record");
    quoted.items.insert("DE00001".into(), hostile);
    let mut huge = Record::decode(person_record(2).as_slice()).expect("record");
    huge.items.insert("DE00006".into(), "宜".repeat(1 << 20));
    let (mut s, _) = Sync::open(ch.clone(), GAJ, "ob-hostile").await;
    s.send(batch([(1, quoted.encode_to_vec()), (2, huge.encode_to_vec())]))
        .await;
    let mut rejected = Vec::new();
    while rejected.len() < 2 {
        match s.next().await {
            Ok(Some(hub_message::Body::Rejected(r))) => rejected.push(r),
            other => panic!("expected two rejections, got {other:?}"),
        }
    }
    assert!(matches!(s.next().await, Ok(Some(hub_message::Body::Ack(a))) if a.upto_seq == 2));
    assert!(
        rejected[1].reason.contains("over the hub's limit"),
        "{}",
        rejected[1].reason
    );
    // The store's rejection rows, and the Welcome that repeats them.
    let rows: Vec<String> = {
        let db = rusqlite::Connection::open(w.store_path()).expect("store");
        let mut stmt = db.prepare("SELECT reason FROM rejections").expect("select");
        stmt.query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("reasons")
    };
    let (_, welcome) = Sync::open(ch, GAJ, "ob-hostile").await;
    let reasons = rejected
        .iter()
        .map(|r| &r.reason)
        .chain(&rows)
        .chain(welcome.rejections.iter().map(|r| &r.reason));
    let mut n = 0;
    for reason in reasons {
        n += 1;
        assert!(reason.len() < 512, "a reason of {} bytes", reason.len());
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }
    assert_eq!(n, 6);
    assert!(rejected[0].reason.contains("truncated"), "{}", rejected[0].reason);

    let log = hub.log();
    assert!(!log.contains('\u{1b}'), "an escape reached the log");
    assert!(
        !log.lines().any(|l| l.starts_with("1999-01-01")),
        "a forged line: {log}"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
    assert!(log.len() < 64 << 10, "a log of {} bytes", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_an_idle_agent_stays_connected() {
    let w = World::new();
    let hub = HubProcess::start(&w, "[limits]\nhello_timeout = \"1s\"\nidle_timeout = \"1s\"\n").await;
    let agent = Agent::start(&w.agent_toml(&w.agent_spec(hub.port))).await;
    w.drop_file("drop/people", "a.csv", people_csv(0..10).as_bytes());
    eventually("the first file delivered", PROMPTLY, || {
        let s = agent.status();
        (s.link.acked == 10).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;

    // An authenticated connection that never opens a stream is closed.
    let config = pki::tls::client_config(
        &w.path("pki/ca.pem"),
        &w.path(&format!("pki/{SCJGJ}.pem")),
        &w.path(&format!("pki/{SCJGJ}.key")),
    )
    .expect("client tls");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.port))
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let closed = tokio::time::timeout(PROMPTLY, async {
        let mut buf = [0u8; 1024];
        // The hub's HTTP/2 settings come first; then the close.
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stays open");

    // A stream that never says Hello is ended.
    let e = sync(channel(&w, hub.port, SCJGJ).await, None)
        .await
        .err()
        .expect("a stream without Hello is refused");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // The agent, idle all along for longer than both timeouts, is still on
    // its first session and still delivers.
    w.drop_file("drop/people", "b.csv", people_csv(10..20).as_bytes());
    eventually("the second file delivered", PROMPTLY, || {
        let s = agent.status();
        (s.link.acked == 20).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    let log = hub.log();
    assert_eq!(log.matches("agent connected").count(), 1, "{log}");
    assert!(
        log.contains("connection closed: no stream for the idle timeout"),
        "{log}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_private_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let hub = HubProcess::start_with_umask(&w, "", Some("000")).await;
    let (mut s, _) = Sync::open(channel(&w, hub.port, GAJ).await, GAJ, "ob-perm").await;
    s.send(people([1], 0)).await;
    assert!(matches!(s.next().await, Ok(Some(hub_message::Body::Ack(a))) if a.upto_seq == 1));
    // The hub runs, so its WAL and shared-memory files exist.
    let mode = |rel: &str| {
        std::fs::metadata(w.path(rel))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(mode("hub"), 0o700, "the store's folder");
    for f in ["hub/store.db", "hub/store.db-wal", "hub/store.db-shm"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
}
