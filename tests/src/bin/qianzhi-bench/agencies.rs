//! `qianzhi-bench agencies [N] [RECORDS_PER_AGENCY]`: one real hub and N
//! agencies at once. Each agency is a light client in this process that
//! speaks the protocol as the agent's link does (its own certificate, Hello
//! → Welcome, batches of contiguous sequences in the agent's default size
//! and window, compressed as the agent does: one zstd context per stream,
//! level 1, into `Batch.zstd_entries`), and provides a resource of its own in a catalog made
//! for the run, since the hub takes a record only from its resource's
//! provider. All streams start together; the figures are the aggregate
//! durable throughput, each stream's batch → ack latency, the hub's CPU and
//! peak RSS, and the spread of the streams' own rates (starvation).
//!
//! Not measured here: the agents themselves (see the flood).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use proto::v1::exchange_client::ExchangeClient;
use proto::v1::{AgentMessage, Batch, Entry, Hello, HubMessage, Record, agent_message, hub_message};
use tests::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::normalize::{encode, fields_of, gaj_config, people_mapping};
use super::process::{Cpu, peak_rss};
use super::{keep_logs, percentile, start_hub, stop};

/// Bench agency `k` (from 1).
fn agency(k: usize) -> String {
    format!("320282-b{k:03}")
}

/// The resource bench agency `k` provides.
fn resource(k: usize) -> String {
    format!("1010199/{k:04}")
}

/// The example catalog plus, for each bench agency, a copy of the people
/// resource that it provides.
fn catalog(n: usize) -> String {
    let from = CATALOG
        .find(&format!("[[resource]]\ncode = \"{PEOPLE}\""))
        .expect("the people resource in the example catalog");
    let len = CATALOG[from + 1..]
        .find("[[resource]]")
        .map_or(CATALOG.len() - from, |l| l + 1);
    let people = &CATALOG[from..from + len];
    let mut text = CATALOG.to_owned();
    for k in 1..=n {
        let copy = people
            .replace(&format!("code = \"{PEOPLE}\""), &format!("code = \"{}\"", resource(k)))
            .replace(
                &format!("provider = \"{GAJ}\""),
                &format!("provider = \"{}\"", agency(k)),
            );
        text.push('\n');
        text.push_str(&copy);
    }
    let parsed = rules::catalog::Catalog::from_toml_str(&text).expect("the generated catalog");
    for k in 1..=n {
        let r = parsed.resource(&resource(k)).expect("a bench resource");
        assert_eq!(r.provider, agency(k), "bench resource {k} is its agency's");
    }
    text
}

/// Field 1 (a string) of a protobuf message: tag, length, bytes.
fn field_one(value: &str) -> Vec<u8> {
    let mut out = vec![0x0a];
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value.as_bytes());
    out
}

/// The records every agency sends, encoded before the clock starts (this
/// process shares the two cores with the hub): people rows as an agent
/// encodes them, without their first field, the resource, which prost
/// writes first. An agency's resource in front of a tail makes the bytes
/// its agent would send (checked by `Stream::open`).
struct Records {
    tails: Vec<Vec<u8>>,
}

impl Records {
    fn new(n: u64) -> Records {
        let mapping = people_mapping();
        let head = field_one(PEOPLE);
        let tails = (0..n)
            .map(|i| {
                let bytes = encode(&mapping, &fields_of(&mapping, &person(i)), i + 2).expect("a valid person");
                bytes
                    .strip_prefix(head.as_slice())
                    .expect("the resource is the record's first field")
                    .to_vec()
            })
            .collect();
        Records { tails }
    }

    /// Batches as the agent's outbox reader cuts them: up to
    /// `shape.records` records, ending with the one that brings the batch
    /// to `shape.bytes`.
    fn batches(&self, head: usize, shape: Shape) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut from, mut bytes) = (0, 0);
        for (i, t) in self.tails.iter().enumerate() {
            bytes += head + t.len();
            if i + 1 - from == shape.records || bytes >= shape.bytes {
                out.push(from..i + 1);
                (from, bytes) = (i + 1, 0);
            }
        }
        if from < self.tails.len() {
            out.push(from..self.tails.len());
        }
        out
    }
}

/// How an agent sends: the batch limits and the window of unacknowledged
/// batches of a config that sets none.
#[derive(Clone, Copy)]
struct Shape {
    records: usize,
    bytes: usize,
    window: usize,
}

