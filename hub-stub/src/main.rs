//! `qianzhi-hub`: serve the hub or export its store. `serve` runs as a
//! service: SIGTERM or SIGINT stops it, SIGHUP reloads the catalog and the
//! TLS files (a config that does not load is refused and the running one
//! stays).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub_stub::{Store, config::HubConfig};
use tokio::signal::unix::{SignalKind, signal};
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
    /// Serve the exchange until SIGTERM or SIGINT; SIGHUP reloads the catalog and certificates.
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
        // Colours only on a terminal, and not with NO_COLOR (no-color.org):
        // a log file or the journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
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
        Command::Serve { config: path } => {
            let c = HubConfig::load(&path)?;
            let (catalog, tls) = load_live(&c)?;
            let live = hub_stub::Live::new(Arc::new(catalog), tls);
            let store = Arc::new(Store::open(&c.store)?);
            let listener = tokio::net::TcpListener::bind(c.listen)
                .await
                .with_context(|| format!("cannot listen on {}", c.listen))?;
            tracing::info!(listen = %listener.local_addr()?, store = %c.store.display(), "hub serving");
            let stopped = shutdown()?;
            let mut hangups = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
            let token = CancellationToken::new();
            let stop = token.clone();
            tokio::spawn(async move {
                stopped.await;
                stop.cancel();
            });
            let limits = c.limits.clone();
            let reloads = live.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    reload(&path, &c, &reloads);
                }
            });
            hub_stub::serve_live(listener, live, store, limits, token).await?;
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

/// The catalog and TLS config a config names, both read and checked.
fn load_live(c: &HubConfig) -> anyhow::Result<(rules::catalog::Catalog, Arc<rustls::ServerConfig>)> {
    let catalog = load_catalog(c)?;
    let tls = pki::tls::server_config(&c.tls.ca, &c.tls.cert, &c.tls.key)
        .with_context(|| format!("TLS files {}, {}", c.tls.cert.display(), c.tls.key.display()))?;
    Ok((catalog, tls))
}

/// SIGHUP: reads the config, its catalog and TLS files again and puts them
/// in force for new connections and sessions. A config that does not load,
/// or that changes what needs a restart, is refused and the running one
/// stays.
fn reload(path: &Path, running: &HubConfig, live: &hub_stub::Live) {
    tracing::info!(config = %path.display(), "received SIGHUP: reloading the catalog and certificates");
    let new = HubConfig::load(path).and_then(|c| {
        let fixed = [
            ("listen", c.listen != running.listen),
            ("store", c.store != running.store),
            ("limits", c.limits != running.limits),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            anyhow::bail!("`{key}` cannot change while the hub serves (restart it to change it)");
        }
        load_live(&c)
    });
    match new {
        Ok((catalog, tls)) => {
            let digest = catalog.digest().to_owned();
            live.replace(Arc::new(catalog), tls);
            tracing::info!(
                catalog = %digest,
                "reloaded: new connections present the certificate read now, new sessions use the catalog"
            );
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload refused; the running catalog and certificates stay")
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
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
