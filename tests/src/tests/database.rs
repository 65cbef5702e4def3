//! Database sources against real databases: SQLite files, and scratch
//! databases on the local PostgreSQL and MariaDB. Concurrent writers with
//! interleaved transactions, rollbacks, key changes and deletes; the
//! initial snapshot racing those writers; the agent SIGKILLed and its
//! database connections killed during a burst of 100,000 changes; failing
//! sources beside working ones; the install commands.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::db::{Conn, Db, Kind, assert_hub_matches, become_person, insert_people};
use crate::*;

/// People in the table before the agent starts (the snapshot).
const BEFORE: u64 = 200;
const WRITERS: u64 = 4;

/// What one writer left in the table and how many records the hub must
/// have received for it.
#[derive(Default)]
struct Outcome {
    present: BTreeSet<u64>,
    absent: BTreeSet<u64>,
    changes: usize,
}

async fn tx(c: &mut Conn, statements: &[String], commit: bool) {
    c.exec("BEGIN").await.expect("begin");
    for s in statements {
        c.exec(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    c.exec(if commit { "COMMIT" } else { "ROLLBACK" }).await.expect("end");
}

/// One business system's connection: its own key range, every kind of change.
async fn writer(db: &Db, k: u64) -> Outcome {
    let mut c = db.connect().await;
    let base = 1000 + k * 1000;
    let mut o = Outcome::default();
    for j in 0..50 {
        tx(&mut c, &[insert_people([base + j])], true).await;
        o.present.insert(base + j);
        o.changes += 1;
    }
    // Rolled back: nothing of it may arrive.
    tx(&mut c, &[insert_people(base + 100..base + 110)], false).await;
    tx(
        &mut c,
        &[format!("DELETE FROM people WHERE sfzh = '{}'", person(base)[0])],
        false,
    )
    .await;
    // Renamed and renamed back: two changes each, same final state.
    for j in 0..10 {
        let id = &person(base + j)[0];
        tx(
            &mut c,
            &[format!("UPDATE people SET xm = '改名' WHERE sfzh = '{id}'")],
            true,
        )
        .await;
        let name = &person(base + j)[1];
        tx(
            &mut c,
            &[format!("UPDATE people SET xm = '{name}' WHERE sfzh = '{id}'")],
            true,
        )
        .await;
        o.changes += 2;
    }
    // Key changes: the old key deleted, the new one written.
    for j in 20..30 {
        tx(&mut c, &[become_person(base + j, base + 500 + j, 1)], true).await;
        o.present.remove(&(base + j));
        o.absent.insert(base + j);
        o.present.insert(base + 500 + j);
        o.changes += 2;
    }
    for j in 30..40 {
        tx(
            &mut c,
            &[format!("DELETE FROM people WHERE sfzh = '{}'", person(base + j)[0])],
            true,
        )
        .await;
        o.present.remove(&(base + j));
        o.absent.insert(base + j);
        o.changes += 1;
    }
    // Several statements in one transaction: insert, then a key change.
    tx(
        &mut c,
        &[insert_people([base + 600]), become_person(base + 600, base + 601, 2)],
        true,
    )
    .await;
    o.present.insert(base + 601);
    o.absent.insert(base + 600);
    o.changes += 3;
    if k == 0 {
        // Rows of the snapshot change while it is being read.
        for i in 0..10 {
            tx(
                &mut c,
                &[format!("DELETE FROM people WHERE sfzh = '{}'", person(i)[0])],
                true,
            )
            .await;
            o.absent.insert(i);
            o.changes += 1;
        }
        for i in 10..20 {
            tx(&mut c, &[become_person(i, 90_000 + i, 3)], true).await;
            o.absent.insert(i);
            o.present.insert(90_000 + i);
            o.changes += 2;
        }
    }
    o
}

/// Runs `f` on a thread of its own with its own runtime: business systems
/// are other processes, and SQLite's waits must not block the agent's.
/// The thread starts at once; the returned future waits for its result.
fn on_thread<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = tx.send(rt.block_on(f));
    });
    async move { rx.await.expect("writer thread") }
}