impl Shape {
    fn agent_default() -> Shape {
        let hub = gaj_config().hub;
        Shape {
            records: hub.batch_records,
            bytes: hub.batch_bytes,
            window: hub.max_in_flight,
        }
    }
}

/// Batches sent and not acknowledged: (last sequence, sent at, window slot).
type InFlight = Arc<Mutex<VecDeque<(u64, Instant, OwnedSemaphorePermit)>>>;

/// One agency's Sync stream, past its Welcome.
struct Stream {
    agency: String,
    /// Field 1 of its records: its resource.
    head: Vec<u8>,
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<HubMessage>,
}

/// What one stream measured.
struct Outcome {
    agency: String,
    /// Batch sent → its ack, ms, sorted.
    latencies: Vec<f64>,
    /// Start → the ack of its last record.
    finished: Duration,
}

impl Stream {
    /// Connects as bench agency `k` with its certificate and takes the
    /// Welcome of a new outbox.
    async fn open(w: &World, port: u16, k: usize, digest: &str, shape: Shape, records: &Records) -> Stream {
        let agency = agency(k);
        let head = field_one(&resource(k));
        let sample = [head.as_slice(), &records.tails[0]].concat();
        let decoded = Record::decode(sample.as_slice()).expect("a composed record decodes");
        assert_eq!(decoded.resource, resource(k), "the composed record names the resource");
        assert_eq!(decoded.encode_to_vec(), sample, "composed bytes are prost's encoding");

        let pem = |rel: &str| std::fs::read_to_string(w.path(rel)).expect("pem file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem("pki/ca.pem")))
            .identity(Identity::from_pem(
                pem(&format!("pki/{agency}.pem")),
                pem(&format!("pki/{agency}.key")),
            ))
            .domain_name("localhost");
        // The windows the agent's link asks for.
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("hub endpoint")
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("connect to the hub");
        let mut client = ExchangeClient::new(channel).accept_compressed(CompressionEncoding::Zstd);
        let (tx, rx) = mpsc::channel(shape.window + 2);
        let hello = Hello {
            agency_id: agency.clone(),
            outbox_id: format!("bench-{agency}-{}", std::process::id()),
            software_version: "qianzhi-bench".into(),
            catalog_digest: digest.to_owned(),
            first_unacked_seq: 1,
        };
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await
        .expect("room for Hello");
        let mut inbound = client
            .sync(ReceiverStream::new(rx))
            .await
            .expect("the hub opens the stream")
            .into_inner();
        match inbound.message().await {
            Ok(Some(HubMessage {
                body: Some(hub_message::Body::Welcome(welcome)),
            })) => {
                assert_eq!(welcome.last_seq, 0, "{agency}: a new outbox");
                assert!(welcome.zstd_batches, "{agency}: the hub takes compressed batches");
            }
            other => panic!("{agency}: expected Welcome, got {other:?}"),
        }
        Stream {
            agency,
            head,
            tx,
            inbound,
        }
    }

    /// Sends every record in the agent's batches and window and waits for
    /// the ack of the last one.
    async fn run(mut self, records: Arc<Records>, shape: Shape, start: Instant) -> Outcome {
        let window = Arc::new(Semaphore::new(shape.window));
        let in_flight: InFlight = Arc::default();
        let sender = tokio::spawn(send(
            records.clone(),
            records.batches(self.head.len(), shape),
            self.head.clone(),
            self.tx.clone(),
            window,
            in_flight.clone(),
        ));
        let total = records.tails.len() as u64;
        let (mut acked, mut latencies) = (0, Vec::new());
        while acked < total {
            let upto = match self.inbound.message().await {
                Ok(Some(HubMessage {
                    body: Some(hub_message::Body::Ack(a)),
                })) => a.upto_seq,
                other => panic!("{}: expected an Ack, got {other:?}", self.agency),
            };
            let now = Instant::now();
            let mut q = in_flight.lock().expect("in-flight queue");
            while q.front().is_some_and(|(last, _, _)| *last <= upto) {
                if let Some((_, sent, permit)) = q.pop_front() {
                    latencies.push((now - sent).as_secs_f64() * 1000.0);
                    drop(permit);
                }
            }
            acked = upto;
        }
        let finished = start.elapsed();
        sender.await.expect("the sender task");
        latencies.sort_by(f64::total_cmp);
        // Dropping `tx` here closes the stream only after every ack.
        Outcome {
            agency: self.agency,
            latencies,
            finished,
        }
    }
}

/// Sends `batches` of `records` with contiguous sequences from 1, each
/// waiting for a place in the window.
async fn send(
    records: Arc<Records>,
    batches: Vec<Range<usize>>,
    head: Vec<u8>,
    tx: mpsc::Sender<AgentMessage>,
    window: Arc<Semaphore>,
    in_flight: InFlight,
) {
    let mut zstd = zstd::bulk::Compressor::new(1).expect("a zstd context");
    for batch in batches {
        let permit = window
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        let entries = batch
            .clone()
            .map(|i| Entry {
                seq: i as u64 + 1,
                record: [head.as_slice(), &records.tails[i]].concat().into(),
            })
            .collect();
        let last = batch.end as u64;
        in_flight
            .lock()
            .expect("in-flight queue")
            .push_back((last, Instant::now(), permit));
        let plain = Batch {
            entries,
            ..Batch::default()
        }
        .encode_to_vec();
        let frame = zstd.compress(&plain).expect("zstd compresses");
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Batch(Batch {
                entries: Vec::new(),
                zstd_entries: frame.into(),
            })),
        })
        .await
        .expect("the stream is open");
    }
}

