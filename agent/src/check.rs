//! `qianzhi check`: proves that a config will work before it is deployed:
//! the data directory and every drop folder are usable, every database
//! source connects and finds its table and columns, and a TLS handshake
//! with the hub succeeds with the configured certificates.

use std::path::Path;

use crate::config::{Config, Input};

/// One line of the report: what was checked, and how it went.
pub struct Finding {
    pub what: String,
    pub outcome: Result<(), String>,
    /// What works but should be fixed (a drop folder others can write).
    pub warnings: Vec<String>,
}

/// Runs every check; never stops at the first failure.
pub async fn run(config: &Config) -> Vec<Finding> {
    let mut out = vec![Finding {
        what: format!(
            "config {} ({} sources, catalog {})",
            config.origin.display(),
            config.sources.len(),
            config.catalog_path.display()
        ),
        outcome: Ok(()),
        warnings: Vec::new(),
    }];
    out.push(Finding {
        what: format!("data directory {}", config.data_dir.display()),
        outcome: writable_dir(&config.data_dir),
        warnings: Vec::new(),
    });
    for s in &config.sources {
        match &s.input {
            Input::Folder(f) => out.push(Finding {
                what: format!("source {}: drop folder {}", s.name, f.path.display()),
                outcome: writable_dir(&f.path),
                warnings: folder_warnings(&f.path),
            }),
            Input::Database(db) => out.push(Finding {
                what: format!(
                    "source {}: {:?} table {} ({:?} capture)",
                    s.name, db.kind, db.table, db.capture
                ),
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

/// Creates the folder if needed and proves it is writable.
fn writable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
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
