//! `qianzhi quarantine`: what a person does with the records the agent could
//! not send: list and look at them, export them as a CSV that opens in Excel
//! and can be dropped into the folder again once fixed, retry them after the
//! catalog or the mapping was fixed, or discard them with a reason.
//!
//! Reading works while the agent runs. `retry` and `discard` change the
//! outbox and take the data directory's lock, so the agent must be stopped
//! (the running agent holds the lock). Discarded entries are kept in the
//! outbox's `discarded` table with the reason and who discarded them.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::clock;
use crate::config::{Config, Encoding};
use crate::normalize::{Field, Mapping, Origin, Outcome};
use crate::outbox::{self, Held, Offline, QuarantineFilter};
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
}

fn time(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Entries of the running or stopped agent (read-only).
pub fn entries(config: &Config, filter: &QuarantineFilter) -> Result<Vec<Held>, Error> {
    let path = config.data_dir.join("outbox.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            outbox::Error::Sqlite {
                path: path.clone(),
                source,
            }
        })?;
    outbox::Reader::new(&conn)
        .held(filter)
        .map_err(|source| Error::Outbox(outbox::Error::Sqlite { path, source }))
}

/// One line per entry.
pub fn render_list(entries: &[Held]) -> String {
    let mut o = String::new();
    for h in entries {
        let e = &h.entry;
        let _ = writeln!(
            o,
            "#{:<6} {}  {:<10} {}:{}  {}  {}",
            h.id,
            time(h.at_us),
            e.source,
            e.object,
            e.line,
            e.resource,
            e.reasons.first().map(String::as_str).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "{} entries", entries.len());
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
    let columns: Vec<String> = source
        .map(|s| s.mapping.columns.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["隔离编号", "来源", "文件", "行号", "原因"];
    header.extend(columns.iter().map(String::as_str));
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
        for c in &columns {
            row.push(
                raw.as_ref()
                    .and_then(|m| m.get(c))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            );
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

/// Normalizes the matching entries again with the current config and
/// catalog. Needs the agent stopped.
pub fn retry(config: &Config, filter: &QuarantineFilter) -> Result<Retried, Error> {
    let mut offline = Offline::open(&config.data_dir)?;
    let held = offline.quarantine(filter)?;
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
    offline.retry(&fixed, &still)?;
    tracing::info!(
        queued = result.queued,
        still_failing = result.still_failing,
        "quarantine retried"
    );
    Ok(result)
}

/// Discards the matching entries for good, with a reason. Needs the agent
/// stopped.
pub fn discard(config: &Config, filter: &QuarantineFilter, reason: &str, who: &str) -> Result<usize, Error> {
    if reason.trim().is_empty() {
        return Err(Error::NoReason);
    }
    let mut offline = Offline::open(&config.data_dir)?;
    let held = offline.quarantine(filter)?;
    if held.is_empty() {
        return Err(Error::NothingMatches);
    }
    offline.discard(&held, reason, who)?;
    for h in &held {
        tracing::warn!(id = h.id, source = %h.entry.source, object = %h.entry.object, line = h.entry.line, %reason, %who, "quarantine entry discarded");
    }
    Ok(held.len())
}
