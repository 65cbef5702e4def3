//! `qianzhi check`: proves that a config will work before it is deployed:
//! the data directory and every drop folder are usable, every database
//! source connects and finds its table and columns, the client certificate
//! names the configured agency and is in date, and the hub admits this
//! agent in a session opened as the link opens it (`link::probe`): with
//! TLS 1.3 the hub judges the client certificate only after the client's
//! half of the handshake, so a handshake alone proves nothing about it.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    out.push(certificate(config, now_s()));
    out.push(Finding {
        what: format!("hub {}: session as {}", config.hub.url, config.agency),
        outcome: crate::link::probe(&config.hub, &config.agency, config.catalog.digest())
            .await
            .map_err(|e| e.to_string()),
        warnings: Vec::new(),
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
            // What the operations guide asks of a drop folder: the agent's
            // account and the exporting system's group, nobody else.
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o2770))
                .map_err(|e| format!("cannot set its mode to 2770: {e}"))?;
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

/// What the client certificate says of itself, checked before connecting:
/// the agency it names against `agency`, and its dates against the clock
/// (`now`, seconds since the epoch). The hub refuses the same certificate
/// later, in words that name neither the file nor the config's line.
fn certificate(config: &Config, now: i64) -> Finding {
    let path = &config.hub.cert;
    let mut finding = Finding {
        what: format!("client certificate {}", path.display()),
        outcome: Ok(()),
        // The key's keeping is the certificate's business too.
        warnings: pki::tls::key_warning(&config.hub.key).into_iter().collect(),
    };
    let cert = match pki::identity::read(path) {
        Ok(c) => c,
        Err(e) => {
            finding.outcome = Err(e);
            return finding;
        }
    };
    let (from, until) = (date(cert.not_before), date(cert.not_after));
    let named = cert.agency.as_deref().unwrap_or("none");
    finding.what = format!("{} (agency {named}, valid {from} to {until})", finding.what);
    let dated = in_date(&cert, now);
    if dated.is_ok() {
        finding
            .warnings
            .extend(expiring(&cert, now, config.thresholds.cert_warn_days));
    }
    finding.outcome = same_agency(config, &cert.agency).and(dated);
    finding
}

/// Refuses a certificate that names another agency than `agency`, saying
/// which is which and where each comes from.
fn same_agency(config: &Config, named: &Result<String, String>) -> Result<(), String> {
    let file = config
        .hub
        .cert
        .file_name()
        .map(Path::new)
        .unwrap_or(&config.hub.cert)
        .display();
    match named {
        Err(e) => Err(format!("the certificate {file}: {e}")),
        Ok(a) if *a == config.agency => Ok(()),
        Ok(a) => Err(format!(
            "the certificate {file} is for agency {a}, but agency = {:?} in {}:{}: configure the certificate \
             and key issued to {}, or correct `agency`",
            config.agency,
            config.origin.display(),
            config.agency_line,
            config.agency
        )),
    }
}

/// Refuses a certificate outside its validity, which the hub refuses with
/// the alert CertificateExpired either way.
fn in_date(cert: &pki::identity::Described, now: i64) -> Result<(), String> {
    if now > cert.not_after {
        return Err(format!(
            "expired at {} (the hub refuses it: CertificateExpired): install the renewed certificate and key",
            date(cert.not_after)
        ));
    }
    if now < cert.not_before {
        return Err(format!(
            "not valid before {} and this machine's clock says {} (the hub refuses it: CertificateExpired): \
             check the clock, or wait",
            date(cert.not_before),
            date(now)
        ));
    }
    Ok(())
}

/// Warns of a certificate in date that expires within `warn_days` (the
/// threshold of the CERT_EXPIRING condition in /status).
fn expiring(cert: &pki::identity::Described, now: i64, warn_days: u32) -> Option<String> {
    let days = (cert.not_after - now).div_euclid(86_400);
    (days < i64::from(warn_days)).then(|| {
        format!(
            "expires at {} (in {days} days): have it renewed before then, or the hub refuses this agent",
            date(cert.not_after)
        )
    })
}

/// A time as the operator reads it: RFC 3339, UTC, whole seconds.
fn date(epoch_s: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(epoch_s.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
