//! The SQL a database source generates: identifiers quoted per dialect,
//! the change-log triggers and their row images, and the id ranges of the
//! change log to skip or delete. Only validated names reach it (config
//! refuses quotes and backslashes in table and column names).

use super::{DbKind, LOG_TABLE, Target};

/// Sorted ids → inclusive ranges of consecutive ids.
pub(super) fn ranges(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == id => *hi = id,
            Some((_, hi)) if *hi == id => {}
            _ => out.push((id, id)),
        }
    }
    out
}

/// ` AND NOT (…)` leaving out id ranges, or nothing.
pub(super) fn skip_sql(skip: &[(i64, i64)]) -> String {
    if skip.is_empty() {
        return String::new();
    }
    let terms: Vec<String> = skip
        .iter()
        .map(|(lo, hi)| format!("id BETWEEN {lo} AND {hi}"))
        .collect();
    format!(" AND NOT ({})", terms.join(" OR "))
}

/// `DELETE` statements for consumed ranges, a few hundred ranges each.
pub(super) fn forget_sql(ranges: &[(i64, i64)]) -> Vec<String> {
    ranges
        .chunks(256)
        .map(|part| {
            let terms: Vec<String> = part
                .iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        format!("id = {lo}")
                    } else {
                        format!("id BETWEEN {lo} AND {hi}")
                    }
                })
                .collect();
            format!("DELETE FROM {LOG_TABLE} WHERE {}", terms.join(" OR "))
        })
        .collect()
}

/// Quotes an identifier (validated by the config: no quote characters).
pub(crate) fn quote(kind: DbKind, name: &str) -> String {
    let q = if kind == DbKind::Mysql { '`' } else { '"' };
    name.split('.')
        .map(|p| format!("{q}{p}{q}"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The JSON object of a row's mapped columns, built by the database's
/// `object` function (`json_object`, `JSON_OBJECT`); `row` is `NEW.`,
/// `OLD.` or empty.
pub(super) fn image_sql(kind: DbKind, object: &str, target: &Target, row: &str) -> String {
    let pairs: Vec<String> = target
        .columns
        .iter()
        .map(|c| format!("{}, {row}{}", literal(c), quote(kind, c)))
        .collect();
    format!("{object}({})", pairs.join(", "))
}

/// One row trigger per event, for databases whose triggers list the
/// columns (SQLite, MySQL): (quoted trigger name, event, the INSERT into the
/// change log).
pub(super) fn row_triggers(kind: DbKind, object: &str, target: &Target) -> Vec<(String, &'static str, String)> {
    let base = target.trigger_base();
    let tbl = literal(target.log_name());
    let new = image_sql(kind, object, target, "NEW.");
    let old = image_sql(kind, object, target, "OLD.");
    [
        ("ins", "INSERT", format!("(tbl, op, new) VALUES ({tbl}, 'I', {new})")),
        (
            "upd",
            "UPDATE",
            format!("(tbl, op, old, new) VALUES ({tbl}, 'U', {old}, {new})"),
        ),
        ("del", "DELETE", format!("(tbl, op, old) VALUES ({tbl}, 'D', {old})")),
    ]
    .into_iter()
    .map(|(suffix, event, values)| {
        (
            quote(kind, &format!("{base}_{suffix}")),
            event,
            format!("INSERT INTO {LOG_TABLE} {values}"),
        )
    })
    .collect()
}

/// Install statements for row triggers: the change log's DDL, then each
/// trigger dropped and created again (so that a changed mapping replaces it).
pub(super) fn install_row_triggers(kind: DbKind, mut sql: Vec<String>, triggers: Vec<(String, String)>) -> Vec<String> {
    for (name, create) in triggers {
        sql.push(format!("DROP TRIGGER IF EXISTS {}", quote(kind, &name)));
        sql.push(create);
    }
    sql
}

/// Uninstall statements for row triggers: each dropped, then the table's
/// pending changes forgotten.
pub(super) fn uninstall_row_triggers(kind: DbKind, target: &Target, names: Vec<String>) -> Vec<String> {
    let mut sql: Vec<String> = names
        .iter()
        .map(|name| format!("DROP TRIGGER IF EXISTS {}", quote(kind, name)))
        .collect();
    sql.push(format!(
        "DELETE FROM {LOG_TABLE} WHERE tbl = {}",
        literal(target.log_name())
    ));
    sql
}

/// A string literal (validated names only: no quotes inside).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
