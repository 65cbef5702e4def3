//! One `[[source]]`: where records come from ([`Input`]: a drop folder or a
//! database table, each with only its own keys) and how its columns map onto
//! a catalog resource ([`MappingConfig`]). Validated from
//! [`super::raw::RawSource`] against the catalog, with the key and line of
//! every refusal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::raw::{ByteSize, RawSource, SourceKind};
use super::{Error, Text};
use crate::normalize::Transform;
use crate::source::format::Limits;
use rules::catalog::{Catalog, Sharing};

/// A validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    /// The catalog resource its records belong to.
    pub resource: String,
    pub mapping: MappingConfig,
    pub input: Input,
}

/// Where a source reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Folder(FolderConfig),
    Database(DbConfig),
}

/// How a source's columns become a resource's items.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappingConfig {
    /// Column or JSON field → data-element identifier, in file-column order
    /// of the config (BTreeMap order).
    pub columns: Vec<(String, String)>,
    /// Column → transforms applied, in order, to its raw value before the
    /// data-element rules.
    pub transforms: BTreeMap<String, Vec<Transform>>,
    /// A column that says insert/update/delete (drop folders only: a
    /// database source knows the operation of each change).
    pub op_column: Option<String>,
}

/// A drop folder.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderConfig {
    pub path: PathBuf,
    pub format: FileFormat,
    pub encoding: Encoding,
    pub complete: Completion,
    pub settle: Duration,
    pub rescan: Duration,
    pub after: AfterDone,
    /// The largest value and row taken; larger ones are quarantined with a
    /// prefix, their length and a hash.
    pub limits: Limits,
    /// Restarts of the agent while one file was being read before that file
    /// is set aside in `rejected/`.
    pub max_attempts: u32,
}

/// The database a database source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
    Mysql,
}

impl DbKind {
    /// The database's name for the operator.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "SQLite",
            DbKind::Postgres => "PostgreSQL",
            DbKind::Mysql => "MySQL/MariaDB",
        }
    }
}

impl SourceConfig {
    /// The drop folder, for a folder source.
    pub fn folder(&self) -> Option<&FolderConfig> {
        match &self.input {
            Input::Folder(f) => Some(f),
            Input::Database(_) => None,
        }
    }

    /// The database, for a database source.
    pub fn database(&self) -> Option<&DbConfig> {
        match &self.input {
            Input::Database(d) => Some(d),
            Input::Folder(_) => None,
        }
    }
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
    pub kind: DbKind,
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

/// Validates one `[[source]]` of `agency` against the catalog. `taken`: the
/// names of the sources before it.
pub(super) fn validate(
    s: RawSource,
    text: &Text<'_>,
    catalog: &Catalog,
    agency: &str,
    taken: &[SourceConfig],
) -> Result<SourceConfig, Error> {
    let name = s.name.get_ref().clone();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(text.invalid(
            s.name.span(),
            "source.name",
            format!("{name:?}: use letters, digits, '-' and '_'"),
        ));
    }
    if taken.iter().any(|o| o.name == name) {
        return Err(text.invalid(s.name.span(), "source.name", format!("{name:?} is used twice")));
    }
    let key = |k: &str| format!("source.{name}.{k}");
    let code = s.resource.get_ref();
    let Some(resource) = catalog.resource(code) else {
        return Err(text.invalid(
            s.resource.span(),
            &key("resource"),
            format!("{code:?} is not in the catalog {}", text.catalog.display()),
        ));
    };
    if resource.provider != agency {
        return Err(text.invalid(
            s.resource.span(),
            &key("resource"),
            format!(
                "{code:?} is provided by agency {}, not by this agency {agency} (one data, one source)",
                resource.provider
            ),
        ));
    }
    if resource.sharing == Sharing::NotShared {
        return Err(text.invalid(
            s.resource.span(),
            &key("resource"),
            format!("{code:?} is 不予共享 and cannot be published to the hub"),
        ));
    }
    let mut columns = Vec::new();
    for (column, element) in s.columns.get_ref() {
        if resource.item(element.get_ref()).is_none() {
            return Err(text.invalid(
                element.span(),
                &key(&format!("columns.{column}")),
                format!("data element {:?} is not an item of resource {code}", element.get_ref()),
            ));
        }
        if columns.iter().any(|(_, e)| e == element.get_ref()) {
            return Err(text.invalid(
                element.span(),
                &key(&format!("columns.{column}")),
                format!("data element {:?} is mapped from two columns", element.get_ref()),
            ));
        }
        columns.push((column.clone(), element.get_ref().clone()));
    }
    for item in resource.key_items() {
        if !columns.iter().any(|(_, e)| *e == item.id) {
            return Err(text.invalid(
                s.columns.span(),
                &key("columns"),
                format!("key item {} ({}) of resource {code} is not mapped", item.id, item.name),
            ));
        }
    }
    let mut transforms = BTreeMap::new();
    for (column, list) in &s.transforms {
        if !columns.iter().any(|(c, _)| c == column.get_ref()) {
            return Err(text.invalid(
                column.span(),
                &key(&format!("transforms.{}", column.get_ref())),
                format!("column {:?} is not in source.{name}.columns", column.get_ref()),
            ));
        }
        let mut parsed = Vec::new();
        for t in list {
            parsed.push(
                Transform::parse(t.get_ref()).map_err(|reason| {
                    text.invalid(t.span(), &key(&format!("transforms.{}", column.get_ref())), reason)
                })?,
            );
        }
        transforms.insert(column.get_ref().clone(), parsed);
    }
    let (input, op_column) = match s.kind {
        SourceKind::Folder => (Input::Folder(folder(&s, &name, text)?), s.op_column.clone()),
        SourceKind::Sqlite => (
            Input::Database(database(&s, DbKind::Sqlite, &name, &columns, text)?),
            None,
        ),
        SourceKind::Postgres => (
            Input::Database(database(&s, DbKind::Postgres, &name, &columns, text)?),
            None,
        ),
        SourceKind::Mysql => (
            Input::Database(database(&s, DbKind::Mysql, &name, &columns, text)?),
            None,
        ),
    };
    Ok(SourceConfig {
        name,
        resource: code.clone(),
        mapping: MappingConfig {
            columns,
            transforms,
            op_column,
        },
        input,
    })
}

