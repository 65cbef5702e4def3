//! What the three table sinks share: the table's layout (columns in order,
//! names checked), the plan of one `apply` (changes collapsed per key), and
//! the column checks of a table that the sink did not create.

use std::collections::HashMap;

use super::{Delivered, Op, SinkError, SinkSpec, TableSpec, shown};

/// The provenance columns, after the item columns.
pub const PROVIDER: &str = "qianzhi_provider";
pub const AGREEMENT: &str = "qianzhi_agreement";
pub const SEQ: &str = "qianzhi_seq";
pub const CAPTURED_AT: &str = "qianzhi_captured_at";
/// The position table.
pub const APPLIED: &str = "qianzhi_applied";

/// The sink table's columns, resolved once at open.
#[derive(Debug, Clone)]
pub struct Layout {
    pub subscription: String,
    /// The table as configured (`schema.table` or `table`), unquoted.
    pub table: String,
    /// The item columns, in `SinkSpec::items` order.
    pub columns: Vec<String>,
    /// Item id → index into `columns`.
    index: HashMap<String, usize>,
    /// For each key item, in key order: its index into `columns`.
    pub key: Vec<usize>,
}

impl Layout {
    /// Deletes every row received (reset, purge): rows with a hub sequence;
    /// the agency's own rows (none) stay.
    pub fn delete_received(&self, kind: crate::config::DbKind) -> String {
        use crate::source::db::sql::quote;
        format!(
            "DELETE FROM {} WHERE {} IS NOT NULL",
            quote(kind, &self.table),
            quote(kind, SEQ)
        )
    }

    pub fn new(spec: &SinkSpec, t: &TableSpec) -> Result<Layout, SinkError> {
        let fail = |what: String| SinkError::new(&spec.subscription, "sink", what);
        check_name(&t.table).map_err(|why| fail(format!("table name {} {why}", shown(&t.table))))?;
        let mut columns = Vec::with_capacity(spec.items.len());
        let mut index = HashMap::new();
        for item in &spec.items {
            let Some((_, column)) = t.columns.iter().find(|(i, _)| i == item) else {
                return Err(fail(format!("item {} has no column", shown(item))));
            };
            check_name(column).map_err(|why| fail(format!("column name {} {why}", shown(column))))?;
            if column.contains('.') {
                return Err(fail(format!("column name {} contains a dot", shown(column))));
            }
            if [PROVIDER, AGREEMENT, SEQ, CAPTURED_AT].contains(&column.to_ascii_lowercase().as_str()) {
                return Err(fail(format!(
                    "column {} is a provenance column: no item can use it",
                    shown(column)
                )));
            }
            if columns.iter().any(|c: &String| c.eq_ignore_ascii_case(column)) {
                return Err(fail(format!("two items use column {}", shown(column))));
            }
            if index.insert(item.clone(), columns.len()).is_some() {
                return Err(fail(format!("item {} is listed twice", shown(item))));
            }
            columns.push(column.clone());
        }
        let key = spec
            .key
            .iter()
            .map(|k| {
                index
                    .get(k)
                    .copied()
                    .ok_or_else(|| fail(format!("key item {} is not among the items", shown(k))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if key.is_empty() {
            return Err(fail("the resource has no key item".into()));
        }
        Ok(Layout {
            subscription: spec.subscription.clone(),
            table: t.table.clone(),
            columns,
            index,
            key,
        })
    }

    /// The key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &str> {
        self.key.iter().map(|&i| self.columns[i].as_str())
    }

    /// Every column of an inserted row: the items', then the provenance.
    pub fn all_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .map(String::as_str)
            .chain([PROVIDER, AGREEMENT, SEQ, CAPTURED_AT])
    }

    /// The schema part of `schema.table`, if any.
    pub fn schema(&self) -> Option<&str> {
        self.table.rsplit_once('.').map(|(s, _)| s)
    }

    /// The table's own name, without its schema.
    pub fn bare_table(&self) -> &str {
        self.table.rsplit_once('.').map_or(self.table.as_str(), |(_, t)| t)
    }

    /// Checks the columns a table has against the layout. `have`: (name,
    /// declared type); `text` and `int` say whether a type stores text or a
    /// 64-bit integer; the rules are named in the messages.
    pub fn check_columns(
        &self,
        place: &str,
        have: &[(String, String)],
        text: impl Fn(&str) -> bool,
        text_rule: &str,
        int: impl Fn(&str) -> bool,
        int_rule: &str,
    ) -> Result<(), SinkError> {
        let fail = |what: String| SinkError::new(&self.subscription, place, what);
        if have.is_empty() {
            return Err(fail(format!(
                "table {} does not exist (or is not visible to this user); with create = true the agent makes it",
                shown(&self.table)
            )));
        }
        let find = |c: &str| have.iter().find(|(n, _)| n.eq_ignore_ascii_case(c)).map(|(_, t)| t);
        for column in self.all_columns() {
            let Some(ty) = find(column) else {
                return Err(fail(format!(
                    "table {} has no column {}: it needs one per delivered item and the provenance columns \
                     {PROVIDER}, {AGREEMENT}, {SEQ}, {CAPTURED_AT}",
                    shown(&self.table),
                    shown(column)
                )));
            };
            let integer = column == SEQ || column == CAPTURED_AT;
            let (ok, rule) = if integer {
                (int(ty), int_rule)
            } else {
                (text(ty), text_rule)
            };
            if !ok {
                let what = if integer {
                    "a sequence or a time in µs"
                } else {
                    "canonical text"
                };
                return Err(fail(format!(
                    "column {} of table {} is {}: it receives {what}, so it needs {rule}",
                    shown(column),
                    shown(&self.table),
                    shown(ty)
                )));
            }
        }
        Ok(())
    }
}

/// Refuses names that the quoting cannot carry (config should have already).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err("is empty");
    }
    if name
        .chars()
        .any(|c| matches!(c, '"' | '`' | '\'' | '\\') || c.is_control())
    {
        return Err("contains a quote, a backslash or a control character");
    }
    Ok(())
}

