//! The receiving direction under stress and at its edges: every process
//! killed at random moments, a receiver catching up on 100,000 changes,
//! what the hub puts on the wire for a grant, bad configs and tables, and a
//! revocation while changes keep flowing.
//!
//! What the hub holds is read through `qianzhi-hub export` (items) and, for
//! the hub sequence of each key's current change (`current.hseq`, which the
//! export does not show), through a read-only connection to its store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use proto::v1::exchange_client::ExchangeClient;
use proto::v1::{Applied, Delivery, Subscribe, SubscriberMessage, Subscription, delivery, subscriber_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::receiving::{
    JYJ, MZJ, RSJ, SHARED, WJW, agent_toml_as as agent_toml, agree, hub_cli, provider_and_receiver, table_sink,
};
use crate::db::Db;
use crate::{
    Agent, CATALOG, GAJ, Hub, PEOPLE, PEOPLE_COLUMNS, Rng, World, bin, eventually, free_port, person, spawn,
    wait_listening,
};

/// How long a receiver may take to reach the hub's state.
const CONVERGE: Duration = Duration::from_secs(60);

/// The people CSV with an operation column: each row (person, name, op).
fn people_ops(rows: &[(u64, String, &str)]) -> String {
    let mut s = PEOPLE_COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(",");
    s.push_str(",操作\n");
    for (i, name, op) in rows {
        let mut p = person(*i);
        p[1].clone_from(name);
        s.push_str(&p.join(","));
        s.push_str(&format!(",{op}\n"));
    }
    s
}

/// A read-only connection to the hub's store.
fn hub_db(world: &World) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(world.store_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the hub's store");
    c.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    c
}

/// The hub's current people: key → (姓名, hub sequence of the change that
/// made the row). Items from `qianzhi-hub export --config`; the sequences
/// from the store.
fn hub_state(world: &World) -> BTreeMap<String, (String, u64)> {
    let export = hub_cli(world, &["export", "--resource", PEOPLE]);
    let names: BTreeMap<String, String> = export
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let key = v["key"][0].as_str().expect("key").to_owned();
            let name = v["items"][SHARED].as_str().expect("name").to_owned();
            (key, name)
        })
        .collect();
    let db = hub_db(world);
    let mut stmt = db
        .prepare("SELECT key, hseq FROM current WHERE resource = ?1")
        .expect("prepare");
    let hseqs: BTreeMap<String, u64> = stmt
        .query_map([PEOPLE], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .expect("query")
        .into_iter()
        .map(|(k, h)| {
            let key: Vec<String> = serde_json::from_str(&k).expect("key json");
            (key[0].clone(), h)
        })
        .collect();
    assert_eq!(
        names.keys().collect::<Vec<_>>(),
        hseqs.keys().collect::<Vec<_>>(),
        "export and store disagree"
    );
    names.into_iter().map(|(k, n)| (k.clone(), (n, hseqs[&k]))).collect()
}

