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
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::Watcher;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::format::{Charset, CsvRows, JsonRows, Pos, Row, Rows, Unreadable, Utf8Evidence, XlsxRows};
use crate::clock;
use crate::config::{AfterDone, Completion, Encoding, FileFormat, SourceConfig};
use crate::health::SourceStats;
use crate::normalize::{Mapping, Outcome};
use crate::outbox::{self, Outbox, PositionUpdate, Receipt, Write};

/// Rows per outbox transaction, at most.
const CHUNK_ROWS: usize = 4096;
/// Encoded bytes per outbox transaction, about.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks submitted but not yet committed, at most: lets parsing run ahead
/// of the fsync without holding much memory.
const CHUNKS_AHEAD: usize = 2;
/// The longest wait before a file that could not be taken is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);

pub struct Folder {
    config: SourceConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    stats: Arc<SourceStats>,
}

/// A file seen but not yet complete (settle rule).
struct Pending {
    size: u64,
    mtime: SystemTime,
    since: Instant,
}

/// A file that could not be taken, retried after a backoff.
struct Trouble {
    next: Instant,
    wait: Duration,
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

/// The folder and its `done/` and `rejected/` subfolders, opened without
/// following links.
struct Dirs {
    folder: OwnedFd,
    dev: u64,
    done: OwnedFd,
    rejected: OwnedFd,
}

impl Dirs {
    fn open(path: &Path) -> Result<Dirs, String> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // A missing folder is made (it may be on a share mounted later:
        // then this fails and is retried).
        std::fs::create_dir_all(path).map_err(|e| format!("cannot create the folder {}: {e}", path.display()))?;
        let folder = rustix::fs::open(path, dir_flags, Mode::empty())
            .map_err(|e| format!("cannot open the folder {}: {e}", path.display()))?;
        let dev = rustix::fs::fstat(&folder)
            .map_err(|e| format!("cannot stat the folder {}: {e}", path.display()))?
            .st_dev;
        let sub = |name: &str| -> Result<OwnedFd, String> {
            match rustix::fs::mkdirat(&folder, name, Mode::from_raw_mode(0o750)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(format!("cannot create {}/{name}: {e}", path.display())),
            }
            rustix::fs::openat(&folder, name, dir_flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => format!(
                    "{}/{name} is not a folder (a symbolic link or a file): refusing to move files through it; \
                     replace it with a real folder",
                    path.display()
                ),
                e => format!("cannot open {}/{name}: {e}", path.display()),
            })
        };
        Ok(Dirs {
            done: sub("done")?,
            rejected: sub("rejected")?,
            folder,
            dev,
        })
    }
}

