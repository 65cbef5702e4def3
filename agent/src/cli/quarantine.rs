//! `qianzhi quarantine list|show|export|retry|discard|discarded`: the
//! command-line face of [`crate::quarantine`], with the filters that pick
//! entries, and who the caller is for the discard record.
//!
//! `retry` and `discard` go through the running agent's control socket
//! (`crate::control`) when an agent runs with this data directory, and
//! change the stopped agent's outbox file otherwise.
//!
//! Not here: reading, exporting, retrying or discarding entries
//! (`crate::quarantine`). Errors are `anyhow`, as in a binary: they are
//! only printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::EX_USAGE;
use crate::config::{Config, LogFormat};
use crate::control;

/// Which entries a quarantine command is about.
#[derive(clap::Args)]
pub struct Filter {
    /// Only entries of this source.
    #[arg(long)]
    source: Option<String>,
    /// Only entries of this resource.
    #[arg(long)]
    resource: Option<String>,
    /// Only entries that broke this rule (a code such as CHECK_DIGIT, in any case).
    #[arg(long)]
    rule: Option<String>,
    /// Only these entries (by number).
    ids: Vec<i64>,
}

impl Filter {
    fn into_filter(self) -> crate::outbox::QuarantineFilter {
        crate::outbox::QuarantineFilter {
            ids: self.ids,
            source: self.source,
            resource: self.resource,
            rule: self.rule,
        }
    }
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// One line per entry.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Print a JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one entry.
    Show { id: i64 },
    /// A CSV (in the source's encoding) to fix in Excel and drop again.
    Export {
        #[command(flatten)]
        filter: Filter,
        /// utf-8 or gb18030 (default: the source's encoding).
        #[arg(long)]
        encoding: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Normalize entries again after the catalog or mapping was fixed (and the agent reloaded).
    Retry {
        #[command(flatten)]
        filter: Filter,
    },
    /// Drop entries for good, with a reason that is kept. Name the entries
    /// (numbers, --source, --resource, --rule), or say --all.
    Discard {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        reason: String,
        /// Every held entry (without it, a discard with no filter is refused).
        #[arg(long)]
        all: bool,
    },
    /// The entries discarded so far, with the reason, who and when.
    Discarded {
        /// Print a JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `qianzhi quarantine …`.
pub fn main(config_path: &Path, command: QuarantineCommand) -> ExitCode {
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    super::init_tracing(LogFormat::Text, "warn");
    match quarantine(&config, command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qianzhi: quarantine: {e:#}");
            let usage = matches!(
                e.downcast_ref::<crate::quarantine::Error>(),
                Some(crate::quarantine::Error::UnknownRule { .. })
            );
            if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn quarantine(config: &Config, command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    use crate::quarantine as q;
    match command {
        QuarantineCommand::List { filter, json } => {
            let entries = q::entries(config, &filter.into_filter())?;
            if json {
                print!("{}", q::render_json(&entries));
            } else {
                print!("{}", q::render_list(&entries));
            }
        }
        QuarantineCommand::Discarded { json } => {
            let discards = q::discarded(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&discards)?);
            } else {
                print!("{}", q::render_discarded(&discards));
            }
        }
        QuarantineCommand::Show { id } => {
            let filter = crate::outbox::QuarantineFilter {
                ids: vec![id],
                ..Default::default()
            };
            match q::entries(config, &filter)?.first() {
                Some(h) => print!("{}", q::render_show(h)),
                None => anyhow::bail!("no entry #{id}"),
            }
        }
        QuarantineCommand::Export { filter, encoding, out } => {
            let encoding = match encoding.as_deref() {
                None => None,
                Some("utf-8" | "utf8") => Some(crate::config::Encoding::Utf8),
                Some("gb18030" | "gbk") => Some(crate::config::Encoding::Gb18030),
                Some(other) => {
                    eprintln!("qianzhi: --encoding {other:?}: expected utf-8 or gb18030");
                    return Ok(ExitCode::from(EX_USAGE));
                }
            };
            let entries = q::entries(config, &filter.into_filter())?;
            let bytes = q::export_csv(config, &entries, encoding)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, bytes)?;
                    eprintln!(
                        "wrote {} to {}",
                        q::count(entries.len(), "entry", "entries"),
                        path.display()
                    );
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
        }
        QuarantineCommand::Retry { filter } => {
            let filter = filter.into_filter();
            let request = control::Request::Retry { filter: filter.clone() };
            if let Some(code) = through_agent(config, &request)? {
                return Ok(code);
            }
            let mut offline = crate::outbox::Offline::open(&config.data_dir)?;
            println!("{}", q::retry(config, &mut offline, &filter)?.summary());
        }
        QuarantineCommand::Discard { filter, reason, all } => {
            let filter = filter.into_filter();
            let names_entries =
                !filter.ids.is_empty() || filter.source.is_some() || filter.resource.is_some() || filter.rule.is_some();
            if !names_entries && !all {
                // Nothing can bring a discarded entry back: a forgotten
                // number must not mean "all of them".
                eprintln!(
                    "qianzhi: quarantine discard: name the entries (their numbers, --source, --resource or --rule), \
                     or --all for every held entry"
                );
                return Ok(ExitCode::from(EX_USAGE));
            }
            let request = control::Request::Discard {
                filter: filter.clone(),
                reason: reason.clone(),
                sudo_user: env("SUDO_USER"),
            };
            if let Some(code) = through_agent(config, &request)? {
                return Ok(code);
            }
            let mut offline = crate::outbox::Offline::open(&config.data_dir)?;
            let n = q::discard(&mut offline, &filter, &reason, &caller())?;
            println!("{}", q::discard_summary(n, &reason));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `request` to the agent running with this data directory and
/// prints its answer; `None` when no agent runs there.
fn through_agent(config: &Config, request: &control::Request) -> anyhow::Result<Option<ExitCode>> {
    let Some(reply) = control::request(&config.data_dir, request).map_err(anyhow::Error::msg)? else {
        return Ok(None);
    };
    if reply.ok {
        println!("{} (through the running agent, pid {})", reply.message, reply.pid);
        return Ok(Some(ExitCode::SUCCESS));
    }
    eprintln!(
        "qianzhi: quarantine: {} (the running agent, pid {})",
        reply.message, reply.pid
    );
    Ok(Some(if reply.usage {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::FAILURE
    }))
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Who runs this command, for the discard record made without the agent:
/// the user name of the effective uid (the owner of `/proc/self`) from
/// `/etc/passwd`, with the account that used sudo when there is one;
/// without a name in `/etc/passwd`, `$USER` or `$LOGNAME`, then the uid's
/// number. The environment alone is not enough: systemd units, cron and
/// `su -c` often leave `$USER` unset or stale. (Through the running agent,
/// the agent asks the kernel who is calling.)
fn caller() -> String {
    use std::os::unix::fs::MetadataExt;
    let fallback = env("USER").or_else(|| env("LOGNAME"));
    match std::fs::metadata("/proc/self").map(|m| m.uid()) {
        Ok(uid) => control::who(uid, env("SUDO_USER").as_deref(), fallback),
        Err(_) => fallback.unwrap_or_else(|| "unknown".into()),
    }
}
