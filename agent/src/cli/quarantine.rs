//! `qianzhi quarantine list|show|export|retry|discard`: the command-line
//! face of [`crate::quarantine`], with the filters that pick entries.
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
    /// Only entries that broke this rule (a code such as CHECK_DIGIT).
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
            ExitCode::FAILURE
        }
    }
}

fn quarantine(config: &Config, command: QuarantineCommand) -> anyhow::Result<ExitCode> {
    use crate::quarantine as q;
    match command {
        QuarantineCommand::List { filter } => {
            print!("{}", q::render_list(&q::entries(config, &filter.into_filter())?));
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
                    eprintln!("wrote {} entries to {}", entries.len(), path.display());
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
            let who = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "unknown".into());
            let n = q::discard(config, &filter.into_filter(), &reason, &who)?;
            println!("discarded {n} entries (reason: {reason})");
        }
    }
    Ok(ExitCode::SUCCESS)
}