impl Folder {
    pub fn new(config: SourceConfig, mapping: Mapping, outbox: Outbox, stats: Arc<SourceStats>) -> Folder {
        Folder {
            config,
            mapping: Arc::new(mapping),
            outbox,
            stats,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let span = info_span!("source", name = %self.config.name, path = %self.config.path.display());
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
                    let mut scan = Scan {
                        dirs: &dirs,
                        pending: &mut pending,
                        troubles: &mut troubles,
                        skipped: &mut skipped,
                    };
                    match self.scan(&mut scan, &token).await {
                        Ok(next) => next,
                        Err(e) => {
                            warn!(error = %e, "scan failed; retrying");
                            self.stats.set_error(Some(e));
                            Some(Duration::from_secs(1))
                        }
                    }
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

    /// Clears the positions of files no longer in the folder: left when a
    /// crash came between moving a finished file and clearing its position.
    async fn forget_gone_files(&self) -> Result<(), crate::outbox::Error> {
        let source = self.config.name.clone();
        let positions = self.outbox.read(move |r| r.positions(&source)).await?;
        let names: HashSet<String> = std::fs::read_dir(&self.config.path)
            .map(|entries| entries.flatten().map(|e| name_key(&e.file_name())).collect())
            .unwrap_or_default();
        if names.is_empty() && !self.config.path.is_dir() {
            return Ok(()); // The folder is not there (yet): forget nothing.
        }
        let gone: Vec<PositionUpdate> = positions
            .into_iter()
            .filter(|(key, _)| {
                let name = key.strip_prefix("file:").or_else(|| key.strip_prefix("reading:"));
                name.is_some_and(|n| !names.contains(n))
            })
            .map(|(key, _)| PositionUpdate {
                source: self.config.name.clone(),
                key,
                value: None,
            })
            .collect();
        if !gone.is_empty() {
            self.outbox
                .write(Write {
                    positions: gone,
                    ..Write::default()
                })
                .await?;
        }
        Ok(())
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
                    let p = scan.pending.entry(name.clone()).or_insert(Pending {
                        size,
                        mtime,
                        since: Instant::now(),
                    });
                    if p.size != size || p.mtime != mtime {
                        *p = Pending {
                            size,
                            mtime,
                            since: Instant::now(),
                        };
                    }
                    let age = p.since.elapsed();
                    if age < self.config.settle {
                        due(self.config.settle - age);
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
                    let t = scan.troubles.entry(name.clone()).or_insert(Trouble {
                        next: Instant::now(),
                        wait: Duration::from_millis(500),
                    });
                    t.wait = (t.wait * 2).min(RETRY_MAX);
                    t.next = Instant::now() + t.wait;
                    warn!(file = %shown(&name), error = %e, retry_in = ?t.wait, "cannot take the file; the folder goes on");
                    self.stats
                        .set_problem(&shown(&name), Some(format!("{e} (retried in {:?})", t.wait)));
                    due(t.wait);
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
        let source = self.config.name.clone();
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
        self.outbox
            .write(Write {
                positions: vec![PositionUpdate {
                    source: source.clone(),
                    key: reading.clone(),
                    value: Some(format!("{}:{}:{}", attempts + 1, progress.0, progress.1)),
                }],
                ..Write::default()
            })
            .await
            .map_err(|e| e.to_string())?;

        let result = {
            let job = FileJob {
                name: name.to_owned(),
                shown: shown(name),
                key: key.clone(),
                config: self.config.clone(),
                mapping: self.mapping.clone(),
                outbox: self.outbox.clone(),
                stats: self.stats.clone(),
                token: token.clone(),
            };
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || job.run(file, stored, &handle))
                .await
                .map_err(|e| format!("file task failed: {e}"))?
        };
        let clear = |keys: &[&str]| Write {
            positions: keys
                .iter()
                .map(|k| PositionUpdate {
                    source: source.clone(),
                    key: (*k).to_owned(),
                    value: None,
                })
                .collect(),
            ..Write::default()
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
                        let _ = self.outbox.write(clear(&[&reading])).await;
                        return Err(e);
                    }
                }
                self.outbox
                    .write(clear(&[&key, &reading]))
                    .await
                    .map_err(|e| e.to_string())?;
                self.stats.files_done.inc();
                Ok(())
            }
            Err(FileError::Cancelled) => {
                let _ = self.outbox.write(clear(&[&reading])).await;
                Ok(())
            }
            Err(FileError::Paused) => {
                // The disk went below its reserve mid-file: taken again from
                // its last commit once there is room, without a backoff.
                let _ = self.outbox.write(clear(&[&reading])).await;
                Ok(())
            }
            Err(FileError::Retry(e)) => {
                let _ = self.outbox.write(clear(&[&reading])).await;
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
            self.config.name,
            humantime::format_rfc3339_seconds(SystemTime::now()),
            bounded(reason, 4000)
        );
        write_error_file(&dirs.rejected, &moved, text.as_bytes())
            .map_err(|e| format!("cannot write the error file: {e}"))?;
        remove_marker(dirs, name);
        self.stats.files_rejected.inc();
        let forget = ["file:", "reading:"]
            .iter()
            .map(|p| PositionUpdate {
                source: self.config.name.clone(),
                key: format!("{p}{}", name_key(name)),
                value: None,
            })
            .collect();
        self.outbox
            .write(Write {
                positions: forget,
                ..Write::default()
            })
            .await
            .map_err(|e| e.to_string())
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

/// Why a folder entry was not opened.
enum Opened {
    /// It is no longer there.
    Gone,
    /// Not a file to take (a link or a FIFO swapped in): leave it.
    Skip(String),
    /// A file that can never be read: move it to `rejected/`.
    Reject(String),
}

/// Opens a folder entry for reading without following a link and without
/// blocking on a FIFO, and checks the open file: a regular file on the
/// folder's filesystem.
fn open_entry(dirs: &Dirs, name: &OsStr) -> Result<File, Opened> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(&dirs.folder, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(Opened::Gone),
        Err(rustix::io::Errno::LOOP) => return Err(Opened::Skip("it became a symbolic link".into())),
        Err(e @ (rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)) => {
            return Err(Opened::Reject(format!("the agent cannot open it: {e}")));
        }
        Err(e) => return Err(Opened::Skip(format!("cannot open it: {e}"))),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Opened::Skip(format!("cannot stat it: {e}")))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Opened::Skip("it is no longer a regular file".into()));
    }
    if st.st_dev != dirs.dev {
        return Err(Opened::Skip("it is on another filesystem than the folder".into()));
    }
    // Reads block normally from here on (O_NONBLOCK only guarded the open).
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    Ok(File::from(fd))
}

