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
    /// The scratch folder (default: a new one under the temp folder). It
    /// stays after the demo, for the commands it suggests.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the hub and agents running after the sample arrived, until
    /// Ctrl-C: drop more files, read the agents' status pages.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only warnings: the demo's own lines are the output.
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
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(demo::run(&dir, cli.keep)));
    if let Err(e) = result {
        eprintln!("qianzhi-demo: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
