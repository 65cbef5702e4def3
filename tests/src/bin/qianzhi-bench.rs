//! The end-to-end benchmark (not a test): a 1,000,000-row CSV dropped into
//! the folder of a real `qianzhi` process, delivered over mTLS gRPC to a
//! real `qianzhi-hub` process, timed until the hub's durable ack of the last
//! record; then the agent's memory while a million records are queued with
//! the hub down, and the drain of that backlog.
//!
//!     cargo build --release --workspace --bins && target/release/qianzhi-bench [ROWS]
//!
//! `qianzhi-bench normalize [ROWS]` measures normalization alone: the 8-field
//! people record through the data-element rules and protobuf encoding, on
//! one core, with no I/O.
//!
//! `qianzhi-bench db sqlite|postgres|mysql` measures a database source:
//! the agent's CPU while nothing changes, the latency from a commit in the
//! business database to the hub's store at a steady 1,000 changes/s, the
//! CPU of the agent and the hub per change at 10 to 10,000 changes/s, and
//! the capture throughput of a 200,000-change backlog.
//!
//! `qianzhi-bench receive [CHANGES]` measures the receiving direction: a
//! provider agent on a SQLite table, a hub, and receiver agents with SQLite
//! table sinks (all real processes). Provider commit → receiver's table at
//! a steady 1,000 changes/s with 1 and with 4 receivers (p50, p99), the
//! hub's CPU per delivered change, and the catch-up of one receiver that
//! was stopped while CHANGES (default 1,000,000) changes happened: rate,
//! CPU-seconds per million, peak RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::health::Status;
use tests::*;

fn status(addr: &str) -> Option<Status> {
    let body = agent::cli::status::fetch(addr, "/status").ok()?;
    serde_json::from_str(&body).ok()
}

/// (VmRSS, VmHWM) of a process in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn stage(w: &World, name: &str, rows: std::ops::Range<u64>) -> std::path::PathBuf {
    let path = w.path(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("stage file"));
    use std::io::Write;
    f.write_all(people_csv(0..0).as_bytes()).expect("write");
    for i in rows {
        writeln!(f, "{}", person(i).join(",")).expect("write");
    }
    f.flush().expect("flush");
    path
}

fn drop_staged(w: &World, staged: &Path, name: &str) {
    std::fs::create_dir_all(w.path("drop/people")).expect("drop dir");
    std::fs::rename(staged, w.path("drop/people").join(name)).expect("rename into drop folder");
}

