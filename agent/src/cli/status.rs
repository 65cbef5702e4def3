//! `qianzhi status`: one GET of `/status` on the running agent's health
//! port, printed as JSON or as a human summary ([`render`], coloured on a
//! terminal). [`fetch`] is the small HTTP client it uses; the tests use it
//! too.
//!
//! It never guesses the port: it reads the address the running agent wrote
//! into its data directory (`health.json`, [`PortFile`]), taking the data
//! directory from the config, or from the config's text when the config is
//! refused, or the packaged default; and it says which agent it shows (or
//! what it looked for). `--addr` asks a port directly.
//!
//! Not here: the document itself ([`crate::health::Status`]) or the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::health::units::{bytes, count, duration, percent};
use crate::health::{ByteMeasure, FileProgress, LinkState, PortFile, SourceStatus, Status};

/// Runs `qianzhi status`.
pub fn main(config_path: &Path, json: bool, addr: Option<String>) -> ExitCode {
    let (addr, agent) = match addr {
        Some(addr) => (addr, None),
        None => match find(config_path) {
            Ok(found) => (found.addr.to_string(), Some(found)),
            Err(e) => {
                eprintln!("qianzhi: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let body = match fetch(&addr, "/status") {
        Ok(b) => b,
        Err(e) => {
            let whose = agent.as_ref().map_or_else(String::new, |a| {
                let gone = if Path::new("/proc").join(a.pid.to_string()).exists() {
                    String::new()
                } else {
                    format!(
                        "; pid {} is not running: the agent stopped without removing the file",
                        a.pid
                    )
                };
                format!(" (the health port of agent {}, {}{gone})", a.agency, described(a))
            });
            eprintln!("qianzhi: cannot read status from {addr}{whose}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        if let Some(a) = &agent {
            eprintln!("qianzhi: status of agent {}, {}", a.agency, described(a));
        }
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Status>(&body) {
        Ok(s) => {
            let mut text = String::new();
            if let Some(a) = &agent {
                text.push_str(&format!("process  {}\n", described(a)));
                if a.agency != s.agency {
                    text.push_str(&format!(
                        "WARNING  the port was recorded by agent {}, but agent {} answers on it\n",
                        a.agency, s.agency
                    ));
                }
            }
            text.push_str(&render(&s));
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                print!("{}", colour(&text));
            } else {
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: unexpected status document: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's pid, config and port, in words.
fn described(a: &PortFile) -> String {
    format!("pid {}, config {}, health port {}", a.pid, a.config.display(), a.addr)
}

/// The running agent's record, read from the data directory the config
/// names; or what was looked for, in words.
fn find(config_path: &Path) -> Result<PortFile, String> {
    let data_dir = match Config::load(config_path) {
        Ok(c) => c.data_dir,
        Err(e) => {
            let text = std::fs::read_to_string(config_path).unwrap_or_default();
            let (dir, whence) = match config::data_dir_hint(&text, config_path) {
                Some(dir) => (dir, "the data_dir its text names"),
                None => (PathBuf::from(config::DEFAULT_DATA_DIR), "the packaged data directory"),
            };
            eprintln!(
                "qianzhi: the config does not load ({e}); looking for the running agent in {}, {whence}",
                dir.display()
            );
            dir
        }
    };
    let file = PortFile::path(&data_dir);
    PortFile::read(&data_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no running agent found: {} does not exist (a running agent writes it when its health port \
             opens and removes it when it stops); is the agent running with this data directory? \
             The config read was {} (another one: --config FILE); --addr asks a health port directly",
            file.display(),
            config_path.display()
        ),
        _ => format!("cannot read {}: {e}", file.display()),
    })
}

/// A human summary of a status document, for `qianzhi status`.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let age = |x: Option<f64>| x.map_or_else(|| "never".to_owned(), |s| format!("{s:.1}s ago"));
    let _ = writeln!(
        o,
        "agency   {}  (qianzhi {}, outbox {})",
        s.agency, s.version, s.outbox_id
    );
    let _ = writeln!(o, "ready    {}", s.ready);
    for d in &s.degraded {
        let _ = writeln!(o, "WARNING  {d}");
    }
    // After a failure the link is down through every reconnect attempt,
    // and how long counts from the first failure.
    let link = &s.link;
    let state = match (link.state, link.error.is_some()) {
        (LinkState::Up, _) => "up",
        (LinkState::Connecting, false) => "connecting",
        _ => "DOWN",
    };
    let when = match (&link.down_since, link.down_seconds) {
        (Some(since), Some(secs)) if link.state != LinkState::Up => {
            format!("since {} (for {})", clock(since, secs), duration(secs))
        }
        _ => format!("for {}", duration(link.since_seconds)),
    };
    let _ = writeln!(
        o,
        "link     {state} {when} to {}; last ack {}; sent {}, acked {}, rejected {}",
        link.hub,
        age(link.last_ack_seconds_ago),
        link.sent,
        link.acked,
        link.rejected
    );
    if let Some(e) = &link.error {
        let _ = writeln!(o, "         last error: {e}");
    }
    let _ = writeln!(
        o,
        "queue    {} records, {} of {}{}; oldest {}",
        s.queue.records,
        bytes(s.queue.bytes),
        bytes(s.queue.max_bytes),
        if s.queue.full { " (FULL: sources paused)" } else { "" },
        s.queue
            .oldest_age_seconds
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.1}s old"))
    );
    let _ = writeln!(o, "quarantine {} records", s.quarantine);
    for r in &s.resources {
        let last = r.last_change_us.map_or_else(
            || "no change yet".to_owned(),
            |us| {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
                humantime::format_rfc3339_seconds(t).to_string()
            },
        );
        let late = if r.overdue { "; OVERDUE" } else { "" };
        let _ = writeln!(
            o,
            "resource {} {} ({}): last change {last}{late}",
            r.resource, r.name, r.cycle
        );
    }
    for src in &s.sources {
        let _ = writeln!(
            o,
            "source   {}: {} rows, {} records, {} quarantined, {} files done, {} rejected{}{}",
            src.name,
            src.rows,
            src.records,
            src.quarantined,
            src.files_done,
            src.files_rejected,
            src.rejected_held
                .filter(|&n| n > 0)
                .map_or_else(String::new, |n| format!(" ({n} held in rejected/)")),
            src.error.as_ref().map_or_else(String::new, |e| format!("; ERROR: {e}"))
        );
        o.push_str(&source_details(src));
    }
    for sub in &s.subscriptions {
        let from = if sub.provider.is_empty() {
            String::new()
        } else if sub.agreement.is_empty() {
            format!(" from {}", sub.provider)
        } else {
            format!(" from {} under {}", sub.provider, sub.agreement)
        };
        let state = match sub.state.as_str() {
            s @ ("refused" | "revoked" | "failing") => s.to_uppercase(),
            s => s.to_owned(),
        };
        let _ = writeln!(
            o,
            "receive  {}{from}: {state}; applied up to hub seq {}, {} changes since start, {} behind; last {}{}",
            sub.resource,
            sub.applied_seq,
            sub.applied,
            sub.lag_changes,
            age(sub.last_applied_seconds_ago),
            sub.lag_seconds
                .map_or_else(String::new, |l| format!(" ({l:.1}s after the provider's capture)"))
        );
        if let Some(e) = &sub.error {
            let _ = writeln!(o, "         error: {e}");
        }
    }
    o
}

/// An RFC 3339 instant (UTC) as the time of day, with the date when it is
/// `secs_ago` more than half a day ago.
fn clock(rfc3339: &str, secs_ago: f64) -> String {
    let (date, time) = (rfc3339.get(..10), rfc3339.get(11..19));
    match (date, time) {
        (Some(d), Some(t)) if secs_ago >= 43_200.0 => format!("{d} {t} UTC"),
        (_, Some(t)) => format!("{t} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// The lines under a source's: the file it reads, the rules its rows
/// broke, the files its `rejected/` holds.
fn source_details(src: &SourceStatus) -> String {
    let mut o = String::new();
    if let Some(p) = &src.reading {
        o.push_str(&format!("reading  {}\n", progress(p)));
    }
    if !src.quarantined_by_rule.is_empty() {
        let rules: Vec<String> = src
            .quarantined_by_rule
            .iter()
            .map(|(rule, n)| format!("{rule} {}", count(*n)))
            .collect();
        o.push_str(&format!(
            "         rules broken since start (a row can break several): {}\n",
            rules.join(", ")
        ));
    }
    if !src.rejected_files.is_empty() {
        let held = src.rejected_held.unwrap_or(0);
        let more = held.saturating_sub(src.rejected_files.len() as u64);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        o.push_str(&format!(
            "         in rejected/: {}{more}\n",
            src.rejected_files.join(", ")
        ));
    }
    o
}

/// A file's read in one line: `big.csv: 1,234,567 rows, 312.0 MiB of 1.0
/// GiB (30 %), 41,000 rows/s, about 1m 20s left`.
fn progress(p: &FileProgress) -> String {
    let mut line = format!("{}: {} rows", p.file, count(p.rows));
    if let (Some(read), Some(of)) = (p.bytes, p.bytes_of) {
        let what = match p.measure {
            ByteMeasure::File => "",
            ByteMeasure::CompressedSheet => " of its compressed worksheet",
        };
        let pct = percent(read, of).map_or_else(String::new, |n| format!(" ({n} %)"));
        line.push_str(&format!(", {} of {}{what}{pct}", bytes(read), bytes(of)));
    }
    line.push_str(&format!(", {} rows/s", count(p.rows_per_second as u64)));
    if let Some(left) = p.seconds_left {
        line.push_str(&format!(", about {} left", duration(left)));
    }
    line
}

/// Red for what needs action, yellow for warnings, green for a healthy link.
fn colour(text: &str) -> String {
    text.lines()
        .map(|l| {
            let code = if l.starts_with("WARNING") {
                "33"
            } else if ["DOWN", "OVERDUE", "ERROR", "FULL", "REFUSED", "REVOKED", "FAILING"]
                .iter()
                .any(|w| l.contains(w))
            {
                "31"
            } else if l.starts_with("link     up") || l == "ready    ok" {
                "32"
            } else {
                return format!("{l}\n");
            };
            format!("\x1b[{code}m{l}\x1b[0m\n")
        })
        .collect()
}

/// One HTTP/1.0 GET on the local health port (for `qianzhi status` and
/// tests): the body of a 200 answer, else an error with the status line.
pub fn fetch(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("no answer").to_owned(),
        ));
    }
    Ok(body.to_owned())
}
