//! `qianzhi-hub`: serve the hub or export its store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub_stub::{Store, config::HubConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "qianzhi-hub",
    version,
    about = "Qianzhi hub-stub: a small but real exchange hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the exchange until SIGTERM or SIGINT.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the store as JSON Lines: the current state, or every change.
    Export {
        #[arg(long)]
        store: PathBuf,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// Every change in arrival order instead of the current state.
        #[arg(long)]
        history: bool,
    },
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(cli.command)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qianzhi-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let c = HubConfig::load(&config)?;
            let text =
                std::fs::read_to_string(&c.catalog).with_context(|| format!("catalog {}", c.catalog.display()))?;
            let catalog = Arc::new(
                rules::catalog::Catalog::from_toml_str(&text)
                    .with_context(|| format!("catalog {}", c.catalog.display()))?,
            );
            let tls = pki::tls::server_config(&c.tls.ca, &c.tls.cert, &c.tls.key)?;
            let store = Arc::new(Store::open(&c.store)?);
            let listener = tokio::net::TcpListener::bind(c.listen)
                .await
                .with_context(|| format!("cannot listen on {}", c.listen))?;
            tracing::info!(listen = %listener.local_addr()?, store = %c.store.display(), "hub serving");
            let stopped = shutdown()?;
            let token = CancellationToken::new();
            let stop = token.clone();
            tokio::spawn(async move {
                stopped.await;
                stop.cancel();
            });
            hub_stub::serve_with(listener, tls, store, catalog, c.limits, token).await?;
            tracing::info!("hub stopped");
            Ok(())
        }
        Command::Export {
            store,
            resource,
            history,
        } => {
            if !store.exists() {
                anyhow::bail!("no store at {}", store.display());
            }
            let store = Store::open(&store)?;
            let mut out = std::io::stdout().lock();
            store.export(resource.as_deref(), history, &mut out)?;
            Ok(())
        }
    }
}

/// SIGTERM (systemd) or SIGINT (Ctrl-C), watched from the start: a hub that
/// could not be stopped cleanly refuses to start.
fn shutdown() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
