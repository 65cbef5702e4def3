//! The agent's one configuration file: TOML → [`raw::RawConfig`] (serde,
//! unknown keys refused) → [`Config`] (validated, defaults applied, paths
//! resolved against the file's folder, checked against the catalog).
//! The top-level tables are validated here, each `[[source]]` in
//! [`source`].
//!
//! Everything is validated here, before any socket, folder or database is
//! opened. Only this module parses TOML for the agent (the catalog module
//! parses the catalog's own file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use raw::{RawConfig, line_of};
use rules::catalog::{self, Catalog};

mod raw;
mod source;
mod subscription;
#[cfg(test)]
mod tests;

pub use source::{
    AfterDone, CaptureMode, Completion, DbConfig, DbKind, Encoding, FileFormat, FolderConfig, Input, InstallMode,
    MappingConfig, SourceConfig,
};
pub use subscription::{OnRevoke, SinkConfig, SinkFormat, SubscriptionConfig};

/// The default config path of a packaged install.
pub const DEFAULT_PATH: &str = "/etc/qianzhi/agent.toml";

/// The data directory of a packaged install (`deploy/agent.example.toml`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/qianzhi";

/// The `data_dir` a config's text names, resolved against the file's folder,
/// even when the config as a whole is refused: `qianzhi status` must find
/// the running agent when its config no longer loads (a refused reload).
/// Read from the TOML when it parses, else from a top-level
/// `data_dir = "…"` line; `None` when the text names none.
pub fn data_dir_hint(text: &str, origin: &Path) -> Option<PathBuf> {
    let from = |table: toml::Table| table.get("data_dir")?.as_str().map(PathBuf::from);
    let named = match toml::from_str::<toml::Table>(text) {
        Ok(table) => from(table),
        // The first table header ends the top level.
        Err(_) => text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with('['))
            .filter(|l| l.starts_with("data_dir"))
            .find_map(|l| from(toml::from_str(l).ok()?)),
    }?;
    let text = Text {
        text,
        origin,
        catalog: PathBuf::new(),
    };
    Some(text.resolve(&named))
}

/// Why a config was refused. Every variant names the file, and where it can,
/// the key and its line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, an unknown key, or a value of the wrong type or form; the
    /// message carries the line and the key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value that parses but breaks a rule.
    #[error("{path}:{line}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("catalog {path}: {source}")]
    Catalog { path: PathBuf, source: catalog::Error },
}

/// How the link compresses batches: zstd is the link's own (one context for
/// a session, `Batch.zstd_entries`), sent only to a hub whose Welcome
/// offers it and otherwise plain (so a hub is upgraded before its agents);
/// gzip is gRPC's, a new stream per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// When the agent counts as degraded (/status `degraded`).
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// The link has been down this long.
    pub link_down_after: Duration,
    /// The oldest unacknowledged record is this old.
    pub queue_age_after: Duration,
    /// The data directory's filesystem has less free space than this.
    pub disk_min_free: u64,
    /// The agency certificate expires within this many days.
    pub cert_warn_days: u32,
}

/// A validated agent config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub origin: PathBuf,
    pub agency: String,
    /// The line of `agency` in `origin`, for messages that send the
    /// operator there (`qianzhi check` when the certificate disagrees).
    pub agency_line: usize,
    pub data_dir: PathBuf,
    pub catalog_path: PathBuf,
    pub catalog: Catalog,
    pub shutdown_grace: Duration,
    pub outbox: OutboxConfig,
    pub hub: HubConfig,
    pub health_listen: SocketAddr,
    /// When /status reports a degraded condition.
    pub thresholds: Thresholds,
    pub log_format: LogFormat,
    pub log_level: String,
    pub sources: Vec<SourceConfig>,
    /// What this agency receives (`[[subscription]]`).
    pub subscriptions: Vec<SubscriptionConfig>,
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Sources pause while the queue holds more than this many bytes.
    pub max_bytes: u64,
    /// Sources pause while the data directory's filesystem has less free
    /// space than this, which keeps room for acks, checkpoints and SQLite.
    pub reserve_free: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    pub url: String,
    /// The name the hub's certificate must carry; defaults to the URL's host.
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub compression: Compression,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    /// Batches sent and not yet acknowledged, at most. 24 (up to about
    /// 100,000 records) keeps a hub's store writer busy while it commits
    /// what came before: with 8, the hub's writer and its reader waited on
    /// each other by turns (BENCHMARKS.md, session 14).
    pub max_in_flight: usize,
    pub keepalive: Duration,
    pub backoff_max: Duration,
}