fn stat_mtime(st: &rustix::fs::Stat) -> SystemTime {
    let secs = st.st_mtime.max(0) as u64;
    SystemTime::UNIX_EPOCH + Duration::new(secs, st.st_mtime_nsec as u32)
}

/// Moves `name` from the folder into `to` under a name not taken there
/// (`NAME`, else `NAME.1`, …), never replacing anything. Returns the name
/// it got.
fn move_into(dirs: &Dirs, name: &OsStr, to: &OwnedFd) -> std::io::Result<OsString> {
    for n in 0..10_000u32 {
        let mut target = name.to_owned();
        if n > 0 {
            target.push(format!(".{n}"));
        }
        match rustix::fs::renameat_with(&dirs.folder, name, to, target.as_os_str(), RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(target),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // A filesystem without RENAME_NOREPLACE: look, then rename.
                if rustix::fs::statat(to, target.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                    continue;
                }
                rustix::fs::renameat(&dirs.folder, name, to, target.as_os_str())?;
                return Ok(target);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("no free name in the target folder"))
}

/// Creates `rejected/NAME.error.txt` as a new file (never through a link,
/// never over an existing file).
fn write_error_file(dir: &OwnedFd, moved: &OsStr, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for n in 0..1000u32 {
        let mut error_name = moved.to_owned();
        if n > 0 {
            error_name.push(format!(".{n}"));
        }
        error_name.push(".error.txt");
        match rustix::fs::openat(dir, error_name.as_os_str(), flags, Mode::from_raw_mode(0o640)) {
            Ok(fd) => {
                let mut f = File::from(fd);
                f.write_all(text)?;
                return f.sync_all();
            }
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::LOOP) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("no free name for the error file"))
}

fn remove_marker(dirs: &Dirs, name: &OsStr) {
    let mut marker = name.to_owned();
    marker.push(".ok");
    let _ = rustix::fs::unlinkat(&dirs.folder, marker.as_os_str(), AtFlags::empty());
}

/// Names that are never taken: hidden and temporary files being written.
fn ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".")
        || [&b".tmp"[..], b".part", b".partial", b".swp", b"~"]
            .iter()
            .any(|s| b.ends_with(s))
}

fn is_marker(name: &OsStr) -> bool {
    name.as_bytes().ends_with(b".ok")
}

/// The key of a file's positions: its name, or for a name that is not
/// UTF-8 (GBK names from Windows shares) its bytes in hex.
fn name_key(name: &OsStr) -> String {
    match name.to_str() {
        Some(s) => s.to_owned(),
        None => format!("bytes:{}", rules::catalog::hex(name.as_bytes())),
    }
}

/// A file name for logs and messages: control characters escaped, bytes
/// that are not UTF-8 as `\xNN`, at most 255 characters.
pub fn shown(name: &OsStr) -> String {
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    bounded(&out, 255)
}

/// At most `max` characters of `s`, with `…` if cut, and its control
/// characters escaped: a reason can carry a file's header names.
fn bounded(s: &str, max: usize) -> String {
    let cut = match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    };
    if cut.chars().any(char::is_control) {
        cut.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    } else {
        cut
    }
}

/// One file's processing, on a blocking thread.
struct FileJob {
    name: OsString,
    /// The name as logs show it.
    shown: String,
    key: String,
    config: SourceConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    stats: Arc<SourceStats>,
    token: CancellationToken,
}

