//! The agent's one configuration file: TOML → [`RawConfig`] (serde, unknown
//! keys refused) → [`Config`] (validated, defaults applied, paths resolved
//! against the file's folder, checked against the catalog).
//!
//! Everything is validated here, before any socket, folder or database is
//! opened. Only this module parses TOML for the agent (the catalog module
//! parses the catalog's own file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use rules::catalog::{self, Catalog, Sharing};

#[cfg(test)]
mod tests;

/// The default config path of a packaged install.
pub const DEFAULT_PATH: &str = "/etc/qianzhi/agent.toml";

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

/// A duration written as `"10s"`, `"500ms"`, `"2m"`.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
    }
}

/// A size in bytes: an integer, or a string such as `"512MiB"`, `"2GB"`.
#[derive(Debug, Clone, Copy)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(n) => Ok(ByteSize(n)),
            Repr::S(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a size (examples: 1048576, \"512MiB\", \"2GB\")"))
            }),
        }
    }
}

/// A whole number of bytes with an optional unit (`KB`, `KiB`, … `TiB`):
/// the `bytesize` crate's units, without its fractions.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.contains('.') {
        return None;
    }
    s.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agency: Spanned<String>,
    data_dir: PathBuf,
    catalog: Spanned<PathBuf>,
    shutdown_grace: Option<HumanDuration>,
    #[serde(default)]
    outbox: RawOutbox,
    hub: RawHub,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_bytes: Option<Spanned<ByteSize>>,
    reserve_free: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    url: Spanned<String>,
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    compression: Option<Compression>,
    batch_records: Option<Spanned<usize>>,
    batch_bytes: Option<ByteSize>,
    linger: Option<HumanDuration>,
    max_in_flight: Option<Spanned<usize>>,
    keepalive: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    listen: Option<SocketAddr>,
    link_down_after: Option<HumanDuration>,
    queue_age_after: Option<HumanDuration>,
    disk_min_free: Option<ByteSize>,
    cert_warn_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: SourceKind,
    resource: Spanned<String>,
    path: Option<PathBuf>,
    url: Option<Spanned<String>>,
    password_file: Option<PathBuf>,
    table: Option<Spanned<String>>,
    capture: Option<CaptureMode>,
    watermark: Option<Spanned<String>>,
    lag: Option<HumanDuration>,
    poll: Option<HumanDuration>,
    install: Option<InstallMode>,
    snapshot: Option<bool>,
    format: Option<FileFormat>,
    encoding: Option<Encoding>,
    complete: Option<Completion>,
    settle: Option<HumanDuration>,
    rescan: Option<HumanDuration>,
    after: Option<AfterDone>,
    op_column: Option<String>,
    max_value: Option<Spanned<ByteSize>>,
    max_row: Option<Spanned<ByteSize>>,
    max_attempts: Option<Spanned<u32>>,
    columns: Spanned<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    transforms: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

/// Compression of the gRPC stream.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Folder,
    Sqlite,
    Postgres,
    Mysql,
}

/// How a database source captures changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Triggers write every insert, update and delete to a change-log table.
    Changelog,
    /// SELECT only: rows whose watermark column grew. Cannot see deletes.
    Incremental,
}

/// Whether the agent creates the change-log table and triggers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallMode {
    /// At start, if they are missing or out of date.
    Auto,
    /// Only by `qianzhi source install NAME`, which a DBA may review with
    /// `--dry-run`; the source reports an error until it is done.
    Manual,
}

/// The database side of a database source.
#[derive(Debug, Clone, PartialEq)]
pub struct DbConfig {
    /// `postgres://…` or `mysql://…` URL; for SQLite, the database file.
    pub url: String,
    /// A file holding the password, instead of writing it into the URL.
    pub password_file: Option<PathBuf>,
    /// The table, optionally `schema.table` (PostgreSQL).
    pub table: String,
    pub capture: CaptureMode,
    /// Incremental: the watermark column (an update time or an increasing id).
    pub watermark: Option<String>,
    /// Incremental: rows are read only up to the highest watermark seen this
    /// long ago, so that transactions still open when it was seen can commit.
    pub lag: Duration,
    /// How often to look for changes when no wake-up comes: the MySQL change
    /// log and incremental mode; a fallback for SQLite and PostgreSQL.
    pub poll: Duration,
    pub install: InstallMode,
    /// Send the rows already in the table before the first change.
    pub snapshot: bool,
}

/// The format of files in a drop folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// By extension: `.csv`/`.txt` → CSV, `.jsonl`/`.ndjson` → JSON Lines,
    /// `.xlsx`/`.xlsm`/`.xls` → Excel.
    Auto,
    Csv,
    Jsonl,
    /// The first worksheet of an Excel workbook.
    Xlsx,
}

