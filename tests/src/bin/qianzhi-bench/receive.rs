//! `qianzhi-bench receive [CHANGES]`: the receiving direction, from a
//! provider's table through the hub to receivers' SQLite table sinks.

use std::time::{Duration, Instant};

use tests::*;

use super::process::{cpu_seconds, memory};
use super::{percentile, start_hub, wait};

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

pub async fn run(changes: u64) {
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
