//! The folder's file system side, where nothing is trusted: the folder and
//! its `done/` and `rejected/` opened without following links, entries
//! opened and checked through the handle, moves between directory handles
//! that never replace anything, error files created new, and names made
//! safe to show.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

use crate::source::format::bounded;

/// The folder and its `done/` and `rejected/` subfolders, opened without
/// following links.
pub(super) struct Dirs {
    pub(super) folder: OwnedFd,
    pub(super) dev: u64,
    pub(super) done: OwnedFd,
    pub(super) rejected: OwnedFd,
}

impl Dirs {
    pub(super) fn open(path: &Path) -> Result<Dirs, String> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // A missing folder is not made: a typo in `path` would become a
        // folder nobody drops into, and a share not mounted yet would get a
        // local folder in its place. The source says so and tries again.
        let folder = rustix::fs::open(path, dir_flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::NOENT => format!(
                "the drop folder {} does not exist: check `path` in the config, or create it \
                 (`qianzhi check --create-folders` does)",
                path.display()
            ),
            e => format!("cannot open the folder {}: {e}", path.display()),
        })?;
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

/// Why a folder entry was not opened.
pub(super) enum Opened {
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
pub(super) fn open_entry(dirs: &Dirs, name: &OsStr) -> Result<File, Opened> {
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

pub(super) fn stat_mtime(st: &rustix::fs::Stat) -> SystemTime {
    let secs = st.st_mtime.max(0) as u64;
    SystemTime::UNIX_EPOCH + Duration::new(secs, st.st_mtime_nsec as u32)
}

/// Moves `name` from the folder into `to` under a name not taken there
/// (`NAME`, else `NAME.1`, …), never replacing anything. Returns the name
/// it got.
pub(super) fn move_into(dirs: &Dirs, name: &OsStr, to: &OwnedFd) -> std::io::Result<OsString> {
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
pub(super) fn write_error_file(dir: &OwnedFd, moved: &OsStr, text: &[u8]) -> std::io::Result<()> {
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

/// Names of files held in `rejected/` that status lists, at most.
const REJECTED_NAMES: usize = 10;

/// The files held in `rejected/` (their error files not counted), and the
/// first [`REJECTED_NAMES`] of their names in name order, made safe to show.
pub(super) fn count_rejected(dirs: &Dirs) -> std::io::Result<(u64, Vec<String>)> {
    let mut files = 0;
    // The first names in order, kept sorted: the folder may hold thousands.
    let mut first: Vec<Vec<u8>> = Vec::with_capacity(REJECTED_NAMES + 1);
    for entry in rustix::fs::Dir::read_from(&dirs.rejected)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || name.ends_with(b".error.txt") {
            continue;
        }
        files += 1;
        let at = first.partition_point(|n| n.as_slice() < name);
        if at < REJECTED_NAMES {
            first.insert(at, name.to_vec());
            first.truncate(REJECTED_NAMES);
        }
    }
    let names = first.iter().map(|n| shown(OsStr::from_bytes(n))).collect();
    Ok((files, names))
}

pub(super) fn remove_marker(dirs: &Dirs, name: &OsStr) {
    let mut marker = name.to_owned();
    marker.push(".ok");
    let _ = rustix::fs::unlinkat(&dirs.folder, marker.as_os_str(), AtFlags::empty());
}

/// Names that are never taken: hidden and temporary files being written.
pub(super) fn ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".")
        || [&b".tmp"[..], b".part", b".partial", b".swp", b"~"]
            .iter()
            .any(|s| b.ends_with(s))
}

pub(super) fn is_marker(name: &OsStr) -> bool {
    name.as_bytes().ends_with(b".ok")
}

/// The key of a file's positions: its name, or for a name that is not
/// UTF-8 (GBK names from Windows shares) its bytes in hex.
pub(super) fn name_key(name: &OsStr) -> String {
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
