//! `qianzhi quarantine list|show|export|retry|discard|discarded`: the
//! command-line face of [`crate::quarantine`], with the filters that pick
//! entries, and who the caller is for the discard record.
//!
//! Not here: reading, exporting, retrying or discarding entries
//! (`crate::quarantine`). Errors are `anyhow`, as in a binary: they are
//! only printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::EX_USAGE;
use crate::config::{Config, LogFormat};

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
    /// Normalize entries again after the catalog or mapping was fixed (agent stopped).
    Retry {
        #[command(flatten)]
        filter: Filter,
    },
    /// Drop entries for good, with a reason that is kept (agent stopped).
    Discard {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        reason: String,
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
            let r = q::retry(config, &filter.into_filter())?;
            println!(
                "{} queued for the hub, {} still failing, {} not retryable (fix the file and drop it again)",
                r.queued, r.still_failing, r.not_retryable
            );
        }
        QuarantineCommand::Discard { filter, reason } => {
            let n = q::discard(config, &filter.into_filter(), &reason, &caller())?;
            println!("discarded {} (reason: {reason})", q::count(n, "entry", "entries"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs this command, for the discard record: the user name of the
/// effective uid (the owner of `/proc/self`) from `/etc/passwd`, with the
/// account that used sudo when there is one; without a name in
/// `/etc/passwd`, `$USER` or `$LOGNAME`, then the uid's number. The
/// environment alone is not enough: systemd units, cron and `su -c` often
/// leave `$USER` unset or stale.
fn caller() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let name = uid.and_then(|uid| {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        user_name(&passwd, uid)
    });
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (name, uid) {
        (Some(name), Some(0)) => match env("SUDO_USER") {
            Some(by) if by != name => format!("{name} (sudo by {by})"),
            _ => name,
        },
        (Some(name), _) => name,
        (None, uid) => env("USER")
            .or_else(|| env("LOGNAME"))
            .or_else(|| uid.map(|u| format!("uid {u}")))
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// The name of `uid` in a passwd file (`name:x:uid:gid:…`).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse() == Ok(uid) && !name.is_empty()).then(|| name.to_owned())
    })
}
