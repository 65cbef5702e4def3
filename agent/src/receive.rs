//! The receiving direction: the `[[subscription]]`s of this agency,
//! delivered by the hub over a Subscribe stream and applied into their
//! sinks ([`crate::sink`]), exactly once.
//!
//! One worker task per subscription owns its sink and applies what the
//! session hands it, in order; one session task holds the stream. The
//! session subscribes with each sink's durable position; the hub sends the
//! changes after it (or a snapshot after a `Reset`), and the session passes
//! each message to its subscription's worker, which applies it in one sink
//! transaction together with the new position and then acknowledges the
//! position it committed. So a crash anywhere neither loses nor repeats a
//! change: what was not committed is sent again, and the sink skips what
//! its position already holds (a message of an old session still queued
//! when a new one starts is applied or skipped the same way).
//!
//! A sink that fails keeps its subscription at that change: the worker
//! retries it with backoff and nothing after it is applied, while the
//! other subscriptions (and the upload direction) go on; the hub stops
//! sending to it once its window is full. Acknowledgements carry the
//! session they answer, and a session only forwards its own.
//!
//! Revocation (`Revoked`): the worker stops applying the resource and, with
//! `on_revoke = "purge"`, deletes what it received in one transaction. A
//! grant that comes later in the same stream restarts the session, so that
//! delivery starts again from the sink's true position.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use proto::v1::exchange_client::ExchangeClient;
use proto::v1::{Applied, Subscribe, SubscriberMessage, Subscription, delivery, subscriber_message};
use rules::catalog::Catalog;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::CompressionEncoding;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, HubConfig, OnRevoke, SinkConfig, SubscriptionConfig};
use crate::health::SubscriptionStats;
use crate::sink::{self, Delivered, Op, Sink, SinkSpec};

/// Messages a worker may have queued: the hub sends at most 16 `Changes`
/// per subscription unacknowledged, plus grants and resets.
const WORKER_QUEUE: usize = 64;

/// Changes one sink transaction takes at most, gathered from the messages
/// queued when the first is taken.
const GROUP: usize = 4096;

/// What the session hands a worker. `session` numbers the stream, so
/// that the worker's acknowledgement goes to the stream that sent it.
enum Work {
    Granted {
        session: u64,
        provider: String,
        agreement: String,
        items: usize,
    },
    Refused {
        reason: String,
    },
    Reset {
        session: u64,
        reason: String,
    },
    Changes {
        session: u64,
        changes: Vec<Delivered>,
        /// What the hub holds after them.
        behind: u64,
    },
    Revoked {
        agreement: String,
        reason: String,
    },
}

/// An acknowledgement for the session that sent the changes.
struct Ack {
    session: u64,
    resource: String,
    upto: u64,
    /// Taken by the sink, not yet committed (a folder's open file).
    received: u64,
}

/// Starts the receiver's tasks: a worker per subscription and the session
/// loop. Returns at once; the tasks stop with `token`.
pub fn start(config: &Config, health: &crate::health::Health, tasks: &TaskTracker, token: CancellationToken) {
    if config.subscriptions.is_empty() {
        return;
    }
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let mut workers = BTreeMap::new();
    let mut positions = BTreeMap::new();
    for sub in &config.subscriptions {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        let (pos_tx, pos_rx) = watch::channel(None);
        let stats = health.subscription(&sub.resource);
        let worker = Worker {
            spec: spec(&config.catalog, &config.data_dir, sub),
            on_revoke: sub.on_revoke,
            password_file: match &sub.sink {
                SinkConfig::Table { password_file, .. } => password_file.clone(),
                SinkConfig::Folder { .. } => None,
            },
            backoff_max: config.hub.backoff_max,
            acks: ack_tx.clone(),
            position: pos_tx,
            stats,
        };
        tasks.spawn(
            worker
                .run(rx, token.clone())
                .instrument(info_span!("subscription", resource = %sub.resource)),
        );
        workers.insert(sub.resource.clone(), tx);
        positions.insert(sub.resource.clone(), pos_rx);
    }
    let session = Sessions {
        stats: config
            .subscriptions
            .iter()
            .map(|s| health.subscription(&s.resource))
            .collect(),
        hub: config.hub.clone(),
        agency: config.agency.clone(),
        catalog_digest: config.catalog.digest().to_owned(),
        subscriptions: config.subscriptions.clone(),
        workers,
        positions,
    };
    tasks.spawn(
        session
            .run(ack_rx, token)
            .instrument(info_span!("receiver", hub = %config.hub.url)),
    );
}

