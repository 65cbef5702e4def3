//! `[[subscription]]`: a resource of another agency this agency receives
//! (article 18), and the sink it is delivered into: a table of one of the
//! agency's databases, or a folder.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rules::catalog::Catalog;
use serde::Deserialize;
use toml::Spanned;

use super::raw::HumanDuration;
use super::source::{self, DbKind, Encoding, Input, SourceConfig};
use super::{Error, Text};

#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    pub resource: String,
    /// The items wanted, catalog order; empty: all the hub allows.
    pub items: Vec<String>,
    pub on_revoke: OnRevoke,
    pub sink: SinkConfig,
}

/// What happens to received rows when the agreement ends (article 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRevoke {
    /// Keep them; delivery stops.
    #[default]
    Keep,
    /// Delete them in one transaction, logged.
    Purge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    Table {
        kind: DbKind,
        /// A file path for SQLite, a URL for the servers.
        url: String,
        password_file: Option<PathBuf>,
        table: String,
        create: bool,
        /// Item id → column, for the items whose column is not the item id.
        columns: BTreeMap<String, String>,
    },
    Folder {
        path: PathBuf,
        format: SinkFormat,
        encoding: Encoding,
        roll_records: usize,
        roll_after: Duration,
        ok_marker: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    Jsonl,
    Csv,
}

/// A sink's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SinkKind {
    Sqlite,
    Postgres,
    Mysql,
    Folder,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscription {
    pub(super) resource: Spanned<String>,
    pub(super) items: Option<Spanned<Vec<String>>>,
    pub(super) on_revoke: Option<OnRevoke>,
    #[serde(rename = "type")]
    pub(super) kind: Spanned<SinkKind>,
    pub(super) path: Option<PathBuf>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) create: Option<bool>,
    #[serde(default)]
    pub(super) columns: BTreeMap<String, Spanned<String>>,
    pub(super) format: Option<SinkFormat>,
    pub(super) encoding: Option<Encoding>,
    pub(super) roll_records: Option<Spanned<usize>>,
    pub(super) roll_after: Option<HumanDuration>,
    pub(super) ok_marker: Option<bool>,
}

/// Validates one `[[subscription]]`; `taken`: those before it.
pub(super) fn validate(
    s: RawSubscription,
    text: &Text<'_>,
    catalog: &Catalog,
    sources: &[SourceConfig],
    taken: &[SubscriptionConfig],
) -> Result<SubscriptionConfig, Error> {
    let code = s.resource.get_ref().clone();
    let key = |k: &str| format!("subscription.{code}.{k}");
    let Some(resource) = catalog.resource(&code) else {
        return Err(text.invalid(
            s.resource.span(),
            "subscription.resource",
            format!("{code:?} is not in the catalog {}", text.catalog.display()),
        ));
    };
    if taken.iter().any(|t| t.resource == code) {
        return Err(text.invalid(
            s.resource.span(),
            "subscription.resource",
            format!("{code:?} is subscribed twice"),
        ));
    }
    if let Some(source) = sources.iter().find(|src| src.resource == code) {
        return Err(text.invalid(
            s.resource.span(),
            "subscription.resource",
            format!(
                "{code:?} is also published by source {}: received data must not be published as this agency's own (article 20)",
                source.name
            ),
        ));
    }
    let mut items = Vec::new();
    if let Some(wanted) = &s.items {
        if let Some(unknown) = wanted.get_ref().iter().find(|i| resource.item(i).is_none()) {
            return Err(text.invalid(
                wanted.span(),
                &key("items"),
                format!("{unknown:?} is not an item of resource {code}"),
            ));
        }
        items = resource
            .items()
            .iter()
            .filter(|i| i.key || wanted.get_ref().contains(&i.id))
            .map(|i| i.id.clone())
            .collect();
    }
    let kind = *s.kind.get_ref();
    let sink = match kind {
        SinkKind::Folder => {
            let Some(path) = &s.path else {
                return Err(text.invalid(s.kind.span(), &key("path"), "a folder sink needs `path`".into()));
            };
            let encoding = match s.encoding.unwrap_or(Encoding::Utf8) {
                Encoding::Auto => {
                    return Err(text.invalid(
                        s.kind.span(),
                        &key("encoding"),
                        "a folder sink writes \"utf-8\" or \"gb18030\", not \"auto\"".into(),
                    ));
                }
                e => e,
            };
            let roll_records = match s.roll_records {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(text.invalid(n.span(), &key("roll_records"), "must be at least 1".into()));
                }
                Some(n) => *n.get_ref(),
                None => 10_000,
            };
            SinkConfig::Folder {
                path: text.resolve(path),
                format: s.format.unwrap_or(SinkFormat::Jsonl),
                encoding,
                roll_records,
                roll_after: s.roll_after.map_or(Duration::from_secs(10), |d| d.0),
                ok_marker: s.ok_marker.unwrap_or(false),
            }
        }
        SinkKind::Sqlite | SinkKind::Postgres | SinkKind::Mysql => {
            let kind = match kind {
                SinkKind::Sqlite => DbKind::Sqlite,
                SinkKind::Postgres => DbKind::Postgres,
                _ => DbKind::Mysql,
            };
            let url = source::location(
                kind,
                s.path.as_deref(),
                s.url.as_ref(),
                s.kind.span(),
                &key,
                "sink",
                text,
            )?;
            let Some(table) = &s.table else {
                return Err(text.invalid(s.kind.span(), &key("table"), "a table sink needs `table`".into()));
            };
            source::table_name(table, &key("table"), text)?;
            let mut columns = BTreeMap::new();
            for (item, column) in &s.columns {
                if resource.item(item).is_none() {
                    return Err(text.invalid(
                        column.span(),
                        &key(&format!("columns.{item}")),
                        format!("{item:?} is not an item of resource {code}"),
                    ));
                }
                if !source::identifier(column.get_ref()) {
                    return Err(text.invalid(
                        column.span(),
                        &key(&format!("columns.{item}")),
                        format!("{:?} is not a column name (no quotes or backslashes)", column.get_ref()),
                    ));
                }
                columns.insert(item.clone(), column.get_ref().clone());
            }
            if let Some(src) = sources.iter().find(|src| {
                src.database()
                    .is_some_and(|d| d.kind == kind && d.url == url && d.table == *table.get_ref())
            }) {
                return Err(text.invalid(
                    table.span(),
                    &key("table"),
                    format!(
                        "source {} reads this table: received data must not be published as this agency's own (article 20)",
                        src.name
                    ),
                ));
            }
            SinkConfig::Table {
                kind,
                url,
                password_file: s.password_file.as_deref().map(|p| text.resolve(p)),
                table: table.get_ref().clone(),
                create: s.create.unwrap_or(false),
                columns,
            }
        }
    };
    if let SinkConfig::Folder { path, .. } = &sink
        && let Some(src) = sources
            .iter()
            .find(|src| matches!(&src.input, Input::Folder(f) if f.path == *path))
    {
        return Err(text.invalid(
            s.resource.span(),
            &key("path"),
            format!(
                "source {} reads this folder: received data must not be published as this agency's own (article 20)",
                src.name
            ),
        ));
    }
    Ok(SubscriptionConfig {
        resource: code,
        items,
        on_revoke: s.on_revoke.unwrap_or_default(),
        sink,
    })
}