/// The character encoding of CSV files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    /// UTF-8 if the whole file is valid UTF-8, otherwise GB18030.
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "utf-8")]
    Utf8,
    /// GB18030, which also decodes GBK and GB2312.
    #[serde(rename = "gb18030", alias = "gbk")]
    Gb18030,
}

/// When a file in the drop folder counts as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Completion {
    /// Writers write under a hidden or `.tmp`/`.part` name and rename the file
    /// into place: every other file is complete.
    Rename,
    /// A file is complete once `NAME.ok` exists beside it.
    Marker,
    /// A file is complete once its size and mtime have not changed for
    /// `settle`.
    Settle,
}

/// What happens to a file once all its records are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterDone {
    Move,
    Delete,
}

/// A change applied to a raw value before the data-element rules, for
/// exports whose columns need help (the rules already fold widths, trim and
/// compact codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    /// Upper case (ASCII).
    Upper,
    /// Lower case (ASCII).
    Lower,
    /// Remove every white-space character.
    RemoveSpaces,
    /// Keep only the digits.
    DigitsOnly,
    /// Remove this prefix if present (`strip_prefix:TEXT`).
    StripPrefix(String),
    /// Remove this suffix if present (`strip_suffix:TEXT`).
    StripSuffix(String),
    /// Replace a whole value (`map:OLD=NEW`), for local code tables.
    Map(String, String),
}

