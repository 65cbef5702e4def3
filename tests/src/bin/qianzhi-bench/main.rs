//! The benchmarks (not tests): real `qianzhi` and `qianzhi-hub` processes on
//! loopback, mTLS gRPC, both stores SQLite with synchronous=FULL. Each mode
//! prints markdown tables; BENCHMARKS.md holds the figures and the commands.
//!
//!     cargo build --release -p agent -p hub-stub -p tests --bins
//!
//! `qianzhi-bench [ROWS] [--file PATH]` (default 1,000,000 generated rows):
//! the flood (a people file renamed into the drop folder, timed until the
//! hub's durable ack of its last record), then the agent's memory while a
//! million records are queued with the hub down, and the drain of that
//! backlog. With `--file` the flood drops a copy of PATH instead of
//! generated rows (any layout the agent's folder source reads with the
//! people columns: CSV or JSON Lines, by extension); the backlog is still
//! generated. CPU-seconds per million records of the agent and of the hub
//! are read from /proc for the flood and the drain.
//!
//! `qianzhi-bench flood [ROWS] [--file PATH]`: the flood alone, as one table
//! row (the side-by-side script's Qianzhi round: bench/side-by-side.sh).
//! `--compression none` (or `gzip`) sets the agent's `hub.compression` for
//! either flood (default zstd, the agent's default).
//!
//! `qianzhi-bench gen ROWS PATH [--shuffled]`: only writes the generated
//! people CSV, so that the same file can be given to a peer; with
//! `--shuffled` its rows (and so its keys) come in a fixed random order, as
//! in a real export, instead of ascending.
//!
//! `qianzhi-bench drain [ROWS]`: the drain after an outage of ROWS queued
//! records while a SQLite table source takes a steady 1,000 changes/s: the
//! drain rate, CPU-seconds per million of both processes, and what happens
//! to the steady changes during the drain (captured, delivered, commit →
//! hub latency).
//!
//! `qianzhi-bench agencies [N] [RECORDS_PER_AGENCY]` (default 50 and
//! 20,000): one hub and N light clients in this process that speak the
//! protocol as N agencies with their own certificates and resources:
//! aggregate durable throughput, ack latency per stream, the hub's peak
//! RSS and CPU, and whether any stream starved.
//!
//! `qianzhi-bench normalize [ROWS]` measures normalization alone: the 8-field
//! people record through the data-element rules and protobuf encoding, on
//! one core, with no I/O.
//!
//! `qianzhi-bench store [ROWS]` measures the hub's work alone, with no
//! network, on one thread: reading and checking records, and storing them
//! in batches of 4,096, with keys in ascending and in shuffled order, as
//! CPU-seconds per million records.
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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::health::Status;
use tests::*;

mod agencies;
mod db;
mod drain;
mod flood;
mod normalize;
mod process;
mod receive;
mod store;

const USAGE: &str = "usage: qianzhi-bench [ROWS] [--file PATH] [--compression zstd|gzip|none]
       qianzhi-bench flood [ROWS] [--file PATH] [--compression zstd|gzip|none]
       qianzhi-bench gen ROWS PATH [--shuffled]
       qianzhi-bench drain [ROWS]
       qianzhi-bench agencies [N] [RECORDS_PER_AGENCY]
       qianzhi-bench normalize [ROWS]
       qianzhi-bench store [ROWS]
       qianzhi-bench db sqlite|postgres|mysql
       qianzhi-bench receive [CHANGES]";

/// Says what was wrong with the command line and exits with EX_USAGE.
fn usage(problem: &str) -> ! {
    eprintln!("qianzhi-bench: {problem}\n{USAGE}");
    std::process::exit(64)
}

/// The command line after the mode: positional arguments, `--file` and
/// `--compression` (the agent's `hub.compression`, for the flood).
struct Args {
    positional: Vec<String>,
    file: Option<PathBuf>,
    compression: Option<String>,
    shuffled: bool,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Args {
        let (mut positional, mut file, mut compression, mut shuffled) = (Vec::new(), None, None, false);
        let mut args = args;
        while let Some(a) = args.next() {
            if a == "--file" {
                let path = args.next().unwrap_or_else(|| usage("--file needs a path"));
                file = Some(PathBuf::from(path));
            } else if a == "--compression" {
                let c = args
                    .next()
                    .unwrap_or_else(|| usage("--compression needs zstd, gzip or none"));
                if !["zstd", "gzip", "none"].contains(&c.as_str()) {
                    usage(&format!("--compression must be zstd, gzip or none, not {c:?}"));
                }
                compression = Some(c);
            } else if a == "--shuffled" {
                shuffled = true;
            } else {
                positional.push(a);
            }
        }
        Args {
            positional,
            file,
            compression,
            shuffled,
        }
    }

