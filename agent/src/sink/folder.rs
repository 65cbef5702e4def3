//! The folder sink: received changes as files for a consumer that reads a
//! folder.
//!
//! Files: changes are appended to `.qianzhi-<prefix>.tmp` in the folder
//! (hidden, never a finished name); once it holds `roll_records` changes, or
//! `roll_after` after its first change ([`Folder::tick`]), it is fsynced,
//! renamed to `<prefix>-<first seq>-<last seq>.jsonl|.csv` (sequences 20
//! digits, zero-padded; prefix = the resource code with every character
//! outside `[A-Za-z0-9_-]` made `_`), the folder fsynced, the optional empty
//! `NAME.ok` created and fsynced, and only then the position (the file's last
//! sequence) committed. Files are mode 0640: the consumer reads them through
//! the group.
//!
//! Formats: JSON Lines, one object per change (every item id → value or
//! null, then `_op` `"upsert"`/`"delete"`, `_seq`, `_provider`, `_agreement`,
//! `_captured_at_us`); CSV with a header row (item ids in spec order, then
//! `_op,_seq,_provider,_agreement,_captured_at_us`), CRLF line ends. Either in
//! UTF-8 or GB18030 (which encodes every character; one it could not is an
//! error, never a replacement). A reset is a line `{"_op":"reset"}` (CSV: a
//! row whose `_op` is `reset`) at the start of the next file: the open file
//! is renamed in first, and the reset is written with the first change that
//! follows it.
//!
//! Position: a state file outside the consumer's folder (`FolderSpec::state`,
//! in the agent's data directory), written atomically (temporary file,
//! fsync, rename, fsync of its folder). Recovery at open: the temporary file
//! is deleted (its changes were never committed: the hub sends them again),
//! and finished files of this prefix whose last sequence is above the stored
//! position were renamed in before a crash committed it: the position becomes
//! the highest such sequence (and a missing marker is created), so they are
//! not written twice.
//!
//! The one window left: a consumer that takes (moves or deletes) a finished
//! file between its rename and the position's commit, and a crash in that
//! instant, makes the file be written again under the same name.
//!
//! A failed write is cut off again (the open file truncated to its last good
//! length) so that the caller can repeat the call with the same input. If
//! even that fails the sink refuses further work until it is opened again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Delivered, Encoding, FolderSpec, Op, SinkError, SinkFormat, SinkSpec};
use crate::sync::MutexExt;

/// Files the consumer reads: owner and group.
const MODE: u32 = 0o640;

pub struct Folder {
    subscription: String,
    place: String,
    files: Arc<Mutex<Files>>,
}

/// The sink's side of the folder; used on the blocking pool.
struct Files {
    dir: PathBuf,
    state: PathBuf,
    prefix: String,
    ext: &'static str,
    format: SinkFormat,
    encoding: Encoding,
    /// Item ids, in spec order, and the key items' positions among them.
    items: Vec<String>,
    key: Vec<usize>,
    roll_records: usize,
    roll_after: std::time::Duration,
    ok_marker: bool,
    /// The last sequence of the last file renamed in and committed.
    committed: u64,
    open: Option<Open>,
    /// A file renamed in whose marker or position is not written yet.
    renamed: Option<(String, u64)>,
    /// A reset waiting for the next change, to start its file.
    reset_pending: bool,
    /// A failed write could not be cut off: reopen.
    poisoned: bool,
}

/// The temporary file being filled.
struct Open {
    file: File,
    /// Its length up to the last complete write.
    len: u64,
    /// A write failed after `len`: truncate before anything else.
    dirty: bool,
    first: u64,
    last: u64,
    count: usize,
    since: Instant,
}

/// The prefix of a resource's files: `[A-Za-z0-9_-]` only.
pub fn prefix(resource: &str) -> String {
    let p: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if p.is_empty() { "resource".into() } else { p }
}

/// The name of a finished file.
fn finished(prefix: &str, first: u64, last: u64, ext: &str) -> String {
    format!("{prefix}-{first:020}-{last:020}.{ext}")
}

