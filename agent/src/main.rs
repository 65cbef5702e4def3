//! `qianzhi`: the agent binary. Parses the command line and runs the
//! subcommand; the subcommands are in the library (`agent::cli`), the work
//! in the rest of it.

use std::process::ExitCode;

use agent::cli::{self, Cli, Command, EX_USAGE};
use clap::Parser;

fn main() -> ExitCode {
    cap_malloc_arenas();
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

/// glibc's malloc gives threads their own arenas, up to eight per core, and
/// memory freed into one arena serves only the threads that use it. The
/// agent's buffers are made on one thread and freed on another (the reader,
/// tokio's workers, the outbox writer, the link), so every arena grows to
/// its own peak: the flood's peak RSS varied between 56 and 69 MiB, over the
/// 64 MB the agent is held to. Two arenas: 49–58 MiB, with the same CPU
/// (BENCHMARKS.md). `MALLOC_ARENA_MAX` in the environment still decides.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets a parameter of glibc's allocator and is safe
        // to call at any time; here it runs before any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
