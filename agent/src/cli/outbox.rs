//! `qianzhi outbox acknowledge`: an operator has read the report of a
//! damaged outbox's recovery, so `/readyz` is ready again. Works while the
//! agent runs.
//!
//! Not here: the recovery and its report ([`crate::outbox::Recovery`]).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Says that an operator has read the report of a damaged outbox's
    /// recovery (and compared what was lost with the hub): /readyz is ready
    /// again. Works while the agent runs.
    Acknowledge,
}

/// Runs `qianzhi outbox …`.
pub fn main(config_path: &Path, command: OutboxCommand) -> ExitCode {
    let OutboxCommand::Acknowledge = command;
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::outbox::Recovery::acknowledge(&config.data_dir) {
        Ok(Some(to)) => {
            println!("acknowledged: the recovery report is kept as {}", to.display());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "nothing to acknowledge: no damaged outbox was recovered in {}",
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qianzhi: outbox acknowledge: {}: {e}", config.data_dir.display());
            ExitCode::FAILURE
        }
    }
}