/// (first, last) of a finished file of `prefix`, or None for any other name.
fn parse(name: &str, prefix: &str, ext: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(ext)?.strip_suffix('.')?;
    let (first, last) = rest.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates (or truncates) a file the consumer may read, never through a link.
fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(MODE)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// An I/O error with what was being done and the file.
fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> String {
    let at = format!(
        "{what} {}",
        crate::source::format::bounded(&path.display().to_string(), 200)
    );
    move |e| format!("{at}: {e}")
}

impl Folder {
    pub async fn open(spec: &SinkSpec, f: &FolderSpec, change: bool) -> Result<Folder, SinkError> {
        let place = format!("folder {}", super::shown(&f.path.display().to_string()));
        let fail = |what: String| SinkError::new(&spec.subscription, &place, what);
        let key = spec
            .key
            .iter()
            .map(|k| {
                spec.items
                    .iter()
                    .position(|i| i == k)
                    .ok_or_else(|| fail(format!("key item {} is not among the items", super::shown(k))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if f.roll_records == 0 {
            return Err(fail("roll_records must be at least 1".into()));
        }
        let mut files = Files {
            dir: f.path.clone(),
            state: f.state.clone(),
            prefix: prefix(&spec.resource),
            ext: match f.format {
                SinkFormat::Jsonl => "jsonl",
                SinkFormat::Csv => "csv",
            },
            format: f.format,
            encoding: f.encoding,
            items: spec.items.clone(),
            key,
            roll_records: f.roll_records,
            roll_after: f.roll_after,
            ok_marker: f.ok_marker,
            committed: 0,
            open: None,
            renamed: None,
            reset_pending: false,
            poisoned: false,
        };
        let files = tokio::task::spawn_blocking(move || files.recover(change).map(|()| files))
            .await
            .map_err(|e| fail(format!("task failed: {e}")))?
            .map_err(fail)?;
        Ok(Folder {
            subscription: spec.subscription.clone(),
            place,
            files: Arc::new(Mutex::new(files)),
        })
    }

    pub fn position(&self) -> u64 {
        self.files.lock_unpoisoned().committed
    }

    pub async fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, SinkError> {
        let changes = changes.to_vec();
        self.call(move |f| f.apply(&changes, reset)).await
    }

    pub async fn tick(&mut self) -> Result<u64, SinkError> {
        self.call(Files::tick).await
    }

    pub async fn purge(&mut self) -> Result<u64, SinkError> {
        self.call(Files::purge).await
    }

    async fn call(&self, f: impl FnOnce(&mut Files) -> Result<u64, String> + Send + 'static) -> Result<u64, SinkError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || f(&mut files.lock_unpoisoned()))
            .await
            .map_err(|e| format!("task failed: {e}"))
            .and_then(|r| r)
            .map_err(|what| SinkError::new(&self.subscription, &self.place, what))
    }
}

impl Files {
    fn tmp(&self) -> PathBuf {
        self.dir.join(format!(".qianzhi-{}.tmp", self.prefix))
    }

    /// Checks the folder, deletes a leftover temporary file, reads the
    /// position and advances it over files renamed in before a crash.
    fn recover(&mut self, change: bool) -> Result<(), String> {
        let meta = std::fs::metadata(&self.dir).map_err(io("cannot open the folder", &self.dir))?;
        if !meta.is_dir() {
            return Err("is not a folder".into());
        }
        let tmp = self.tmp();
        if change && std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp).map_err(io("cannot delete the leftover", &tmp))?;
        }
        self.committed = match std::fs::read_to_string(&self.state) {
            Ok(s) => s.trim().parse().map_err(|_| {
                format!(
                    "the state file {} does not hold a position: {:?}",
                    self.state.display(),
                    crate::source::format::bounded(&s, 64)
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("cannot read the state file", &self.state)(e)),
        };
        let mut found: Option<(String, u64)> = None;
        let mut missing_markers = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("cannot list the folder", &self.dir))? {
            let entry = entry.map_err(io("cannot list the folder", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((_, last)) = parse(&name, &self.prefix, self.ext) else {
                continue;
            };
            if last > self.committed {
                if self.ok_marker && !self.dir.join(format!("{name}.ok")).exists() {
                    missing_markers.push(name.clone());
                }
                if found.as_ref().is_none_or(|(_, l)| last > *l) {
                    found = Some((name, last));
                }
            }
        }
        if let Some((name, last)) = found {
            tracing::info!(file = %name, position = last, "files renamed in before a crash: position advanced");
            if !change {
                self.committed = last;
                return Ok(());
            }
            for name in missing_markers {
                self.marker(&name)?;
            }
            self.renamed = Some((name, last));
            self.finish_renamed()?;
        }
        Ok(())
    }

    /// Everything written so far: committed, renamed in, or in the open file.
    fn written(&self) -> u64 {
        let renamed = self.renamed.as_ref().map_or(0, |(_, l)| *l);
        let open = self.open.as_ref().map_or(0, |o| o.last);
        self.committed.max(renamed).max(open)
    }

    /// Finishes what an earlier failed call left: the marker and position of
    /// a renamed file, a failed write cut off, a full file renamed in.
    fn settle(&mut self) -> Result<(), String> {
        if self.poisoned {
            return Err("an earlier write could not be undone: the sink must be opened again".into());
        }
        self.finish_renamed()?;
        let tmp = self.tmp();
        if let Some(open) = &mut self.open
            && open.dirty
        {
            let cut = open.file.set_len(open.len);
            if let Err(e) = cut {
                self.poisoned = true;
                return Err(io("cannot cut off a failed write in", &tmp)(e));
            }
            open.dirty = false;
        }
        if self.open.as_ref().is_some_and(|o| o.count >= self.roll_records) {
            self.roll()?;
        }
        Ok(())
    }

    fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, String> {
        self.settle()?;
        // A reset starts the positions again: nothing is skipped (a retried
        // reset writes its reset line and changes again, which a consumer
        // replaying the files takes to the same state).
        let written = if reset { 0 } else { self.written() };
        if reset {
            if self.open.is_some() {
                self.roll()?;
            }
            self.reset_pending = true;
        }
        let fresh: Vec<&Delivered> = changes.iter().filter(|c| c.seq > written).collect();
        let mut last = written;
        for c in &fresh {
            if c.seq <= last {
                return Err(format!(
                    "change {} comes after change {last}: changes must arrive in increasing sequence",
                    c.seq
                ));
            }
            if c.key.len() != self.key.len() {
                return Err(format!(
                    "change {} has {} key values, the resource's key has {} items",
                    c.seq,
                    c.key.len(),
                    self.key.len()
                ));
            }
            if let Some(unknown) = c.items.keys().find(|k| !self.items.contains(*k)) {
                return Err(format!(
                    "change {} carries item {}, which the subscription does not list: the catalog changed?",
                    c.seq,
                    super::shown(unknown)
                ));
            }
            last = c.seq;
        }
        let mut rest = fresh.as_slice();
        while !rest.is_empty() {
            let tmp = self.tmp();
            if self.open.is_none() {
                let file = create(&tmp).map_err(io("cannot create", &tmp))?;
                self.open = Some(Open {
                    file,
                    len: 0,
                    dirty: false,
                    first: 0,
                    last: 0,
                    count: 0,
                    since: Instant::now(),
                });
            }
            let (count, len) = self.open.as_ref().map_or((0, 0), |o| (o.count, o.len));
            let (part, tail) = rest.split_at((self.roll_records - count).min(rest.len()));
            rest = tail;
            let bytes = self.encode(part, len == 0, self.reset_pending)?;
            let Some(open) = self.open.as_mut() else {
                return Err("no open file".into());
            };
            if let Err(e) = open.file.write_all(&bytes) {
                open.dirty = true;
                return Err(io("cannot write", &tmp)(e));
            }
            open.len += bytes.len() as u64;
            if open.count == 0 {
                open.first = part[0].seq;
            }
            open.count += part.len();
            open.last = part[part.len() - 1].seq;
            self.reset_pending = false;
            if open.count >= self.roll_records {
                self.roll()?;
            }
        }
        Ok(self.committed)
    }

    fn tick(&mut self) -> Result<u64, String> {
        self.settle()?;
        if self.open.as_ref().is_some_and(|o| o.since.elapsed() >= self.roll_after) {
            self.roll()?;
        }
        Ok(self.committed)
    }

    /// Renames the open file in and commits its last sequence.
    fn roll(&mut self) -> Result<(), String> {
        let tmp = self.tmp();
        let Some(open) = &self.open else {
            return Ok(());
        };
        open.file.sync_all().map_err(io("cannot sync", &tmp))?;
        let name = finished(&self.prefix, open.first, open.last, self.ext);
        std::fs::rename(&tmp, self.dir.join(&name)).map_err(io("cannot rename", &tmp))?;
        self.renamed = Some((name, open.last));
        self.open = None;
        self.finish_renamed()
    }

    /// After a rename: the folder synced, the marker, then the position.
    fn finish_renamed(&mut self) -> Result<(), String> {
        let Some((name, last)) = self.renamed.clone() else {
            return Ok(());
        };
        fsync_dir(&self.dir).map_err(io("cannot sync the folder", &self.dir))?;
        if self.ok_marker {
            self.marker(&name)?;
        }
        self.store(last)?;
        self.committed = last;
        self.renamed = None;
        Ok(())
    }

    fn marker(&self, name: &str) -> Result<(), String> {
        let path = self.dir.join(format!("{name}.ok"));
        create(&path)
            .and_then(|f| f.sync_all())
            .map_err(io("cannot create the marker", &path))?;
        fsync_dir(&self.dir).map_err(io("cannot sync the folder", &self.dir))
    }

    /// Writes the position atomically.
    fn store(&self, seq: u64) -> Result<(), String> {
        let mut tmp = self.state.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        crate::fsx::write_private(&tmp, format!("{seq}\n").as_bytes()).map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &self.state).map_err(io("cannot rename", &tmp))?;
        let parent = self.state.parent().unwrap_or(Path::new("."));
        fsync_dir(parent).map_err(io("cannot sync the folder", parent))
    }

    /// Deletes every finished file of this prefix (and markers), the open
    /// file and the state: returns the files deleted.
    fn purge(&mut self) -> Result<u64, String> {
        self.poisoned = false;
        self.open = None;
        self.renamed = None;
        self.reset_pending = false;
        let tmp = self.tmp();
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_file(&tmp).map_err(io("cannot delete", &tmp))?;
        }
        let mut deleted = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io("cannot list the folder", &self.dir))? {
            let entry = entry.map_err(io("cannot list the folder", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let data = parse(&name, &self.prefix, self.ext).is_some();
            let marker = name
                .strip_suffix(".ok")
                .is_some_and(|n| parse(n, &self.prefix, self.ext).is_some());
            if data || marker {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted += u64::from(data),
                    // The consumer took it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("cannot delete", &path)(e)),
                }
            }
        }
        fsync_dir(&self.dir).map_err(io("cannot sync the folder", &self.dir))?;
        match std::fs::remove_file(&self.state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot delete the state file", &self.state)(e)),
        }
        self.committed = 0;
        Ok(deleted)
    }

    /// The bytes of `changes` in the format and encoding, after the header
    /// (a new file) and a reset line.
    fn encode(&self, changes: &[&Delivered], header: bool, reset: bool) -> Result<Vec<u8>, String> {
        let text = match self.format {
            SinkFormat::Jsonl => self.jsonl(changes, reset),
            SinkFormat::Csv => self.csv(changes, header, reset)?,
        };
        match self.encoding {
            Encoding::Utf8 => Ok(text.into_bytes()),
            Encoding::Gb18030 => {
                let (bytes, _, unmappable) = encoding_rs::GB18030.encode(&text);
                if unmappable {
                    return Err("a value holds a character GB18030 cannot encode".into());
                }
                Ok(bytes.into_owned())
            }
        }
    }

    /// The value of item `i` of a change: its key value, its item, or None.
    fn value<'a>(&self, c: &'a Delivered, i: usize) -> Option<&'a str> {
        match self.key.iter().position(|&k| k == i) {
            Some(k) => Some(c.key[k].as_str()),
            None => c.items.get(&self.items[i]).map(String::as_str),
        }
    }

    fn jsonl(&self, changes: &[&Delivered], reset: bool) -> String {
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let mut out = String::new();
        if reset {
            out.push_str("{\"_op\":\"reset\"}\n");
        }
        for c in changes {
            out.push('{');
            for i in 0..self.items.len() {
                out.push_str(&s(&self.items[i]));
                out.push(':');
                match self.value(c, i) {
                    Some(v) => out.push_str(&s(v)),
                    None => out.push_str("null"),
                }
                out.push(',');
            }
            out.push_str(&format!(
                "\"_op\":\"{}\",\"_seq\":{},\"_provider\":{},\"_agreement\":{},\"_captured_at_us\":{}}}\n",
                op(c.op),
                c.seq,
                s(&c.provider),
                s(&c.agreement),
                c.captured_at_us
            ));
        }
        out
    }

    fn csv(&self, changes: &[&Delivered], header: bool, reset: bool) -> Result<String, String> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        let fail = |e: csv::Error| format!("cannot write CSV: {e}");
        let tail = ["_op", "_seq", "_provider", "_agreement", "_captured_at_us"];
        if header {
            w.write_record(self.items.iter().map(String::as_str).chain(tail))
                .map_err(fail)?;
        }
        if reset {
            let empty = std::iter::repeat_n("", self.items.len() + tail.len() - 1);
            w.write_record(
                empty
                    .clone()
                    .take(self.items.len())
                    .chain(["reset"])
                    .chain(empty.take(4)),
            )
            .map_err(fail)?;
        }
        for c in changes {
            let (seq, at) = (c.seq.to_string(), c.captured_at_us.to_string());
            let values = (0..self.items.len()).map(|i| self.value(c, i).unwrap_or(""));
            w.write_record(values.chain([op(c.op), &seq, &c.provider, &c.agreement, &at]))
                .map_err(fail)?;
        }
        let bytes = w.into_inner().map_err(|e| format!("cannot write CSV: {e}"))?;
        // Built from &str fields: UTF-8.
        String::from_utf8(bytes).map_err(|e| format!("cannot write CSV: {e}"))
    }
}

fn op(op: Op) -> &'static str {
    match op {
        Op::Upsert => "upsert",
        Op::Delete => "delete",
    }
}