impl Config {
    /// Reads and validates the config at `path` and the catalog it names.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: p.to_owned(),
                source,
            })
        };
        let text = read(path)?;
        Config::from_toml_str(&text, path, |p| read(p))
    }

    /// Parses and validates config text. `origin` names the file in messages
    /// and anchors relative paths; `read_catalog` reads the catalog file the
    /// config names (tests pass the text directly).
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        read_catalog: impl FnOnce(&Path) -> Result<String, Error>,
    ) -> Result<Config, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut text = Text {
            text,
            origin,
            catalog: PathBuf::new(),
        };
        text.catalog = text.resolve(raw.catalog.get_ref());
        let text = text;
        let resolve = |p: &Path| text.resolve(p);
        let invalid = |span, key: &str, reason| text.invalid(span, key, reason);

        let agency = raw.agency.get_ref().trim().to_owned();
        if agency.is_empty() {
            return Err(invalid(raw.agency.span(), "agency", "must not be empty".into()));
        }

        let catalog_path = text.catalog.clone();
        // A catalog that cannot be read is the config's `catalog` key's fault.
        let catalog_text = read_catalog(&catalog_path).map_err(|e| match e {
            Error::Read { path, source } => invalid(
                raw.catalog.span(),
                "catalog",
                format!("cannot read the catalog {}: {source}", path.display()),
            ),
            other => other,
        })?;
        let catalog = Catalog::from_toml_str(&catalog_text).map_err(|source| Error::Catalog {
            path: catalog_path.clone(),
            source,
        })?;

        let max_bytes = match raw.outbox.max_bytes {
            Some(s) if s.get_ref().0 < 1 << 20 => {
                return Err(invalid(s.span(), "outbox.max_bytes", "must be at least 1MiB".into()));
            }
            Some(s) => s.get_ref().0,
            None => 2 << 30,
        };

        let url = raw.hub.url.get_ref().clone();
        let host = url
            .strip_prefix("https://")
            .map(|rest| {
                rest.split(['/', ':'])
                    .next()
                    .unwrap_or_default()
                    .trim_matches(['[', ']'])
            })
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                invalid(
                    raw.hub.url.span(),
                    "hub.url",
                    format!("{url:?} is not an https:// URL with a host"),
                )
            })?
            .to_owned();
        let positive = |v: Option<Spanned<usize>>, key: &str, default: usize| match v {
            Some(v) if *v.get_ref() == 0 => Err(invalid(v.span(), key, "must be at least 1".into())),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        };
        let hub = HubConfig {
            url,
            server_name: raw.hub.server_name.unwrap_or(host),
            ca: resolve(&raw.hub.ca),
            cert: resolve(&raw.hub.cert),
            key: resolve(&raw.hub.key),
            compression: raw.hub.compression.unwrap_or(Compression::Zstd),
            batch_records: positive(raw.hub.batch_records, "hub.batch_records", 4096)?,
            batch_bytes: raw.hub.batch_bytes.map_or(1 << 20, |b| b.0 as usize).max(1),
            linger: raw.hub.linger.map_or(Duration::from_millis(2), |d| d.0),
            max_in_flight: positive(raw.hub.max_in_flight, "hub.max_in_flight", 24)?,
            keepalive: raw.hub.keepalive.map_or(Duration::from_secs(5), |d| d.0),
            backoff_max: raw.hub.backoff_max.map_or(Duration::from_secs(30), |d| d.0),
        };

        let mut sources = Vec::new();
        for s in raw.sources {
            let source = source::validate(s, &text, &catalog, &agency, &sources)?;
            sources.push(source);
        }
        let mut subscriptions = Vec::new();
        for s in raw.subscriptions {
            let sub = subscription::validate(s, &text, &catalog, &sources, &subscriptions)?;
            subscriptions.push(sub);
        }

        Ok(Config {
            origin: origin.to_owned(),
            agency_line: line_of(text.text, raw.agency.span().start),
            agency,
            data_dir: resolve(&raw.data_dir),
            catalog_path,
            catalog,
            shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(10), |d| d.0),
            outbox: OutboxConfig {
                max_bytes,
                reserve_free: raw.outbox.reserve_free.map_or(256 << 20, |b| b.0),
            },
            hub,
            health_listen: raw.health.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9720))),
            thresholds: Thresholds {
                link_down_after: raw.health.link_down_after.map_or(Duration::from_secs(60), |d| d.0),
                queue_age_after: raw.health.queue_age_after.map_or(Duration::from_secs(300), |d| d.0),
                disk_min_free: raw.health.disk_min_free.map_or(1 << 30, |b| b.0),
                cert_warn_days: raw.health.cert_warn_days.unwrap_or(30),
            },
            log_format: raw.log.format.unwrap_or(LogFormat::Text),
            log_level: raw.log.level.unwrap_or_else(|| "info".into()),
            sources,
            subscriptions,
        })
    }
}

/// The config text being validated: where its lines are, what relative
/// paths are relative to, and the catalog it names (for messages).
struct Text<'a> {
    text: &'a str,
    origin: &'a Path,
    catalog: PathBuf,
}

impl Text<'_> {
    /// A refusal of `key`, at the line of `span`.
    fn invalid(&self, span: std::ops::Range<usize>, key: &str, reason: String) -> Error {
        Error::Invalid {
            path: self.origin.to_owned(),
            line: line_of(self.text, span.start),
            key: key.to_owned(),
            reason,
        }
    }

    /// A path of the config, relative to the config's folder.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.origin.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}