impl FileJob {
    fn run(self, mut file: File, stored: Option<String>, rt: &tokio::runtime::Handle) -> Result<ReadFile, FileError> {
        let scan = identify(&mut file).map_err(|e| FileError::Retry(format!("cannot read: {e}")))?;
        let read = ReadFile {
            size: scan.size,
            mtime: scan.mtime,
        };
        let parsed: Option<FilePosition> = stored.as_deref().and_then(|v| serde_json::from_str(v).ok());
        let from = match &parsed {
            Some(p) if p.identity == scan.identity && p.done => return Ok(read),
            Some(p) if p.identity == scan.identity => {
                info!(file = %self.shown, line = p.line, "resuming file");
                Pos {
                    byte: p.byte,
                    line: p.line,
                    rows: p.rows,
                }
            }
            _ => Pos::default(),
        };
        let format = match self.config.format {
            FileFormat::Auto => {
                let ext = Path::new(&self.name)
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                match ext.as_str() {
                    "csv" | "txt" => FileFormat::Csv,
                    "jsonl" | "ndjson" => FileFormat::Jsonl,
                    "xlsx" | "xlsm" | "xls" => FileFormat::Xlsx,
                    _ => {
                        return Err(FileError::Unreadable(format!(
                            "unknown file type {:?}: expected .csv, .jsonl or .xlsx (or set the source's format)",
                            bounded(&ext, 20)
                        )));
                    }
                }
            }
            f => f,
        };
        let charset = match self.config.encoding {
            Encoding::Utf8 => Charset::Utf8,
            Encoding::Gb18030 if format != FileFormat::Xlsx && scan.evidence.is_clearly_utf8() => {
                return Err(FileError::Unreadable(format!(
                    "the source is configured encoding = \"gb18030\", but this file looks like UTF-8 ({} multi-byte \
                     UTF-8 characters, no byte that is not UTF-8): set encoding = \"auto\" or \"utf-8\", or export \
                     the file in GB18030/GBK",
                    scan.evidence.multibyte
                )));
            }
            Encoding::Gb18030 => Charset::Gb18030,
            Encoding::Auto => scan.evidence.charset(),
        };
        debug!(file = %self.shown, ?format, ?charset, "reading file");
        let handle = file.try_clone().map_err(|e| FileError::Retry(e.to_string()))?;
        file.rewind().map_err(|e| FileError::Retry(e.to_string()))?;
        let limits = self.config.limits;
        let mut rows = match format {
            FileFormat::Csv => Rows::Csv(Box::new(
                CsvRows::open(file, charset, &self.mapping, from, limits).map_err(unreadable)?,
            )),
            FileFormat::Xlsx => Rows::Xlsx(XlsxRows::open(file, &self.mapping, from, limits).map_err(unreadable)?),
            _ => Rows::Json(JsonRows::open(file, charset, from, limits).map_err(unreadable)?),
        };

        // Each submitted chunk with what it counts once committed.
        let mut receipts: std::collections::VecDeque<(Receipt, Counts)> = Default::default();
        let mut write = Write::default();
        let mut bytes = 0;
        let mut warnings = 0u64;
        let mut pos = from;
        // Each chunk commits only after the one before it: it expects the
        // position that one wrote.
        let mut previous = stored;
        loop {
            let now = clock::now_us();
            let row = rows.next(&self.mapping, &self.shown, now).map_err(|e| {
                let why = format!("read error at line {}: {e}", pos.line);
                // A malformed workbook stays malformed; an I/O error may pass.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    FileError::Unreadable(why)
                } else {
                    FileError::Retry(why)
                }
            })?;
            let mut done = row.is_none();
            if let Some((row, next)) = row {
                pos = next;
                self.stats.rows.inc();
                match row {
                    Row::Outcome(Outcome::Record { bytes: r, warnings: w }) => {
                        bytes += r.len();
                        write.records.push(r);
                        warnings += w as u64;
                    }
                    Row::Outcome(Outcome::Quarantine(q)) | Row::Unreadable(q) => {
                        bytes += q.raw.len();
                        write.quarantine.push(q);
                    }
                }
            }
            let mut changed = None;
            if done {
                // Never mark as read a file that grew or changed under us.
                changed = changed_since(&handle, &read);
                done = changed.is_none();
            }
            let full = write.records.len() + write.quarantine.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES;
            if full || done || changed.is_some() {
                let (records, quarantined) = (write.records.len() as u64, write.quarantine.len() as u64);
                if records > 0 {
                    // The resource changed: its freshness commits with the records.
                    write
                        .positions
                        .push(crate::freshness::changed(&self.mapping.resource().code, now));
                }
                let value = serde_json::to_string(&FilePosition {
                    identity: scan.identity.clone(),
                    byte: pos.byte,
                    line: pos.line,
                    rows: pos.rows,
                    done,
                })
                .unwrap_or_default();
                write.positions.push(PositionUpdate {
                    source: self.config.name.clone(),
                    key: self.key.clone(),
                    value: Some(value.clone()),
                });
                write.expect.push(PositionUpdate {
                    source: self.config.name.clone(),
                    key: self.key.clone(),
                    value: previous.replace(value),
                });
                let chunk = std::mem::take(&mut write);
                bytes = 0;
                let receipt = rt.block_on(async {
                    tokio::select! {
                        () = self.outbox.room() => {}
                        () = self.token.cancelled() => return Err(FileError::Cancelled),
                    }
                    self.outbox.submit(chunk).await.map_err(commit_error)
                })?;
                let counts = Counts {
                    records,
                    quarantined,
                    warnings: std::mem::take(&mut warnings),
                    at_us: now,
                };
                receipts.push_back((receipt, counts));
                let last = done || changed.is_some();
                while receipts.len() > CHUNKS_AHEAD || (last && !receipts.is_empty()) {
                    if let Some((r, counts)) = receipts.pop_front() {
                        rt.block_on(r.committed()).map_err(commit_error)?;
                        self.count(&counts);
                    }
                }
                if let Some(why) = changed {
                    return Err(FileError::Unreadable(why));
                }
                if done {
                    return Ok(read);
                }
                if self.token.is_cancelled() {
                    for (r, counts) in receipts {
                        rt.block_on(r.committed()).map_err(commit_error)?;
                        self.count(&counts);
                    }
                    return Err(FileError::Cancelled);
                }
            }
        }
    }
}