impl Transform {
    fn parse(s: &str) -> Result<Transform, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(n, a)| (n, Some(a)));
        Ok(match (name, arg) {
            ("upper", None) => Transform::Upper,
            ("lower", None) => Transform::Lower,
            ("remove_spaces", None) => Transform::RemoveSpaces,
            ("digits_only", None) => Transform::DigitsOnly,
            ("strip_prefix", Some(a)) if !a.is_empty() => Transform::StripPrefix(a.to_owned()),
            ("strip_suffix", Some(a)) if !a.is_empty() => Transform::StripSuffix(a.to_owned()),
            ("map", Some(a)) => match a.split_once('=') {
                Some((from, to)) => Transform::Map(from.to_owned(), to.to_owned()),
                None => return Err(format!("transform {s:?}: expected map:OLD=NEW")),
            },
            _ => {
                return Err(format!(
                    "unknown transform {s:?}: expected upper, lower, remove_spaces, digits_only, \
                     strip_prefix:TEXT, strip_suffix:TEXT or map:OLD=NEW"
                ));
            }
        })
    }

    /// Applies the transform to a value.
    pub fn apply(&self, v: &str) -> String {
        match self {
            Transform::Upper => v.to_ascii_uppercase(),
            Transform::Lower => v.to_ascii_lowercase(),
            Transform::RemoveSpaces => v.chars().filter(|c| !c.is_whitespace()).collect(),
            Transform::DigitsOnly => v.chars().filter(char::is_ascii_digit).collect(),
            Transform::StripPrefix(p) => v.strip_prefix(p.as_str()).unwrap_or(v).to_owned(),
            Transform::StripSuffix(p) => v.strip_suffix(p.as_str()).unwrap_or(v).to_owned(),
            Transform::Map(from, to) if v == from => to.clone(),
            Transform::Map(..) => v.to_owned(),
        }
    }
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
    pub max_in_flight: usize,
    pub keepalive: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub resource: String,
    pub path: PathBuf,
    pub format: FileFormat,
    pub encoding: Encoding,
    pub complete: Completion,
    pub settle: Duration,
    pub rescan: Duration,
    pub after: AfterDone,
    pub op_column: Option<String>,
    /// Database sources only.
    pub db: Option<DbConfig>,
    /// Column or JSON field → data-element identifier, in file-column order
    /// of the config (BTreeMap order).
    pub columns: Vec<(String, String)>,
    /// Column → transforms applied, in order, to its raw value before the
    /// data-element rules.
    pub transforms: BTreeMap<String, Vec<Transform>>,
    /// Drop folders: the largest value and row taken; larger ones are
    /// quarantined with a prefix, their length and a hash.
    pub limits: crate::source::format::Limits,
    /// Drop folders: restarts of the agent while one file was being read
    /// before that file is set aside in `rejected/`.
    pub max_attempts: u32,
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
        let base = origin.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf { if p.is_absolute() { p.to_owned() } else { base.join(p) } };
        let invalid = |span: std::ops::Range<usize>, key: &str, reason: String| Error::Invalid {
            path: origin.to_owned(),
            line: line_of(text, span.start),
            key: key.to_owned(),
            reason,
        };

        let agency = raw.agency.get_ref().trim().to_owned();
        if agency.is_empty() {
            return Err(invalid(raw.agency.span(), "agency", "must not be empty".into()));
        }

        let catalog_path = resolve(raw.catalog.get_ref());
        let catalog_text = read_catalog(&catalog_path)?;
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
            max_in_flight: positive(raw.hub.max_in_flight, "hub.max_in_flight", 8)?,
            keepalive: raw.hub.keepalive.map_or(Duration::from_secs(5), |d| d.0),
            backoff_max: raw.hub.backoff_max.map_or(Duration::from_secs(30), |d| d.0),
        };

        let mut sources = Vec::new();
        for s in raw.sources {
            let name = s.name.get_ref().clone();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(
                    s.name.span(),
                    "source.name",
                    format!("{name:?}: use letters, digits, '-' and '_'"),
                ));
            }
            if sources.iter().any(|o: &SourceConfig| o.name == name) {
                return Err(invalid(s.name.span(), "source.name", format!("{name:?} is used twice")));
            }
            let key = |k: &str| format!("source.{name}.{k}");
            let code = s.resource.get_ref();
            let Some(resource) = catalog.resource(code) else {
                return Err(invalid(
                    s.resource.span(),
                    &key("resource"),
                    format!("{code:?} is not in the catalog {}", catalog_path.display()),
                ));
            };
            if resource.provider != agency {
                return Err(invalid(
                    s.resource.span(),
                    &key("resource"),
                    format!(
                        "{code:?} is provided by agency {}, not by this agency {agency} (one data, one source)",
                        resource.provider
                    ),
                ));
            }
            if resource.sharing == Sharing::NotShared {
                return Err(invalid(
                    s.resource.span(),
                    &key("resource"),
                    format!("{code:?} is 不予共享 and cannot be published to the hub"),
                ));
            }
            let mut columns = Vec::new();
            for (column, element) in s.columns.get_ref() {
                if resource.item(element.get_ref()).is_none() {
                    return Err(invalid(
                        element.span(),
                        &key(&format!("columns.{column}")),
                        format!("data element {:?} is not an item of resource {code}", element.get_ref()),
                    ));
                }
                if columns.iter().any(|(_, e)| e == element.get_ref()) {
                    return Err(invalid(
                        element.span(),
                        &key(&format!("columns.{column}")),
                        format!("data element {:?} is mapped from two columns", element.get_ref()),
                    ));
                }
                columns.push((column.clone(), element.get_ref().clone()));
            }
            for item in resource.key_items() {
                if !columns.iter().any(|(_, e)| *e == item.id) {
                    return Err(invalid(
                        s.columns.span(),
                        &key("columns"),
                        format!("key item {} ({}) of resource {code} is not mapped", item.id, item.name),
                    ));
                }
            }
            let mut transforms = BTreeMap::new();
            for (column, list) in &s.transforms {
                if !columns.iter().any(|(c, _)| c == column.get_ref()) {
                    return Err(invalid(
                        column.span(),
                        &key(&format!("transforms.{}", column.get_ref())),
                        format!("column {:?} is not in source.{name}.columns", column.get_ref()),
                    ));
                }
                let mut parsed = Vec::new();
                for t in list {
                    parsed.push(Transform::parse(t.get_ref()).map_err(|reason| {
                        invalid(t.span(), &key(&format!("transforms.{}", column.get_ref())), reason)
                    })?);
                }
                transforms.insert(column.get_ref().clone(), parsed);
            }
            let db = match s.kind {
                SourceKind::Folder => {
                    if s.path.is_none() {
                        return Err(invalid(
                            s.name.span(),
                            &key("path"),
                            "a folder source needs `path`".into(),
                        ));
                    }
                    None
                }
                kind => Some(db_config(&s, kind, &name, &columns, &resolve, &invalid)?),
            };
            let defaults = crate::source::format::Limits::default();
            let size = |v: Option<Spanned<ByteSize>>, key: &str, default: usize| -> Result<usize, Error> {
                match v {
                    None => Ok(default),
                    Some(b) if b.get_ref().0 < 1024 || b.get_ref().0 > 1 << 30 => {
                        Err(invalid(b.span(), key, "must be between 1KiB and 1GiB".into()))
                    }
                    Some(b) => Ok(b.get_ref().0 as usize),
                }
            };
            let limits = crate::source::format::Limits {
                max_value: size(s.max_value, "source.max_value", defaults.max_value)?,
                max_row: size(s.max_row, "source.max_row", defaults.max_row)?,
            };
            let max_attempts = match s.max_attempts {
                None => 3,
                Some(n) if *n.get_ref() == 0 => {
                    return Err(invalid(n.span(), "source.max_attempts", "must be at least 1".into()));
                }
                Some(n) => *n.get_ref(),
            };
            sources.push(SourceConfig {
                name,
                kind: s.kind,
                resource: code.clone(),
                path: s.path.as_deref().map(&resolve).unwrap_or_default(),
                format: s.format.unwrap_or(FileFormat::Auto),
                encoding: s.encoding.unwrap_or(Encoding::Auto),
                complete: s.complete.unwrap_or(Completion::Rename),
                settle: s.settle.map_or(Duration::from_secs(5), |d| d.0),
                rescan: s.rescan.map_or(Duration::from_secs(10), |d| d.0),
                after: s.after.unwrap_or(AfterDone::Move),
                op_column: if db.is_some() { None } else { s.op_column },
                db,
                transforms,
                columns,
                limits,
                max_attempts,
            });
        }

        Ok(Config {
            origin: origin.to_owned(),
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
        })
    }
}