pub async fn run(n: usize, per: u64) {
    let w = World::new();
    let text = catalog(n);
    w.write("catalog.toml", &text);
    let digest = rules::catalog::Catalog::from_toml_str(&text)
        .expect("the generated catalog")
        .digest()
        .to_owned();
    for k in 1..=n {
        w.issue(&agency(k), pki::dev::Validity::default(), &agency(k));
    }
    let shape = Shape::agent_default();
    let records = Arc::new(Records::new(per));
    let (port, _, mut hub) = start_hub(&w).await;
    let mut streams = Vec::with_capacity(n);
    for k in 1..=n {
        streams.push(Stream::open(&w, port, k, &digest, shape, &records).await);
    }

    // Every stream is open: they start together.
    let hub_cpu = Cpu::mark(hub.id());
    let start = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for s in streams {
        running.spawn(s.run(records.clone(), shape, start));
    }
    let mut outcomes = Vec::with_capacity(n);
    while let Some(o) = running.join_next().await {
        outcomes.push(o.expect("a stream task"));
    }
    let total = n as u64 * per;
    let hub_cpu = hub_cpu.per_million(total);
    let hub_peak = peak_rss(hub.id());
    report(&outcomes, per, shape, hub_cpu, hub_peak);
    stop(&mut [&mut hub]);
    keep_logs(&w, &["hub.log"]);
}

/// Prints the figures of the streams' outcomes.
fn report(outcomes: &[Outcome], per: u64, shape: Shape, hub_cpu: f64, hub_peak: f64) {
    let n = outcomes.len();
    let batches = outcomes.first().map_or(0, |o| o.latencies.len());
    let total = n as u64 * per;
    let elapsed = outcomes.iter().map(|o| o.finished).max().unwrap_or_default();
    let rates: Vec<f64> = outcomes.iter().map(|o| per as f64 / o.finished.as_secs_f64()).collect();
    let (slowest, fastest) = rates
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let mut p99s: Vec<(f64, &str)> = outcomes
        .iter()
        .map(|o| (percentile(&o.latencies, 0.99), o.agency.as_str()))
        .collect();
    p99s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let worst = p99s.last().copied().unwrap_or((f64::NAN, ""));
    let median = p99s.get(n / 2).map_or(f64::NAN, |p| p.0);
    let mut all: Vec<f64> = outcomes.iter().flat_map(|o| o.latencies.iter().copied()).collect();
    all.sort_by(f64::total_cmp);

    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| streams × records | {n} agencies × {per} = {total} records, {batches} batches each (≤ {} records, ≤ {} KiB, window {}: the agent's defaults) |",
        shape.records,
        shape.bytes / 1024,
        shape.window
    );
    println!(
        "| aggregate durable throughput | **{:.0} records/s** ({:.2} s to the last ack) |",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "| batch → ack, all batches, p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    println!(
        "| p99 batch → ack per stream: median / worst stream | {median:.1} / **{:.1} ms** ({}) |",
        worst.0, worst.1
    );
    println!(
        "| per-stream throughput, slowest / fastest | {slowest:.0} / {fastest:.0} records/s (ratio **{:.2}**; 1 is perfectly even) |",
        slowest / fastest
    );
    println!("| hub CPU | **{hub_cpu:.2} CPU-s per million** |");
    println!("| hub peak RSS | **{hub_peak:.1} MiB** |");
}
