//! systemd integration (`Type=notify`): READY=1 once the outbox, the health
//! port and the sources are open; STATUS= with the queue and the link; and
//! WATCHDOG=1 only while the pipeline answers, so that a hung agent is
//! restarted. Outside systemd (no NOTIFY_SOCKET) every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, LinkState};
use crate::outbox::Outbox;

/// Tells systemd the agent is up.
pub fn ready(health: &Health) {
    let status = status_line(health);
    // Outside systemd there is no socket, and nothing to tell.
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

fn status_line(health: &Health) -> String {
    let s = health.status();
    let link = match s.link.state {
        LinkState::Up => "link up",
        LinkState::Connecting => "link connecting",
        LinkState::Down => "LINK DOWN",
    };
    format!(
        "{link}; queue {} records{}; quarantine {}; ready: {}",
        s.queue.records,
        if s.queue.full { " (FULL)" } else { "" },
        s.quarantine,
        s.ready
    )
}

/// Sends STATUS= every few seconds and, when systemd asked for a watchdog,
/// WATCHDOG=1 at half its interval, but only after the outbox writer
/// answered a ping: a stuck writer (a hung disk) stops the pings.
pub async fn run(health: Arc<Health>, outbox: Outbox, token: CancellationToken) {
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
    let every = watchdog.map_or(Duration::from_secs(5), |w| (w / 2).min(Duration::from_secs(5)));
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        health.sample();
        let status = status_line(&health);
        let alive = match watchdog {
            Some(w) => matches!(tokio::time::timeout(w / 2, outbox.ping()).await, Ok(Ok(()))),
            None => false,
        };
        let result = if alive {
            sd_notify::notify(false, &[NotifyState::Watchdog, NotifyState::Status(&status)])
        } else {
            sd_notify::notify(false, &[NotifyState::Status(&status)])
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}