/// Validates the database keys of a database source.
fn db_config(
    s: &RawSource,
    kind: SourceKind,
    name: &str,
    columns: &[(String, String)],
    resolve: &impl Fn(&Path) -> PathBuf,
    invalid: &impl Fn(std::ops::Range<usize>, &str, String) -> Error,
) -> Result<DbConfig, Error> {
    let key = |k: &str| format!("source.{name}.{k}");
    let url = match (kind, &s.path, &s.url) {
        (SourceKind::Sqlite, Some(p), None) => resolve(p).to_string_lossy().into_owned(),
        (SourceKind::Sqlite, _, _) => {
            return Err(invalid(
                s.name.span(),
                &key("path"),
                "a sqlite source needs `path` (the database file) and no `url`".into(),
            ));
        }
        (_, None, Some(u)) => {
            let scheme = if kind == SourceKind::Postgres {
                "postgres"
            } else {
                "mysql"
            };
            let text = u.get_ref();
            let ok = text.starts_with(&format!("{scheme}://"))
                || (kind == SourceKind::Postgres && text.starts_with("postgresql://"));
            if !ok {
                return Err(invalid(
                    u.span(),
                    &key("url"),
                    format!("expected a {scheme}://user@host:port/database URL"),
                ));
            }
            text.clone()
        }
        _ => {
            return Err(invalid(
                s.name.span(),
                &key("url"),
                "a database server source needs `url` and no `path`".into(),
            ));
        }
    };
    let Some(table) = &s.table else {
        return Err(invalid(
            s.name.span(),
            &key("table"),
            "a database source needs `table`".into(),
        ));
    };
    let identifier = |v: &str| !v.is_empty() && !v.contains(['"', '`', '\\', '\0', '\'']) && v.len() <= 63;
    let parts: Vec<&str> = table.get_ref().split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| identifier(p)) {
        return Err(invalid(
            table.span(),
            &key("table"),
            format!(
                "{:?} is not a table name (NAME or SCHEMA.NAME, without quotes)",
                table.get_ref()
            ),
        ));
    }
    if let Some((column, _)) = columns.iter().find(|(c, _)| !identifier(c)) {
        return Err(invalid(
            s.columns.span(),
            &key("columns"),
            format!("{column:?} is not a column name (no quotes or backslashes)"),
        ));
    }
    let capture = s.capture.unwrap_or(CaptureMode::Changelog);
    let watermark = match (&s.watermark, capture) {
        (Some(w), CaptureMode::Incremental) if identifier(w.get_ref()) => Some(w.get_ref().clone()),
        (Some(w), CaptureMode::Incremental) => {
            return Err(invalid(
                w.span(),
                &key("watermark"),
                format!("{:?} is not a column name", w.get_ref()),
            ));
        }
        (None, CaptureMode::Incremental) => {
            return Err(invalid(s.name.span(), &key("watermark"), "capture = \"incremental\" needs a watermark column (an update time or an increasing id); it cannot see deletes".into()));
        }
        (Some(w), CaptureMode::Changelog) => {
            return Err(invalid(
                w.span(),
                &key("watermark"),
                "only for capture = \"incremental\"".into(),
            ));
        }
        (None, CaptureMode::Changelog) => None,
    };
    let default_poll = match (kind, capture) {
        (_, CaptureMode::Incremental) => Duration::from_secs(1),
        (SourceKind::Mysql, _) => Duration::from_millis(100),
        _ => Duration::from_secs(5),
    };
    Ok(DbConfig {
        url,
        password_file: s.password_file.as_deref().map(resolve),
        table: table.get_ref().clone(),
        capture,
        watermark,
        lag: s.lag.map_or(Duration::from_secs(5), |d| d.0),
        poll: s.poll.map_or(default_poll, |d| d.0).max(Duration::from_millis(10)),
        install: s.install.unwrap_or(InstallMode::Auto),
        snapshot: s.snapshot.unwrap_or(true),
    })
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}
