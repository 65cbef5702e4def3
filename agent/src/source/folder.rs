//! The drop-folder source: business systems export files into a folder, and
//! this source takes each complete file once, streams its rows through
//! normalization into the outbox, and moves it to `done/` (or deletes it).
//!
//! A file is found by a notify watch and by a periodic rescan (notify misses
//! events on NFS and when its queue overflows). It is taken only when
//! complete, per the source's `complete` rule. Its identity (size, mtime,
//! SHA-256) and the byte offset reached commit with each chunk of records,
//! so after a crash the same file resumes where the last commit ended, and a
//! file whose last chunk committed is only moved. A file that cannot be read
//! at all (no header, missing mapped columns, unknown format) moves to
//! `rejected/` beside `NAME.error.txt`; a bad row is quarantined and the
//! rest of the file goes on.
//!
//! The folder is written by other systems and people, so nothing in it is
//! trusted: a file is opened without following links and checked through
//! the open handle (a regular file on the folder's filesystem), read only
//! through that handle, and moved by `renameat` between directory handles
//! that were themselves opened without following links; `done/`,
//! `rejected/` and error files are never written through a link. A file's
//! chunks commit in order (each expects the position the previous one
//! wrote), so a failed chunk stops the file at its last commit. A file that
//! changed while it was read goes to `rejected/`, never to `done/`. A file
//! that was being read when the agent died is counted, and after
//! `max_attempts` such restarts goes to `rejected/`. One file that cannot
//! be taken is retried with a backoff while the folder goes on.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::Watcher;
use rustix::fs::{AtFlags, FileType};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::commit::Committer;
use super::format::bounded;
use crate::config::{AfterDone, Completion, FolderConfig};
use crate::health::SourceStats;
use crate::normalize::Mapping;
use crate::outbox::Outbox;

mod dirs;
mod file;
#[cfg(test)]
mod tests;

pub use dirs::shown;
use dirs::{
    Dirs, Opened, ignored, is_marker, move_into, name_key, open_entry, remove_marker, stat_mtime, write_error_file,
};
use file::FileJob;

/// Chunks submitted but not yet committed, at most: lets parsing run ahead
/// of the fsync without holding much memory.
const CHUNKS_AHEAD: usize = 2;
/// The longest wait before a file that could not be taken is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);

pub struct Folder {
    /// The source's name.
    name: String,
    config: FolderConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    committer: Committer,
    stats: Arc<SourceStats>,
}

/// A file seen but not yet complete (settle rule).
struct Pending {
    size: u64,
    mtime: SystemTime,
    since: Instant,
}

impl Pending {
    fn new(size: u64, mtime: SystemTime, now: Instant) -> Pending {
        Pending {
            size,
            mtime,
            since: now,
        }
    }

    /// Notes what a scan at `now` saw of the file; returns how much longer
    /// it must hold still to count as complete (zero: it is complete). Any
    /// change of size or mtime starts the wait again.
    fn left(&mut self, size: u64, mtime: SystemTime, now: Instant, settle: Duration) -> Duration {
        if self.size != size || self.mtime != mtime {
            *self = Pending::new(size, mtime, now);
        }
        settle.saturating_sub(now.saturating_duration_since(self.since))
    }
}

/// A file that could not be taken, retried after a backoff.
struct Trouble {
    next: Instant,
    wait: Duration,
}

impl Trouble {
    /// The first failure of a file.
    fn new(now: Instant) -> Trouble {
        Trouble {
            next: now,
            wait: Duration::from_millis(500),
        }
    }

    /// Another failure at `now`: the wait doubles, up to `RETRY_MAX`.
    /// Returns the wait.
    fn failed(&mut self, now: Instant) -> Duration {
        self.wait = (self.wait * 2).min(RETRY_MAX);
        self.next = now + self.wait;
        self.wait
    }
}

/// How far a file got, as stored in the outbox's positions table.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct FilePosition {
    identity: String,
    byte: u64,
    line: u64,
    rows: u64,
    done: bool,
}

