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
        /// The hub's config (its `store`), as for `serve`.
        #[arg(long, short, conflicts_with = "store", required_unless_present = "store")]
        config: Option<PathBuf>,
        /// The store file itself, without a config.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// Every change in arrival order instead of the current state.
        #[arg(long)]
        history: bool,
    },
    /// Sharing agreements (有条件共享, article 21): add, list, revoke.
    Agreement {
        /// The hub's config (its store and catalog); before or after the
        /// subcommand.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: hub_stub::admin::AgreementCommand,
    },
    /// What each agency provided and received (article 27's yearly check).
    Report {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete history no receiver needs: changes that are no longer current
    /// and that every receiver heard from within `--keep` has applied.
    Compact {
        #[arg(long, short)]
        config: PathBuf,
        /// A receiver silent for longer no longer holds history back; it gets
        /// a fresh snapshot when it returns.
        #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
        keep: std::time::Duration,
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
            let catalog = Arc::new(load_catalog(&c)?);
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
            config,
            store,
            resource,
            history,
        } => {
            let (store, catalog) = match (config, store) {
                (Some(c), _) => {
                    let c = HubConfig::load(&c)?;
                    (c.store.clone(), Some(load_catalog(&c)?))
                }
                (None, Some(s)) => (s, None),
                (None, None) => anyhow::bail!("give --config or --store"),
            };
            if let (Some(r), Some(catalog)) = (&resource, &catalog)
                && catalog.resource(r).is_none()
            {
                anyhow::bail!("resource {r} is not in the catalog");
            }
            let store = hub_stub::admin::open_existing(&store)?;
            let mut out = std::io::stdout().lock();
            store.export(resource.as_deref(), history, &mut out)?;
            Ok(())
        }
        Command::Agreement { config, command } => {
            let c = HubConfig::load(&config.context("--config is required")?)?;
            let catalog = load_catalog(&c)?;
            let store = hub_stub::admin::open_existing(&c.store)?;
            hub_stub::admin::agreement(&store, &catalog, command, &mut std::io::stdout().lock())
        }
        Command::Report { config, json } => {
            let c = HubConfig::load(&config)?;
            let catalog = load_catalog(&c)?;
            let store = hub_stub::admin::open_existing(&c.store)?;
            hub_stub::admin::report(&store, &catalog, json, &mut std::io::stdout().lock())
        }
        Command::Compact { config, keep } => {
            let c = HubConfig::load(&config)?;
            let store = hub_stub::admin::open_existing(&c.store)?;
            let n = store.compact(keep)?;
            println!("compacted: {n} superseded changes deleted");
            Ok(())
        }
    }
}

fn load_catalog(c: &HubConfig) -> anyhow::Result<rules::catalog::Catalog> {
    let text = std::fs::read_to_string(&c.catalog).with_context(|| format!("catalog {}", c.catalog.display()))?;
    rules::catalog::Catalog::from_toml_str(&text).with_context(|| format!("catalog {}", c.catalog.display()))
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
