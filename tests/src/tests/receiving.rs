//! The receiving direction end to end: a provider's folder → the hub →
//! receivers' sinks in SQLite, PostgreSQL, MariaDB and a GB18030 CSV
//! folder, under an agreement that shares only some items; refusals, a
//! mid-stream revocation with purge, and a receiver that catches up after
//! being away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::db::Db;
use crate::{Agent, GAJ, Hub, PEOPLE, PEOPLE_COLUMNS, World, bin, eventually, export, free_port, person};

/// Receiving agencies of the test.
pub(super) const MZJ: &str = "320282-mzj";
pub(super) const RSJ: &str = "320282-rsj";
pub(super) const WJW: &str = "320282-wjw";
pub(super) const JYJ: &str = "320282-jyj";

/// The items the agreements share besides the key (姓名).
pub(super) const SHARED: &str = "DE00002";

/// The people CSV with an operation column: each row (person, name, op).
fn people_ops(rows: &[(u64, &str, &str)]) -> String {
    let mut s = PEOPLE_COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(",");
    s.push_str(",操作\n");
    for (i, name, op) in rows {
        let mut p = person(*i);
        p[1] = name.to_string();
        s.push_str(&p.join(","));
        s.push_str(&format!(",{op}\n"));
    }
    s
}

/// Writes `NAME.toml` for an agent of `agency` with `body` after `[health]`.
fn agent_toml(world: &World, name: &str, agency: &str, hub_port: u16, body: &str) -> PathBuf {
    agent_toml_as(world, name, agency, agency, hub_port, 0, body)
}

/// The same with the certificate of `cert` and the health port `health`.
pub(super) fn agent_toml_as(
    world: &World,
    name: &str,
    agency: &str,
    cert: &str,
    hub_port: u16,
    health: u16,
    body: &str,
) -> PathBuf {
    world.write(
        &format!("{name}.toml"),
        &format!(
            "agency = \"{agency}\"\ndata_dir = \"{name}-data\"\ncatalog = \"catalog.toml\"\nshutdown_grace = \"5s\"\n\
             [hub]\nurl = \"https://localhost:{hub_port}\"\nca = \"pki/ca.pem\"\ncert = \"pki/{cert}.pem\"\n\
             key = \"pki/{cert}.key\"\nbackoff_max = \"500ms\"\n[health]\nlisten = \"127.0.0.1:{health}\"\n{body}"
        ),
    )
}

/// Runs `qianzhi-hub` with the world's hub.toml and returns its standard
/// output; panics with its output on failure.
pub(super) fn hub_cli(world: &World, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("qianzhi-hub"))
        .args(args)
        .arg("--config")
        .arg(world.path("hub.toml"))
        .output()
        .expect("run qianzhi-hub");
    assert!(
        out.status.success(),
        "qianzhi-hub {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub(super) fn agree(world: &World, id: &str, agency: &str) {
    hub_cli(
        world,
        &[
            "agreement",
            "add",
            "--id",
            id,
            "--resource",
            PEOPLE,
            "--agency",
            agency,
            "--items",
            SHARED,
            "--purpose",
            "低保资格审核",
            "--from",
            "2020-01-01",
            "--until",
            "2099-01-01",
        ],
    );
}

