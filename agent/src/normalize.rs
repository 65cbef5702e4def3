//! Normalization: one captured row → an encoded [`Record`] for the outbox, or
//! a [`Quarantined`] entry that says why not.
//!
//! Pure: no I/O, and it cannot fail the pipeline. Every row comes out as
//! exactly one of the two, so the counts always add up to the input. The
//! value rules are those of the item's data element ([`rules::element`],
//! bound in [`rules::catalog`]); warnings travel with the record.

use std::borrow::Cow;

use prost::Message;
use proto::v1::{Operation, Record, SourcePosition};
use proto::view::{find_item, order_items};

use crate::config::MappingConfig;
use rules::catalog::{Item, Resource};
use rules::element::Issue;

mod encode;
#[cfg(test)]
mod tests;
mod transform;

pub use transform::Transform;

/// How one source's columns map onto one resource.
#[derive(Debug, Clone)]
pub struct Mapping {
    agency: String,
    source: String,
    resource: Resource,
    /// (column, index of the item in `resource.items`, transforms).
    columns: Vec<(String, usize, Vec<Transform>)>,
    op_column: Option<String>,
}

/// A row's value for one mapped column: `None` when absent, `Some(Err)`
/// when the reader could not give a text value (undecodable bytes, a number
/// where an identifier belongs).
pub type Field<'a> = Option<Result<std::borrow::Cow<'a, str>, Issue>>;

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub object: &'a str,
    pub line: u64,
}

/// A record kept for a person to fix: a row that could not be normalized,
/// or a record the hub rejected. The outbox stores it in its quarantine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quarantined {
    pub source: String,
    /// File (or table) name.
    pub object: String,
    /// Line in the file, 0 if none.
    pub line: u64,
    pub resource: String,
    /// One entry per failed rule, each `CODE: message`.
    pub reasons: Vec<String>,
    /// The raw input as a JSON object (column → value), or the raw line.
    pub raw: String,
}

impl Quarantined {
    /// The codes of the rules the entry broke, each once (`CHECK_DIGIT` of
    /// `CHECK_DIGIT: …`); a reason without a code (a row that could not be
    /// split into fields) has none. The reasons are made here, so their
    /// format is read here.
    pub fn rules(&self) -> std::collections::BTreeSet<&str> {
        self.reasons.iter().filter_map(|r| rule_code(r)).collect()
    }
}

/// The rule code a reason starts with (`CHECK_DIGIT` of `CHECK_DIGIT: …`).
pub(crate) fn rule_code(reason: &str) -> Option<&str> {
    let (code, _) = reason.split_once(':')?;
    let is_code = !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    is_code.then_some(code)
}

/// The result of normalizing one row.
#[derive(Debug)]
pub enum Outcome {
    /// An encoded record and how many warnings travel with it.
    Record {
        bytes: Vec<u8>,
        warnings: usize,
    },
    Quarantine(Quarantined),
}

/// One row as a reader gives it, before normalization: what every source
/// hands to [`Mapping::apply`].
#[derive(Debug)]
pub enum Row<'a> {
    /// The row's values, aligned with [`Mapping::columns`]; `op` when the
    /// source knows the operation (a database change).
    Values {
        line: u64,
        fields: Vec<Field<'a>>,
        op: Option<Operation>,
    },
    /// A row that could not be split into values (a ragged CSV row, a line
    /// that is not JSON, a row over the size limits): what is kept of it,
    /// and why.
    Unreadable { line: u64, raw: String, reason: String },
}

impl Mapping {
    /// Builds the mapping of source `source`. Config validation has already
    /// checked that the resource and every element exist.
    pub fn new(agency: &str, source: &str, config: &MappingConfig, resource: &Resource) -> Mapping {
        let columns = config
            .columns
            .iter()
            .filter_map(|(col, element)| {
                let idx = resource.items().iter().position(|i| i.id == *element)?;
                Some((
                    col.clone(),
                    idx,
                    config.transforms.get(col).cloned().unwrap_or_default(),
                ))
            })
            .collect();
        Mapping {
            agency: agency.to_owned(),
            source: source.to_owned(),
            resource: resource.clone(),
            columns,
            op_column: config.op_column.clone(),
        }
    }

