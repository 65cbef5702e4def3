//! The data directory's free space. Below the reserve
//! (`outbox.reserve_free`) the sources pause and the outbox gives back WAL
//! space; delivery goes on, acks free space, and the sources resume by
//! themselves once a quarter more than the reserve is free again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::outbox::Outbox;

/// Free bytes for unprivileged users on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Checks the free space every second until cancelled.
pub async fn watch(outbox: Outbox, dir: PathBuf, reserve: u64, token: CancellationToken) {
    let resume_at = reserve.saturating_add(reserve / 4);
    let mut low = false;
    loop {
        // Free pages inside the outbox count as free: the file keeps its
        // size after deletes and reuses them first.
        let inside = outbox.read(|r| r.reusable_bytes()).await.unwrap_or(0);
        match free_bytes(&dir).map(|f| f + inside) {
            Ok(free) if !low && free < reserve => {
                warn!(free_mib = free >> 20, reserve_mib = reserve >> 20, dir = %dir.display(), "disk below the reserve: sources paused, delivery goes on");
                low = true;
            }
            Ok(free) if low && free >= resume_at => {
                info!(free_mib = free >> 20, dir = %dir.display(), "disk space is back: sources resume");
                low = false;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, dir = %dir.display(), "cannot read free disk space"),
        }
        if let Err(e) = outbox.set_disk_low(low).await {
            warn!(error = %e, "cannot tell the outbox about the disk");
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