enum FileError {
    /// The file can never be read: move it to `rejected/`.
    Unreadable(String),
    /// Something transient (I/O, outbox): try again later.
    Retry(String),
    /// The outbox refused a chunk for the disk reserve: try again when
    /// there is room.
    Paused,
    /// Shutdown was requested; the last commit stands.
    Cancelled,
}

/// What a finished read saw of the file: compared with the folder's entry
/// before it is moved.
struct ReadFile {
    size: u64,
    mtime: SystemTime,
}

impl Folder {
    pub fn new(name: &str, config: FolderConfig, mapping: Mapping, outbox: Outbox, stats: Arc<SourceStats>) -> Folder {
        let committer = Committer::new(name, &mapping.resource().code, &outbox, &stats);
        Folder {
            name: name.to_owned(),
            config,
            mapping: Arc::new(mapping),
            outbox,
            committer,
            stats,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let span = info_span!("source", name = %self.name, path = %self.config.path.display());
        self.run_inner(token).instrument(span).await
    }

    async fn run_inner(self, token: CancellationToken) {
        if let Err(e) = self.forget_gone_files().await {
            warn!(error = %e, "cannot tidy file positions");
        }
        let wake = Arc::new(Notify::new());
        let _watcher = self.watch(wake.clone());
        let mut pending: HashMap<OsString, Pending> = HashMap::new();
        let mut troubles: HashMap<OsString, Trouble> = HashMap::new();
        let mut skipped: HashSet<OsString> = HashSet::new();
        info!("watching drop folder");
        loop {
            let next = match Dirs::open(&self.config.path) {
                Ok(dirs) => {
                    self.stats.set_error(None);
                    // Counted before the scan too: a long file must not
                    // hide what already waits in rejected/.
                    self.count_rejected(&dirs);
                    let mut scan = Scan {
                        dirs: &dirs,
                        pending: &mut pending,
                        troubles: &mut troubles,
                        skipped: &mut skipped,
                    };
                    let next = match self.scan(&mut scan, &token).await {
                        Ok(next) => next,
                        Err(e) => {
                            warn!(error = %e, "scan failed; retrying");
                            self.stats.set_error(Some(e));
                            Some(Duration::from_secs(1))
                        }
                    };
                    self.count_rejected(&dirs);
                    next
                }
                Err(e) => {
                    // Keep trying: the folder may be mounted or fixed later.
                    error!(error = %e, "drop folder unusable");
                    self.stats.set_error(Some(e));
                    Some(Duration::from_secs(5))
                }
            };
            if token.is_cancelled() {
                break;
            }
            let wait = next.map_or(self.config.rescan, |n| n.min(self.config.rescan));
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        info!("source stopped");
    }

    /// Notes what waits in rejected/ for a person, whoever put it there
    /// and whenever: /status warns while it is not empty.
    fn count_rejected(&self, dirs: &Dirs) {
        match dirs::count_rejected(dirs) {
            Ok((files, names)) => self
                .stats
                .set_rejected_held(&self.config.path.join("rejected"), files, names),
            Err(e) => warn!(error = %e, "cannot count the files in rejected/"),
        }
    }

    /// Clears the positions of files no longer in the folder: left when a
    /// crash came between moving a finished file and clearing its position.
    async fn forget_gone_files(&self) -> Result<(), crate::outbox::Error> {
        let source = self.name.clone();
        let positions = self.outbox.read(move |r| r.positions(&source)).await?;
        let names: HashSet<String> = std::fs::read_dir(&self.config.path)
            .map(|entries| entries.flatten().map(|e| name_key(&e.file_name())).collect())
            .unwrap_or_default();
        if names.is_empty() && !self.config.path.is_dir() {
            return Ok(()); // The folder is not there (yet): forget nothing.
        }
        let gone = positions.into_iter().filter_map(|(key, _)| {
            let name = key.strip_prefix("file:").or_else(|| key.strip_prefix("reading:"));
            name.is_some_and(|n| !names.contains(n)).then_some((key, None))
        });
        self.committer.set(gone).await
    }

    /// Starts a notify watch that wakes the scan loop. A failure only costs
    /// latency: the rescan still finds every file.
    fn watch(&self, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Access events must not wake the scan: the scan's own read of
            // the folder makes them, and would keep it spinning.
            if let Ok(e) = &event
                && matches!(e.kind, notify::EventKind::Access(_))
            {
                return;
            }
            wake.notify_one();
        })
        .map_err(|e| warn!(error = %e, "no file watch; relying on rescan"))
        .ok()?;
        watcher
            .watch(&self.config.path, notify::RecursiveMode::NonRecursive)
            .map_err(|e| warn!(error = %e, "no file watch; relying on rescan"))
            .ok()?;
        Some(watcher)
    }