/// Validates the keys of a drop folder.
fn folder(s: &RawSource, name: &str, text: &Text<'_>) -> Result<FolderConfig, Error> {
    let Some(path) = &s.path else {
        return Err(text.invalid(
            s.name.span(),
            &format!("source.{name}.path"),
            "a folder source needs `path`".into(),
        ));
    };
    let defaults = Limits::default();
    let size = |v: Option<&Spanned<ByteSize>>, key: &str, default: usize| -> Result<usize, Error> {
        match v {
            None => Ok(default),
            Some(b) if b.get_ref().0 < 1024 || b.get_ref().0 > 1 << 30 => {
                Err(text.invalid(b.span(), key, "must be between 1KiB and 1GiB".into()))
            }
            Some(b) => Ok(b.get_ref().0 as usize),
        }
    };
    let limits = Limits {
        max_value: size(s.max_value.as_ref(), "source.max_value", defaults.max_value)?,
        max_row: size(s.max_row.as_ref(), "source.max_row", defaults.max_row)?,
    };
    let max_attempts = match &s.max_attempts {
        None => 3,
        Some(n) if *n.get_ref() == 0 => {
            return Err(text.invalid(n.span(), "source.max_attempts", "must be at least 1".into()));
        }
        Some(n) => *n.get_ref(),
    };
    Ok(FolderConfig {
        path: text.resolve(path),
        format: s.format.unwrap_or(FileFormat::Auto),
        encoding: s.encoding.unwrap_or(Encoding::Auto),
        complete: s.complete.unwrap_or(Completion::Rename),
        settle: s.settle.map_or(Duration::from_secs(5), |d| d.0),
        rescan: s.rescan.map_or(Duration::from_secs(10), |d| d.0),
        after: s.after.unwrap_or(AfterDone::Move),
        limits,
        max_attempts,
    })
}