    /// The columns a row is read by, in the order `normalize` expects its
    /// fields: the mapped columns, then the operation column if any.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .map(|(c, _, _)| c.as_str())
            .chain(self.op_column.as_deref())
    }

    /// The item of each of [`Mapping::columns`] (`None` for the operation
    /// column).
    pub fn column_items(&self) -> impl Iterator<Item = Option<&rules::catalog::Item>> {
        self.columns
            .iter()
            .map(|(_, idx, _)| self.resource.items().get(*idx))
            .chain(self.op_column.as_ref().map(|_| None))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The one place a source's row becomes a record or a quarantine entry.
    pub fn apply(&self, row: Row<'_>, object: &str, captured_at_us: i64) -> Outcome {
        match row {
            Row::Values { line, fields, op } => self.normalize_as(&fields, Origin { object, line }, captured_at_us, op),
            Row::Unreadable { line, raw, reason } => {
                Outcome::Quarantine(self.unreadable(Origin { object, line }, raw, reason))
            }
        }
    }

    /// Normalizes one row. `fields` is aligned with [`Mapping::columns`]:
    /// `None` when the row lacks the column, `Some(Err)` when its bytes could
    /// not be decoded.
    pub fn normalize(&self, fields: &[Field<'_>], origin: Origin<'_>, captured_at_us: i64) -> Outcome {
        self.normalize_as(fields, origin, captured_at_us, None)
    }

    /// The mapped columns that hold key items.
    pub fn key_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|(_, idx, _)| self.resource.items()[*idx].key)
            .map(|(c, _, _)| c.as_str())
    }

    /// Like [`Mapping::normalize`], with the operation given by the source
    /// (a database change) rather than read from a column. A delete is
    /// judged by its key alone.
    pub fn normalize_as(
        &self,
        fields: &[Field<'_>],
        origin: Origin<'_>,
        captured_at_us: i64,
        given: Option<Operation>,
    ) -> Outcome {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        // (item id, value): ordered by id once all are in. A value that is
        // canonical as it came is borrowed, not copied.
        let mut items: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(self.columns.len());
        // Items whose value was present but bad: not reported again as missing.
        let mut bad: Vec<&str> = Vec::new();
        for ((column, idx, transforms), field) in self.columns.iter().zip(fields) {
            let item = &self.resource.items()[*idx];
            if given == Some(Operation::Delete) && !item.key {
                continue;
            }
            match field {
                None => {}
                Some(Err(e)) => {
                    bad.push(&item.id);
                    problems.push(format!("{e} (列 {column} → {})", item.id));
                }
                Some(Ok(raw)) => {
                    let normalized = if transforms.is_empty() {
                        canonical(item, csv_guard(trim(raw)))
                    } else {
                        let transformed = transforms.iter().fold(trim(raw).to_owned(), |v, t| t.apply(&v));
                        canonical(item, csv_guard(trim(&transformed)))
                            .map(|n| n.map(|(value, found)| (Cow::Owned(value.into_owned()), found)))
                    };
                    let Some(normalized) = normalized else {
                        continue;
                    };
                    match normalized {
                        Ok((value, found)) => {
                            warnings.extend(found.iter().map(|w| format!("{w} (列 {column} → {})", item.id)));
                            items.push((&item.id, value));
                        }
                        Err(e) => {
                            bad.push(&item.id);
                            problems.push(format!("{e} (列 {column} → {})", item.id));
                        }
                    }
                }
            }
        }
        // By id, as the record's map; of two columns of one item the later
        // wins.
        order_items(&mut items);
        // A source that knows the operation (a database change) overrides the column.
        let from_column = if given.is_some() { None } else { self.op_column.as_ref() };
        let op = match from_column.map(|_| fields.get(self.columns.len())) {
            None | Some(None | Some(None)) => given.unwrap_or(Operation::Upsert),
            Some(Some(Some(Ok(v)))) => match parse_op(trim(v)) {
                Some(op) => op,
                None => {
                    problems.push(format!(
                        "INVALID_OPERATION: 操作 {v:?} 无法识别 (expected I/U/D, insert/update/delete, 新增/修改/删除)"
                    ));
                    Operation::Upsert
                }
            },
            Some(Some(Some(Err(e)))) => {
                problems.push(format!("{e} (操作列)"));
                Operation::Upsert
            }
        };
        for item in self.resource.key_items() {
            if find_item(&items, &item.id).is_none() && !bad.contains(&item.id.as_str()) {
                problems.push(format!("MISSING_KEY: 主键项 {} ({}) 为空", item.name, item.id));
            }
        }
        if op == Operation::Upsert {
            for item in self.resource.items().iter().filter(|i| i.required && !i.key) {
                if find_item(&items, &item.id).is_none() && !bad.contains(&item.id.as_str()) {
                    problems.push(format!("MISSING_REQUIRED: 必填项 {} ({}) 为空", item.name, item.id));
                }
            }
        } else {
            // A delete carries only its key.
            items.retain(|(id, _)| self.resource.key_items().any(|k| k.id == *id));
        }
        if problems.is_empty() {
            let key: Vec<&str> = self
                .resource
                .key_items()
                .filter_map(|k| find_item(&items, &k.id).map(|i| items[i].1.as_ref()))
                .collect();
            let fields = encode::Fields {
                resource: &self.resource.code,
                key: &key,
                op: op as i32,
                items: &items,
                source: &self.source,
                object: origin.object,
                line: origin.line,
                captured_at_us,
                warnings: &warnings,
            };
            let bytes = encode::record(&fields);
            if cfg!(debug_assertions) {
                let record = Record {
                    resource: self.resource.code.clone(),
                    key: key.iter().map(|k| (*k).to_owned()).collect(),
                    op: op as i32,
                    items: items.iter().map(|(k, v)| ((*k).to_owned(), v.to_string())).collect(),
                    source: Some(SourcePosition {
                        source: self.source.clone(),
                        object: origin.object.to_owned(),
                        line: origin.line,
                        change_id: String::new(),
                    }),
                    captured_at_us,
                    warnings: warnings.clone(),
                };
                // The bytes are prost's for the same record, and the rules
                // above are those of `Resource::check`, which the hub
                // applies to every record: debug builds prove both.
                assert_eq!(bytes, record.encode_to_vec(), "the record's bytes differ from prost's");
                assert_eq!(
                    self.resource.check(&self.agency, &proto::view::RecordView::of(&record)),
                    Ok(())
                );
            }
            return Outcome::Record {
                bytes,
                warnings: warnings.len(),
            };
        }
        Outcome::Quarantine(self.quarantine(fields, origin, problems))
    }

    /// A quarantine entry for a row that could not even be split into
    /// fields (a ragged CSV row, a line that is not JSON).
    pub fn unreadable(&self, origin: Origin<'_>, raw: String, reason: String) -> Quarantined {
        Quarantined {
            source: self.source.clone(),
            object: origin.object.to_owned(),
            line: origin.line,
            resource: self.resource.code.clone(),
            reasons: vec![reason],
            raw,
        }
    }

    /// A quarantine entry for a row with problems. Its raw values are a JSON
    /// object of column → text; a value that had no text (undecodable bytes,
    /// a number where an identifier belongs) is `{"error": CODE}`, so that a
    /// retry can never take a placeholder for data.
    fn quarantine(&self, fields: &[Field<'_>], origin: Origin<'_>, reasons: Vec<String>) -> Quarantined {
        let raw: serde_json::Map<String, serde_json::Value> = self
            .columns()
            .zip(fields)
            .filter_map(|(c, f)| {
                let v = match f.as_ref()? {
                    Ok(v) => serde_json::Value::String(v.to_string()),
                    Err(e) => serde_json::json!({ "error": e.code }),
                };
                Some((c.to_owned(), v))
            })
            .collect();
        Quarantined {
            source: self.source.clone(),
            object: origin.object.to_owned(),
            line: origin.line,
            resource: self.resource.code.clone(),
            reasons,
            raw: serde_json::Value::Object(raw).to_string(),
        }
    }
}

/// True for a value that a spreadsheet would run as a formula.
pub fn needs_csv_guard(v: &str) -> bool {
    v.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// A value's canonical form and the warnings found making it, or why it
/// has none.
type Canonical<'v> = Result<(Cow<'v, str>, Vec<Issue>), Issue>;

/// A value's canonical form for `item`: the value itself, not copied, when
/// it is already canonical; `None` for an empty value (absent).
fn canonical<'v>(item: &Item, v: &'v str) -> Option<Canonical<'v>> {
    if v.is_empty() {
        None
    } else if item.is_canonical(v) {
        Some(Ok((Cow::Borrowed(v), Vec::new())))
    } else {
        Some(item.normalize(v).map(|n| (Cow::Owned(n.value), n.warnings)))
    }
}

/// Removes the `'` that `qianzhi quarantine export` puts before a value a
/// spreadsheet would run as a formula, so that an exported entry dropped
/// into the folder again normalizes to the value it had.
pub fn csv_guard(v: &str) -> &str {
    match v.strip_prefix('\'') {
        Some(rest) if needs_csv_guard(rest) => rest,
        _ => v,
    }
}

/// Trims all Unicode white space, plus ZERO WIDTH SPACE and a stray BOM.
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{200B}' || c == '\u{FEFF}')
}

fn parse_op(v: &str) -> Option<Operation> {
    match v.to_ascii_lowercase().as_str() {
        "" | "i" | "u" | "insert" | "update" | "upsert" | "新增" | "修改" => Some(Operation::Upsert),
        "d" | "delete" | "删除" => Some(Operation::Delete),
        _ => None,
    }
}