/// What one chunk adds to the source's counters once it has committed.
struct Counts {
    records: u64,
    quarantined: u64,
    warnings: u64,
    at_us: i64,
}

impl FileJob {
    fn count(&self, c: &Counts) {
        self.stats.records.inc_by(c.records);
        self.stats.quarantined.inc_by(c.quarantined);
        self.stats.warnings.inc_by(c.warnings);
        if c.records > 0 {
            self.stats.changed(&self.mapping.resource().code, c.at_us);
        }
    }
}

/// Why the open file is no longer what was read, if it is not.
fn changed_since(handle: &File, read: &ReadFile) -> Option<String> {
    let meta = handle.metadata().ok()?;
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    (meta.len() != read.size || mtime != read.mtime).then(|| {
        format!(
            "the file changed while it was read (it had {} bytes, it now has {}): the rows read were delivered, \
             the rest were not. Write files under a temporary name and rename them when complete",
            read.size,
            meta.len()
        )
    })
}

/// A chunk that did not commit: the disk reserve pauses the file (and the
/// chunks after it fail as conflicts), anything else retries it.
fn commit_error(e: outbox::Error) -> FileError {
    match e {
        outbox::Error::DiskLow { .. } | outbox::Error::Conflict { .. } => FileError::Paused,
        e if e.is_disk_full() => FileError::Paused,
        e => FileError::Retry(e.to_string()),
    }
}

fn unreadable(u: Unreadable) -> FileError {
    FileError::Unreadable(u.0)
}

/// One pass over a file: its identity and what its bytes say of their
/// encoding.
struct FileScan {
    /// Size, mtime and SHA-256 of the content.
    identity: String,
    size: u64,
    mtime: SystemTime,
    evidence: Utf8Evidence,
}

/// Reads the whole file through its handle once.
fn identify(file: &mut File) -> std::io::Result<FileScan> {
    let meta = file.metadata()?;
    let mtime = meta.modified()?;
    let nanos = mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut evidence = Utf8Evidence::default();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        evidence.update(&buf[..n]);
    }
    evidence.finish();
    let digest = rules::catalog::hex(&hasher.finalize());
    Ok(FileScan {
        identity: format!("{}:{nanos}:{digest}", meta.len()),
        size: meta.len(),
        mtime,
        evidence,
    })
}
