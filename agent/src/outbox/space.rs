//! The disk reserve as the writer thread sees it: the free space of the data
//! directory's filesystem, the reserve no write may take
//! (`outbox.reserve_free`), and the ballast file that keeps room for the
//! deletes after acks when something else fills the disk.
//!
//! It decides and logs; the writer refuses the writes (`Error::DiskLow`)
//! and publishes `Stats::disk_low`. Looking every second for space freed by
//! others is `crate::disk::watch`.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::Reader;

/// The writer thread's view of the free space on the data directory's
/// filesystem: the reserve no write may take, and the ballast that keeps
/// room for deletes when something else fills the disk.
pub(super) struct Space {
    dir: PathBuf,
    pub(super) reserve: u64,
    ballast: PathBuf,
    ballast_size: u64,
}

impl Space {
    pub(super) fn new(dir: &Path, reserve: u64) -> Space {
        Space {
            dir: dir.to_owned(),
            reserve,
            ballast: dir.join("outbox.ballast"),
            // Room for many ack transactions and a WAL checkpoint.
            ballast_size: (reserve / 2).min(64 << 20),
        }
    }

    /// Free bytes for the outbox: the filesystem's (for unprivileged users:
    /// root's extra reserved blocks are not ours), plus the free pages
    /// inside the outbox file, which it reuses before it grows, less what
    /// the next checkpoint may add to the file (up to the WAL's size: the
    /// pages committed to the WAL are copied into the database file later,
    /// and may grow it).
    pub(super) fn free(&self, conn: &Connection) -> u64 {
        let inside = Reader::new(conn).reusable_bytes().unwrap_or(0);
        let wal = std::fs::metadata(self.dir.join("outbox.db-wal")).map_or(0, |m| m.len());
        crate::disk::free_bytes(&self.dir)
            .unwrap_or(u64::MAX)
            .saturating_add(inside)
            .saturating_sub(wal)
    }

    /// Keeps the writer's WAL within the ballast. A checkpoint copies the
    /// WAL's pages into `outbox.db` and may grow it by up to the WAL's size;
    /// when something else has taken the whole disk, the ballast is all the
    /// room there is for that, and a checkpoint that cannot complete leaves
    /// every later commit, the deletes after acks too, without room. The
    /// default reserve (256 MiB, a 64 MiB ballast) keeps the 16 MiB of
    /// [`super::open_connection`]; a reserve under 32 MiB checkpoints sooner.
    pub(super) fn bound_wal(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.ballast_size == 0 {
            return Ok(());
        }
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
        let bound = (self.ballast_size as i64 / page.max(512)).max(1);
        if pages > bound {
            conn.pragma_update(None, "wal_autocheckpoint", bound)?;
            conn.pragma_update(None, "journal_size_limit", self.ballast_size as i64)?;
        }
        Ok(())
    }

    fn has_ballast(&self) -> bool {
        self.ballast_size == 0 || std::fs::metadata(&self.ballast).is_ok_and(|m| m.len() >= self.ballast_size)
    }

    /// Gives the ballast's space back; true if there was one.
    pub(super) fn release_ballast(&self) -> bool {
        let released = std::fs::remove_file(&self.ballast).is_ok();
        if released {
            tracing::warn!(path = %self.ballast.display(), "disk full: released the outbox ballast so that acknowledged records can be deleted");
        }
        released
    }

    /// Makes the ballast: real blocks, not a sparse file (allocated with
    /// `fallocate`, or written where a filesystem cannot), synced.
    fn restore_ballast(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = self.ballast.with_extension("ballast.tmp");
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let len = self.ballast_size;
            if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len).is_err() {
                let zeros = vec![0u8; 1 << 20];
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.ballast)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Decides whether writes adding `adds` bytes may be applied, and
    /// updates `low` (sources paused). Resumes only with a quarter of the
    /// reserve to spare and the ballast back in place.
    pub(super) fn admit(&self, conn: &Connection, adds: u64, low: &mut bool) -> Result<(), (u64, u64)> {
        if self.reserve == 0 {
            return Ok(());
        }
        let free = self.free(conn);
        if *low {
            let ballast = if self.has_ballast() { 0 } else { self.ballast_size };
            let resume_at = self.reserve + self.reserve / 4 + ballast + adds.saturating_mul(2);
            if free < resume_at {
                return Err((free, self.reserve));
            }
            if ballast > 0 && self.restore_ballast().is_err() {
                return Err((free, self.reserve));
            }
            tracing::info!(free_mib = free >> 20, dir = %self.dir.display(), "disk space is back: sources resume");
            *low = false;
            return Ok(());
        }
        // Twice the bytes: the WAL holds the new pages before the checkpoint
        // copies them into the database file.
        if free < self.reserve.saturating_add(adds.saturating_mul(2)) {
            tracing::warn!(
                free_mib = free >> 20,
                reserve_mib = self.reserve >> 20,
                dir = %self.dir.display(),
                "disk below the reserve: sources paused, delivery goes on"
            );
            *low = true;
            return Err((free, self.reserve));
        }
        if !self.has_ballast() {
            let _ = self.restore_ballast();
        }
        Ok(())
    }
}
