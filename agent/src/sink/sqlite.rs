//! The SQLite table sink: one connection (WAL, synchronous=FULL, a busy
//! timeout for the business system's locks), its calls on the blocking pool,
//! cached per-row statements inside one transaction per apply.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};

use super::table::{self, APPLIED, CAPTURED_AT, Layout, Plan, SEQ};
use super::{Delivered, SinkError, TableSpec, shown};
use crate::config::DbKind;
use crate::source::db::sql::{literal, quote};
use crate::source::format::bounded;
use crate::sync::MutexExt;

/// How long a statement waits for a lock held by the business system.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    layout: Arc<Layout>,
    place: String,
    position: u64,
}

/// A rusqlite error as a sink error.
fn err<'a>(layout: &'a Layout, place: &'a str, what: &'a str) -> impl Fn(rusqlite::Error) -> SinkError + 'a {
    move |e| {
        let text = e.to_string();
        let hint = if text.contains("readonly") || text.contains("permission") {
            " (the service user needs write access to the database file and its folder)"
        } else {
            ""
        };
        SinkError::new(
            &layout.subscription,
            place,
            format!("{what}: {}{hint}", bounded(&text, 300)),
        )
    }
}

/// SQLite's type affinity rules (section 3.1 of "Datatypes In SQLite").
fn affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.contains("BLOB") || t.is_empty() {
        "BLOB"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

impl Sqlite {
    pub async fn open(layout: Layout, t: &TableSpec, change: bool) -> Result<Sqlite, SinkError> {
        let place = format!("SQLite {}", t.url);
        let layout = Arc::new(layout);
        let path = t.url.clone();
        let create = t.create;
        let (l, p) = (layout.clone(), place.clone());
        let (conn, position) = tokio::task::spawn_blocking(move || Self::open_blocking(&l, &p, &path, create, change))
            .await
            .map_err(|e| SinkError::new(&layout.subscription, &place, format!("task failed: {e}")))??;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            layout,
            place,
            position,
        })
    }

    fn open_blocking(
        layout: &Layout,
        place: &str,
        path: &str,
        create: bool,
        change: bool,
    ) -> Result<(Connection, u64), SinkError> {
        let fail = |what: String| SinkError::new(&layout.subscription, place, what);
        let exists = Path::new(path).is_file();
        if !exists {
            if !create {
                return Err(fail("the database file does not exist (create = true makes it)".into()));
            }
            if !change {
                // `qianzhi check`: the file and the table would be made.
                return Ok((Connection::open_in_memory().map_err(err(layout, place, "open"))?, 0));
            }
        }
        let flags = if change {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = Connection::open_with_flags(path, flags).map_err(err(layout, place, "cannot open the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err(layout, place, "busy_timeout"))?;
        crate::sqlite::plan_once(&conn).map_err(err(layout, place, "query planner settings"))?;
        if change {
            conn.pragma_update(None, "journal_mode", "wal")
                .map_err(err(layout, place, "journal_mode=WAL"))?;
            conn.pragma_update(None, "synchronous", "full")
                .map_err(err(layout, place, "synchronous=FULL"))?;
        }
        let have = columns(&conn, &layout.table).map_err(err(layout, place, "read the table's columns"))?;
        if have.is_empty() && create {
            if !change {
                return Ok((conn, 0));
            }
            conn.execute_batch(&create_sql(layout))
                .map_err(err(layout, place, "create the table"))?;
        } else {
            layout.check_columns(
                place,
                &have,
                |ty| affinity(ty) == "TEXT",
                "TEXT affinity (TEXT, VARCHAR, CHAR, CLOB)",
                |ty| affinity(ty) == "INTEGER",
                "INTEGER affinity (INTEGER, BIGINT)",
            )?;
        }
        if change {
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {APPLIED} (subscription TEXT PRIMARY KEY, seq INTEGER NOT NULL, \
                 updated_us INTEGER NOT NULL)"
            ))
            .map_err(err(layout, place, &format!("create {APPLIED}")))?;
        }
        let position = stored(&conn, &layout.subscription).map_err(err(layout, place, "read the position"))?;
        Ok((conn, position))
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub async fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, SinkError> {
        let plan = Plan::new(&self.layout, &self.place, changes, reset, self.position)?;
        if plan.is_empty() {
            return Ok(self.position);
        }
        let held = self.position;
        let last = plan.last;
        self.call(move |c, layout, place| {
            let tx = c.transaction().map_err(err(layout, place, "begin"))?;
            let stored = stored(&tx, &layout.subscription).map_err(err(layout, place, "read the position"))?;
            if stored != held {
                return Err(table::moved(layout, place, stored, held));
            }
            write(&tx, layout, place, &plan)?;
            tx.execute(
                &format!(
                    "INSERT INTO {APPLIED} (subscription, seq, updated_us) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (subscription) DO UPDATE SET seq = excluded.seq, updated_us = excluded.updated_us"
                ),
                rusqlite::params![layout.subscription, plan.last as i64, crate::clock::now_us()],
            )
            .map_err(err(layout, place, &format!("store the position in {APPLIED}")))?;
            tx.commit().map_err(err(layout, place, "commit"))
        })
        .await?;
        self.position = last;
        Ok(last)
    }

    pub async fn purge(&mut self) -> Result<u64, SinkError> {
        let deleted = self
            .call(|c, layout, place| {
                let tx = c.transaction().map_err(err(layout, place, "begin"))?;
                let n = tx.execute(&layout.delete_received(DbKind::Sqlite), []).map_err(err(
                    layout,
                    place,
                    "delete the received rows",
                ))?;
                tx.execute(
                    &format!("DELETE FROM {APPLIED} WHERE subscription = ?1"),
                    [&layout.subscription],
                )
                .map_err(err(layout, place, "delete the position"))?;
                tx.commit().map_err(err(layout, place, "commit"))?;
                Ok(n as u64)
            })
            .await?;
        self.position = 0;
        Ok(deleted)
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Layout, &str) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let (conn, layout, place) = (self.conn.clone(), self.layout.clone(), self.place.clone());
        tokio::task::spawn_blocking(move || f(&mut conn.lock_unpoisoned(), &layout, &place))
            .await
            .map_err(|e| SinkError::new(&self.layout.subscription, &self.place, format!("task failed: {e}")))?
    }
}