    /// Says once per name why a folder entry is never taken, and counts it.
    fn skip_once(&self, skipped: &mut HashSet<OsString>, name: &OsStr, why: &str, loud: bool) {
        if skipped.insert(name.to_owned()) {
            self.stats.files_skipped.inc();
            if loud {
                warn!(file = %shown(name), "not taken: {why}");
            } else {
                info!(file = %shown(name), "not taken yet: {why}");
            }
        }
    }

    /// Takes every complete file, oldest first. Returns when the next check
    /// is due (a file not complete yet, or one waiting to be retried).
    async fn scan(&self, scan: &mut Scan<'_>, token: &CancellationToken) -> Result<Option<Duration>, String> {
        let mut candidates = Vec::new();
        let entries = std::fs::read_dir(&self.config.path)
            .map_err(|e| format!("cannot list {}: {e}", self.config.path.display()))?;
        let mut seen: HashSet<OsString> = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            seen.insert(name.clone());
            if name == "done" || name == "rejected" || is_marker(&name) {
                continue;
            }
            if ignored(&name) {
                self.skip_once(
                    scan.skipped,
                    &name,
                    "a hidden or temporary name (rename it when it is complete)",
                    false,
                );
                continue;
            }
            // Not followed: a link is reported, never taken.
            let Ok(meta) = entry.metadata() else { continue };
            let kind = meta.file_type();
            if !kind.is_file() {
                let what = if kind.is_symlink() {
                    "a symbolic link (links are never followed)"
                } else if kind.is_dir() {
                    "a folder (subfolders are not read)"
                } else {
                    "not a regular file (a FIFO, socket or device)"
                };
                self.skip_once(scan.skipped, &name, what, true);
                continue;
            }
            scan.skipped.remove(&name);
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            candidates.push((mtime, name, meta.len()));
        }
        candidates.sort();
        scan.pending.retain(|name, _| seen.contains(name));
        scan.skipped.retain(|name| seen.contains(name));
        scan.troubles.retain(|name, _| {
            let keep = seen.contains(name);
            if !keep {
                self.stats.set_problem(&shown(name), None);
            }
            keep
        });
        let mut next: Option<Duration> = None;
        let mut due = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        for (mtime, name, size) in candidates {
            if token.is_cancelled() {
                return Ok(None);
            }
            if let Some(t) = scan.troubles.get(&name) {
                let now = Instant::now();
                if t.next > now {
                    due(t.next - now);
                    continue;
                }
            }
            match self.config.complete {
                Completion::Rename => {}
                Completion::Marker => {
                    let mut marker = name.clone();
                    marker.push(".ok");
                    if rustix::fs::statat(&scan.dirs.folder, marker.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).is_err() {
                        continue;
                    }
                }
                Completion::Settle => {
                    let now = Instant::now();
                    let p = scan
                        .pending
                        .entry(name.clone())
                        .or_insert_with(|| Pending::new(size, mtime, now));
                    let left = p.left(size, mtime, now, self.config.settle);
                    if !left.is_zero() {
                        due(left);
                        continue;
                    }
                    scan.pending.remove(&name);
                }
            }
            match self.take(&name, scan.dirs, token).await {
                Ok(()) => {
                    if scan.troubles.remove(&name).is_some() {
                        self.stats.set_problem(&shown(&name), None);
                    }
                }
                Err(e) => {
                    let now = Instant::now();
                    let t = scan.troubles.entry(name.clone()).or_insert_with(|| Trouble::new(now));
                    let wait = t.failed(now);
                    warn!(file = %shown(&name), error = %e, retry_in = ?wait, "cannot take the file; the folder goes on");
                    self.stats
                        .set_problem(&shown(&name), Some(format!("{e} (retried in {wait:?})")));
                    due(wait);
                }
            }
        }
        Ok(next)
    }

    /// Processes one complete file to the end (or to shutdown).
    async fn take(&self, name: &OsStr, dirs: &Dirs, token: &CancellationToken) -> Result<(), String> {
        // Nothing is tried while the queue is full or the disk below its
        // reserve: the file is not at fault.
        tokio::select! {
            () = self.outbox.room() => {}
            () = token.cancelled() => return Ok(()),
        }
        let file = match open_entry(dirs, name) {
            Ok(f) => f,
            Err(Opened::Gone) => return Ok(()),
            Err(Opened::Skip(why)) => {
                warn!(file = %shown(name), "not taken: {why}");
                self.stats.files_skipped.inc();
                return Ok(());
            }
            Err(Opened::Reject(why)) => {
                self.reject(name, dirs, &why).await?;
                return Ok(());
            }
        };
        let key = format!("file:{}", name_key(name));
        let reading = format!("reading:{}", name_key(name));
        let source = self.name.clone();
        let (stored, attempts) = {
            let (source, key, reading) = (source.clone(), key.clone(), reading.clone());
            self.outbox
                .read(move |r| {
                    let positions = r.positions(&source)?;
                    let find = |k: &str| positions.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone());
                    Ok((find(&key), find(&reading)))
                })
                .await
                .map_err(|e| e.to_string())?
        };
        // Restarts while this file was read that made no progress: a file
        // that crashes the agent does so at the same row every time, while
        // an agent killed for other reasons gets further between kills.
        let progress = stored
            .as_deref()
            .and_then(|v| serde_json::from_str::<FilePosition>(v).ok())
            .map_or((0, 0), |p| (p.byte, p.rows));
        let attempts = match attempts.as_deref().map(|a| a.split(':').collect::<Vec<_>>()).as_deref() {
            Some([n, byte, rows]) if (byte.parse().ok(), rows.parse().ok()) == (Some(progress.0), Some(progress.1)) => {
                n.parse().unwrap_or(0)
            }
            _ => 0u32,
        };
        if attempts >= self.config.max_attempts {
            let why = format!(
                "the agent stopped while reading this file {attempts} times at the same place (source setting \
                 max_attempts = {}); it is set aside so that the agent can go on. Rows already delivered stay \
                 delivered; fix or split the file and drop it again",
                self.config.max_attempts
            );
            self.reject(name, dirs, &why).await?;
            return Ok(());
        }
        // Counted before reading: a crash while reading leaves it raised.
        let counted = format!("{}:{}:{}", attempts + 1, progress.0, progress.1);
        self.committer
            .set([(reading.clone(), Some(counted))])
            .await
            .map_err(|e| e.to_string())?;

        let result = {
            let job = FileJob {
                name: name.to_owned(),
                shown: shown(name),
                key: key.clone(),
                config: self.config.clone(),
                mapping: self.mapping.clone(),
                committer: self.committer.clone(),
                stats: self.stats.clone(),
                token: token.clone(),
            };
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || job.run(file, stored, &handle))
                .await
                .map_err(|e| format!("file task failed: {e}"))?
        };
        let clear = |keys: &[&String]| {
            self.committer
                .set(keys.iter().map(|k| ((*k).clone(), None)).collect::<Vec<_>>())
        };
        match result {
            Ok(read) => {
                match self.finish(name, dirs, &read) {
                    Ok(()) => {}
                    Err(Finish::Changed(why)) => {
                        self.reject(name, dirs, &why).await?;
                        return Ok(());
                    }
                    Err(Finish::Failed(e)) => {
                        // Read and committed, not moved: the next try only moves it.
                        let _ = clear(&[&reading]).await;
                        return Err(e);
                    }
                }
                clear(&[&key, &reading]).await.map_err(|e| e.to_string())?;
                self.stats.files_done.inc();
                Ok(())
            }
            Err(FileError::Cancelled) => {
                let _ = clear(&[&reading]).await;
                Ok(())
            }
            Err(FileError::Paused) => {
                // The disk went below its reserve mid-file: taken again from
                // its last commit once there is room, without a backoff.
                let _ = clear(&[&reading]).await;
                Ok(())
            }
            Err(FileError::Retry(e)) => {
                let _ = clear(&[&reading]).await;
                Err(e)
            }
            Err(FileError::Unreadable(reason)) => {
                self.reject(name, dirs, &reason).await?;
                Ok(())
            }
        }
    }

    /// Moves (or deletes) a file whose records are all committed, and its
    /// marker, after checking that the folder's entry is still the file
    /// that was read, unchanged.
    fn finish(&self, name: &OsStr, dirs: &Dirs, read: &ReadFile) -> Result<(), Finish> {
        let now = rustix::fs::statat(&dirs.folder, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Finish::Failed(format!("cannot look at the file again: {e}")))?;
        let mtime = stat_mtime(&now);
        if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
            || now.st_size as u64 != read.size
            || mtime != read.mtime
        {
            return Err(Finish::Changed(format!(
                "the file changed while it was read (it had {} bytes, it now has {}): the rows read were \
                 delivered, the rest were not. Write files under a temporary name and rename them when complete",
                read.size, now.st_size
            )));
        }
        match self.config.after {
            AfterDone::Delete => rustix::fs::unlinkat(&dirs.folder, name, AtFlags::empty())
                .map_err(|e| Finish::Failed(format!("cannot delete: {e}")))?,
            AfterDone::Move => {
                move_into(dirs, name, &dirs.done).map_err(|e| Finish::Failed(format!("cannot move to done/: {e}")))?;
            }
        }
        remove_marker(dirs, name);
        info!(file = %shown(name), "file delivered to the outbox");
        Ok(())
    }

    /// Moves a file to `rejected/` with `NAME.error.txt` beside it, and
    /// forgets its positions.
    async fn reject(&self, name: &OsStr, dirs: &Dirs, reason: &str) -> Result<(), String> {
        warn!(file = %shown(name), reason = %bounded(reason, 500), "file rejected");
        let moved = move_into(dirs, name, &dirs.rejected).map_err(|e| format!("cannot move to rejected/: {e}"))?;
        let text = format!(
            "file: {}\nsource: {}\nrejected at: {}\nreason: {}\n",
            shown(name),
            self.name,
            humantime::format_rfc3339_seconds(SystemTime::now()),
            bounded(reason, 4000)
        );
        write_error_file(&dirs.rejected, &moved, text.as_bytes())
            .map_err(|e| format!("cannot write the error file: {e}"))?;
        remove_marker(dirs, name);
        self.stats.files_rejected.inc();
        let forget = ["file:", "reading:"].map(|p| (format!("{p}{}", name_key(name)), None));
        self.committer.set(forget).await.map_err(|e| e.to_string())
    }
}

/// What one scan works with.
struct Scan<'a> {
    dirs: &'a Dirs,
    pending: &'a mut HashMap<OsString, Pending>,
    troubles: &'a mut HashMap<OsString, Trouble>,
    skipped: &'a mut HashSet<OsString>,
}

enum Finish {
    /// The entry is no longer the file that was read: reject it.
    Changed(String),
    /// Moving failed: try again later.
    Failed(String),
}
