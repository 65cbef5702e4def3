//! `qianzhi run`: starts the agent ([`crate::start`]), tells systemd, and
//! runs until SIGTERM or SIGINT (or a fatal task error), then shuts down
//! within `shutdown_grace`. SIGHUP reloads the config.
//!
//! Not here: what runs (`crate::start`, `crate::Running::reload`).

use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;

/// Runs `qianzhi run`.
pub fn main(config_path: &Path) -> ExitCode {
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    super::init_tracing(config.log_format, &config.log_level);
    super::runtime().block_on(run(config_path, config))
}

async fn run(path: &Path, config: Config) -> ExitCode {
    let grace = config.shutdown_grace;
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let running = match crate::start(config, &tasks, token.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qianzhi: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::systemd::ready(&running.health);
    let shutdown = crate::signal::shutdown();
    tokio::pin!(shutdown);
    let mut reloads = crate::signal::reloads();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("received shutdown signal");
                break;
            }
            () = token.cancelled() => {
                warn!("fatal task error; shutting down");
                break;
            }
            Some(()) = reloads.recv() => reload(path, &running).await,
        }
    }
    crate::systemd::stopping();
    token.cancel();
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(?grace, "graceful shutdown timed out");
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: read and validate the config again, and apply it; a bad config is
/// refused with the reason and the running one stays.
async fn reload(path: &Path, running: &crate::Running) {
    info!(config = %path.display(), "received SIGHUP: reloading the config");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
    match Config::load(path) {
        Err(e) => {
            error!(error = %e, "config reload refused; the running config stays");
            running.health.set_reload_error(Some(e.to_string()));
        }
        Ok(config) => match running.reload(config).await {
            Ok(summary) => info!(%summary, "config reloaded"),
            Err(e) => error!(error = %e, "config reload refused; the running config stays"),
        },
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}