/// The sink spec of a subscription.
pub fn spec(catalog: &Catalog, data_dir: &std::path::Path, sub: &SubscriptionConfig) -> SinkSpec {
    let resource = catalog.resource(&sub.resource);
    let items: Vec<String> = if sub.items.is_empty() {
        resource
            .map(|r| r.items().iter().map(|i| i.id.clone()).collect())
            .unwrap_or_default()
    } else {
        sub.items.clone()
    };
    let key = resource
        .map(|r| r.key_items().map(|i| i.id.clone()).collect())
        .unwrap_or_default();
    let target = match &sub.sink {
        SinkConfig::Table {
            kind,
            url,
            table,
            create,
            columns,
            ..
        } => sink::Target::Table(sink::TableSpec {
            kind: *kind,
            url: url.clone(),
            password: None,
            table: table.clone(),
            create: *create,
            columns: items
                .iter()
                .map(|i| (i.clone(), columns.get(i).cloned().unwrap_or_else(|| i.clone())))
                .collect(),
        }),
        SinkConfig::Folder {
            path,
            format,
            encoding,
            roll_records,
            roll_after,
            ok_marker,
        } => sink::Target::Folder(sink::FolderSpec {
            path: path.clone(),
            state: data_dir
                .join("subscriptions")
                .join(format!("{}.position", sink_file_name(&sub.resource))),
            format: match format {
                crate::config::SinkFormat::Jsonl => sink::SinkFormat::Jsonl,
                crate::config::SinkFormat::Csv => sink::SinkFormat::Csv,
            },
            encoding: match encoding {
                crate::config::Encoding::Gb18030 => sink::Encoding::Gb18030,
                _ => sink::Encoding::Utf8,
            },
            roll_records: *roll_records,
            roll_after: *roll_after,
            ok_marker: *ok_marker,
        }),
    };
    SinkSpec {
        subscription: sub.resource.clone(),
        resource: sub.resource.clone(),
        key,
        items,
        target,
    }
}

/// A resource code as a file name: `/` and the like become `_`.
fn sink_file_name(resource: &str) -> String {
    resource
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// Reads a password file, as database sources do.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))
}

fn backoff(max: Duration) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// One subscription's sink and what it has applied.
struct Worker {
    spec: SinkSpec,
    on_revoke: OnRevoke,
    password_file: Option<std::path::PathBuf>,
    backoff_max: Duration,
    acks: mpsc::UnboundedSender<Ack>,
    /// The sink's durable position, once it is open.
    position: watch::Sender<Option<u64>>,
    stats: SubscriptionStats,
}

