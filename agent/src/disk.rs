//! The data directory's free space. The outbox applies no write that would
//! take the filesystem below its reserve (`outbox.reserve_free`): the
//! sources pause, the outbox gives back WAL space, delivery goes on, acks
//! free space, and the sources resume by themselves once a quarter more
//! than the reserve is free again (see `outbox/space.rs`).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::outbox::Outbox;

/// Free bytes for unprivileged users on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Has the outbox look at the free space every second until cancelled:
/// space freed by others resumes the sources without waiting for a write.
/// Pausing does not wait for this: the outbox checks before every write
/// whether it would leave the reserve free.
pub async fn watch(outbox: Outbox, token: CancellationToken) {
    loop {
        if let Err(e) = outbox.check_disk().await {
            warn!(error = %e, "cannot check the outbox's free disk space");
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