/// One row to insert.
#[derive(Debug)]
pub struct Row {
    /// In `Layout::columns` order; the keys from `Delivered::key`.
    pub values: Vec<Option<String>>,
    pub provider: String,
    pub agreement: String,
    pub seq: i64,
    pub captured_at_us: i64,
}

/// What one `apply` does, in this order: delete the received rows (reset),
/// delete every touched key, insert the rows, store `last` as the position.
#[derive(Debug)]
pub struct Plan {
    pub reset: bool,
    /// Every key that a change touched, once, in first-touch order.
    pub keys: Vec<Vec<String>>,
    /// The last upsert of each key whose last change is an upsert.
    pub rows: Vec<Row>,
    /// The new position (the old one when nothing is applied).
    pub last: u64,
}

impl Plan {
    /// Skips changes at or below `position`; refuses changes out of order,
    /// with the wrong number of key values, or with unknown items.
    pub fn new(
        layout: &Layout,
        place: &str,
        changes: &[Delivered],
        reset: bool,
        position: u64,
    ) -> Result<Plan, SinkError> {
        let fail = |what: String| SinkError::new(&layout.subscription, place, what);
        // A reset starts the positions again (a snapshot after the hub
        // compacted past this sink's position may hold lower sequences):
        // nothing is skipped. Retrying a reset after a lost commit reply
        // deletes and writes the same rows again.
        let position = if reset { 0 } else { position };
        let mut last = position;
        let mut latest: HashMap<&[String], usize> = HashMap::with_capacity(changes.len());
        let mut keys = Vec::new();
        let fresh: Vec<&Delivered> = changes.iter().filter(|c| c.seq > position).collect();
        for (i, c) in fresh.iter().enumerate() {
            if c.seq <= last {
                return Err(fail(format!(
                    "change {} comes after change {last}: changes must arrive in increasing sequence",
                    c.seq
                )));
            }
            if i64::try_from(c.seq).is_err() {
                return Err(fail(format!("sequence {} is above the BIGINT range", c.seq)));
            }
            last = c.seq;
            if c.key.len() != layout.key.len() {
                return Err(fail(format!(
                    "change {} has {} key values, the resource's key has {} items",
                    c.seq,
                    c.key.len(),
                    layout.key.len()
                )));
            }
            if let Some(unknown) = c.items.keys().find(|k| !layout.index.contains_key(*k)) {
                return Err(fail(format!(
                    "change {} carries item {}, which the subscription does not list: the catalog changed?",
                    c.seq,
                    shown(unknown)
                )));
            }
            if latest.insert(&c.key, i).is_none() {
                keys.push(c.key.clone());
            }
        }
        let mut finals: Vec<usize> = latest.into_values().collect();
        finals.sort_unstable();
        let rows = finals
            .into_iter()
            .map(|i| fresh[i])
            .filter(|c| c.op == Op::Upsert)
            .map(|c| {
                let mut values: Vec<Option<String>> = vec![None; layout.columns.len()];
                for (item, v) in &c.items {
                    values[layout.index[item]] = Some(v.clone());
                }
                for (k, &col) in c.key.iter().zip(&layout.key) {
                    values[col] = Some(k.clone());
                }
                Row {
                    values,
                    provider: c.provider.clone(),
                    agreement: c.agreement.clone(),
                    // Checked above: within the BIGINT range.
                    seq: c.seq as i64,
                    captured_at_us: c.captured_at_us,
                }
            })
            .collect();
        Ok(Plan {
            reset,
            keys,
            rows,
            last,
        })
    }

    /// Nothing to write: no reset and no change above the position.
    pub fn is_empty(&self) -> bool {
        !self.reset && self.keys.is_empty()
    }
}

/// Says a stored position differs from the one the sink holds.
pub fn moved(layout: &Layout, place: &str, stored: u64, held: u64) -> SinkError {
    SinkError::new(
        &layout.subscription,
        place,
        format!(
            "the position stored in {APPLIED} is {stored}, this sink holds {held}: another agent or process \
             applies this subscription into the same database (one writer per subscription)"
        ),
    )
}
