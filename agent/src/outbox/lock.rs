//! The data directory's lock (`agent.lock`): one process owns a data
//! directory, so the outbox has one writer. The running agent holds it for
//! its lifetime (the writer thread drops it last); the offline quarantine
//! tools hold it while they change the outbox.
//!
//! The holder writes its pid and command line into the lock file, so that
//! a second process waiting for the lock can say at once whom it waits for.
//! The file's content is only a hint: the lock is the `flock`, and the
//! content is read only while someone holds it.
//!
//! It owns nothing in the directory but the lock file; the directory is
//! made private by `fsx`.

use std::io::Write as _;
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
            Ok(()) => {
                // Only a hint for whoever waits next: a lock whose holder
                // could not be written is still a lock.
                let _ = file.set_len(0).and_then(|()| {
                    let command: Vec<String> = std::env::args().collect();
                    writeln!(&file, "{}\n{}", std::process::id(), command.join(" "))
                });
                Ok(DirLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Lock { path, source }),
        }
    }

    /// Like [`DirLock::acquire`], but waits up to `patience` for a holder
    /// that is closing (an outbox of this process whose writer thread is
    /// still finishing).
    /// Says at once when another process holds the lock, and whom it
    /// waits for.
    pub fn acquire_within(dir: &Path, patience: std::time::Duration) -> Result<DirLock, Error> {
        let deadline = std::time::Instant::now() + patience;
        let mut told = false;
        loop {
            match DirLock::acquire(dir) {
                Err(Error::Locked { path }) if std::time::Instant::now() < deadline => {
                    if !told {
                        told = true;
                        tell_waiting(&path, patience);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }
}

/// Logs whom a wait for the lock at `path` is for, unless it is this
/// process (an outbox of its own still closing: a short wait).
fn tell_waiting(path: &Path, patience: std::time::Duration) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
    if pid == Some(std::process::id()) {
        return;
    }
    let holder = match pid {
        Some(pid) => format!("pid {pid} ({})", lines.next().unwrap_or("command unknown")),
        None => "another process (pid unknown)".into(),
    };
    tracing::warn!(
        lock = %path.display(),
        "waiting up to {} for the data directory's lock, held by {holder}: is another qianzhi running with this data directory?",
        humantime::format_duration(patience)
    );
}
