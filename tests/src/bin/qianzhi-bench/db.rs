//! `qianzhi-bench db sqlite|postgres|mysql`: a database source at rest, at
//! 10 to 10,000 single-row transactions a second, and with a backlog.

use std::time::{Duration, Instant};

use tests::*;

use super::process::cpu_seconds;
use super::{percentile, start_hub, wait};

pub async fn run(kind: &str) {
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
        // One connection that waits for its fsync cannot commit 10,000
        // times a second here: for that step the writer stops waiting for
        // it (the commit is visible at once, the capture sees the same).
        let fast = per_second >= 10_000;
        let durability = if fast {
            relax_durability(&mut c, kind).await
        } else {
            None
        };
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (a0, h0, t) = (cpu_seconds(agent.id()), cpu_seconds(hub.id()), Instant::now());
        for i in next..next + n {
            tick.tick().await;
            c.exec(&insert_people([i])).await.expect("insert");
        }
        next += n;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        if let Some(restore) = durability {
            c.exec(&restore).await.expect("the load generator's durability setting");
        }
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

/// Lets the load generator's connection commit without waiting for its own
/// fsync (SQLite `synchronous = NORMAL` in WAL mode, PostgreSQL
/// `synchronous_commit = off`) and returns the statement that puts back what
/// it had. MariaDB's setting is server-wide, so it is left alone.
async fn relax_durability(c: &mut tests::db::Conn, kind: &str) -> Option<String> {
    let (relax, restore) = match kind {
        "sqlite" => {
            let was = c
                .strings("SELECT CAST(synchronous AS TEXT) FROM pragma_synchronous")
                .await;
            let was = was.first().expect("PRAGMA synchronous").clone();
            ("PRAGMA synchronous = NORMAL", format!("PRAGMA synchronous = {was}"))
        }
        "postgres" => ("SET synchronous_commit = off", "RESET synchronous_commit".to_owned()),
        _ => return None,
    };
    c.exec(relax).await.expect("the load generator's durability setting");
    Some(restore)
}