/// The hub's current people as key → 姓名.
fn hub_people(world: &World) -> BTreeMap<String, String> {
    export(&world.store_path(), false)
        .into_iter()
        .map(|l| {
            (
                l["key"][0].as_str().unwrap().to_owned(),
                l["items"][SHARED].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A table sink's rows as "key|name|address" (address must stay NULL: it
/// is outside the agreement).
async fn table_rows(db: &Db) -> Vec<String> {
    db.connect()
        .await
        .strings("SELECT concat(sfzh, '|', coalesce(xm, ''), '|', coalesce(zz, 'NULL')) FROM people_in ORDER BY sfzh")
        .await
}

/// Waits (a minute at most) until a table sink holds `want`. The sink is
/// another process's database: there is no event to wait on, so it is
/// read every 100 ms.
async fn until_rows(db: &Db, want: &[String]) {
    let mut last = Vec::new();
    for _ in 0..600 {
        last = table_rows(db).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, want, "{:?} sink", db.kind);
}

/// A world with a hub, an agreement `id` sharing 姓名 with `receiver`
/// (whose certificate is issued), and a provider agent on a folder with an
/// operation column: (world, hub port, hub, provider).
pub(super) async fn provider_and_receiver(receiver: &str, id: &str) -> (World, u16, Hub, Agent) {
    let world = World::new();
    world.issue(receiver, pki::dev::Validity::default(), receiver);
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    agree(&world, id, receiver);
    let provider = Agent::start(&agent_toml(
        &world,
        "provider",
        GAJ,
        port,
        &crate::people_source("people", "drop/people", "op_column = \"操作\"\n"),
    ))
    .await;
    (world, port, hub, provider)
}

/// Starts a receiver and waits until its sink is open (its table made).
async fn receiver(config: &std::path::Path) -> Agent {
    let agent = Agent::start(config).await;
    eventually("the receiver's sink open", Duration::from_secs(30), || {
        let s = agent.status();
        let state = s.subscriptions.first().map(|x| x.state.clone()).unwrap_or_default();
        (state != "starting").then_some(()).ok_or(state)
    })
    .await;
    agent
}

fn expected_rows(hub: &BTreeMap<String, String>) -> Vec<String> {
    hub.iter().map(|(k, n)| format!("{k}|{n}|NULL")).collect()
}

pub(super) fn table_sink(kind: &str, place: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nresource = \"{PEOPLE}\"\ntype = \"{kind}\"\n{place}\ntable = \"people_in\"\ncreate = true\n{extra}\
         [subscription.columns]\nDE00001 = \"sfzh\"\nDE00002 = \"xm\"\nDE00006 = \"zz\"\n"
    )
}

/// Every change in a folder sink's files, in order: (op, key, name).
fn folder_changes(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "csv"));
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let bytes = std::fs::read(&p).unwrap();
        let (text, _, bad) = encoding_rs::GB18030.decode(&bytes);
        assert!(!bad, "{} is not GB18030", p.display());
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(str::to_owned).collect();
        assert!(
            !header.iter().any(|h| h == "DE00006"),
            "an item outside the agreement in {header:?}"
        );
        let col = |n: &str| header.iter().position(|h| h == n).unwrap();
        for rec in r.records() {
            let rec = rec.unwrap();
            out.push((
                rec[col("_op")].to_owned(),
                rec[col("DE00001")].to_owned(),
                rec[col("DE00002")].to_owned(),
            ));
        }
    }
    out
}