impl Worker {
    async fn run(mut self, mut work: mpsc::Receiver<Work>, token: CancellationToken) {
        let Some(mut sink) = self.open(&token).await else {
            return;
        };
        let mut revoked = false;
        let mut reset = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session_of_last = 0;
        // The last sequence handed to the sink (committed or not).
        let mut received = sink.position();
        // A message taken from the queue while gathering a group, to be
        // handled next.
        let mut stash = None;
        loop {
            let w = if let Some(w) = stash.take() {
                w
            } else {
                tokio::select! {
                () = token.cancelled() => break,
                w = work.recv() => match w { Some(w) => w, None => break },
                _ = tick.tick() => {
                    // A folder renames its open file in after roll_after.
                    let before = sink.position();
                    if let Ok(p) = sink.tick().await
                        && p > before
                    {
                        self.committed(session_of_last, p, received);
                    }
                    continue;
                }
                }
            };
            match w {
                Work::Granted {
                    session,
                    provider,
                    agreement,
                    items,
                } => {
                    info!(%provider, %agreement, items, position = sink.position(), "subscription granted");
                    revoked = false;
                    session_of_last = session;
                    self.stats.granted(&provider, &agreement);
                }
                Work::Refused { reason } => {
                    error!(%reason, "the hub refused the subscription");
                    self.stats.refused(&reason);
                }
                Work::Reset { session, reason } => {
                    info!(%reason, "a snapshot follows: what was received is replaced with it");
                    session_of_last = session;
                    reset = true;
                    received = 0;
                }
                Work::Changes {
                    mut session,
                    mut changes,
                    mut behind,
                } => {
                    if revoked {
                        continue;
                    }
                    // Group commit: the messages already queued go into the
                    // same transaction.
                    while changes.len() < GROUP {
                        match work.try_recv() {
                            Ok(Work::Changes {
                                session: s,
                                changes: more,
                                behind: b,
                            }) => {
                                session = s;
                                behind = b;
                                changes.extend(more);
                            }
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    session_of_last = session;
                    let Some(p) = self.apply(&mut sink, &changes, reset, &token).await else {
                        break;
                    };
                    reset = false;
                    self.stats.applied(
                        changes.len() as u64,
                        p,
                        changes.last().map(|c| c.captured_at_us),
                        behind,
                    );
                    // The sink skips what its position holds, so `p` covers
                    // a message that was applied before, too.
                    received = received.max(p).max(changes.last().map_or(0, |c| c.seq));
                    self.committed(session, p, received);
                }
                Work::Revoked { agreement, reason } => {
                    revoked = true;
                    warn!(%agreement, %reason, "delivery revoked by the hub; the subscription stops");
                    self.stats.revoked(&reason);
                    if self.on_revoke == OnRevoke::Purge {
                        match sink.purge().await {
                            Ok(n) => warn!(rows = n, "on_revoke = \"purge\": the received data was deleted"),
                            Err(e) => {
                                error!(error = %e, "on_revoke = \"purge\" failed; the received data is still there")
                            }
                        }
                        let _ = self.position.send(Some(sink.position()));
                        received = sink.position();
                    }
                }
            }
        }
    }

    /// Opens the sink, retrying with backoff; `None` when cancelled first.
    async fn open(&mut self, token: &CancellationToken) -> Option<Sink> {
        let mut backoff = backoff(self.backoff_max);
        loop {
            let mut spec = self.spec.clone();
            // A folder sink keeps its position in the data directory.
            if let sink::Target::Folder(f) = &spec.target
                && let Some(dir) = f.state.parent()
                && let Err(e) = crate::fsx::create_private_dir(dir)
            {
                warn!(error = %e, dir = %dir.display(), "cannot make the folder for sink positions");
            }
            let opened = match (&mut spec.target, &self.password_file) {
                (sink::Target::Table(t), Some(p)) => match read_password(p) {
                    Ok(pw) => {
                        t.password = Some(pw);
                        Sink::open(spec).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                },
                _ => Sink::open(spec).await.map_err(|e| e.to_string()),
            };
            match opened {
                Ok(sink) => {
                    let _ = self.position.send(Some(sink.position()));
                    self.stats.opened(sink.position());
                    return Some(sink);
                }
                Err(e) => {
                    error!(error = %e, "cannot open the sink; retrying");
                    self.stats.failing(&e);
                }
            }
            let delay = backoff.next().unwrap_or(self.backoff_max);
            tokio::select! {
                () = token.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Applies one message, retrying with backoff until it commits: nothing
    /// after it is applied before it. `None` when cancelled first.
    async fn apply(
        &mut self,
        sink: &mut Sink,
        changes: &[Delivered],
        reset: bool,
        token: &CancellationToken,
    ) -> Option<u64> {
        let mut backoff = backoff(self.backoff_max);
        loop {
            match sink.apply(changes, reset).await {
                Ok(p) => {
                    self.stats.ok();
                    let _ = self.position.send(Some(p));
                    return Some(p);
                }
                Err(e) => {
                    let first = changes.iter().find(|c| c.seq > sink.position()).map_or(0, |c| c.seq);
                    error!(error = %e, at_seq = first, "cannot apply; the subscription waits at this change and retries");
                    self.stats.failing(&e.to_string());
                }
            }
            let delay = backoff.next().unwrap_or(self.backoff_max);
            tokio::select! {
                () = token.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn committed(&self, session: u64, upto: u64, received: u64) {
        let _ = self.position.send(Some(upto));
        let _ = self.acks.send(Ack {
            session,
            resource: self.spec.resource.clone(),
            upto,
            received: received.max(upto),
        });
    }
}

/// The session loop: one Subscribe stream at a time.
struct Sessions {
    hub: HubConfig,
    agency: String,
    catalog_digest: String,
    subscriptions: Vec<SubscriptionConfig>,
    workers: BTreeMap<String, mpsc::Sender<Work>>,
    positions: BTreeMap<String, watch::Receiver<Option<u64>>>,
    /// Where a stream that fails or is refused is shown, per subscription.
    stats: Vec<SubscriptionStats>,
}

/// Why a session ended.
enum End {
    /// The hub granted a resource after revoking or refusing it: subscribe
    /// again at once, from the sinks' positions.
    Resubscribe,
    Failed(String, bool),
    Cancelled,
}

impl Sessions {
    async fn run(mut self, mut acks: mpsc::UnboundedReceiver<Ack>, token: CancellationToken) {
        let mut backoff = backoff(self.hub.backoff_max);
        let mut session = 0u64;
        loop {
            session += 1;
            let started = Instant::now();
            let end = self.session(session, &mut acks, &token).await;
            let delay = match end {
                End::Cancelled => break,
                End::Resubscribe => Duration::ZERO,
                End::Failed(e, retryable) => {
                    for stats in &self.stats {
                        stats.unreachable(&e, !retryable);
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = self::backoff(self.hub.backoff_max);
                    }
                    if retryable {
                        warn!(error = %e, "receiver stream down; will retry");
                        backoff.next().unwrap_or(self.hub.backoff_max)
                    } else {
                        error!(error = %e, "receiver stream refused; retrying slowly until fixed");
                        self.hub.backoff_max
                    }
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!("receiver stopped");
    }

    /// Waits until every sink is open (a sink that cannot open is left
    /// out of this session), then runs one stream.
    async fn session(&mut self, n: u64, acks: &mut mpsc::UnboundedReceiver<Ack>, token: &CancellationToken) -> End {
        let mut subscriptions = Vec::new();
        for sub in &self.subscriptions {
            let Some(position) = *self.positions[&sub.resource].borrow() else {
                continue;
            };
            subscriptions.push(Subscription {
                resource: sub.resource.clone(),
                applied_seq: position,
                items: sub.items.clone(),
            });
        }
        if subscriptions.is_empty() {
            // No sink open yet: wait for one.
            let waits = self.positions.values_mut().map(|p| Box::pin(p.changed()));
            tokio::select! {
                () = token.cancelled() => return End::Cancelled,
                _ = futures_select_all(waits) => return End::Resubscribe,
            }
        }
        let channel = tokio::select! {
            c = crate::link::connect(&self.hub) => match c {
                Ok(c) => c,
                Err(e) => return End::Failed(e.to_string(), e.is_retryable()),
            },
            () = token.cancelled() => return End::Cancelled,
        };
        let mut client = ExchangeClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        client = client.send_compressed(CompressionEncoding::Zstd);
        let (out, out_rx) = mpsc::channel(64);
        let subscribed: Vec<String> = subscriptions.iter().map(|s| s.resource.clone()).collect();
        let _ = out
            .send(SubscriberMessage {
                body: Some(subscriber_message::Body::Subscribe(Subscribe {
                    agency_id: self.agency.clone(),
                    software_version: env!("CARGO_PKG_VERSION").to_owned(),
                    catalog_digest: self.catalog_digest.clone(),
                    subscriptions,
                    probe: false,
                })),
            })
            .await;
        let mut inbound = match client.subscribe(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return failed_status(&s),
        };
        // Acks of earlier sessions are no longer the hub's business.
        while acks.try_recv().is_ok() {}
        let mut granted: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            let message = tokio::select! {
                () = token.cancelled() => return End::Cancelled,
                Some(a) = acks.recv() => {
                    if a.session == n && subscribed.contains(&a.resource) {
                        let m = SubscriberMessage {
                            body: Some(subscriber_message::Body::Applied(Applied {
                                resource: a.resource,
                                upto_seq: a.upto,
                                received_seq: a.received,
                            })),
                        };
                        if out.send(m).await.is_err() {
                            return End::Failed("the stream to the hub closed".into(), true);
                        }
                    }
                    continue;
                }
                m = inbound.message() => m,
            };
            let body = match message {
                Ok(Some(d)) => d.body,
                Ok(None) => return End::Failed("the hub ended the stream".into(), true),
                Err(s) => return failed_status(&s),
            };
            let Some(body) = body else { continue };
            match body {
                delivery::Body::Grants(g) => {
                    for g in g.grants {
                        let Some(w) = self.workers.get(&g.resource) else {
                            continue;
                        };
                        let before = granted.insert(g.resource.clone(), g.granted);
                        if g.granted && before.is_some() {
                            info!(resource = %g.resource, "granted again: subscribing afresh");
                            return End::Resubscribe;
                        }
                        let work = if g.granted {
                            Work::Granted {
                                session: n,
                                provider: g.provider,
                                agreement: g.agreement_id,
                                items: g.items.len(),
                            }
                        } else {
                            Work::Refused { reason: g.reason }
                        };
                        if w.send(work).await.is_err() {
                            return End::Cancelled;
                        }
                    }
                }
                delivery::Body::Reset(r) => {
                    if let Some(w) = self.workers.get(&r.resource)
                        && w.send(Work::Reset {
                            session: n,
                            reason: r.reason,
                        })
                        .await
                        .is_err()
                    {
                        return End::Cancelled;
                    }
                }
                delivery::Body::Changes(c) => {
                    let resource = c.resource.clone();
                    let Some(w) = self.workers.get(&resource) else {
                        return End::Failed(
                            format!("the hub sent changes of {resource}, which is not subscribed"),
                            true,
                        );
                    };
                    if c.changes.iter().any(|x| x.resource != resource) {
                        return End::Failed("the hub mixed resources in one message".into(), true);
                    }
                    let changes = c
                        .changes
                        .into_iter()
                        .map(|x| Delivered {
                            seq: x.seq,
                            key: x.key,
                            op: if x.op == proto::v1::Operation::Delete as i32 {
                                Op::Delete
                            } else {
                                Op::Upsert
                            },
                            items: x.items,
                            provider: x.provider,
                            agreement: x.agreement_id,
                            captured_at_us: x.captured_at_us,
                        })
                        .collect();
                    let work = Work::Changes {
                        session: n,
                        changes,
                        behind: c.behind,
                    };
                    if w.send(work).await.is_err() {
                        return End::Cancelled;
                    }
                }
                delivery::Body::Revoked(r) => {
                    granted.insert(r.resource.clone(), false);
                    if let Some(w) = self.workers.get(&r.resource)
                        && w.send(Work::Revoked {
                            agreement: r.agreement_id,
                            reason: r.reason,
                        })
                        .await
                        .is_err()
                    {
                        return End::Cancelled;
                    }
                }
            }
        }
    }
}

fn failed_status(s: &tonic::Status) -> End {
    let retryable = !matches!(
        s.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
    );
    End::Failed(format!("hub refused: {}: {}", s.code(), s.message()), retryable)
}

/// The first of several futures to complete.
async fn futures_select_all<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut list: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in &mut list {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// What `qianzhi check` proves of each subscription: its sink opens and
/// matches (nothing is created or changed), and, if the hub answers, whether
/// it grants the subscription and which items (a probe: the hub answers its
/// grants and delivers nothing).
pub async fn check(config: &Config) -> Vec<crate::check::Finding> {
    let mut out = Vec::new();
    for sub in &config.subscriptions {
        let mut spec = spec(&config.catalog, &config.data_dir, sub);
        let what = match &sub.sink {
            SinkConfig::Table { kind, table, .. } => {
                format!("subscription {}: {} table {table}", sub.resource, kind.name())
            }
            SinkConfig::Folder { path, .. } => format!("subscription {}: folder {}", sub.resource, path.display()),
        };
        let password = match &sub.sink {
            SinkConfig::Table {
                password_file: Some(p), ..
            } => read_password(p).map(Some),
            _ => Ok(None),
        };
        let outcome = match password {
            Err(e) => Err(e),
            Ok(pw) => {
                if let sink::Target::Table(t) = &mut spec.target {
                    t.password = pw;
                }
                Sink::check(spec).await.map_err(|e| e.to_string())
            }
        };
        out.push(crate::check::Finding {
            what,
            outcome,
            warnings: Vec::new(),
        });
    }
    if !config.subscriptions.is_empty() {
        match probe(config).await {
            Ok(grants) => out.extend(grants.into_iter().map(|g| crate::check::Finding {
                what: if g.granted {
                    format!(
                        "hub grants {} to {}{}: items {}",
                        g.resource,
                        config.agency,
                        if g.agreement_id.is_empty() {
                            String::new()
                        } else {
                            format!(" under agreement {}", g.agreement_id)
                        },
                        g.items.join(",")
                    )
                } else {
                    format!("hub grants {} to {}", g.resource, config.agency)
                },
                outcome: if g.granted {
                    Ok(())
                } else {
                    Err(format!("refused: {}", g.reason))
                },
                warnings: Vec::new(),
            })),
            Err(e) => out.push(crate::check::Finding {
                what: format!("hub {}: grants for {}", config.hub.url, config.agency),
                outcome: Err(e),
                warnings: Vec::new(),
            }),
        }
    }
    out
}

/// Asks the hub what it grants this agency's subscriptions.
async fn probe(config: &Config) -> Result<Vec<proto::v1::Grant>, String> {
    let channel = tokio::time::timeout(Duration::from_secs(15), crate::link::connect(&config.hub))
        .await
        .map_err(|_| "no answer within 15s".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut client = ExchangeClient::new(channel);
    let subscribe = SubscriberMessage {
        body: Some(subscriber_message::Body::Subscribe(Subscribe {
            agency_id: config.agency.clone(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            catalog_digest: config.catalog.digest().to_owned(),
            subscriptions: config
                .subscriptions
                .iter()
                .map(|s| Subscription {
                    resource: s.resource.clone(),
                    applied_seq: 0,
                    items: s.items.clone(),
                })
                .collect(),
            probe: true,
        })),
    };
    let mut inbound = client
        .subscribe(tokio_stream::iter([subscribe]))
        .await
        .map_err(|s| format!("hub refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
        Ok(Ok(Some(proto::v1::Delivery {
            body: Some(delivery::Body::Grants(g)),
        }))) => Ok(g.grants),
        Ok(Ok(_)) => Err("the hub answered without grants".into()),
        Ok(Err(s)) => Err(format!("hub refused: {}: {}", s.code(), s.message())),
        Err(_) => Err("no grants within 15s".into()),
    }
}
