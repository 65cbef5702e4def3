//! `qianzhi`: the agent binary. Parses the command line and runs the
//! subcommand; the subcommands are in the library (`agent::cli`), the work
//! in the rest of it.

use std::process::ExitCode;

use agent::cli::{self, Cli, Command, EX_USAGE};
use clap::Parser;

fn main() -> ExitCode {
    tune_malloc();
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

/// Two settings of glibc's malloc that hold the agent's peak RSS under the
/// 64 MB it is held to (BENCHMARKS.md). Either one given in the environment
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) still decides.
///
/// - Two arenas. glibc gives threads their own arenas, up to eight per
///   core, and memory freed into one arena serves only the threads that use
///   it. The agent's buffers are made on one thread and freed on another
///   (the reader, tokio's workers, the outbox writer, the link), so every
///   arena grew to its own peak: the flood's peak RSS varied between 56 and
///   69 MiB. Two arenas: 49–58 MiB, with the same CPU.
/// - Blocks of 1 MiB and more always mapped on their own. By default glibc
///   raises this threshold to the largest block freed so far, so after the
///   first batches the link's blocks made for every message (a batch's
///   records, tonic's buffers, zstd's context of a few MiB) came from the
///   heap, which keeps most of what is freed. When the hub was the slower
///   side the peak reached 61–65 MiB; with the threshold fixed at 1 MiB,
///   51–55 MiB. Smaller blocks stay in the heap: mapping every block from
///   128 KiB up cost CPU in page faults.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets a parameter of glibc's allocator and is safe
        // to call at any time; here it runs before any thread is started.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}