/// The rows and the deletes of a plan, inside the caller's transaction.
fn write(tx: &rusqlite::Transaction<'_>, layout: &Layout, place: &str, plan: &Plan) -> Result<(), SinkError> {
    let table = quote(DbKind::Sqlite, &layout.table);
    if plan.reset {
        tx.execute(&layout.delete_received(DbKind::Sqlite), []).map_err(err(
            layout,
            place,
            "delete the received rows (reset)",
        ))?;
    }
    let by_key: Vec<String> = layout
        .key_columns()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote(DbKind::Sqlite, c), i + 1))
        .collect();
    let mut delete = tx
        .prepare_cached(&format!("DELETE FROM {table} WHERE {}", by_key.join(" AND ")))
        .map_err(err(layout, place, "prepare the delete"))?;
    for key in &plan.keys {
        delete
            .execute(params_from_iter(key))
            .map_err(|e| err(layout, place, &format!("delete key {}", shown_key(key)))(e))?;
    }
    let columns: Vec<String> = layout.all_columns().map(|c| quote(DbKind::Sqlite, c)).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let mut insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            marks.join(", ")
        ))
        .map_err(err(layout, place, "prepare the insert"))?;
    for row in &plan.rows {
        let provenance: [&dyn rusqlite::ToSql; 4] = [&row.provider, &row.agreement, &row.seq, &row.captured_at_us];
        let values = row.values.iter().map(|v| v as &dyn rusqlite::ToSql).chain(provenance);
        insert.execute(params_from_iter(values)).map_err(|e| {
            err(
                layout,
                place,
                &format!("insert change {} (key {})", row.seq, shown_row_key(layout, row)),
            )(e)
        })?;
    }
    Ok(())
}

/// A key for a message: its values quoted and cut.
pub(super) fn shown_key(key: &[String]) -> String {
    let values: Vec<String> = key.iter().map(|k| format!("{:?}", shown(k))).collect();
    values.join(", ")
}

fn shown_row_key(layout: &Layout, row: &table::Row) -> String {
    let key: Vec<String> = layout
        .key
        .iter()
        .map(|&i| row.values[i].clone().unwrap_or_default())
        .collect();
    shown_key(&key)
}

/// Deletes the rows received (not the agency's own, whose seq is NULL).
fn create_sql(layout: &Layout) -> String {
    let mut defs: Vec<String> = layout
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let not_null = if layout.key.contains(&i) { " NOT NULL" } else { "" };
            format!("{} TEXT{not_null}", quote(DbKind::Sqlite, c))
        })
        .collect();
    defs.push(format!("{} TEXT NOT NULL", table::PROVIDER));
    defs.push(format!("{} TEXT NOT NULL", table::AGREEMENT));
    defs.push(format!("{SEQ} INTEGER NOT NULL"));
    defs.push(format!("{CAPTURED_AT} INTEGER NOT NULL"));
    let key: Vec<String> = layout.key_columns().map(|c| quote(DbKind::Sqlite, c)).collect();
    defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(DbKind::Sqlite, &layout.table),
        defs.join(", ")
    )
}

/// (name, declared type) of the table's columns; empty if it does not exist.
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let (schema, name) = match table.rsplit_once('.') {
        Some((s, t)) => (s, t),
        None => ("main", table),
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT name, type FROM pragma_table_info({}, {})",
        literal(name),
        literal(schema)
    ))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
}

/// The stored position (0: none, or no position table).
fn stored(conn: &Connection, subscription: &str) -> rusqlite::Result<u64> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [APPLIED],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(0);
    }
    let seq: Option<i64> = conn
        .query_row(
            &format!("SELECT seq FROM {APPLIED} WHERE subscription = ?1"),
            [subscription],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.map_or(0, |s| s.max(0) as u64))
}
