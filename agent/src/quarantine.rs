//! `qianzhi quarantine`: what a person does with the records the agent could
//! not send: list and look at them, export them as a CSV that opens in Excel
//! and can be dropped into the folder again once fixed, retry them after the
//! catalog or the mapping was fixed, or discard them with a reason.
//!
//! Reading works while the agent runs. `retry` and `discard` change the
//! outbox through a [`QuarantineStore`]: the running agent's writer (the
//! agent runs them for a caller of its control socket, with its running
//! config) or, with the agent stopped, the file itself under the data
//! directory's lock. Discarded entries are kept in the outbox's `discarded`
//! table with the reason and who discarded them, and [`discarded`] reads
//! them back.
//!
//! A rule is named by its code in any case. Rule codes come from the
//! catalog's data elements, the normalizer and the hub, so no fixed list
//! knows them all: a `--rule` that no held entry broke is refused with the
//! rules the held entries did break, which catches a typo instead of
//! answering "0 entries".

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::clock;
use crate::config::{Config, Encoding};
use crate::normalize::{Field, Mapping, Origin, Outcome};
use crate::outbox::{self, Held, QuarantineFilter, QuarantineStore};
use rules::element::Issue;

/// A failure of a quarantine command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    #[error("no quarantine entry matches")]
    NothingMatches,
    #[error("a discard needs a reason (--reason)")]
    NoReason,
    #[error("cannot encode the export: {0}")]
    Csv(String),
    /// `--rule` names a rule no held entry broke (often a typo).
    #[error("no entry held broke rule {rule:?} ({})", known_rules(known))]
    UnknownRule { rule: String, known: Vec<String> },
}

fn known_rules(known: &[String]) -> String {
    if known.is_empty() {
        "the quarantine holds no entry with a rule code".into()
    } else {
        format!("rules held: {}", known.join(", "))
    }
}

/// `1 entry`, `2 entries`: a count with its noun.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The held entries that `filter` picks, after checking that its rule, if
/// any, is one that some held entry broke.
fn pick(all: Vec<Held>, filter: &QuarantineFilter) -> Result<Vec<Held>, Error> {
    if let Some(rule) = &filter.rule {
        let known: std::collections::BTreeSet<String> = all.iter().flat_map(Held::rules).map(str::to_owned).collect();
        if !known.iter().any(|k| k.eq_ignore_ascii_case(rule)) {
            return Err(Error::UnknownRule {
                rule: rule.clone(),
                known: known.into_iter().collect(),
            });
        }
    }
    Ok(all.into_iter().filter(|h| filter.matches(h)).collect())
}

fn time(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Entries of the running or stopped agent (read-only).
pub fn entries(config: &Config, filter: &QuarantineFilter) -> Result<Vec<Held>, Error> {
    let (path, conn) = read_only(config)?;
    let all = outbox::Reader::new(&conn)
        .held(&QuarantineFilter::default())
        .map_err(|source| Error::Outbox(outbox::Error::Sqlite { path, source }))?;
    pick(all, filter)
}

fn read_only(config: &Config) -> Result<(std::path::PathBuf, rusqlite::Connection), Error> {
    let path = config.data_dir.join("outbox.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            outbox::Error::Sqlite {
                path: path.clone(),
                source,
            }
        })?;
    Ok((path, conn))
}

/// A quarantine entry dropped for good, with why, by whom and when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Discard {
    /// The discard's own number.
    pub id: i64,
    pub at_us: i64,
    pub reason: String,
    pub who: String,
    /// The entry as it was held (`quarantine_id`, `source`, `object`,
    /// `line`, `resource`, `reasons`, `raw`).
    pub entry: serde_json::Value,
}

/// The discarded entries, oldest first (read-only; works while the agent
/// runs). The outbox keeps them in its `discarded` table; nothing in the
/// agent reads them but this.
pub fn discarded(config: &Config) -> Result<Vec<Discard>, Error> {
    let (path, conn) = read_only(config)?;
    let read = || -> rusqlite::Result<Vec<Discard>> {
        let mut stmt = conn.prepare("SELECT id, at_us, reason, who, entry FROM discarded ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            let entry: String = r.get(4)?;
            Ok(Discard {
                id: r.get(0)?,
                at_us: r.get(1)?,
                reason: r.get(2)?,
                who: r.get(3)?,
                entry: serde_json::from_str(&entry).unwrap_or(serde_json::Value::String(entry)),
            })
        })?;
        rows.collect()
    };
    read().map_err(|source| Error::Outbox(outbox::Error::Sqlite { path, source }))
}

/// One paragraph per discard: when, who, why, and what the entry was.
pub fn render_discarded(discards: &[Discard]) -> String {
    let mut o = String::new();
    for d in discards {
        let e = &d.entry;
        let text = |k: &str| match &e[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "?".into(),
            v => v.to_string(),
        };
        let first_reason = e["reasons"][0].as_str().unwrap_or_default();
        let _ = writeln!(
            o,
            "{}  by {}  reason: {}\n    entry #{} {} {}:{} {} {}",
            time(d.at_us),
            d.who,
            d.reason,
            text("quarantine_id"),
            text("source"),
            text("object"),
            text("line"),
            text("resource"),
            first_reason
        );
    }
    let _ = writeln!(o, "{}", count(discards.len(), "discarded entry", "discarded entries"));
    o
}

