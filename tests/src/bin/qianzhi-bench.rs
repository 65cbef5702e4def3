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
//! `qianzhi-bench normalize [ROWS]` measures normalization alone: the 8-field
//! people record through the data-element rules and protobuf encoding, on
//! one core, with no I/O.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::health::Status;
use tests::*;

fn status(addr: &str) -> Option<Status> {
    let body = agent::health::fetch(addr, "/status").ok()?;
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
    let catalog = agent::catalog::Catalog::from_toml_str(CATALOG).expect("catalog");
    let text = format!(
        "agency = \"{GAJ}\"\ndata_dir = \"d\"\ncatalog = \"c\"\n[hub]\nurl = \"https://h:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n{}",
        people_source("people", "drop", "")
    );
    let config = agent::config::Config::from_toml_str(&text, Path::new("/x/agent.toml"), |_| Ok(CATALOG.to_owned()))
        .expect("config");
    let mapping = Mapping::new(GAJ, &config.sources[0], catalog.resource(PEOPLE).expect("resource"));
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

#[tokio::main]
async fn main() {
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
    let hub_port = free_port();
    let hub_toml = w.hub_toml(hub_port);
    let hub_toml = hub_toml.to_str().expect("utf-8 path");
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", hub_toml], &w.path("hub.log"));
    wait_listening(hub_port).await;
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
