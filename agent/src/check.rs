//! `qianzhi check`: proves that a config will work before it is deployed:
//! the data directory and every drop folder are usable, every database
//! source connects and finds its table and columns, and a TLS handshake
//! with the hub succeeds with the configured certificates.
//!
//! It changes nothing unless asked: a missing drop folder is an error (a
//! typo in `path` would otherwise become a folder nobody drops into), and
//! is created only with `create_folders` (`--create-folders`). The data
//! directory is the agent's own and `run` creates it; check does the same,
//! private, to prove it can.
//!
//! What it says is in the operator's words (`PostgreSQL table people,
//! change-log capture`), not the config's type names.

use std::path::Path;

use crate::config::{CaptureMode, Config, DbConfig, DbKind, Input};

/// One line of the report: what was checked, and how it went.
pub struct Finding {
    pub what: String,
    pub outcome: Result<(), String>,
    /// What works but should be fixed (a drop folder others can write).
    pub warnings: Vec<String>,
}

/// Runs every check; never stops at the first failure. Creates missing
/// drop folders only if `create_folders`.
pub async fn run(config: &Config, create_folders: bool) -> Vec<Finding> {
    let sources = match config.sources.len() {
        1 => "1 source".to_owned(),
        n => format!("{n} sources"),
    };
    let mut out = vec![Finding {
        what: format!(
            "config {} ({sources}, catalog {})",
            config.origin.display(),
            config.catalog_path.display()
        ),
        outcome: Ok(()),
        warnings: Vec::new(),
    }];
    out.push(Finding {
        what: format!("data directory {}", config.data_dir.display()),
        outcome: crate::fsx::create_private_dir(&config.data_dir)
            .map_err(|e| format!("cannot create: {e}"))
            .and_then(|()| writable_dir(&config.data_dir)),
        warnings: Vec::new(),
    });
    for s in &config.sources {
        match &s.input {
            Input::Folder(f) => {
                let outcome = drop_folder(&f.path, create_folders);
                let created = if outcome == Ok(true) { " (created)" } else { "" };
                out.push(Finding {
                    what: format!("source {}: drop folder {}{created}", s.name, f.path.display()),
                    warnings: if outcome.is_ok() {
                        folder_warnings(&f.path)
                    } else {
                        Vec::new()
                    },
                    outcome: outcome.map(drop),
                })
            }
            Input::Database(db) => out.push(Finding {
                what: format!("source {}: {}", s.name, describe(db)),
                outcome: crate::source::db::check(s).await.map_err(|e| e.to_string()),
                warnings: Vec::new(),
            }),
        }
    }
    out.push(Finding {
        what: format!("hub {}: TLS 1.3 handshake as {}", config.hub.url, config.agency),
        outcome: crate::link::handshake(&config.hub).await.map_err(|e| e.to_string()),
        warnings: pki::tls::key_warning(&config.hub.key).into_iter().collect(),
    });
    out.extend(crate::receive::check(config).await);
    out
}

/// A database source as the operator names it: `PostgreSQL table people,
/// change-log capture`.
fn describe(db: &DbConfig) -> String {
    let kind = match db.kind {
        DbKind::Sqlite => "SQLite",
        DbKind::Postgres => "PostgreSQL",
        DbKind::Mysql => "MySQL",
    };
    let capture = match (db.capture, &db.watermark) {
        (CaptureMode::Changelog, _) => "change-log capture".to_owned(),
        (CaptureMode::Incremental, Some(w)) => format!("incremental capture by {w}"),
        (CaptureMode::Incremental, None) => "incremental capture".to_owned(),
    };
    format!("{kind} table {}, {capture}", db.table)
}

/// Proves a drop folder is there and writable; creates a missing one only
/// if asked, and then says it did (`Ok(true)`).
fn drop_folder(dir: &Path, create: bool) -> Result<bool, String> {
    let created = match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err("not a folder".into()),
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                "does not exist: correct `path` in the config, or create it (qianzhi check --create-folders)".into(),
            );
        }
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    writable_dir(dir).map(|()| created)
}

/// Proves an existing folder is writable.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".qianzhi-check");
    std::fs::write(&probe, b"check").map_err(|e| format!("not writable: {e}"))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove a file: {e}"))
}

/// A drop folder that anyone may write lets any account on the machine
/// feed records to the hub under the agency's name.
fn folder_warnings(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Vec::new();
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        vec![format!(
            "{} is writable by every account on this machine (mode {:o}): give it to the business system's \
             account and the qianzhi group, e.g. chmod 2770",
            dir.display(),
            mode & 0o7777
        )]
    } else {
        Vec::new()
    }
}