async fn wait_for_history(w: &World, agent: Option<&Agent>, changes: usize, limit: Duration) {
    eventually(&format!("{changes} changes at the hub"), limit, || {
        let n = export(&w.store_path(), true).len();
        (n >= changes)
            .then_some(())
            .ok_or_else(|| format!("{n} so far; {:?}", agent.map(|a| a.status().sources)))
    })
    .await;
}

async fn concurrent_writers(db: Db) {
    let db = std::sync::Arc::new(db);
    let w = World::new();
    db.create_people().await;
    db.connect()
        .await
        .exec(&insert_people(0..BEFORE))
        .await
        .expect("insert");
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source("business", "");
    let agent = Agent::start(&w.agent_toml(&spec)).await;

    let mut present: BTreeSet<u64> = (0..BEFORE).collect();
    let run = |range: std::ops::Range<u64>| {
        let db = db.clone();
        async move {
            let writers: Vec<_> = range
                .map(|k| {
                    let db = db.clone();
                    on_thread(async move { writer(&db, k).await })
                })
                .collect();
            futures_join(writers).await
        }
    };
    let settle = |present: &mut BTreeSet<u64>, outcomes: Vec<Outcome>| {
        let mut changes = 0;
        for o in outcomes {
            present.retain(|i| !o.absent.contains(i));
            present.extend(o.present);
            changes += o.changes;
        }
        changes
    };

    // Phase 1: the writers race the initial snapshot. Changes the snapshot
    // already saw are not sent again, so the history's length depends on
    // the race; the state must not.
    db.wait_for_triggers().await;
    let outcomes = run(0..WRITERS).await;
    settle(&mut present, outcomes);
    let want: BTreeSet<String> = present.iter().map(|&i| person(i)[0].clone()).collect();
    eventually("the hub equal to the table", Duration::from_secs(60), || {
        let keys: BTreeSet<String> = export(&w.store_path(), false)
            .into_iter()
            .map(|l| l["key"][0].as_str().unwrap_or_default().to_owned())
            .collect();
        (keys == want)
            .then_some(())
            .ok_or(format!("{} keys at the hub, {} in the table", keys.len(), want.len()))
    })
    .await;
    let rows: Vec<u64> = present.iter().copied().collect();
    let before = export(&w.store_path(), true).len();
    assert_hub_matches(&w.store_path(), &rows, before);
    assert!(before >= rows.len());

    // Phase 2: following the change log, every change arrives exactly once.
    let outcomes = run(WRITERS..2 * WRITERS).await;
    let changes = before + settle(&mut present, outcomes);
    wait_for_history(&w, Some(&agent), changes, Duration::from_secs(60)).await;
    let rows: Vec<u64> = present.into_iter().collect();
    assert_eq!(
        db.keys().await.len(),
        rows.len(),
        "the table agrees with the bookkeeping"
    );
    assert_hub_matches(&w.store_path(), &rows, changes);
    let s = agent.status();
    assert!(s.sources.iter().all(|s| s.error.is_none()), "{s:?}");
    agent.stop().await;
    hub.stop().await;
}

