//! `health.json` in the data directory: where the running agent's health
//! port is and which agent it is (agency, config, pid), so that `qianzhi
//! status` finds the agent without guessing from a config, which may not
//! parse (a refused reload) or may name port 0.
//!
//! The agent writes it (privately, replaced whole by a rename) once its
//! health port is bound and it holds the data directory's lock, and removes
//! it when the port closes on a clean stop. A file left behind by a killed
//! agent names a pid that no longer runs; `qianzhi status` says so.
//!
//! Not here: the lock (`outbox::lock`), which is what makes one agent the
//! owner of a data directory; this file is only its address card.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const NAME: &str = "health.json";

/// What the running agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFile {
    /// The bound health port (the real port when the config asked for 0).
    pub addr: SocketAddr,
    pub agency: String,
    /// The config file the agent runs with, absolute when it could be made so.
    pub config: PathBuf,
    pub pid: u32,
}

impl PortFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(NAME)
    }

    /// Writes the file whole: a reader sees the old one or the new one.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let tmp = data_dir.join(format!(".{NAME}.tmp"));
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::fsx::write_private(&tmp, &json)?;
        std::fs::rename(&tmp, PortFile::path(data_dir))
    }

    /// Reads the file; `NotFound` when no agent announced itself there.
    pub fn read(data_dir: &Path) -> std::io::Result<PortFile> {
        let bytes = std::fs::read(PortFile::path(data_dir))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Removes the file if it is still this agent's.
    pub fn remove(&self, data_dir: &Path) {
        if PortFile::read(data_dir).is_ok_and(|f| f == *self) {
            let _ = std::fs::remove_file(PortFile::path(data_dir));
        }
    }
}