/// Validates the keys of a database source.
fn database(
    s: &RawSource,
    kind: DbKind,
    name: &str,
    columns: &[(String, String)],
    text: &Text<'_>,
) -> Result<DbConfig, Error> {
    let key = |k: &str| format!("source.{name}.{k}");
    let url = location(
        kind,
        s.path.as_deref(),
        s.url.as_ref(),
        s.name.span(),
        &key,
        "source",
        text,
    )?;
    let Some(table) = &s.table else {
        return Err(text.invalid(s.name.span(), &key("table"), "a database source needs `table`".into()));
    };
    table_name(table, &key("table"), text)?;
    if let Some((column, _)) = columns.iter().find(|(c, _)| !identifier(c)) {
        return Err(text.invalid(
            s.columns.span(),
            &key("columns"),
            format!("{column:?} is not a column name (no quotes or backslashes)"),
        ));
    }
    let capture = s.capture.unwrap_or(CaptureMode::Changelog);
    let watermark = match (&s.watermark, capture) {
        (Some(w), CaptureMode::Incremental) if identifier(w.get_ref()) => Some(w.get_ref().clone()),
        (Some(w), CaptureMode::Incremental) => {
            return Err(text.invalid(
                w.span(),
                &key("watermark"),
                format!("{:?} is not a column name", w.get_ref()),
            ));
        }
        (None, CaptureMode::Incremental) => {
            return Err(text.invalid(s.name.span(), &key("watermark"), "capture = \"incremental\" needs a watermark column (an update time or an increasing id); it cannot see deletes".into()));
        }
        (Some(w), CaptureMode::Changelog) => {
            return Err(text.invalid(w.span(), &key("watermark"), "only for capture = \"incremental\"".into()));
        }
        (None, CaptureMode::Changelog) => None,
    };
    let default_poll = match (kind, capture) {
        (_, CaptureMode::Incremental) => Duration::from_secs(1),
        (DbKind::Mysql, _) => Duration::from_millis(100),
        _ => Duration::from_secs(5),
    };
    Ok(DbConfig {
        kind,
        url,
        password_file: s.password_file.as_deref().map(|p| text.resolve(p)),
        table: table.get_ref().clone(),
        capture,
        watermark,
        lag: s.lag.map_or(Duration::from_secs(5), |d| d.0),
        poll: s.poll.map_or(default_poll, |d| d.0).max(Duration::from_millis(10)),
        install: s.install.unwrap_or(InstallMode::Auto),
        snapshot: s.snapshot.unwrap_or(true),
    })
}

/// A name the agent quotes itself: not empty, no quote characters or
/// backslashes, at most 63 bytes (PostgreSQL's limit).
pub(super) fn identifier(v: &str) -> bool {
    !v.is_empty() && !v.contains(['"', '`', '\\', '\0', '\'']) && v.len() <= 63
}

/// Where a database is: a SQLite file (`path`, resolved against the
/// config's folder) or a server URL of the right scheme. `what` is
/// "source" or "sink", for the messages.
pub(super) fn location(
    kind: DbKind,
    path: Option<&std::path::Path>,
    url: Option<&Spanned<String>>,
    at: std::ops::Range<usize>,
    key: &dyn Fn(&str) -> String,
    what: &str,
    text: &Text<'_>,
) -> Result<String, Error> {
    match (kind, path, url) {
        (DbKind::Sqlite, Some(p), None) => Ok(text.resolve(p).to_string_lossy().into_owned()),
        (DbKind::Sqlite, _, _) => Err(text.invalid(
            at,
            &key("path"),
            format!("a sqlite {what} needs `path` (the database file) and no `url`"),
        )),
        (_, None, Some(u)) => {
            let scheme = if kind == DbKind::Postgres { "postgres" } else { "mysql" };
            let ok = u.get_ref().starts_with(&format!("{scheme}://"))
                || (kind == DbKind::Postgres && u.get_ref().starts_with("postgresql://"));
            if ok {
                Ok(u.get_ref().clone())
            } else {
                Err(text.invalid(
                    u.span(),
                    &key("url"),
                    format!("expected a {scheme}://user@host:port/database URL"),
                ))
            }
        }
        _ => Err(text.invalid(
            at,
            &key("url"),
            format!("a database server {what} needs `url` and no `path`"),
        )),
    }
}

/// Refuses a table name that is not NAME or SCHEMA.NAME of identifiers.
pub(super) fn table_name(table: &Spanned<String>, key: &str, text: &Text<'_>) -> Result<(), Error> {
    let parts: Vec<&str> = table.get_ref().split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| identifier(p)) {
        return Err(text.invalid(
            table.span(),
            key,
            format!(
                "{:?} is not a table name (NAME or SCHEMA.NAME, without quotes)",
                table.get_ref()
            ),
        ));
    }
    Ok(())
}