/// What a folder sink's changes leave: key → name.
fn replay(changes: &[(String, String, String)]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for (op, key, name) in changes {
        match op.as_str() {
            "reset" => state.clear(),
            "delete" => {
                state.remove(key);
            }
            _ => {
                state.insert(key.clone(), name.clone());
            }
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receivers_in_every_sink_hold_the_hubs_state_of_the_shared_items_only() {
    let world = World::new();
    for a in [MZJ, RSJ, WJW, JYJ] {
        world.issue(a, pki::dev::Validity::default(), a);
    }
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    for (id, a) in [("XY-1", MZJ), ("XY-2", RSJ), ("XY-3", WJW), ("XY-4", JYJ)] {
        agree(&world, id, a);
    }
    let provider = agent_toml(
        &world,
        "provider",
        GAJ,
        port,
        &crate::people_source("people", "drop/people", "op_column = \"操作\"\n"),
    );
    let provider = Agent::start(&provider).await;

    // The first receivers start before anything is provided; the folder
    // receiver only later (it gets a snapshot).
    let sqlite = Db::sqlite(&world.path(""));
    let pg = Db::postgres().await;
    let my = Db::mysql().await;
    let mut receivers = vec![
        receiver(&agent_toml(
            &world,
            "b",
            MZJ,
            port,
            &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
        ))
        .await,
    ];
    if let Some(pg) = &pg {
        receivers.push(
            receiver(&agent_toml(
                &world,
                "c",
                RSJ,
                port,
                &table_sink("postgres", &format!("url = \"{}\"", pg.url), ""),
            ))
            .await,
        );
    }
    if let Some(my) = &my {
        receivers.push(
            receiver(&agent_toml(
                &world,
                "d",
                WJW,
                port,
                &table_sink("mysql", &format!("url = \"{}\"", my.url), ""),
            ))
            .await,
        );
    }

    // Inserts, updates, a key replaced by another, deletes.
    let inserts: Vec<(u64, String, &str)> = (0..300).map(|i| (i, format!("测试{i}"), "I")).collect();
    let rows: Vec<(u64, &str, &str)> = inserts.iter().map(|(i, n, o)| (*i, n.as_str(), *o)).collect();
    world.drop_file("drop/people", "a.csv", people_ops(&rows).as_bytes());
    let updates: Vec<(u64, String, &str)> = (0..300)
        .step_by(3)
        .map(|i| (i, format!("改名{i}"), "U"))
        .chain((1..300).step_by(7).map(|i| (i, format!("测试{i}"), "D")))
        .chain([(1000, "新人".to_owned(), "I")])
        .collect();
    let rows: Vec<(u64, &str, &str)> = updates.iter().map(|(i, n, o)| (*i, n.as_str(), *o)).collect();
    world.drop_file("drop/people", "b.csv", people_ops(&rows).as_bytes());
    eventually("the provider's files at the hub", Duration::from_secs(60), || {
        let n = hub_people(&world).len();
        (n == 300 - 43 + 1)
            .then_some(())
            .ok_or(format!("{n} people at the hub"))
    })
    .await;
    let at_hub = hub_people(&world);
    assert_eq!(at_hub[&crate::citizen_id(3)], "改名3");

    let folder = world.path("inbox");
    std::fs::create_dir_all(&folder).unwrap();
    receivers.push(
        receiver(&agent_toml(
            &world,
            "e",
            JYJ,
            port,
            &format!(
                "[[subscription]]\nresource = \"{PEOPLE}\"\ntype = \"folder\"\npath = \"inbox\"\nformat = \"csv\"\n\
                 encoding = \"gb18030\"\nroll_records = 100\nroll_after = \"200ms\"\nitems = [\"{SHARED}\"]\n"
            ),
        ))
        .await,
    );

    let want = expected_rows(&at_hub);
    for db in [Some(&sqlite), pg.as_ref(), my.as_ref()].into_iter().flatten() {
        until_rows(db, &want).await;
    }
    let replayed = eventually("the folder sink equal to the hub", Duration::from_secs(60), || {
        let changes = folder_changes(&folder);
        let state = replay(&changes);
        (state == at_hub).then_some(state).ok_or(format!(
            "{} changes in {:?}, {} keys (the hub has {}); {:?}",
            changes.len(),
            std::fs::read_dir(&folder).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            replay(&changes).len(),
            at_hub.len(),
            receivers.last().map(|r| r.status().subscriptions)
        ))
    })
    .await;
    assert_eq!(replayed.len(), at_hub.len());

    // The hub's report (acknowledgements are recorded once a second) shows
    // every receiver caught up, under its agreement.
    let received = eventually(
        "the report to show every receiver caught up",
        Duration::from_secs(30),
        || {
            let report: serde_json::Value = serde_json::from_str(&hub_cli(&world, &["report", "--json"])).unwrap();
            let received: Vec<serde_json::Value> = report
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|a| a["received"].as_array().unwrap().clone())
                .collect();
            let done = received.len() == receivers.len() && received.iter().all(|r| r["behind"] == 0);
            done.then_some(received).ok_or(format!("{report:#}"))
        },
    )
    .await;
    for r in &received {
        assert!(r["agreements"][0].as_str().unwrap().starts_with("XY-"), "{r}");
        assert_eq!(r["providers"][0], GAJ, "{r}");
    }
    for s in receivers.iter().map(|r| r.status()) {
        let sub = &s.subscriptions[0];
        assert_eq!(sub.state, "receiving", "{sub:?}");
        assert_eq!(sub.provider, GAJ);
        assert_eq!(sub.lag_changes, 0, "{sub:?}");
    }

    for r in receivers {
        r.stop().await;
    }
    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_agreement_is_refused_until_one_is_added_and_revoking_purges() {
    let world = World::new();
    world.issue(MZJ, pki::dev::Validity::default(), MZJ);
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    let provider = Agent::start(&agent_toml(
        &world,
        "provider",
        GAJ,
        port,
        &crate::people_source("people", "drop/people", ""),
    ))
    .await;
    world.drop_file("drop/people", "a.csv", crate::people_csv(0..50).as_bytes());
    eventually("the people at the hub", Duration::from_secs(60), || {
        let n = hub_people(&world).len();
        (n == 50).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    let sqlite = Db::sqlite(&world.path(""));
    let receiver = receiver(&agent_toml(
        &world,
        "b",
        MZJ,
        port,
        &table_sink(
            "sqlite",
            &format!("path = \"{}\"", sqlite.url),
            "on_revoke = \"purge\"\n",
        ),
    ))
    .await;
    let refused = eventually("the subscription refused", Duration::from_secs(30), || {
        let s = receiver.status();
        let sub = &s.subscriptions[0];
        (sub.state == "refused").then(|| sub.clone()).ok_or(format!("{sub:?}"))
    })
    .await;
    assert!(refused.error.unwrap().contains("article 21"));
    assert!(table_rows(&sqlite).await.is_empty());

    // An agreement added while the receiver waits starts delivery.
    agree(&world, "XY-9", MZJ);
    until_rows(&sqlite, &expected_rows(&hub_people(&world))).await;

    // Revoked: delivery stops and, with on_revoke = "purge", the rows go.
    hub_cli(&world, &["agreement", "revoke", "XY-9"]);
    eventually("the subscription revoked", Duration::from_secs(30), || {
        let s = receiver.status();
        let sub = &s.subscriptions[0];
        (sub.state == "revoked").then_some(()).ok_or(format!("{sub:?}"))
    })
    .await;
    until_rows(&sqlite, &[]).await;
    // New changes at the provider no longer reach it.
    world.drop_file("drop/people", "b.csv", crate::people_csv(50..60).as_bytes());
    eventually("the new people at the hub", Duration::from_secs(60), || {
        let n = hub_people(&world).len();
        (n == 60).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    assert!(table_rows(&sqlite).await.is_empty());

    receiver.stop().await;
    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_behind_a_compaction_gets_a_fresh_snapshot() {
    let (world, port, hub, provider) = provider_and_receiver(MZJ, "XY-5").await;
    let rows: Vec<(u64, String)> = (0..40).map(|i| (i, format!("测试{i}"))).collect();
    let ops: Vec<(u64, &str, &str)> = rows.iter().map(|(i, n)| (*i, n.as_str(), "I")).collect();
    world.drop_file("drop/people", "a.csv", people_ops(&ops).as_bytes());
    eventually("the people at the hub", Duration::from_secs(60), || {
        let n = hub_people(&world).len();
        (n == 40).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let sqlite = Db::sqlite(&world.path(""));
    let config = agent_toml(
        &world,
        "b",
        MZJ,
        port,
        &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    );
    let receiver = self::receiver(&config).await;
    until_rows(&sqlite, &expected_rows(&hub_people(&world))).await;
    receiver.stop().await;

    // While it is away: renames and deletes, then a compaction that does not
    // wait for it (keep = 0s): the changes it missed are gone from history.
    let ops: Vec<(u64, String, &str)> = (0..40)
        .step_by(2)
        .map(|i| (i, format!("改名{i}"), "U"))
        .chain((1..40).step_by(4).map(|i| (i, format!("测试{i}"), "D")))
        .collect();
    let ops: Vec<(u64, &str, &str)> = ops.iter().map(|(i, n, o)| (*i, n.as_str(), *o)).collect();
    world.drop_file("drop/people", "b.csv", people_ops(&ops).as_bytes());
    eventually("the changes at the hub", Duration::from_secs(60), || {
        let n = hub_people(&world).len();
        (n == 30).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let out = hub_cli(&world, &["compact", "--keep", "0s"]);
    assert!(out.contains("compacted") && !out.contains("compacted: 0 "), "{out}");

    let receiver = self::receiver(&config).await;
    until_rows(&sqlite, &expected_rows(&hub_people(&world))).await;
    receiver.stop().await;
    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_proves_the_sink_and_asks_the_hub_for_its_grants() {
    let world = World::new();
    world.issue(MZJ, pki::dev::Validity::default(), MZJ);
    let port = free_port();
    world.hub_toml(port);
    let hub = Hub::start(&world, port).await;
    let sqlite = Db::sqlite(&world.path(""));
    let config = agent_toml(
        &world,
        "b",
        MZJ,
        port,
        &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    );
    let check = || {
        let out = std::process::Command::new(bin("qianzhi"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .expect("run qianzhi check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // No agreement: the sink is fine (create = true), the hub refuses.
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(
        text.contains("subscription 1010100/0001: SQLite table people_in"),
        "{text}"
    );
    assert!(text.contains("refused") && text.contains("article 21"), "{text}");
    // Check made nothing.
    let tables = sqlite.connect().await.strings("SELECT name FROM sqlite_master").await;
    assert!(tables.is_empty(), "{tables:?}");

    agree(&world, "XY-7", MZJ);
    let (ok, text) = check();
    assert!(ok, "{text}");
    assert!(
        text.contains("hub grants 1010100/0001 to 320282-mzj under agreement XY-7: items DE00001,DE00002"),
        "{text}"
    );
    // A probe delivers nothing and is not a subscriber in the report.
    let report: serde_json::Value = serde_json::from_str(&hub_cli(&world, &["report", "--json"])).unwrap();
    let receivers = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["received"] != serde_json::json!([]));
    assert_eq!(receivers.count(), 0, "{report:#}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_sink_takes_a_trickle_before_its_file_rolls() {
    // The file rolls only after an hour: nothing is committed, so the hub
    // must count what the sink took (Applied.received_seq) out of its
    // window, or it stops sending after a window of single-change messages.
    let (world, port, hub, provider) = provider_and_receiver(JYJ, "XY-6").await;
    std::fs::create_dir_all(world.path("inbox")).unwrap();
    let receiver = receiver(&agent_toml(
        &world,
        "e",
        JYJ,
        port,
        &format!(
            "[[subscription]]\nresource = \"{PEOPLE}\"\ntype = \"folder\"\npath = \"inbox\"\n\
             roll_records = 100000\nroll_after = \"1h\"\nitems = [\"{SHARED}\"]\n"
        ),
    ))
    .await;
    const FILES: u64 = 24;
    for i in 0..FILES {
        let name = format!("测试{i}");
        world.drop_file(
            "drop/people",
            &format!("{i}.csv"),
            people_ops(&[(i, &name, "I")]).as_bytes(),
        );
        eventually("the row at the hub", Duration::from_secs(30), || {
            let n = hub_people(&world).len() as u64;
            (n == i + 1).then_some(()).ok_or(format!("{n}"))
        })
        .await;
    }
    eventually("every change taken by the folder sink", Duration::from_secs(30), || {
        let sub = receiver.status().subscriptions[0].clone();
        (sub.applied == FILES).then_some(()).ok_or(format!("{sub:?}"))
    })
    .await;
    // Nothing was renamed in yet.
    assert!(
        world.files_in("inbox").iter().all(|f| f.starts_with('.')),
        "{:?}",
        world.files_in("inbox")
    );
    receiver.stop().await;
    provider.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_subscriber_does_not_hold_history_back() {
    let (world, port, hub, provider) = provider_and_receiver(MZJ, "XY-8").await;
    world.issue(RSJ, pki::dev::Validity::default(), RSJ);
    let rows: Vec<(u64, String, &str)> = (0..10)
        .map(|i| (i, format!("测试{i}"), "I"))
        .chain((0..10).map(|i| (i, format!("改名{i}"), "U")))
        .collect();
    let ops: Vec<(u64, &str, &str)> = rows.iter().map(|(i, n, o)| (*i, n.as_str(), *o)).collect();
    world.drop_file("drop/people", "a.csv", people_ops(&ops).as_bytes());
    eventually("the renames at the hub", Duration::from_secs(60), || {
        let people = hub_people(&world);
        let renamed = people.len() == 10 && people.values().all(|n| n.starts_with("改名"));
        renamed.then_some(()).ok_or(format!("{people:?}"))
    })
    .await;
    // RSJ has no agreement: refused, and not a receiver the history waits for.
    let sqlite = Db::sqlite(&world.path(""));
    let refused = receiver(&agent_toml(
        &world,
        "c",
        RSJ,
        port,
        &table_sink("sqlite", &format!("path = \"{}\"", sqlite.url), ""),
    ))
    .await;
    eventually("the subscription refused", Duration::from_secs(30), || {
        let sub = refused.status().subscriptions[0].clone();
        (sub.state == "refused").then_some(()).ok_or(format!("{sub:?}"))
    })
    .await;
    let out = hub_cli(&world, &["compact"]);
    assert!(out.contains("compacted: 10 "), "the ten superseded inserts: {out}");
    refused.stop().await;
    provider.stop().await;
    hub.stop().await;
}
