//! `qianzhi-demo`: the one-command demo. Development certificates, a
//! hub-stub and an agent in one process, a sample file dropped into the
//! agent's folder, and the records shown as they arrive at the hub.
//!
//! The only crate that composes both sides: the agent and the hub know
//! nothing of each other.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod demo;

#[derive(Parser)]
#[command(
    name = "qianzhi-demo",
    version,
    about = "Run a hub, an agent and a sample file on this machine, in a scratch folder"
)]
struct Cli {
    /// The scratch folder (default: a new one under the temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep running after the sample arrived, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(64),
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = cli
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("qianzhi-demo-{}", std::process::id())));
    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(demo::run(&dir, cli.keep)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qianzhi-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