async fn futures_join<T>(handles: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_changes_from_concurrent_writers_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_writers(Db::sqlite(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_from_concurrent_writers_arrive_once_in_order() {
    if let Some(db) = Db::postgres().await {
        concurrent_writers(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_changes_from_concurrent_writers_arrive_once_in_order() {
    if let Some(db) = Db::mysql().await {
        concurrent_writers(db).await;
    }
}

/// 100,000 changes while the agent is SIGKILLed at random points and its
/// database connections are killed from the server side.
async fn burst_with_kills(db: Db) {
    const ROWS: u64 = 50_000;
    const BATCH: u64 = 1_000;
    let db = std::sync::Arc::new(db);
    let w = World::new();
    db.create_people().await;
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source("business", "poll = \"50ms\"\n");
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    let config = config.to_str().unwrap().to_owned();
    let log = w.path("agent.log");

    // The burst starts once the change log is installed: what happens
    // before that reaches the hub through the snapshot, not as changes.
    let mut first = spawn("qianzhi", &["--config", &config, "run"], &log);
    db.wait_for_triggers().await;
    first.kill().unwrap();
    first.wait().unwrap();
    // 50,000 inserts, 25,000 updates, 25,000 deletes, 1,000 per transaction.
    let burst = {
        let db = db.clone();
        on_thread(async move {
            let mut c = db.connect().await;
            for b in 0..ROWS / BATCH {
                tx(&mut c, &[insert_people(b * BATCH..(b + 1) * BATCH)], true).await;
            }
            for b in 0..ROWS / BATCH / 2 {
                let ids: Vec<String> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| format!("'{}'", person(i)[0]))
                    .collect();
                tx(
                    &mut c,
                    &[format!(
                        "UPDATE people SET ver = ver + 1 WHERE sfzh IN ({})",
                        ids.join(",")
                    )],
                    true,
                )
                .await;
            }
            for b in ROWS / BATCH / 2..ROWS / BATCH {
                let ids: Vec<String> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| format!("'{}'", person(i)[0]))
                    .collect();
                tx(
                    &mut c,
                    &[format!("DELETE FROM people WHERE sfzh IN ({})", ids.join(","))],
                    true,
                )
                .await;
            }
        })
    };
    let killer = async {
        let mut rng = Rng::seeded();
        for round in 0..6 {
            let mut child = spawn("qianzhi", &["--config", &config, "run"], &log);
            tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
            if round % 2 == 1 {
                kill_agent_connections(&db).await;
                tokio::time::sleep(Duration::from_millis(200 + rng.below(500))).await;
            }
            child.kill().unwrap();
            child.wait().unwrap();
        }
    };
    tokio::join!(burst, killer);
    let mut child = spawn("qianzhi", &["--config", &config, "run"], &log);
    wait_for_history(&w, None, 100_000, Duration::from_secs(240)).await;
    let addr = format!("127.0.0.1:{}", spec.health_port);
    eventually("the queue drained", Duration::from_secs(30), || {
        let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
        let s: agent::health::Status = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (s.queue.records == 0).then_some(()).ok_or(body)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let rows: Vec<u64> = (0..ROWS / 2).collect();
    assert_eq!(db.keys().await.len(), rows.len());
    assert_hub_matches(&w.store_path(), &rows, 100_000);
    hub.stop().await;
}

/// Ends the agent's sessions from the server side, as a database restart
/// does to its clients.
async fn kill_agent_connections(db: &Db) {
    match db.kind {
        Kind::Sqlite => {}
        Kind::Postgres => {
            let mut admin = crate::db::admin_pg().await;
            admin
                .exec(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'qianzhi' AND datname = '{}'",
                    db.name
                ))
                .await
                .expect("terminate");
        }
        // MariaDB shows no application name to tell the agent's sessions
        // from the writer's; the agent kills cover MySQL.
        Kind::Mysql => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_burst_survives_agent_kills() {
    let dir = tempfile::tempdir().unwrap();
    burst_with_kills(Db::sqlite(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_burst_survives_agent_kills_and_dropped_connections() {
    if let Some(db) = Db::postgres().await {
        burst_with_kills(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_burst_survives_agent_kills() {
    if let Some(db) = Db::mysql().await {
        burst_with_kills(db).await;
    }
}

/// Watermark capture: inserts and updates arrive (the latest state of each
/// row); a delete does not, as the docs say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_capture_follows_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(dir.path());
    db.create_people().await;
    let mut c = db.connect().await;
    c.exec(&insert_people(0..100)).await.unwrap();
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source(
        "business",
        "capture = \"incremental\"\nwatermark = \"ver\"\nlag = \"100ms\"\npoll = \"50ms\"\n",
    );
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    eventually("the first rows", Duration::from_secs(30), || {
        let n = export(&w.store_path(), false).len();
        (n == 100).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    // New rows carry higher watermarks; a changed row gets a new one.
    for b in 1..5u64 {
        c.exec(&insert_people(b * 100..(b + 1) * 100).replace(", 0)", ")"))
            .await
            .unwrap();
        c.exec(&format!(
            "UPDATE people SET ver = {} WHERE ver BETWEEN {} AND {}",
            1000 + b,
            b * 100,
            b * 100 + 99
        ))
        .await
        .unwrap();
    }
    c.exec(&become_person(7, 9007, 2000)).await.unwrap();
    c.exec(&format!("DELETE FROM people WHERE sfzh = '{}'", person(8)[0]))
        .await
        .unwrap();
    let mut want: BTreeSet<u64> = (0..500).collect();
    want.remove(&7);
    want.insert(9007);
    eventually("every insert and update", Duration::from_secs(30), || {
        let keys: BTreeSet<String> = export(&w.store_path(), false)
            .into_iter()
            .map(|l| l["key"][0].as_str().unwrap_or_default().to_owned())
            .collect();
        // Incremental capture sees no deletes: person 7's old key and person 8 stay.
        let expected: BTreeSet<String> = want
            .iter()
            .chain([7, 8].iter())
            .map(|&i| person(i)[0].clone())
            .collect();
        (keys == expected).then_some(()).ok_or(format!("{} keys", keys.len()))
    })
    .await;
    agent.stop().await;
    hub.stop().await;
}

/// A source that cannot work says why, in /status and /readyz, and the
/// other sources go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_database_sources_leave_the_others_working() {
    let Some(pg) = Db::postgres().await else { return };
    let Some(my) = Db::mysql().await else { return };
    pg.create_people().await;
    my.create_people().await;
    let role = format!("{}_nopriv", pg.name);
    let mut admin = crate::db::admin_pg().await;
    admin.exec(&format!("CREATE ROLE {role} LOGIN")).await.unwrap();
    let user = format!("{}_u", my.name);
    let mut myc = my.connect().await;
    myc.exec(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'right'"))
        .await
        .unwrap();
    myc.exec(&format!("GRANT SELECT ON {}.people TO '{user}'@'%'", my.name))
        .await
        .unwrap();

    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    let source = |name: &str, kind: &str, at: &str, table: &str| {
        let mut s = format!(
            "[[source]]\nname = \"{name}\"\ntype = \"{kind}\"\nresource = \"{PEOPLE}\"\n{at}\ntable = \"{table}\"\n[source.columns]\n"
        );
        for (col, (_, de)) in crate::db::COLUMNS.iter().zip(PEOPLE_COLUMNS) {
            s.push_str(&format!("{col} = \"{de}\"\n"));
        }
        s
    };
    let pg_url = |user: &str| format!("url = \"postgres://{user}@127.0.0.1:5432/{}\"", pg.name);
    let my_url = |cred: &str| format!("url = \"mysql://{cred}@127.0.0.1:3306/{}\"", my.name);
    let no_file = w.path("nosuch.db");
    spec.sources.push_str(&source(
        "no-file",
        "sqlite",
        &format!("path = \"{}\"", no_file.display()),
        "people",
    ));
    spec.sources
        .push_str(&source("no-table", "postgres", &pg_url("postgres"), "nosuch"));
    spec.sources
        .push_str(&source("no-select", "postgres", &pg_url(&role), "people"));
    spec.sources
        .push_str(&source("no-role", "postgres", &pg_url("nobody_here"), "people"));
    spec.sources.push_str(&source(
        "bad-password",
        "mysql",
        &my_url(&format!("{user}:wrong")),
        "people",
    ));
    spec.sources.push_str(&source(
        "no-trigger",
        "mysql",
        &my_url(&format!("{user}:right")),
        "people",
    ));
    spec.sources
        .push_str(&source("drifting", "postgres", &pg_url("postgres"), "people"));
    let agent = Agent::start(&w.agent_toml(&spec)).await;

    w.drop_file("drop/people", "a.csv", people_csv(0..3).as_bytes());
    let mut pgc = pg.connect().await;
    pgc.exec(&insert_people([10])).await.unwrap();
    eventually(
        "the folder and the working table delivered",
        Duration::from_secs(30),
        || {
            let n = export(&w.store_path(), false).len();
            (n == 4).then_some(()).ok_or(format!("{n} at the hub"))
        },
    )
    .await;
    // The table drifts from the mapping: a mapped column is dropped.
    pgc.exec("ALTER TABLE people DROP COLUMN mz").await.unwrap();
    pgc.exec(
        &insert_people([11])
            .replace(", mz", "")
            .replace(&format!(", '{}'", person(11)[4]), ""),
    )
    .await
    .unwrap();

    let expect = [
        ("no-file", "does not exist"),
        ("no-table", "table nosuch does not exist"),
        ("no-select", "missing privilege: SELECT"),
        ("no-role", "nobody_here"),
        ("bad-password", "authentication failed"),
        ("no-trigger", "missing privilege"),
        ("drifting", "no column \"mz\""),
    ];
    let status = eventually("every failing source reports why", Duration::from_secs(60), || {
        let s = agent.status();
        let ok = expect.iter().all(|(name, text)| {
            s.sources
                .iter()
                .any(|x| x.name == *name && x.error.as_deref().is_some_and(|e| e.contains(text)))
        });
        ok.then_some(s.clone()).ok_or(format!("{:#?}", s.sources))
    })
    .await;
    assert_ne!(status.ready, "ok", "a failing source makes the agent not ready");
    assert!(
        status
            .sources
            .iter()
            .any(|s| s.name == "people" && s.error.is_none() && s.files_done == 1)
    );
    // Nothing of the drifted table was sent as a record with holes.
    assert_eq!(export(&w.store_path(), false).len(), 4);
    agent.stop().await;
    hub.stop().await;
    drop(pgc);
    drop(pg);
    let _ = admin.exec(&format!("DROP ROLE IF EXISTS {role}")).await;
    let _ = myc.exec(&format!("DROP USER IF EXISTS '{user}'@'%'")).await;
}

/// `qianzhi source install|uninstall NAME [--dry-run]` on a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_commands_print_and_apply_the_sql() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(dir.path());
    db.create_people().await;
    let mut spec = w.agent_spec(free_port());
    spec.sources = db.source("business", "install = \"manual\"\n");
    let config = w.agent_toml(&spec);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("qianzhi"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("qianzhi");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let triggers = || {
        let c = rusqlite::Connection::open(&db.url).unwrap();
        c.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    let (code, out) = run(&["source", "install", "business", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("CREATE TABLE IF NOT EXISTS qianzhi_changes"), "{out}");
    assert!(
        out.contains("CREATE TRIGGER \"qianzhi_people_del\" AFTER DELETE ON \"people\""),
        "{out}"
    );
    assert_eq!(triggers(), 0, "--dry-run changed nothing");

    // With install = "manual" the agent says what to run.
    let (code, out) = run(&["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("qianzhi source install business"), "{out}");

    let (code, out) = run(&["source", "install", "business"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(triggers(), 3);
    let (code, out) = run(&["source", "uninstall", "business"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(triggers(), 0);
    let (code, out) = run(&["source", "install", "nosuch"]);
    assert_eq!(code, Some(64), "{out}");
}

/// Commits on a connection of its own, on a thread of its own, and closes
/// it: a business program that opens the database for one change.
fn commit_alone(path: &str, sql: String) {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&path).expect("open sqlite");
        c.busy_timeout(Duration::from_secs(30)).expect("busy timeout");
        c.execute_batch(&sql).expect("insert");
        c.close().expect("close");
    })
    .join()
    .expect("writer thread");
}

/// An idle SQLite source with `poll = "1h"` sees single commits of other
/// programs at once: the wake-up, not the poll, brings them. In WAL mode the
/// last file event of a commit comes before the commit is visible, so a
/// source that only looks at each event missed most of them.
async fn sqlite_single_commits_wake_an_idle_source(journal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(dir.path());
    db.create_people().await;
    let mut c = db.connect().await;
    c.exec(&format!("PRAGMA journal_mode = {journal}")).await.unwrap();
    c.exec(&insert_people(0..10)).await.unwrap();
    drop(c);
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source("business", "poll = \"1h\"\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    eventually(
        "the snapshot at the hub and the queue empty",
        Duration::from_secs(30),
        || {
            let s = agent.status();
            let n = export(&w.store_path(), false).len();
            (n == 10 && s.queue.records == 0)
                .then_some(())
                .ok_or(format!("{n} at the hub; {s:?}"))
        },
    )
    .await;
    // Idle: the source has read everything and waits for a wake-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 10..16u64 {
        let started = std::time::Instant::now();
        commit_alone(&db.url, insert_people([i]));
        eventually(
            &format!("person {i} at the hub long before the poll"),
            Duration::from_secs(20),
            || {
                let n = export(&w.store_path(), false).len();
                (n == i as usize + 1).then_some(()).ok_or(format!("{n} at the hub"))
            },
        )
        .await;
        eprintln!("{journal}: person {i} arrived after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_hub_matches(&w.store_path(), &(0..16).collect::<Vec<_>>(), 16);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_single_commits_wake_an_idle_source_in_wal_mode() {
    sqlite_single_commits_wake_an_idle_source("wal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_single_commits_wake_an_idle_source_in_rollback_journal_mode() {
    sqlite_single_commits_wake_an_idle_source("delete").await;
}

/// An idle PostgreSQL source with `poll = "1h"` is woken by the trigger's
/// `NOTIFY`, also after a busy spell: the session listens only while the
/// source is idle, and stops listening while reads follow one another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_single_commits_wake_an_idle_source_before_and_after_a_busy_spell() {
    let Some(db) = Db::postgres().await else { return };
    db.create_people().await;
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source("business", "poll = \"1h\"\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    db.wait_for_triggers().await;
    let mut c = db.connect().await;
    let at_hub = |n: usize, what: String| {
        let w = &w;
        async move {
            eventually(&what, Duration::from_secs(20), || {
                let got = export(&w.store_path(), false).len();
                (got == n).then_some(()).ok_or(format!("{got} at the hub"))
            })
            .await
        }
    };
    let mut next = 0u64;
    for round in ["before", "after"] {
        // Idle: the source has read everything, and deleted what it read
        // (at most a second later), and waits for a wake-up.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.exec(&insert_people([next])).await.unwrap();
            next += 1;
            at_hub(
                next as usize,
                format!("person {} ({round} the busy spell) long before the poll", next - 1),
            )
            .await;
        }
        if round == "before" {
            // Busy: 300 single-row commits 5 ms apart.
            for _ in 0..300 {
                c.exec(&insert_people([next])).await.unwrap();
                next += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            at_hub(next as usize, format!("the {next} people of the busy spell")).await;
        }
    }
    assert_hub_matches(&w.store_path(), &(0..next).collect::<Vec<_>>(), next as usize);
    agent.stop().await;
    hub.stop().await;
}

/// A steady writer keeps the source busy across its batched change-log
/// deletes (about once a second): a read that comes back while a delete is
/// due is read again after it, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_steady_trickle_across_change_log_deletes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(dir.path());
    db.create_people().await;
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = db.source("business", "");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    db.wait_for_triggers().await;
    // 600 single-row commits, one every 5 ms: about three seconds, so the
    // deletes fall between reads that find new changes.
    let path = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let c = rusqlite::Connection::open(&path).expect("open sqlite");
        c.busy_timeout(Duration::from_secs(30)).expect("busy timeout");
        for i in 0..600u64 {
            c.execute_batch(&insert_people([i])).expect("insert");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .unwrap();
    eventually("600 at the hub", Duration::from_secs(60), || {
        let n = export(&w.store_path(), false).len();
        (n == 600).then_some(()).ok_or(format!("{n} at the hub"))
    })
    .await;
    assert_hub_matches(&w.store_path(), &(0..600).collect::<Vec<_>>(), 600);
    agent.stop().await;
    hub.stop().await;
}
