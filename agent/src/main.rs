//! `qianzhi`: the agent binary. Parses the command line and runs the
//! subcommand; the subcommands are in the library (`agent::cli`), the work
//! in the rest of it.

use std::process::ExitCode;

use agent::cli::{self, Cli, Command, EX_USAGE};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    let config = &cli.config;
    match cli.command {
        Command::Run => cli::run::main(config),
        Command::Check { create_folders } => cli::check::main(config, create_folders),
        Command::Status { json, addr } => cli::status::main(config, json, addr),
        Command::Quarantine { command } => cli::quarantine::main(config, command),
        Command::Outbox { command } => cli::outbox::main(config, command),
        Command::Source { command } => cli::source::main(config, command),
        Command::Pki { command } => cli::pki::main(command),
    }
}