async fn wait(what: &str, addr: &str, mut done: impl FnMut(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(s) = status(addr)
            && done(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Normalization alone, on this thread: messy but valid people rows.
fn bench_normalize(rows: u64) {
    use agent::normalize::{Field, Mapping, Origin, Outcome};
    use std::borrow::Cow;
    let catalog = rules::catalog::Catalog::from_toml_str(CATALOG).expect("catalog");
    let text = format!(
        "agency = \"{GAJ}\"\ndata_dir = \"d\"\ncatalog = \"c\"\n[hub]\nurl = \"https://h:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n{}",
        people_source("people", "drop", "")
    );
    let config = agent::config::Config::from_toml_str(&text, Path::new("/x/agent.toml"), |_| Ok(CATALOG.to_owned()))
        .expect("config");
    let mapping = Mapping::new(
        GAJ,
        &config.sources[0].name,
        &config.sources[0].mapping,
        catalog.resource(PEOPLE).expect("resource"),
    );
    // Columns in the mapping's order, with the kinds of mess real exports have.
    let order: Vec<usize> = mapping
        .columns()
        .map(|c| PEOPLE_COLUMNS.iter().position(|(h, _)| *h == c).expect("column"))
        .collect();
    let distinct = 10_000u64;
    let inputs: Vec<Vec<String>> = (0..distinct)
        .map(|i| {
            let mut p = person(i);
            p[0] = p[0].to_lowercase();
            p[1] = format!(" {} ", p[1]);
            p[2] = if i % 2 == 0 { "男".into() } else { "女".into() };
            p[4] = "汉族".into();
            p[6] = format!("+86 {}", p[6]);
            p[7] = "2024年3月1日".into();
            order.iter().map(|&c| p[c].clone()).collect()
        })
        .collect();
    let start = Instant::now();
    let (mut ok, mut bytes) = (0u64, 0usize);
    for n in 0..rows {
        let row = &inputs[(n % distinct) as usize];
        let fields: Vec<Field<'_>> = row.iter().map(|v| Some(Ok(Cow::Borrowed(v.as_str())))).collect();
        if let Outcome::Record { bytes: r, .. } = mapping.normalize(
            &fields,
            Origin {
                object: "bench.csv",
                line: n,
            },
            0,
        ) {
            ok += 1;
            bytes += r.len();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, rows, "every bench row is valid");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| rows normalized (8 fields, one core) | {rows} |");
    println!("| time | {:.2} s |", elapsed.as_secs_f64());
    println!("| **records/s** | **{:.0}** |", rows as f64 / elapsed.as_secs_f64());
    println!("| mean encoded record | {} bytes |", bytes as u64 / rows);
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `qianzhi-hub` process on a free port: (port, its config path, the process).
async fn start_hub(w: &World) -> (u16, String, std::process::Child) {
    let port = free_port();
    let config = w.hub_toml(port).to_str().expect("utf-8 path").to_owned();
    let hub = spawn("qianzhi-hub", &["serve", "--config", &config], &w.path("hub.log"));
    wait_listening(port).await;
    (port, config, hub)
}

async fn bench_db(kind: &str) {
    use tests::db::{Db, insert_people};
    let w = World::new();
    let db = match kind {
        "sqlite" => Db::sqlite(w.dir.path()),
        "postgres" => Db::postgres().await.expect("PostgreSQL at 127.0.0.1:5432"),
        "mysql" => Db::mysql().await.expect("MariaDB at 127.0.0.1:3306"),
        other => panic!("unknown database {other:?}: sqlite, postgres or mysql"),
    };
    db.create_people().await;
    let (hub_port, _, mut hub) = start_hub(&w).await;
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = free_port();
    spec.sources = db.source("business", "");
    let config = w.agent_toml(&spec);
    let config = config.to_str().expect("utf-8").to_owned();
    let start_agent = || spawn("qianzhi", &["--config", &config, "run"], &w.path("agent.log"));
    let mut agent = start_agent();
    let addr = format!("127.0.0.1:{}", spec.health_port);
    wait("the agent", &addr, |s| s.link.state == agent::health::LinkState::Up).await;
    db.wait_for_triggers().await;

    // Idle: nothing changes for 10 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, t0) = (cpu_seconds(agent.id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = (cpu_seconds(agent.id()) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;

    // The cost curve: single-row transactions at 10, 100, 1,000 and 10,000
    // a second (or as fast as one connection commits), CPU of both
    // processes per change. Keys go on from `next`.
    let mut c = db.connect().await;
    let mut next = 0u64;
    let mut curve = Vec::new();
    for (per_second, seconds) in [(10u64, 10u64), (100, 10), (10_000, 5)] {
        let n = per_second * seconds;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (a0, h0, t) = (cpu_seconds(agent.id()), cpu_seconds(hub.id()), Instant::now());
        for i in next..next + n {
            tick.tick().await;
            c.exec(&insert_people([i])).await.expect("insert");
        }
        next += n;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        wait("the changes at the hub", &addr, |s| s.link.acked >= next).await;
        let elapsed = t.elapsed().as_secs_f64();
        let (a, h) = (cpu_seconds(agent.id()) - a0, cpu_seconds(hub.id()) - h0);
        curve.push((
            per_second,
            rate,
            a / elapsed * 100.0,
            a / n as f64 * 1e6,
            h / elapsed * 100.0,
            h / n as f64 * 1e6,
        ));
    }

    // Latency: 1,000 single-row transactions a second for 10 s.
    const STEADY: u64 = 10_000;
    let mut committed = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (cpu1, hub1, t1) = (cpu_seconds(agent.id()), cpu_seconds(hub.id()), Instant::now());
    for i in next..next + STEADY {
        tick.tick().await;
        c.exec(&insert_people([i])).await.expect("insert");
        committed.insert(format!("[\"{}\"]", person(i)[0]), agent::clock::now_us());
    }
    next += STEADY;
    let rate = STEADY as f64 / t1.elapsed().as_secs_f64();
    wait("the steady changes at the hub", &addr, |s| s.link.acked >= next).await;
    let busy = (cpu_seconds(agent.id()) - cpu1) / t1.elapsed().as_secs_f64() * 100.0;
    let hub_busy = (cpu_seconds(hub.id()) - hub1) / t1.elapsed().as_secs_f64() * 100.0;
    curve.push((
        1_000,
        rate,
        busy,
        busy / 100.0 * t1.elapsed().as_secs_f64() / STEADY as f64 * 1e6,
        hub_busy,
        hub_busy / 100.0 * t1.elapsed().as_secs_f64() / STEADY as f64 * 1e6,
    ));
    curve.sort_by_key(|c| c.0);
    let store = rusqlite::Connection::open(w.store_path()).expect("hub store");
    let mut stmt = store.prepare("SELECT key, received_us FROM history").expect("history");
    let mut lat: Vec<f64> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("history")
        .flatten()
        .filter_map(|(k, at)| committed.get(&k).map(|c| (at - c) as f64 / 1000.0))
        .collect();
    drop(stmt);
    assert_eq!(lat.len() as u64, STEADY, "every steady change at the hub");
    lat.sort_by(f64::total_cmp);

    // Throughput: a backlog of 200,000 changes written while the agent is
    // stopped, then captured.
    const BACKLOG: u64 = 200_000;
    agent.kill().expect("kill agent");
    agent.wait().expect("reap agent");
    for b in 0..BACKLOG / 1000 {
        let from = next + b * 1000;
        c.exec(&insert_people(from..from + 1000)).await.expect("insert");
    }
    let mut agent = start_agent();
    let t2 = Instant::now();
    wait("the backlog at the hub", &addr, |s| s.link.acked >= BACKLOG).await;
    let capture = t2.elapsed();

    println!();
    println!("| figure ({kind}) | value |");
    println!("|---|---|");
    println!("| agent CPU while nothing changes (10 s) | {idle:.2} % of one core |");
    println!("| steady load | {STEADY} single-row transactions at {rate:.0}/s |");
    println!(
        "| commit → hub store, p50 / p99 / max | **{:.1} ms / {:.1} ms** / {:.1} ms |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("| agent CPU at 1,000 changes/s | {busy:.1} % of one core |");
    println!("| hub CPU at 1,000 changes/s | {hub_busy:.1} % of one core |");
    println!(
        "| backlog of {BACKLOG} changes → hub's ack (agent start included) | {:.2} s (**{:.0} changes/s**) |",
        capture.as_secs_f64(),
        BACKLOG as f64 / capture.as_secs_f64()
    );
    println!();
    println!(
        "| changes/s asked (reached) | agent % of a core | agent µs per change | hub % of a core | hub µs per change |"
    );
    println!("|---|---|---|---|---|");
    for (asked, reached, a_pct, a_us, h_pct, h_us) in curve {
        println!("| {asked} ({reached:.0}) | {a_pct:.1} | {a_us:.0} | {h_pct:.1} | {h_us:.0} |");
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = hub.kill();
    let _ = hub.wait();
}

/// A receiver agent process of `agency` with a SQLite table sink `people`
/// in `db` (made here, with a trigger noting when each row arrives).
async fn start_receiver(w: &World, agency: &str, hub_port: u16) -> (String, std::process::Child, std::path::PathBuf) {
    let health = free_port();
    let db = w.path(&format!("{agency}.db"));
    let c = rusqlite::Connection::open(&db).expect("receiver db");
    let items: Vec<String> = PEOPLE_COLUMNS.iter().map(|(_, de)| format!("{de} TEXT")).collect();
    c.execute_batch(&format!(
        "PRAGMA journal_mode = wal;
         CREATE TABLE IF NOT EXISTS people ({}, qianzhi_provider TEXT, qianzhi_agreement TEXT,
             qianzhi_seq INTEGER, qianzhi_captured_at INTEGER, PRIMARY KEY (DE00001));
         CREATE TABLE IF NOT EXISTS arrivals (key TEXT, at_us INTEGER);
         CREATE TRIGGER IF NOT EXISTS arrived AFTER INSERT ON people BEGIN
             INSERT INTO arrivals VALUES (NEW.DE00001, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
         END;",
        items.join(", ")
    ))
    .expect("receiver table");
    let config = w.write(
        &format!("{agency}.toml"),
        &format!(
            "agency = \"{agency}\"\ndata_dir = \"{agency}-data\"\ncatalog = \"catalog.toml\"\n\
             [hub]\nurl = \"https://localhost:{hub_port}\"\nca = \"pki/ca.pem\"\ncert = \"pki/{agency}.pem\"\n\
             key = \"pki/{agency}.key\"\nbackoff_max = \"200ms\"\n[health]\nlisten = \"127.0.0.1:{health}\"\n\
             [[subscription]]\nresource = \"{PEOPLE}\"\ntype = \"sqlite\"\npath = \"{}\"\ntable = \"people\"\n",
            db.display()
        ),
    );
    let p = spawn(
        "qianzhi",
        &["--config", config.to_str().expect("utf-8"), "run"],
        &w.path(&format!("{agency}.log")),
    );
    let addr = format!("127.0.0.1:{health}");
    wait("the receiver", &addr, |s| {
        s.subscriptions.first().is_some_and(|x| x.state == "receiving")
    })
    .await;
    (addr, p, db)
}

async fn bench_receive(changes: u64) {
    use tests::db::{Db, insert_people};
    let w = World::new();
    let db = Db::sqlite(w.dir.path());
    db.create_people().await;
    let (hub_port, hub_toml, mut hub) = start_hub(&w).await;
    let receivers: Vec<String> = (1..=4).map(|n| format!("320282-r{n}")).collect();
    for (n, r) in receivers.iter().enumerate() {
        w.issue(r, pki::dev::Validity::default(), r);
        let out = std::process::Command::new(bin("qianzhi-hub"))
            .args([
                "agreement",
                "--config",
                &hub_toml,
                "add",
                "--id",
                &format!("BENCH-{n}"),
                "--resource",
                PEOPLE,
            ])
            .args([
                "--agency",
                r,
                "--items",
                "DE00002,DE00003,DE00004,DE00005,DE00006,DE00007,DE00008",
            ])
            .args([
                "--purpose",
                "benchmark",
                "--from",
                "2020-01-01",
                "--until",
                "2099-01-01",
            ])
            .output()
            .expect("agreement");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = free_port();
    spec.sources = db.source("business", "");
    let config = w.agent_toml(&spec);
    let mut provider = spawn(
        "qianzhi",
        &["--config", config.to_str().expect("utf-8"), "run"],
        &w.path("agent.log"),
    );
    let addr = format!("127.0.0.1:{}", spec.health_port);
    wait("the provider", &addr, |s| s.link.state == agent::health::LinkState::Up).await;
    db.wait_for_triggers().await;
    let mut c = db.connect().await;
    let mut next = 0u64;
    let mut started = Vec::new();
    let mut steady = Vec::new();
    for count in [1usize, 4] {
        while started.len() < count {
            let r = &receivers[started.len()];
            started.push(start_receiver(&w, r, hub_port).await);
        }
        const STEADY: u64 = 10_000;
        let mut committed = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let hub0 = cpu_seconds(hub.id());
        let recv0: f64 = started.iter().map(|(_, p, _)| cpu_seconds(p.id())).sum();
        for i in next..next + STEADY {
            tick.tick().await;
            c.exec(&insert_people([i])).await.expect("insert");
            committed.insert(person(i)[0].clone(), agent::clock::now_us());
        }
        next += STEADY;
        for (a, _, db) in &started {
            wait("the steady changes at a receiver", a, |_| {
                rusqlite::Connection::open(db)
                    .and_then(|c| c.query_row("SELECT count(*) FROM people", [], |r| r.get::<_, i64>(0)))
                    .is_ok_and(|n| n as u64 >= next)
            })
            .await;
        }
        let hub_cpu = cpu_seconds(hub.id()) - hub0;
        let recv_cpu: f64 = started.iter().map(|(_, p, _)| cpu_seconds(p.id())).sum::<f64>() - recv0;
        let mut lat = Vec::new();
        for (_, _, db) in &started {
            let c = rusqlite::Connection::open(db).expect("receiver db");
            let mut stmt = c.prepare("SELECT key, at_us FROM arrivals").expect("arrivals");
            lat.extend(
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .expect("arrivals")
                    .flatten()
                    .filter_map(|(k, at)| committed.get(&k).map(|t| (at - t) as f64 / 1000.0)),
            );
        }
        assert_eq!(
            lat.len() as u64,
            STEADY * count as u64,
            "every change at every receiver"
        );
        lat.sort_by(f64::total_cmp);
        let delivered = (STEADY * count as u64) as f64;
        steady.push((
            count,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0),
            hub_cpu / delivered * 1e6,
            recv_cpu / delivered * 1e6,
        ));
    }

    // Catch-up: receiver 1 stopped while `changes` changes happen.
    let (_, mut p1, _) = started.remove(0);
    for (_, mut p, _) in started {
        let _ = p.kill();
        let _ = p.wait();
    }
    p1.kill().expect("stop receiver");
    p1.wait().expect("reap receiver");
    for b in 0..changes / 1000 {
        let from = next + b * 1000;
        c.exec(&insert_people(from..from + 1000)).await.expect("insert");
    }
    next += changes / 1000 * 1000;
    wait("the backlog at the hub", &addr, |s| s.link.acked >= next).await;
    let hub0 = cpu_seconds(hub.id());
    let t = Instant::now();
    let (a1, p1, _) = start_receiver(&w, &receivers[0], hub_port).await;
    wait("the catch-up", &a1, |s| {
        s.subscriptions.first().is_some_and(|x| x.applied >= changes)
    })
    .await;
    let took = t.elapsed().as_secs_f64();
    let recv_cpu = cpu_seconds(p1.id());
    let hub_cpu = cpu_seconds(hub.id()) - hub0;
    let (_, peak) = memory(p1.id());

    println!();
    println!(
        "| receivers | provider commit → receiver's table p50 / p99 / max | hub µs per delivered change | receiver µs per change |"
    );
    println!("|---|---|---|---|");
    for (n, p50, p99, max, hub_us, recv_us) in steady {
        println!("| {n} | **{p50:.1} ms / {p99:.1} ms** / {max:.1} ms | {hub_us:.0} | {recv_us:.0} |");
    }
    println!();
    println!("| catch-up of one receiver | value |");
    println!("|---|---|");
    println!(
        "| changes applied (receiver start included) | {changes} in {took:.2} s (**{:.0} changes/s**) |",
        changes as f64 / took
    );
    println!(
        "| receiver CPU | {:.1} CPU-s per million |",
        recv_cpu / changes as f64 * 1e6
    );
    println!("| hub CPU | {:.1} CPU-s per million |", hub_cpu / changes as f64 * 1e6);
    println!("| receiver peak RSS | {peak:.1} MiB |");
    let mut p1 = p1;
    for p in [&mut p1, &mut provider, &mut hub] {
        let _ = p.kill();
        let _ = p.wait();
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("receive") {
        let changes = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        return bench_receive(changes).await;
    }
    if std::env::args().nth(1).as_deref() == Some("db") {
        let kind = std::env::args().nth(2).unwrap_or_else(|| "sqlite".into());
        return bench_db(&kind).await;
    }
    if std::env::args().nth(1).as_deref() == Some("normalize") {
        let rows = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(2_000_000);
        return bench_normalize(rows);
    }
    let rows: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let w = World::new();
    println!("scratch folder {}", w.dir.path().display());
    let (hub_port, hub_toml, mut hub) = start_hub(&w).await;
    let hub_toml = hub_toml.as_str();
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = free_port();
    spec.hub_extra = "backoff_max = \"200ms\"\n".into();
    let config = w.agent_toml(&spec);
    let mut agent = spawn(
        "qianzhi",
        &["--config", config.to_str().expect("utf-8"), "run"],
        &w.path("agent.log"),
    );
    let addr = format!("127.0.0.1:{}", spec.health_port);
    wait("the agent", &addr, |s| s.link.state == agent::health::LinkState::Up).await;

    // Phase 1: throughput, drop to the hub's durable ack.
    let staged = stage(&w, "bench-1.csv", 0..rows);
    let bytes = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    drop_staged(&w, &staged, "bench-1.csv");
    let mut queued_at = None;
    wait("the hub's ack of every record", &addr, |s| {
        if queued_at.is_none() && s.sources.iter().map(|x| x.records).sum::<u64>() >= rows {
            queued_at = Some(start.elapsed());
        }
        s.link.acked >= rows
    })
    .await;
    let elapsed = start.elapsed();
    let (_, peak1) = memory(agent.id());
    let queued = queued_at.unwrap_or(elapsed);

    // Phase 2: the hub down, a million records queued.
    hub.kill().expect("kill hub");
    hub.wait().expect("reap hub");
    wait("link down", &addr, |s| s.link.state != agent::health::LinkState::Up).await;
    let staged = stage(&w, "bench-2.csv", rows..2 * rows);
    drop_staged(&w, &staged, "bench-2.csv");
    let backlog = wait("a full backlog", &addr, |s| s.queue.records >= rows).await;
    let (rss_backlog, peak2) = memory(agent.id());

    // Phase 3: the hub back, the backlog drained.
    let start = Instant::now();
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", hub_toml], &w.path("hub.log"));
    wait("the drain", &addr, |s| s.queue.records == 0).await;
    let drain = start.elapsed();
    let (_, peak3) = memory(agent.id());

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| rows in the file | {rows} ({:.0} MiB CSV) |",
        bytes as f64 / 1048576.0
    );
    println!(
        "| drop → all records in the outbox | {:.2} s ({:.0} records/s) |",
        queued.as_secs_f64(),
        rate(rows, queued)
    );
    println!(
        "| drop → hub's durable ack of the last record | {:.2} s (**{:.0} records/s**) |",
        elapsed.as_secs_f64(),
        rate(rows, elapsed)
    );
    println!("| agent peak RSS during phase 1 | {peak1:.1} MiB |");
    println!(
        "| agent RSS with {} records queued, hub down | {rss_backlog:.1} MiB (outbox {:.0} MiB on disk) |",
        backlog.queue.records,
        backlog.queue.bytes as f64 / 1048576.0
    );
    println!("| agent peak RSS up to then | {peak2:.1} MiB |");
    println!(
        "| backlog drain after the hub returns | {:.2} s ({:.0} records/s) |",
        drain.as_secs_f64(),
        rate(rows, drain)
    );
    println!("| agent peak RSS overall | {peak3:.1} MiB |");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = hub.kill();
    let _ = hub.wait();
    // The scratch folder goes; the logs stay for a look afterwards.
    let logs = std::env::temp_dir().join("qianzhi-bench-logs");
    if std::fs::create_dir_all(&logs).is_ok() {
        for f in ["agent.log", "hub.log"] {
            let _ = std::fs::copy(w.path(f), logs.join(f));
        }
        println!("\nlogs in {}", logs.display());
    }
}
