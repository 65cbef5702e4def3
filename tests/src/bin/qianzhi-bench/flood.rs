//! The flood: a people file renamed into the drop folder of a real agent,
//! timed until the hub's durable ack of its last record, with what it cost
//! each process. `full` goes on with the outage (the agent's memory while a
//! backlog is queued with the hub down) and the drain; `generate` only
//! writes the file, so that a peer can be given the same one.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::health::{LinkState, SourceStatus, Status};
use tests::*;

use super::process::{Cpu, memory, peak_rss};
use super::{keep_logs, start_agent, start_hub, stop, wait};

/// What the flood drops.
pub enum Input {
    /// The people rows 0..n, generated.
    Generated(u64),
    /// A file in any layout the people folder source reads (CSV or JSON
    /// Lines with the people columns, told apart by the extension).
    File(PathBuf),
}

/// Writes the people CSV (UTF-8, the header first) of `rows` to `path`.
fn write_people(path: &Path, rows: impl IntoIterator<Item = u64>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create the people file"));
    f.write_all(people_csv(0..0).as_bytes()).expect("write");
    for i in rows {
        writeln!(f, "{}", person(i).join(",")).expect("write");
    }
    f.flush().expect("flush");
}

/// `qianzhi-bench gen ROWS PATH [--shuffled]`.
pub fn generate(rows: u64, path: &Path, shuffled: bool) {
    if shuffled {
        let mut order: Vec<u64> = (0..rows).collect();
        crate::store::shuffle(&mut order);
        write_people(path, order);
    } else {
        write_people(path, 0..rows);
    }
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "wrote {rows} people rows ({:.0} MiB{}) to {}",
        bytes as f64 / 1048576.0,
        if shuffled { ", shuffled" } else { "" },
        path.display()
    );
}

/// Puts the input into the scratch folder as `stem` plus the input's
/// extension (the agent reads a file by its extension), ready to be renamed
/// into the drop folder: a copy, so that a given file stays for the next
/// round, and made before the clock starts.
fn stage(w: &World, input: &Input, stem: &str) -> PathBuf {
    match input {
        Input::Generated(rows) => stage_rows(w, stem, 0..*rows),
        Input::File(from) => {
            let ext = from.extension().and_then(|e| e.to_str()).unwrap_or("csv");
            let path = w.path(&format!("{stem}.{ext}"));
            std::fs::copy(from, &path).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
            path
        }
    }
}

/// Writes generated people `rows` into the scratch folder as `stem`.csv.
pub fn stage_rows(w: &World, stem: &str, rows: Range<u64>) -> PathBuf {
    let path = w.path(&format!("{stem}.csv"));
    write_people(&path, rows);
    path
}

/// The people source's drop folder, made before the agent starts: the
/// agent watches a folder that exists (inotify) and only rescans, once a
/// second, one that does not yet.
pub fn drop_folder(w: &World) -> PathBuf {
    let folder = w.path("drop/people");
    std::fs::create_dir_all(&folder).expect("drop dir");
    folder
}

/// Renames a staged file into the drop folder: the business system's
/// complete file appears at once.
pub fn drop_staged(w: &World, staged: &Path) {
    let name = staged.file_name().expect("staged file name");
    std::fs::rename(staged, drop_folder(w).join(name)).expect("rename into drop folder");
}

/// Sums a counter over the agent's sources.
fn sum(s: &Status, counter: impl Fn(&SourceStatus) -> u64) -> u64 {
    s.sources.iter().map(counter).sum()
}

/// What one flood measured.
struct Flood {
    name: String,
    bytes: u64,
    /// Records the file became (what the hub acknowledged).
    records: u64,
    /// Rows the agent quarantined instead (none in generated files).
    quarantined: u64,
    /// Drop → the file done: every record in the outbox.
    queued: Duration,
    /// Drop → the hub's ack of the last record.
    acked: Duration,
    agent_cpu: f64,
    hub_cpu: f64,
    agent_peak: f64,
    hub_peak: f64,
}

impl Flood {
    /// Drops `staged` into the running agent's folder and waits for the
    /// hub's ack of every record it became.
    async fn measure(w: &World, addr: &str, agent: u32, hub: u32, staged: &Path) -> Flood {
        let name = staged
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::metadata(staged).map_or(0, |m| m.len());
        let (agent_cpu, hub_cpu) = (Cpu::mark(agent), Cpu::mark(hub));
        let start = Instant::now();
        drop_staged(w, staged);
        let mut queued = None;
        // The records a file becomes are known once it is done, so that a
        // given file need not be counted beforehand.
        let s = wait("the hub's ack of every record", addr, |s| {
            if sum(s, |x| x.files_rejected) > 0 {
                return true;
            }
            if sum(s, |x| x.files_done) == 0 {
                return false;
            }
            queued.get_or_insert(start.elapsed());
            s.link.acked >= sum(s, |x| x.records)
        })
        .await;
        let acked = start.elapsed();
        let problems: Vec<&String> = s.sources.iter().flat_map(|x| &x.problems).collect();
        assert_eq!(
            sum(&s, |x| x.files_rejected),
            0,
            "the agent rejected {name}: {problems:?}"
        );
        let records = sum(&s, |x| x.records);
        Flood {
            name,
            bytes,
            records,
            quarantined: sum(&s, |x| x.quarantined),
            queued: queued.unwrap_or(acked),
            acked,
            agent_cpu: agent_cpu.per_million(records),
            hub_cpu: hub_cpu.per_million(records),
            agent_peak: peak_rss(agent),
            hub_peak: peak_rss(hub),
        }
    }

    fn rate(&self) -> f64 {
        self.records as f64 / self.acked.as_secs_f64()
    }