    /// The `n`th positional argument as a number, or `default` when absent.
    fn number<T: std::str::FromStr>(&self, n: usize, what: &str, default: T) -> T {
        match self.positional.get(n) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("{what} must be a number, not {v:?}"))),
        }
    }

    /// Refuses arguments beyond the first `n` positional ones.
    fn at_most(&self, n: usize) {
        if let Some(extra) = self.positional.get(n) {
            usage(&format!("unexpected argument {extra:?}"));
        }
    }

    /// The agent's `hub.compression` for the flood: zstd unless told.
    fn compression(&self) -> &str {
        self.compression.as_deref().unwrap_or("zstd")
    }

    /// Refuses `--file` and `--compression` in a mode that makes its own data.
    fn no_file(&self, mode: &str) {
        if self.file.is_some() {
            usage(&format!("{mode} does not take --file"));
        }
        if self.compression.is_some() {
            usage(&format!("{mode} does not take --compression"));
        }
    }
}

#[tokio::main]
async fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    let mode = match argv.peek().map(String::as_str) {
        Some(m) if m.parse::<u64>().is_err() && !m.starts_with("--") => argv.next(),
        _ => None,
    };
    let args = Args::parse(argv);
    if args.shuffled && mode.as_deref() != Some("gen") {
        usage("only gen takes --shuffled (give the flood a shuffled file with --file)");
    }
    match mode.as_deref() {
        None => {
            args.at_most(1);
            flood::full(flood_input(&args, 0), args.compression()).await;
        }
        Some("flood") => {
            args.at_most(1);
            flood::alone(flood_input(&args, 0), args.compression()).await;
        }
        Some("gen") => {
            args.no_file("gen");
            args.at_most(2);
            let rows = args.number(0, "ROWS", 0u64);
            let path = args
                .positional
                .get(1)
                .unwrap_or_else(|| usage("gen needs ROWS and PATH"));
            flood::generate(rows, PathBuf::from(path).as_path(), args.shuffled);
        }
        Some("drain") => {
            args.no_file("drain");
            args.at_most(1);
            drain::run(args.number(0, "ROWS", 1_000_000)).await;
        }
        Some("agencies") => {
            args.no_file("agencies");
            args.at_most(2);
            let n = args.number(0, "N", 50usize);
            let per = args.number(1, "RECORDS_PER_AGENCY", 20_000u64);
            if n == 0 || per == 0 {
                usage("N and RECORDS_PER_AGENCY must be at least 1");
            }
            agencies::run(n, per).await;
        }
        Some("normalize") => {
            args.no_file("normalize");
            args.at_most(1);
            normalize::run(args.number(0, "ROWS", 2_000_000));
        }
        Some("store") => {
            args.no_file("store");
            args.at_most(1);
            store::run(args.number(0, "ROWS", 1_000_000));
        }
        Some("db") => {
            args.no_file("db");
            args.at_most(1);
            let kind = args.positional.first().map_or("sqlite", String::as_str);
            db::run(kind).await;
        }
        Some("receive") => {
            args.no_file("receive");
            args.at_most(1);
            receive::run(args.number(0, "CHANGES", 1_000_000)).await;
        }
        Some(other) => usage(&format!("unknown mode {other:?}")),
    }
}

/// The flood's input: `--file`, or the generated rows of positional `n`.
fn flood_input(args: &Args, n: usize) -> flood::Input {
    match &args.file {
        Some(path) if args.positional.get(n).is_some() => {
            usage(&format!("give ROWS or --file {}, not both", path.display()))
        }
        Some(path) => flood::Input::File(path.clone()),
        None => flood::Input::Generated(args.number(n, "ROWS", 1_000_000)),
    }
}

fn status(addr: &str) -> Option<Status> {
    let body = agent::cli::status::fetch(addr, "/status").ok()?;
    serde_json::from_str(&body).ok()
}

/// Polls the agent's `/status` until `done` holds; the status that did.
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

/// A `qianzhi` process for `spec` (written as the world's agent.toml):
/// (its health address, the process).
async fn start_agent(w: &World, spec: &AgentSpec) -> (String, std::process::Child) {
    let config = w.agent_toml(spec);
    let agent = spawn(
        "qianzhi",
        &["--config", config.to_str().expect("utf-8 path"), "run"],
        &w.path("agent.log"),
    );
    let addr = format!("127.0.0.1:{}", spec.health_port);
    wait("the agent", &addr, |s| s.link.state == agent::health::LinkState::Up).await;
    (addr, agent)
}

/// Kills and reaps the processes a benchmark started.
fn stop(processes: &mut [&mut std::process::Child]) {
    for p in processes {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// Copies the logs out of the scratch folder, which goes when `w` drops.
fn keep_logs(w: &World, names: &[&str]) {
    let logs = std::env::temp_dir().join("qianzhi-bench-logs");
    if std::fs::create_dir_all(&logs).is_ok() {
        for f in names {
            let _ = std::fs::copy(w.path(f), logs.join(f));
        }
        println!("\nlogs in {}", logs.display());
    }
}
