//! The `qianzhi` command line: its arguments ([`Cli`]) and the body of each
//! subcommand, one module each. The binary (`main.rs`) only parses, picks
//! the subcommand and returns its exit code.
//!
//! Each subcommand prints what the operator reads and turns errors into
//! exit codes: [`EX_USAGE`] for bad command-line use, [`EX_CONFIG`] for a
//! bad config file, 1 for anything else. Logging is set up by the
//! subcommands that log, at the point they know how (`run` takes the format
//! from the config); the others print only their own lines.
//!
//! Not here: the work itself (the library modules these call), and the
//! status document (`health`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};

pub mod check;
pub mod outbox;
pub mod pki;
pub mod quarantine;
pub mod run;
pub mod source;
pub mod status;

/// Exit code for bad command-line use (sysexits.h `EX_USAGE`).
pub const EX_USAGE: u8 = 64;
/// Exit code for a bad config file (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "qianzhi", version, about = "Qianzhi (前置): front-end exchange agent")]
pub struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run,
    /// Validate the config, the folders and a TLS handshake with the hub.
    Check {
        /// Create drop folders that do not exist (otherwise a missing one is an error).
        #[arg(long)]
        create_folders: bool,
    },
    /// Show the running agent's status, read from its health port.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// The health port to ask (default: the one the running agent recorded in
        /// its data directory, `health.json`).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Records kept for a person to fix: list, show, export, retry, discard, discarded.
    Quarantine {
        #[command(subcommand)]
        command: quarantine::QuarantineCommand,
    },
    /// The outbox: acknowledge the recovery of a damaged outbox.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// Database sources: install or remove the change-log triggers.
    Source {
        #[command(subcommand)]
        command: source::SourceCommand,
    },
    /// Certificates.
    Pki {
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
}

/// Loads and validates the config, or says why not and gives the exit code.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("qianzhi: config error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    // Building a runtime fails only when the OS refuses threads; nothing
    // can run then.
    #[allow(clippy::expect_used)]
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("qianzhi")
        .build()
        .expect("cannot start the async runtime")
}

/// Logs to standard error; `RUST_LOG` overrides `level`. Colours only on a
/// terminal, and not when `NO_COLOR` is set (no-color.org): the journal and
/// a log file would keep the escapes as text.
fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

/// Whether logs on standard error get colour escapes.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}