/// The hub's highest sequence of people, and how many changes of people
/// its feed holds.
fn hub_feed(world: &World) -> (u64, u64) {
    hub_db(world)
        .query_row(
            "SELECT coalesce(max(hseq), 0), count(*) FROM feed WHERE resource = ?1",
            [PEOPLE],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .expect("feed")
}

/// What a table sink must hold for `state`: "key|name|NULL|hseq" (the
/// address is outside the agreement, so NULL).
fn expected_rows(state: &BTreeMap<String, (String, u64)>) -> Vec<String> {
    state.iter().map(|(k, (n, h))| format!("{k}|{n}|NULL|{h}")).collect()
}

async fn table_rows(db: &Db) -> Vec<String> {
    db.connect()
        .await
        .strings(
            "SELECT concat(sfzh, '|', coalesce(xm, ''), '|', coalesce(zz, 'NULL'), '|', coalesce(qianzhi_seq, -1)) \
             FROM people_in ORDER BY sfzh",
        )
        .await
}

/// The position a table sink committed in `qianzhi_applied`.
async fn applied_position(db: &Db) -> Vec<String> {
    db.connect()
        .await
        .strings("SELECT concat('', seq) FROM qianzhi_applied")
        .await
}

/// Waits until a table sink holds `want`. The sink is another process's
/// database: there is no event to wait on, so it is read every 100 ms.
async fn until_rows(db: &Db, want: &[String]) {
    let mut last = Vec::new();
    for _ in 0..(CONVERGE.as_millis() / 100) {
        last = table_rows(db).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let extra: Vec<&String> = last.iter().filter(|r| !want.contains(r)).take(5).collect();
    let missing: Vec<&String> = want.iter().filter(|r| !last.contains(r)).take(5).collect();
    panic!(
        "{:?} sink: {} rows, want {}; extra {extra:?}, missing {missing:?}",
        db.kind,
        last.len(),
        want.len()
    );
}

fn folder_sink() -> String {
    format!(
        "[[subscription]]\nresource = \"{PEOPLE}\"\ntype = \"folder\"\npath = \"inbox\"\nformat = \"csv\"\n\
         encoding = \"gb18030\"\nroll_records = 100\nroll_after = \"200ms\"\n"
    )
}

/// One row of a folder sink's files.
#[derive(Debug)]
struct FolderChange {
    op: String,
    key: String,
    name: String,
    seq: Option<u64>,
}

/// Every change in a folder sink's files, in file-name order.
fn folder_changes(dir: &Path) -> Vec<FolderChange> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "csv"));
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let bytes = std::fs::read(&p).expect("read sink file");
        let (text, _, bad) = encoding_rs::GB18030.decode(&bytes);
        assert!(!bad, "{} is not GB18030", p.display());
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().expect("header").iter().map(str::to_owned).collect();
        let col = |n: &str| header.iter().position(|h| h == n).expect("column");
        // Items outside the agreement may have a column (the subscription
        // asks for every item), but never a value.
        let outside: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h.starts_with("DE") && *h != "DE00001" && *h != SHARED)
            .map(|(i, _)| i)
            .collect();
        for rec in r.records() {
            let rec = rec.expect("csv row");
            for &i in &outside {
                assert_eq!(&rec[i], "", "{} has a value in {}: {rec:?}", header[i], p.display());
            }
            out.push(FolderChange {
                op: rec[col("_op")].to_owned(),
                key: rec[col("DE00001")].to_owned(),
                name: rec[col("DE00002")].to_owned(),
                seq: rec[col("_seq")].parse().ok(),
            });
        }
    }
    out
}

/// What a folder sink's changes leave: key → (name, seq of the change).
fn replay(changes: &[FolderChange]) -> BTreeMap<String, (String, u64)> {
    let mut state = BTreeMap::new();
    for c in changes {
        match c.op.as_str() {
            "reset" => state.clear(),
            "delete" => {
                state.remove(&c.key);
            }
            _ => {
                state.insert(c.key.clone(), (c.name.clone(), c.seq.unwrap_or(0)));
            }
        }
    }
    state
}

/// The hub's report (`qianzhi-hub report --json`): what `agency` received.
fn received(world: &World, agency: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&hub_cli(world, &["report", "--json"])).expect("report json");
    report
        .as_array()
        .expect("report list")
        .iter()
        .filter(|a| a["agency"] == agency)
        .flat_map(|a| a["received"].as_array().cloned().unwrap_or_default())
        .find(|r| r["resource"] == PEOPLE)
        .unwrap_or_else(|| panic!("{agency} receives nothing in {report:#}"))
}

