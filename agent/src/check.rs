//! `qianzhi check`: proves that a config will work before it is deployed:
//! the data directory and every drop folder are usable, every database
//! source connects and finds its table and columns, and a TLS handshake
//! with the hub succeeds with the configured certificates.

use std::path::Path;

use crate::config::Config;

/// One line of the report: what was checked, and how it went.
pub struct Finding {
    pub what: String,
    pub outcome: Result<(), String>,
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
    }];
    out.push(Finding {
        what: format!("data directory {}", config.data_dir.display()),
        outcome: writable_dir(&config.data_dir),
    });
    for s in &config.sources {
        match &s.db {
            None => out.push(Finding {
                what: format!("source {}: drop folder {}", s.name, s.path.display()),
                outcome: writable_dir(&s.path),
            }),
            Some(db) => out.push(Finding {
                what: format!(
                    "source {}: {:?} table {} ({:?} capture)",
                    s.name, s.kind, db.table, db.capture
                ),
                outcome: crate::source::db::check(s).await.map_err(|e| e.to_string()),
            }),
        }
    }
    out.push(Finding {
        what: format!("hub {}: TLS 1.3 handshake as {}", config.hub.url, config.agency),
        outcome: crate::link::handshake(&config.hub).await.map_err(|e| e.to_string()),
    });
    out
}

/// Creates the folder if needed and proves it is writable.
fn writable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
    let probe = dir.join(".qianzhi-check");
    std::fs::write(&probe, b"check").map_err(|e| format!("not writable: {e}"))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove a file: {e}"))
}
