//! The data directory's lock (`agent.lock`): one process owns a data
//! directory, so the outbox has one writer. The running agent holds it for
//! its lifetime (the writer thread drops it last); the offline quarantine
//! tools hold it while they change the outbox.
//!
//! It owns nothing in the directory but the lock file; the directory is
//! made private by `fsx`.

use std::path::Path;

use super::Error;

/// The data directory's lock: held by the running agent for its lifetime,
/// and by offline tools that change the outbox.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        crate::fsx::create_private_dir(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Lock {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Lock { path, source }),
        }
    }

    /// Like [`DirLock::acquire`], but waits up to `patience` for a holder
    /// that is closing (an outbox of this process whose writer thread is
    /// still finishing).
    pub fn acquire_within(dir: &Path, patience: std::time::Duration) -> Result<DirLock, Error> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match DirLock::acquire(dir) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }
}