/// The entries as a JSON array for scripts: each entry's fields, its rule
/// codes, and its raw values as an object (or the raw line as a string).
pub fn render_json(entries: &[Held]) -> String {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|h| {
            let e = &h.entry;
            let raw = serde_json::from_str::<serde_json::Value>(&e.raw)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::Value::String(e.raw.clone()));
            serde_json::json!({
                "id": h.id,
                "held_at": time(h.at_us),
                "source": e.source,
                "object": e.object,
                "line": e.line,
                "resource": e.resource,
                "rules": h.rules().collect::<Vec<_>>(),
                "reasons": e.reasons,
                "raw": raw,
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// One line per entry.
pub fn render_list(entries: &[Held]) -> String {
    let mut o = String::new();
    for h in entries {
        let e = &h.entry;
        let _ = writeln!(
            o,
            "#{:<6} {}  {:<10} {}:{}  {}  {}{}",
            h.id,
            time(h.at_us),
            e.source,
            e.object,
            e.line,
            e.resource,
            e.reasons.first().map(String::as_str).unwrap_or_default(),
            // One line per entry: the others are in `quarantine show N`.
            match e.reasons.len() {
                0 | 1 => String::new(),
                n => format!(" (+{} more: quarantine show {})", n - 1, h.id),
            }
        );
    }
    let _ = writeln!(o, "{}", count(entries.len(), "entry", "entries"));
    o
}

/// Everything about one entry.
pub fn render_show(h: &Held) -> String {
    let e = &h.entry;
    let mut o = format!(
        "entry     #{}\nheld at   {}\nsource    {}\nfile      {} line {}\nresource  {}\nreasons\n",
        h.id,
        time(h.at_us),
        e.source,
        e.object,
        e.line,
        e.resource
    );
    for r in &e.reasons {
        let _ = writeln!(o, "  - {r}");
    }
    o.push_str("raw values\n");
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&e.raw) {
        Ok(m) => {
            for (k, v) in m {
                let _ = writeln!(o, "  {k} = {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            }
        }
        Err(_) => {
            let _ = writeln!(o, "  {}", e.raw);
        }
    }
    o
}

/// A cell that Excel would run as a formula (OWASP's CSV injection: a
/// leading `=`, `+`, `-`, `@`, tab or carriage return) gets a leading `'`,
/// which Excel shows as text. Dropped into a folder again, the value loses
/// that `'` in normalization (`normalize::csv_guard`), so it normalizes to
/// what it was.
fn neutralised(cell: String) -> String {
    if crate::normalize::needs_csv_guard(&cell) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// A CSV of the entries: bookkeeping columns, then the source's mapped
/// columns with the raw values, so the file can be fixed in Excel and
/// dropped into the folder again (the mapping ignores the extra columns).
/// GB18030 for a source configured so; otherwise UTF-8 with a BOM, which
/// Excel needs to see UTF-8.
pub fn export_csv(config: &Config, entries: &[Held], encoding: Option<Encoding>) -> Result<Vec<u8>, Error> {
    let source = entries
        .first()
        .and_then(|h| config.sources.iter().find(|s| s.name == h.entry.source));
    let columns = source.map(|s| export_columns(config, s)).unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["隔离编号", "来源", "文件", "行号", "原因"];
    header.extend(columns.iter().map(|(c, _)| c.as_str()));
    header.push("原始内容");
    w.write_record(&header).map_err(|e| Error::Csv(e.to_string()))?;
    for h in entries {
        let e = &h.entry;
        let raw = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&e.raw).ok();
        let mut row = vec![
            h.id.to_string(),
            e.source.clone(),
            e.object.clone(),
            e.line.to_string(),
            e.reasons.join("; "),
        ];
        for (column, element) in &columns {
            // By column name, or by data element (entries the hub rejected
            // keep their items by element).
            let value = raw
                .as_ref()
                .and_then(|m| m.get(column).or_else(|| element.as_ref().and_then(|e| m.get(e))));
            row.push(value.and_then(|v| v.as_str()).unwrap_or_default().to_owned());
        }
        row.push(if raw.is_some() { String::new() } else { e.raw.clone() });
        let row: Vec<String> = row.into_iter().map(neutralised).collect();
        w.write_record(&row).map_err(|e| Error::Csv(e.to_string()))?;
    }
    let text = String::from_utf8(w.into_inner().map_err(|e| Error::Csv(e.to_string()))?)
        .map_err(|e| Error::Csv(e.to_string()))?;
    let encoding = encoding
        .or(source.and_then(|s| s.folder()).map(|f| f.encoding))
        .unwrap_or(Encoding::Utf8);
    Ok(match encoding {
        Encoding::Gb18030 => encoding_rs::GB18030.encode(&text).0.into_owned(),
        Encoding::Utf8 | Encoding::Auto => {
            let mut bytes = b"\xEF\xBB\xBF".to_vec();
            bytes.extend_from_slice(text.as_bytes());
            bytes
        }
    })
}

/// The columns of an export, each with its data element: the mapped
/// columns in the order of the resource's items in the catalog, then the
/// operation column. The file's own column order is not kept anywhere (an
/// entry holds its values by name, the config's `[source.columns]` is a
/// table read in character-code order); the catalog's order is the one the
/// resource is described in, and the closest to the business system's
/// export.
fn export_columns(config: &Config, source: &crate::config::SourceConfig) -> Vec<(String, Option<String>)> {
    let items = config.catalog.resource(&source.resource).map(|r| r.items());
    let place = |element: &str| {
        items
            .and_then(|items| items.iter().position(|i| i.id == element))
            .unwrap_or(usize::MAX)
    };
    let mut columns: Vec<(String, Option<String>)> = source
        .mapping
        .columns
        .iter()
        .map(|(c, e)| (c.clone(), Some(e.clone())))
        .collect();
    columns.sort_by_key(|(_, e)| e.as_deref().map_or(usize::MAX, place));
    columns.extend(source.mapping.op_column.iter().map(|c| (c.clone(), None)));
    columns
}

/// What a retry did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Entries that now normalize: queued for the hub.
    pub queued: usize,
    /// Entries that still fail, with their new reasons.
    pub still_failing: usize,
    /// Entries that cannot be retried from their raw values (a row that was
    /// not even split into fields, undecodable bytes): fix the file and drop
    /// it again.
    pub not_retryable: usize,
}

impl Retried {
    /// What the operator reads.
    pub fn summary(&self) -> String {
        format!(
            "{} queued for the hub, {} still failing, {} not retryable (fix the file and drop it again)",
            self.queued, self.still_failing, self.not_retryable
        )
    }
}

/// Normalizes the matching entries again with `config` (its catalog and
/// mappings) and applies the outcome to `store` in one transaction.
pub fn retry(config: &Config, store: &mut dyn QuarantineStore, filter: &QuarantineFilter) -> Result<Retried, Error> {
    let held = pick(store.held()?, filter)?;
    if held.is_empty() {
        return Err(Error::NothingMatches);
    }
    let mut fixed = Vec::new();
    let mut still = Vec::new();
    let mut result = Retried::default();
    let now = clock::now_us();
    for h in &held {
        let e = &h.entry;
        let source = config.sources.iter().find(|s| s.name == e.source);
        let resource = source.and_then(|s| config.catalog.resource(&s.resource));
        let raw = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&e.raw).ok();
        let (Some(source), Some(resource), Some(raw)) = (source, resource, raw) else {
            result.not_retryable += 1;
            continue;
        };
        let mapping = Mapping::new(&config.agency, &source.name, &source.mapping, resource);
        // A value by column name, or by data element (entries the hub
        // rejected keep their items by element).
        let mut placeholder = false;
        let fields: Vec<Field<'_>> = mapping
            .columns()
            .zip(mapping.column_items())
            .map(|(column, item)| {
                let v = raw.get(column).or_else(|| item.and_then(|i| raw.get(&i.id)))?;
                match v {
                    serde_json::Value::String(s) => Some(Ok(Cow::Owned(s.clone()))),
                    other => {
                        placeholder = true;
                        Some(Err(Issue {
                            code: "NOT_RETRYABLE",
                            message: format!("{other}"),
                        }))
                    }
                }
            })
            .collect();
        if placeholder {
            result.not_retryable += 1;
            continue;
        }
        match mapping.normalize(
            &fields,
            Origin {
                object: &e.object,
                line: e.line,
            },
            now,
        ) {
            Outcome::Record { bytes, .. } => {
                fixed.push((h.id, bytes));
                result.queued += 1;
            }
            Outcome::Quarantine(q) => {
                still.push((h.id, q.reasons));
                result.still_failing += 1;
            }
        }
    }
    store.retry(fixed, still)?;
    tracing::info!(
        queued = result.queued,
        still_failing = result.still_failing,
        "quarantine retried"
    );
    Ok(result)
}

/// Discards the matching entries for good, with a reason and who.
pub fn discard(
    store: &mut dyn QuarantineStore,
    filter: &QuarantineFilter,
    reason: &str,
    who: &str,
) -> Result<usize, Error> {
    if reason.trim().is_empty() {
        return Err(Error::NoReason);
    }
    let held = pick(store.held()?, filter)?;
    if held.is_empty() {
        return Err(Error::NothingMatches);
    }
    store.discard(held.clone(), reason, who)?;
    for h in &held {
        tracing::warn!(id = h.id, source = %h.entry.source, object = %h.entry.object, line = h.entry.line, %reason, %who, "quarantine entry discarded");
    }
    Ok(held.len())
}

/// What the operator reads after a discard.
pub fn discard_summary(n: usize, reason: &str) -> String {
    format!("discarded {} (reason: {reason})", count(n, "entry", "entries"))
}