/// The `/status` of an agent running as a process.
fn status_of(health: u16) -> Result<agent::health::Status, String> {
    let body = agent::cli::status::fetch(&format!("127.0.0.1:{health}"), "/status").map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// A real `qianzhi` or `qianzhi-hub` process that can be killed and
/// started again with the same arguments.
struct Proc {
    name: String,
    bin: &'static str,
    args: Vec<String>,
    log: PathBuf,
    /// The hub's port, waited on after each start.
    listen: Option<u16>,
    child: Child,
}

impl Proc {
    async fn start(name: &str, bin: &'static str, args: &[&str], log: PathBuf, listen: Option<u16>) -> Proc {
        let child = spawn(bin, args, &log);
        if let Some(port) = listen {
            wait_listening(port).await;
        }
        Proc {
            name: name.to_owned(),
            bin,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log,
            listen,
            child,
        }
    }

    async fn agent(world: &World, name: &str, config: &Path) -> Proc {
        let config = config.to_str().expect("utf-8 path");
        Proc::start(
            name,
            "qianzhi",
            &["--config", config, "run"],
            world.path(&format!("{name}.log")),
            None,
        )
        .await
    }

    /// SIGKILL, then the same command again.
    async fn kill_and_restart(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn(self.bin, &args, &self.log);
        if let Some(port) = self.listen {
            wait_listening(port).await;
        }
    }

    /// SIGTERM: the graceful stop systemd makes.
    fn terminate(mut self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{} stopped with {status}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until an agent process's subscription is in `state`.
async fn until_state(health: u16, state: &str) -> agent::health::SubscriptionStatus {
    eventually(&format!("subscription {state}"), CONVERGE, || {
        let s = status_of(health)?;
        let sub = s.subscriptions.first().cloned().ok_or("no subscription")?;
        (sub.state == state).then_some(sub.clone()).ok_or(format!("{sub:?}"))
    })
    .await
}

/// Waits until an agent process has delivered every file of `drop/people`.
async fn until_provided(world: &World, health: u16) {
    eventually("the provider's files at the hub", CONVERGE, || {
        let s = status_of(health)?;
        (world.waiting("drop/people") == 0 && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{} files waiting, {:?}", world.waiting("drop/people"), s.queue))
    })
    .await;
}

/// File `f` of the crash test: 300 new people, and for f > 0 updates of
/// every second and deletes of every fifth person of the file before.
fn crash_file(f: u64) -> String {
    let mut rows: Vec<(u64, String, &str)> = (f * 300..(f + 1) * 300).map(|i| (i, format!("测试{i}"), "I")).collect();
    if f > 0 {
        let before = (f - 1) * 300..f * 300;
        rows.extend(before.clone().step_by(2).map(|i| (i, format!("改名{i}之{f}"), "U")));
        rows.extend(before.skip(1).step_by(5).map(|i| (i, format!("测试{i}"), "D")));
    }
    people_ops(&rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_provider_and_receivers_killed_at_random_moments_leave_every_sink_equal_to_the_hub_once() {
    let world = World::new();
    for a in [MZJ, RSJ, WJW, JYJ] {
        world.issue(a, pki::dev::Validity::default(), a);
    }
    let port = free_port();
    let hub_toml = world.hub_toml(port);
    let mut procs = vec![
        Proc::start(
            "hub",
            "qianzhi-hub",
            &["serve", "--config", hub_toml.to_str().unwrap()],
            world.path("hub.log"),
            Some(port),
        )
        .await,
    ];
    for (id, a) in [("XY-1", MZJ), ("XY-2", RSJ), ("XY-3", WJW), ("XY-4", JYJ)] {
        agree(&world, id, a);
    }
    let provider_health = free_port();
    let provider = agent_toml(
        &world,
        "provider",
        GAJ,
        GAJ,
        port,
        provider_health,
        // Kills this frequent can stop a file several times before its
        // first commit: not the crash loop that max_attempts guards.
        &crate::people_source("people", "drop/people", "op_column = \"操作\"\nmax_attempts = 1000\n"),
    );
    procs.push(Proc::agent(&world, "provider", &provider).await);

    let sqlite = Db::sqlite(&world.path(""));
    let pg = Db::postgres().await;
    let my = Db::mysql().await;
    let mut tables: Vec<&Db> = vec![&sqlite];
    let mut healths = Vec::new();
    let mut receive = |name: &str, agency: &str, body: String| {
        let health = free_port();
        healths.push(health);
        (
            name.to_owned(),
            agent_toml(&world, name, agency, agency, port, health, &body),
        )
    };
    let mut configs = vec![receive(
        "b",
        MZJ,
        table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    )];
    if let Some(pg) = &pg {
        configs.push(receive(
            "c",
            RSJ,
            table_sink("postgres", &format!("url = \"{}\"", pg.url), ""),
        ));
        tables.push(pg);
    }
    if let Some(my) = &my {
        configs.push(receive(
            "d",
            WJW,
            table_sink("mysql", &format!("url = \"{}\"", my.url), ""),
        ));
        tables.push(my);
    }
    let folder = world.path("inbox");
    std::fs::create_dir_all(&folder).unwrap();
    configs.push(receive("e", JYJ, folder_sink()));
    for (name, config) in &configs {
        procs.push(Proc::agent(&world, name, config).await);
    }
    // Every receiver subscribes before the first change: none starts with
    // a snapshot, so the folder's sequences only grow.
    for &h in &healths {
        until_state(h, "receiving").await;
    }

    // Files flow while each process is killed three times at random moments.
    const FILES: u64 = 12;
    let mut rng = Rng::seeded();
    let mut next_file = 0;
    for round in 0..3 {
        let mut victims: Vec<usize> = (0..procs.len()).collect();
        for i in (1..victims.len()).rev() {
            victims.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for v in victims {
            if next_file < FILES {
                world.drop_file(
                    "drop/people",
                    &format!("{next_file:02}.csv"),
                    crash_file(next_file).as_bytes(),
                );
                next_file += 1;
            }
            tokio::time::sleep(Duration::from_millis(30 + rng.below(400))).await;
            eprintln!("round {round}: killing {}", procs[v].name);
            procs[v].kill_and_restart().await;
        }
    }
    for f in next_file..FILES {
        world.drop_file("drop/people", &format!("{f:02}.csv"), crash_file(f).as_bytes());
    }
    until_provided(&world, provider_health).await;

    let state = hub_state(&world);
    let (latest, changes_in_feed) = hub_feed(&world);
    // Files may be taken in any order, so deletes may come before their
    // inserts: the hub's state is the reference, not a count.
    assert!(state.len() >= 300, "{} people at the hub", state.len());
    let want = expected_rows(&state);
    for db in &tables {
        until_rows(db, &want).await;
        assert_eq!(applied_position(db).await, [latest.to_string()], "{:?}", db.kind);
    }

    // The folder: replayed in name order it is the hub's state, every
    // change once, sequences increasing across files.
    let changes = eventually("the folder sink equal to the hub", CONVERGE, || {
        let changes = folder_changes(&folder);
        let got = replay(&changes);
        (got == state)
            .then_some(changes)
            .ok_or_else(|| format!("{} keys, the hub has {}", got.len(), state.len()))
    })
    .await;
    // A receiver killed (or cut off by the hub's death) before its first
    // file was renamed in subscribes again from 0 and gets the current
    // state after a reset: only ever as the folder's very first row.
    let resets: Vec<usize> = (0..changes.len()).filter(|&i| changes[i].op == "reset").collect();
    assert!(resets.is_empty() || resets == [0], "resets at rows {resets:?}");
    let seqs: Vec<u64> = changes.iter().filter_map(|c| c.seq).collect();
    assert_eq!(seqs.len(), changes.len() - resets.len(), "a change without _seq");
    for w in seqs.windows(2) {
        assert!(
            w[0] < w[1],
            "sequence {} after {} in the folder: a change twice",
            w[1],
            w[0]
        );
    }
    assert_eq!(seqs.last(), Some(&latest));

    // The hub's report: every receiver 0 behind, at the latest sequence.
    for a in std::iter::once(MZJ)
        .chain(pg.as_ref().map(|_| RSJ))
        .chain(my.as_ref().map(|_| WJW))
        .chain([JYJ])
    {
        let r = eventually(&format!("{a} recorded at the hub"), CONVERGE, || {
            let r = received(&world, a);
            (r["behind"] == 0).then_some(r.clone()).ok_or(r.to_string())
        })
        .await;
        assert_eq!(r["applied_seq"], latest, "{r}");
        // Never counted twice. (Not equal: deliveries acknowledged in the
        // second before a hub is killed are not recorded, see the report.)
        assert!(r["records"].as_u64().unwrap() <= changes_in_feed, "{r}");
    }
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_away_for_100000_changes_catches_up_applying_each_once() {
    let (world, port, hub, provider) = provider_and_receiver(MZJ, "XY-1").await;
    let sqlite = Db::sqlite(&world.path(""));
    let health = free_port();
    let config = agent_toml(
        &world,
        "b",
        MZJ,
        MZJ,
        port,
        health,
        &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    );
    let receiver = Proc::agent(&world, "b", &config).await;
    // Subscribed before the first change: the receiver follows the feed
    // from 0, no snapshot, so every change of the feed is delivered to it.
    until_state(health, "receiving").await;
    let first: Vec<(u64, String, &str)> = (0..1000).map(|i| (i, format!("测试{i}"), "I")).collect();
    world.drop_file("drop/people", "00.csv", people_ops(&first).as_bytes());
    eventually("the first thousand applied", CONVERGE, || {
        let sub = status_of(health)?.subscriptions[0].clone();
        (sub.applied_seq == 1000).then_some(()).ok_or(format!("{sub:?}"))
    })
    .await;
    receiver.terminate();

    // 100,000 changes while it is away: inserts, two rounds of updates,
    // deletes.
    const N: u64 = 25_000;
    let inserts: Vec<(u64, String, &str)> = (1000..1000 + N).map(|i| (i, format!("测试{i}"), "I")).collect();
    let updates: Vec<(u64, String, &str)> = (0..N).map(|i| (i, format!("甲{i}"), "U")).collect();
    let again: Vec<(u64, String, &str)> = (0..N).map(|i| (i, format!("乙{i}"), "U")).collect();
    let mixed: Vec<(u64, String, &str)> = (1000..1000 + N)
        .map(|i| {
            if i % 5 == 0 {
                (i, format!("测试{i}"), "D")
            } else {
                (i, format!("丙{i}"), "U")
            }
        })
        .collect();
    for (name, rows) in [
        ("01.csv", inserts),
        ("02.csv", updates),
        ("03.csv", again),
        ("04.csv", mixed),
    ] {
        world.drop_file("drop/people", name, people_ops(&rows).as_bytes());
    }
    eventually("the 100,000 changes at the hub", Duration::from_secs(120), || {
        let (_, n) = hub_feed(&world);
        (n == 1000 + 4 * N).then_some(()).ok_or(format!("{n} changes"))
    })
    .await;
    let state = hub_state(&world);
    let (latest, changes) = hub_feed(&world);

    let receiver = Proc::agent(&world, "b", &config).await;
    until_rows(&sqlite, &expected_rows(&state)).await;
    assert_eq!(applied_position(&sqlite).await, [latest.to_string()]);
    let sub = status_of(health).unwrap().subscriptions[0].clone();
    // Since its restart it applied exactly the changes it missed...
    assert_eq!(sub.applied, 4 * N, "{sub:?}");
    assert_eq!(sub.applied_seq, latest);
    // ...and over both runs the hub recorded each change of the feed as
    // applied once: no range acknowledged twice, none left out.
    let r = eventually("the deliveries recorded", CONVERGE, || {
        let r = received(&world, MZJ);
        (r["behind"] == 0).then_some(r.clone()).ok_or(r.to_string())
    })
    .await;
    assert_eq!(r["records"], changes, "{r}");
    assert_eq!(r["applied_seq"], latest, "{r}");
    receiver.terminate();
    provider.stop().await;
    hub.stop().await;
}

/// A mutual-TLS channel to the hub with `cert`'s certificate.
async fn channel(world: &World, port: u16, cert: &str) -> Channel {
    let read = |rel: &str| std::fs::read_to_string(world.path(rel)).expect("pem file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("pki/ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("pki/{cert}.pem")),
            read(&format!("pki/{cert}.key")),
        ))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("connect to the hub")
}

/// Opens Subscribe as `agency` over a channel with `cert`; returns the
/// sender for Applied and the deliveries.
async fn subscribe(
    world: &World,
    port: u16,
    cert: &str,
    agency: &str,
    resources: &[&str],
) -> Result<(mpsc::Sender<SubscriberMessage>, tonic::Streaming<Delivery>), tonic::Status> {
    let mut client = ExchangeClient::new(channel(world, port, cert).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(SubscriberMessage {
        body: Some(subscriber_message::Body::Subscribe(Subscribe {
            agency_id: agency.to_owned(),
            software_version: "test".into(),
            catalog_digest: String::new(),
            subscriptions: resources
                .iter()
                .map(|r| Subscription {
                    resource: (*r).to_owned(),
                    applied_seq: 0,
                    items: Vec::new(),
                })
                .collect(),
            probe: false,
        })),
    })
    .await
    .expect("queue Subscribe");
    let inbound = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// The example catalog and a 不予共享 resource of 320282-gaj.
fn catalog_with_unshared() -> String {
    format!(
        "{CATALOG}\n[[resource]]\ncode = \"1010100/0099\"\nname = \"内部核查记录\"\nprovider = \"{GAJ}\"\n\
         sharing = \"不予共享\"\ncycle = \"每日\"\n\n[[resource.item]]\nid = \"DE00001\"\nname = \"公民身份号码\"\n\
         element = \"GMSFHM\"\nmax_len = 18\nkey = true\nrequired = true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_sends_only_granted_items_and_refuses_what_may_not_be_received() {
    let world = World::new();
    for a in [MZJ, RSJ] {
        world.issue(a, pki::dev::Validity::default(), a);
    }
    let catalog = catalog_with_unshared();
    world.write("catalog.toml", &catalog);
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start_with_catalog(&world, port, &catalog).await;
    agree(&world, "XY-1", MZJ);
    let provider = Agent::start(&agent_toml(
        &world,
        "provider",
        GAJ,
        GAJ,
        port,
        0,
        &crate::people_source("people", "drop/people", ""),
    ))
    .await;
    const PEOPLE_N: u64 = 3000;
    world.drop_file("drop/people", "a.csv", crate::people_csv(0..PEOPLE_N).as_bytes());
    eventually("the people at the hub", CONVERGE, || {
        let (_, n) = hub_feed(&world);
        (n == PEOPLE_N).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    // The hub holds every item: what it sends is cut to the grant.
    let held = crate::export(&world.store_path(), false);
    assert!(held.iter().all(|l| l["items"]["DE00006"].is_string()));

    let (acks, mut inbound) = subscribe(&world, port, MZJ, MZJ, &[PEOPLE, "1010100/0099"])
        .await
        .expect("subscribe");
    let Some(delivery::Body::Grants(grants)) = inbound.message().await.unwrap().unwrap().body else {
        panic!("Grants first");
    };
    let [people, unshared] = grants.grants.as_slice() else {
        panic!("{grants:?}");
    };
    assert!(people.granted, "{people:?}");
    assert_eq!(people.items, ["DE00001", SHARED]);
    assert_eq!(people.agreement_id, "XY-1");
    assert_eq!(people.provider, GAJ);
    assert!(!unshared.granted, "{unshared:?}");
    assert!(unshared.items.is_empty());
    assert!(unshared.reason.contains("不予共享"), "{}", unshared.reason);

    // A first subscription: a reset, then the snapshot, acknowledged as it
    // comes (the hub keeps a window of unacknowledged changes).
    let mut keys = BTreeSet::new();
    let mut reset = false;
    while keys.len() < PEOPLE_N as usize {
        let m = tokio::time::timeout(CONVERGE, inbound.message())
            .await
            .expect("the snapshot flows")
            .expect("a delivery")
            .expect("the stream stays open");
        match m.body.expect("a body") {
            delivery::Body::Reset(r) => {
                assert_eq!(r.resource, PEOPLE);
                reset = true;
            }
            delivery::Body::Changes(c) => {
                assert_eq!(c.resource, PEOPLE, "only granted resources are delivered");
                for x in &c.changes {
                    let items: Vec<&str> = x.items.keys().map(String::as_str).collect();
                    assert_eq!(items, ["DE00001", SHARED], "change {} carries {items:?}", x.seq);
                    assert_eq!(x.agreement_id, "XY-1");
                    assert!(keys.insert(x.key.clone()), "key {:?} twice", x.key);
                }
                acks.send(SubscriberMessage {
                    body: Some(subscriber_message::Body::Applied(Applied {
                        resource: PEOPLE.into(),
                        upto_seq: c.upto_seq,
                        received_seq: c.upto_seq,
                    })),
                })
                .await
                .expect("ack");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reset, "a first subscription starts with a reset");
    drop(acks);

    // 有条件共享 without an agreement: refused with the reason.
    let (_tx, mut inbound) = subscribe(&world, port, RSJ, RSJ, &[PEOPLE]).await.expect("subscribe");
    let Some(delivery::Body::Grants(grants)) = inbound.message().await.unwrap().unwrap().body else {
        panic!("Grants first");
    };
    assert!(!grants.grants[0].granted);
    assert!(grants.grants[0].items.is_empty());
    let reason = &grants.grants[0].reason;
    assert!(
        reason.contains("有条件共享") && reason.contains("article 21") && reason.contains(RSJ),
        "{reason}"
    );

    // Another agency's name than the certificate's.
    let Err(e) = subscribe(&world, port, MZJ, RSJ, &[PEOPLE]).await else {
        panic!("Subscribe as another agency is accepted");
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(MZJ) && e.message().contains(RSJ), "{e:?}");

    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_an_unknown_resource_fails_the_check_at_its_line() {
    let world = World::new();
    world.issue(MZJ, pki::dev::Validity::default(), MZJ);
    let body = "[[subscription]]\nresource = \"9999999/0001\"\ntype = \"folder\"\npath = \"inbox\"\n";
    let config = agent_toml(&world, "b", MZJ, MZJ, free_port(), 0, body);
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l.starts_with("resource =")).unwrap() + 1;
    let out = std::process::Command::new(bin("qianzhi"))
        .args(["--config", config.to_str().unwrap(), "check"])
        .output()
        .expect("run qianzhi check");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(78), "{said}");
    let at = format!("{}:{line}: key `subscription.resource`", config.display());
    assert!(said.contains(&at), "want {at:?} in {said}");
    assert!(said.contains("9999999/0001"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_column_of_the_wrong_type_fails_the_subscription_and_applies_nothing() {
    let world = World::new();
    world.issue(MZJ, pki::dev::Validity::default(), MZJ);
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    agree(&world, "XY-1", MZJ);
    let provider = Agent::start(&agent_toml(
        &world,
        "provider",
        GAJ,
        GAJ,
        port,
        0,
        &crate::people_source("people", "drop/people", ""),
    ))
    .await;
    world.drop_file("drop/people", "a.csv", crate::people_csv(0..50).as_bytes());
    eventually("the people at the hub", CONVERGE, || {
        let (_, n) = hub_feed(&world);
        (n == 50).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // 姓名 (xm) is INTEGER in the agency's existing table.
    let sqlite = Db::sqlite(&world.path(""));
    sqlite
        .connect()
        .await
        .exec(
            "CREATE TABLE people_in (sfzh TEXT PRIMARY KEY, xm INTEGER, qianzhi_provider TEXT, \
             qianzhi_agreement TEXT, qianzhi_seq BIGINT, qianzhi_captured_at BIGINT)",
        )
        .await
        .unwrap();
    let body = format!(
        "[[subscription]]\nresource = \"{PEOPLE}\"\nitems = [\"{SHARED}\"]\ntype = \"sqlite\"\npath = \"{}\"\n\
         table = \"people_in\"\ncreate = false\n[subscription.columns]\nDE00001 = \"sfzh\"\nDE00002 = \"xm\"\n",
        sqlite.url
    );
    let receiver = Agent::start(&agent_toml(&world, "b", MZJ, MZJ, port, 0, &body)).await;
    let sub = eventually("the subscription failing", CONVERGE, || {
        let sub = receiver.status().subscriptions[0].clone();
        (sub.state == "failing")
            .then_some(sub.clone())
            .ok_or(format!("{sub:?}"))
    })
    .await;
    let error = sub.error.unwrap_or_default();
    assert!(error.contains("xm") && error.contains("people_in"), "{error}");
    let rows = sqlite
        .connect()
        .await
        .strings("SELECT CAST(count(*) AS TEXT) FROM people_in")
        .await;
    assert_eq!(rows, ["0"]);
    assert_eq!(sub.applied_seq, 0);
    receiver.stop().await;
    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_another_agencys_certificate_shows_why_it_is_refused() {
    let world = World::new();
    for a in [MZJ, RSJ] {
        world.issue(a, pki::dev::Validity::default(), a);
    }
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    agree(&world, "XY-1", RSJ);
    let sqlite = Db::sqlite(&world.path(""));
    // The config says 320282-rsj; the certificate is 320282-mzj's.
    let receiver = Agent::start(&agent_toml(
        &world,
        "b",
        RSJ,
        MZJ,
        port,
        0,
        &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    ))
    .await;
    let sub = eventually("the subscription shown refused", Duration::from_secs(20), || {
        let sub = receiver.status().subscriptions[0].clone();
        (sub.state == "failing" || sub.state == "refused")
            .then_some(sub.clone())
            .ok_or(format!("{sub:?}"))
    })
    .await;
    let error = sub.error.unwrap_or_default();
    assert!(error.contains("certificate") && error.contains(MZJ), "{error}");
    receiver.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_mid_stream_stops_the_position_while_the_provider_goes_on_and_keep_keeps_the_rows() {
    let (world, port, hub, provider) = provider_and_receiver(MZJ, "XY-1").await;
    let sqlite = Db::sqlite(&world.path(""));
    let receiver = Agent::start(&agent_toml(
        &world,
        "b",
        MZJ,
        MZJ,
        port,
        0,
        &table_sink(
            "sqlite",
            &format!("path = \"{}\"", sqlite.url),
            "on_revoke = \"keep\"\n",
        ),
    ))
    .await;

    // The provider changes people continuously: a file of 200 upserts every
    // 50 ms, until the test ends.
    let flowing = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (dir, stop) = (world.path("drop/people"), flowing.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let rows: Vec<(u64, String, &str)> = (0..200).map(|i| (i, format!("第{n}版{i}"), "U")).collect();
                let tmp = dir.join(format!(".{n:05}.part"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&tmp, people_ops(&rows)).unwrap();
                std::fs::rename(&tmp, dir.join(format!("{n:05}.csv"))).unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let applied = || receiver.status().subscriptions[0].applied_seq;
    eventually("the receiver following the flow", CONVERGE, || {
        let a = applied();
        (a > 2000).then_some(()).ok_or(format!("applied {a}"))
    })
    .await;

    hub_cli(&world, &["agreement", "revoke", "XY-1"]);
    let sub = eventually("the subscription revoked", Duration::from_secs(10), || {
        let sub = receiver.status().subscriptions[0].clone();
        (sub.state == "revoked")
            .then_some(sub.clone())
            .ok_or(format!("{sub:?}"))
    })
    .await;
    assert!(sub.error.is_some_and(|e| !e.is_empty()), "revoked without a reason");
    let stopped_at = applied();
    let rows = table_rows(&sqlite).await;
    assert_eq!(rows.len(), 200);
    assert_eq!(applied_position(&sqlite).await, [stopped_at.to_string()]);

    // The hub's history grows by thousands more changes; the receiver's
    // position and rows stay where they were.
    let (at_revocation, _) = hub_feed(&world);
    eventually("the provider going on", CONVERGE, || {
        let (latest, _) = hub_feed(&world);
        (latest > at_revocation + 4000)
            .then_some(())
            .ok_or(format!("{latest} at the hub"))
    })
    .await;
    assert_eq!(applied(), stopped_at);
    assert_eq!(applied_position(&sqlite).await, [stopped_at.to_string()]);
    assert_eq!(
        table_rows(&sqlite).await,
        rows,
        "on_revoke = \"keep\" keeps the rows as they were"
    );
    let r = received(&world, MZJ);
    assert_eq!(r["applied_seq"], stopped_at, "{r}");

    flowing.cancel();
    writer.await.unwrap();
    receiver.stop().await;
    provider.stop().await;
    hub.stop().await;
}
