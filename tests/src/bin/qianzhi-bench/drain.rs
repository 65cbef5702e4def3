//! `qianzhi-bench drain [ROWS]`: the drain after an outage while a source
//! keeps capturing. One agent has a folder source and a SQLite table
//! source; with the hub down, ROWS records are queued from a file; then the
//! hub returns while a business writer commits single-row transactions to
//! the table at a steady 1,000 a second, during the drain and for a while
//! after it.
//!
//! The outbox is one queue in sequence order, so a change committed during
//! the drain is sent after the backlog; the figures say what that costs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::health::LinkState;
use tests::db::{Db, insert_people, sqlite_path};
use tests::*;

use super::flood::{drop_folder, drop_staged, stage_rows};
use super::process::{Cpu, memory};
use super::{keep_logs, percentile, start_agent, start_hub, stop, wait};

/// The steady writer's rate: single-row transactions a second.
const PER_SECOND: u64 = 1_000;

/// How long the writer goes on after the drain: the steady state it
/// returns to.
const AFTER: Duration = Duration::from_secs(5);

/// A business system's writer: single-row transactions at a steady rate,
/// on a thread of its own so that its pace does not depend on the
/// benchmark's polling, until stopped.
struct Steady {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, i64)>>,
}

impl Steady {
    /// Starts committing people `first..` into the people table of `db`.
    fn start(db: PathBuf, first: u64) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).expect("open the business database");
            c.busy_timeout(Duration::from_secs(30)).expect("busy timeout");
            let period = Duration::from_micros(1_000_000 / PER_SECOND);
            let start = Instant::now();
            let mut committed = Vec::new();
            for (n, i) in (first..).enumerate() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                // Behind schedule, the next ones go at once, as a busy
                // business system's would.
                let due = start + period.mul_f64(n as f64);
                if let Some(early) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(early);
                }
                c.execute_batch(&insert_people([i])).expect("insert");
                committed.push((format!("[\"{}\"]", person(i)[0]), agent::clock::now_us()));
            }
            committed
        });
        Steady { stop, thread }
    }

    /// Stops the writer: what it committed, as (the key as the hub stores
    /// it, the commit's time in µs).
    fn stop(self) -> Vec<(String, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer thread")
    }
}

/// Commit → hub latencies (ms, sorted) of `changes`, from the hub's store,
/// and how many of them the hub had stored by `by_us`.
fn arrivals(store: &std::path::Path, changes: &[&(String, i64)], by_us: i64) -> (Vec<f64>, usize) {
    let committed: std::collections::HashMap<&str, i64> = changes.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let c = rusqlite::Connection::open(store).expect("hub store");
    let mut stmt = c.prepare("SELECT key, received_us FROM history").expect("history");
    let received: Vec<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("history")
        .flatten()
        .filter_map(|(k, at)| committed.get(k.as_str()).map(|t| (*t, at)))
        .collect();
    assert_eq!(received.len(), changes.len(), "every steady change at the hub");
    let early = received.iter().filter(|(_, at)| *at <= by_us).count();
    let mut ms: Vec<f64> = received.iter().map(|(t, at)| (at - t) as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    (ms, early)
}

/// "p50 / p99 / max" of sorted latencies in ms.
fn spread(ms: &[f64]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} ms",
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        percentile(ms, 1.0)
    )
}

pub async fn run(rows: u64) {
    let w = World::new();
    let db = Db::sqlite(w.dir.path());
    db.create_people().await;
    let staged = stage_rows(&w, "backlog", 0..rows);
    let (hub_port, hub_toml, mut hub) = start_hub(&w).await;
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = free_port();
    spec.hub_extra = "backoff_max = \"200ms\"\n".into();
    spec.sources = format!(
        "{}{}",
        people_source("people", "drop/people", ""),
        db.source("business", "")
    );
    drop_folder(&w);
    let (addr, mut agent) = start_agent(&w, &spec).await;
    db.wait_for_triggers().await;

    // The outage: the backlog queued with the hub down.
    stop(&mut [&mut hub]);
    wait("link down", &addr, |s| s.link.state != LinkState::Up).await;
    drop_staged(&w, &staged);
    let backlog = wait("a full backlog", &addr, |s| {
        s.sources.iter().any(|x| x.name == "people" && x.files_done == 1)
    })
    .await;
    let (rss_backlog, _) = memory(agent.id());

    // The hub returns while the business writer goes on.
    let writer = Steady::start(sqlite_path(&db), rows);
    let agent_cpu = Cpu::mark(agent.id());
    let start = Instant::now();
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", &hub_toml], &w.path("hub.log"));
    // The backlog's sequences come before any steady change's.
    let backlog_acked = backlog.link.acked + rows;
    let drained = wait("the drain", &addr, |s| s.link.acked >= backlog_acked).await;
    let drain = start.elapsed();
    let drained_us = agent::clock::now_us();
    // The hub is a new process: all its CPU is the drain's.
    let (agent_cpu, hub_cpu) = (
        agent_cpu.per_million(rows),
        Cpu::since_start(hub.id()).per_million(rows),
    );
    let captured = drained
        .sources
        .iter()
        .find(|x| x.name == "business")
        .map_or(0, |x| x.records);

    tokio::time::sleep(AFTER).await;
    let committed = writer.stop();
    let all = backlog_acked + committed.len() as u64;
    wait("every steady change at the hub", &addr, |s| s.link.acked >= all).await;
    let (during, after): (Vec<_>, Vec<_>) = committed.iter().partition(|(_, t)| *t < drained_us);
    let (during_ms, arrived) = arrivals(&w.store_path(), &during, drained_us);
    let (after_ms, _) = arrivals(&w.store_path(), &after, drained_us);
    let (_, peak) = memory(agent.id());

    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| backlog queued with the hub down | {rows} records, agent RSS {rss_backlog:.1} MiB |");
    println!(
        "| drain after the hub returns (hub start included) | {:.2} s (**{:.0} records/s**) |",
        drain.as_secs_f64(),
        rows as f64 / drain.as_secs_f64()
    );
    println!(
        "| CPU, drain: agent (steady capture included) / hub (start included) | **{agent_cpu:.2} / {hub_cpu:.2} CPU-s per million** |"
    );
    println!(
        "| steady changes committed during the drain | {} ({:.0}/s) |",
        during.len(),
        during.len() as f64 / drain.as_secs_f64()
    );
    println!("| of which in the outbox by the drain's end | {captured} |");
    println!("| of which at the hub by the drain's end | {arrived} |");
    println!(
        "| commit → hub of those, p50 / p99 / max | **{}** |",
        spread(&during_ms)
    );
    println!(
        "| commit → hub of the {} committed in the {} s after, p50 / p99 / max | {} |",
        after.len(),
        AFTER.as_secs(),
        spread(&after_ms)
    );
    println!("| agent peak RSS | {peak:.1} MiB |");
    stop(&mut [&mut agent, &mut hub]);
    keep_logs(&w, &["agent.log", "hub.log"]);
}
