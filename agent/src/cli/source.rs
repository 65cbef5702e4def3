//! `qianzhi source install|uninstall`: the change-log table and triggers of
//! a database source, printed for a DBA (`--dry-run`) or applied.
//!
//! Not here: the SQL and how it is applied (`crate::source::db`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::EX_USAGE;
use crate::config::LogFormat;

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Create the change-log table and the triggers of a source's table.
    Install {
        /// The source's name in the config.
        name: String,
        /// Print the SQL for a DBA to review instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop the triggers of a source's table and its pending changes.
    Uninstall {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `qianzhi source …`.
pub fn main(config_path: &Path, command: SourceCommand) -> ExitCode {
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (name, dry_run, install) = match command {
        SourceCommand::Install { name, dry_run } => (name, dry_run, true),
        SourceCommand::Uninstall { name, dry_run } => (name, dry_run, false),
    };
    let Some(source) = config.sources.iter().find(|s| s.name == name) else {
        eprintln!("qianzhi: no source {name:?} in {}", config_path.display());
        return ExitCode::from(EX_USAGE);
    };
    let sql = match crate::source::db::statements(source, install) {
        Ok(sql) => sql,
        Err(e) => {
            eprintln!("qianzhi: source {name}: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if dry_run {
        for s in sql {
            println!("{s};\n");
        }
        return ExitCode::SUCCESS;
    }
    super::init_tracing(LogFormat::Text, "warn");
    match super::runtime().block_on(crate::source::db::apply(source, install)) {
        Ok(()) => {
            let did = if install { "installed" } else { "removed" };
            println!(
                "source {name}: change log {did} on table {}",
                source.database().map_or("", |d| d.table.as_str())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: source {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