    /// The header of the table `row` prints into.
    fn header() {
        println!(
            "| system | input | records | drop → hub's durable ack | records/s | agent CPU-s per million | \
             hub CPU-s per million | agent peak RSS | hub peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }

    /// One markdown row (bench/side-by-side.sh reads its columns).
    fn row(&self) {
        println!(
            "| Qianzhi | {} ({:.0} MiB) | {} | {:.2} s | {:.0} | {:.2} | {:.2} | {:.1} MiB | {:.1} MiB |",
            self.name,
            self.bytes as f64 / 1048576.0,
            self.records,
            self.acked.as_secs_f64(),
            self.rate(),
            self.agent_cpu,
            self.hub_cpu,
            self.agent_peak,
            self.hub_peak
        );
        if self.quarantined > 0 {
            println!(
                "\n{} rows of {} were quarantined, not delivered",
                self.quarantined, self.name
            );
        }
    }
}

/// A hub and an agent with the people folder source: (the agent's health
/// address, the agent, the hub's config path, the hub).
async fn start(w: &World, compression: &str) -> (String, std::process::Child, String, std::process::Child) {
    drop_folder(w);
    let (hub_port, hub_toml, hub) = start_hub(w).await;
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = free_port();
    spec.hub_extra = format!("backoff_max = \"200ms\"\ncompression = \"{compression}\"\n");
    // Extra `[hub]` keys for the agent, `;` between them (say
    // `max_in_flight = 24;batch_bytes = "4MiB"`), to measure the link's
    // settings without a build.
    if let Ok(extra) = std::env::var("QIANZHI_BENCH_HUB_EXTRA") {
        spec.hub_extra.push_str(&extra.replace(';', "\n"));
        spec.hub_extra.push('\n');
    }
    let (addr, agent) = start_agent(w, &spec).await;
    (addr, agent, hub_toml, hub)
}

/// `qianzhi-bench flood`: the flood alone, one table row.
pub async fn alone(input: Input, compression: &str) {
    let w = World::new();
    let staged = stage(&w, &input, "bench-1");
    let (addr, mut agent, _, mut hub) = start(&w, compression).await;
    let flood = Flood::measure(&w, &addr, agent.id(), hub.id(), &staged).await;
    Flood::header();
    flood.row();
    stop(&mut [&mut agent, &mut hub]);
    keep_logs(&w, &["agent.log", "hub.log"]);
}

/// `qianzhi-bench [ROWS]`: the flood, then the outage and the drain.
pub async fn full(input: Input, compression: &str) {
    let w = World::new();
    println!("scratch folder {}", w.dir.path().display());
    let staged = stage(&w, &input, "bench-1");
    let (addr, mut agent, hub_toml, mut hub) = start(&w, compression).await;

    // Phase 1: the flood, drop to the hub's durable ack.
    let flood = Flood::measure(&w, &addr, agent.id(), hub.id(), &staged).await;

    // Phase 2: the hub down, as many generated rows queued, with keys after
    // those of a generated first file.
    let rows = flood.records + flood.quarantined;
    stop(&mut [&mut hub]);
    wait("link down", &addr, |s| s.link.state != LinkState::Up).await;
    let staged = stage_rows(&w, "bench-2", rows..2 * rows);
    drop_staged(&w, &staged);
    // The second file done: its records are all queued. The queue may
    // still count acknowledged records of the first, whose deletes wait
    // for the next commit (up to a second).
    let backlog = wait("a full backlog", &addr, |s| sum(s, |x| x.files_done) >= 2).await;
    let (rss_backlog, peak2) = memory(agent.id());

    // Phase 3: the hub back, the backlog drained: the hub's ack of its last
    // record, as for the flood.
    let agent_cpu = Cpu::mark(agent.id());
    let start = Instant::now();
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", &hub_toml], &w.path("hub.log"));
    let all = backlog.link.acked + rows;
    wait("the drain", &addr, |s| s.link.acked >= all).await;
    let drain = start.elapsed();
    // The hub is a new process: all its CPU is the drain's.
    let (agent_drain, hub_drain) = (
        agent_cpu.per_million(rows),
        Cpu::since_start(hub.id()).per_million(rows),
    );
    let (_, peak3) = memory(agent.id());

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| records in {} | {} ({:.0} MiB) |",
        flood.name,
        flood.records,
        flood.bytes as f64 / 1048576.0
    );
    println!(
        "| drop → all records in the outbox | {:.2} s ({:.0} records/s) |",
        flood.queued.as_secs_f64(),
        rate(flood.records, flood.queued)
    );
    println!(
        "| drop → hub's durable ack of the last record | {:.2} s (**{:.0} records/s**) |",
        flood.acked.as_secs_f64(),
        flood.rate()
    );
    println!(
        "| CPU, drop → ack: agent / hub | **{:.2} / {:.2} CPU-s per million** |",
        flood.agent_cpu, flood.hub_cpu
    );
    println!("| agent peak RSS during phase 1 | {:.1} MiB |", flood.agent_peak);
    println!("| hub peak RSS during phase 1 | {:.1} MiB |", flood.hub_peak);
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
    println!("| CPU, drain: agent / hub (hub start included) | {agent_drain:.2} / {hub_drain:.2} CPU-s per million |");
    println!("| agent peak RSS overall | {peak3:.1} MiB |");
    if flood.quarantined > 0 {
        println!(
            "\n{} rows of {} were quarantined, not delivered",
            flood.quarantined, flood.name
        );
    }
    stop(&mut [&mut agent, &mut hub]);
    keep_logs(&w, &["agent.log", "hub.log"]);
}
