//! The MySQL/MariaDB table sink: one connection (`SET NAMES utf8mb4`, strict
//! mode so that a value too long for its column is an error, not silently
//! cut), reconnected after an error; one transaction per apply with
//! multi-row statements in chunks of 256, 128, … 1 rows, so that at most
//! nine shapes of each statement are prepared (and cached by the driver).

use std::collections::HashSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts, Value};

use super::table::{self, AGREEMENT, APPLIED, CAPTURED_AT, Layout, PROVIDER, Plan, SEQ};
use super::{Delivered, SinkError, TableSpec};
use crate::config::DbKind;
use crate::source::db::mysql::{connect, err as db_err};
use crate::source::db::sql::quote;

/// Rows per statement, at most (a power of two).
const CHUNK: usize = 256;
/// Our session: errors instead of truncated values.
const INIT: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'";
/// Engines that cannot roll back: a failed apply would leave half its rows.
const NOT_TRANSACTIONAL: [&str; 7] = ["MyISAM", "MEMORY", "Aria", "CSV", "ARCHIVE", "MRG_MyISAM", "BLACKHOLE"];

pub struct Mysql {
    /// None after an error: the next call reconnects (and takes the stored
    /// position, in case a commit's reply was lost).
    conn: Option<Conn>,
    url: String,
    password: Option<String>,
    layout: Layout,
    place: String,
    position: u64,
}

fn q(name: &str) -> String {
    quote(DbKind::Mysql, name)
}

impl Mysql {
    pub async fn open(layout: Layout, t: &TableSpec, change: bool) -> Result<Mysql, SinkError> {
        let mut m = Mysql {
            conn: None,
            url: t.url.clone(),
            password: t.password.clone(),
            layout,
            place: String::new(),
            position: 0,
        };
        let mut conn = m.connect().await?;
        let (layout, place) = (&m.layout, &m.place);
        let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e));
        let schema = layout.schema().map(str::to_owned);
        let rows: Vec<(String, String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                (schema.clone(), layout.bare_table()),
            )
            .await
            .map_err(fail("read the table's columns"))?;
        let shown = |ty: &str, cs: &Option<String>| match cs {
            Some(cs) => format!("{ty} character set {cs}"),
            None => ty.to_owned(),
        };
        let have: Vec<(String, String)> = rows.iter().map(|(n, _, ty, cs)| (n.clone(), shown(ty, cs))).collect();
        let texts: HashSet<String> = rows
            .iter()
            .filter(|(_, data, _, cs)| {
                ["char", "varchar", "tinytext", "text", "mediumtext", "longtext"].contains(&data.as_str())
                    && matches!(cs.as_deref(), Some("utf8mb4" | "gb18030"))
            })
            .map(|(_, _, ty, cs)| shown(ty, cs))
            .collect();
        if have.is_empty() && t.create {
            if change {
                conn.query_drop(create_sql(layout))
                    .await
                    .map_err(fail("create the table (needs CREATE on the database)"))?;
            }
        } else {
            layout.check_columns(
                place,
                &have,
                |ty| texts.contains(ty),
                "a text type (VARCHAR, CHAR, TEXT, LONGTEXT) in character set utf8mb4 or gb18030, which hold \
                 every character",
                |ty| ty.starts_with("bigint") || ty.starts_with("decimal"),
                "BIGINT",
            )?;
            let engine: Option<Option<String>> = conn
                .exec_first(
                    "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                     AND TABLE_NAME = ?",
                    (schema, layout.bare_table()),
                )
                .await
                .map_err(fail("read the table's engine"))?;
            if let Some(Some(engine)) = engine
                && NOT_TRANSACTIONAL.iter().any(|e| e.eq_ignore_ascii_case(&engine))
            {
                return Err(SinkError::new(
                    &layout.subscription,
                    place,
                    format!(
                        "table {} uses engine {engine}, which cannot roll back: received changes need a \
                         transactional engine (InnoDB)",
                        super::shown(&layout.table)
                    ),
                ));
            }
        }
        if change {
            conn.query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {APPLIED} (subscription VARCHAR(191) NOT NULL PRIMARY KEY, \
                 seq BIGINT NOT NULL, updated_us BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 \
                 COLLATE=utf8mb4_bin"
            ))
            .await
            .map_err(fail("create the position table"))?;
        }
        let exists: Option<i64> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                (APPLIED,),
            )
            .await
            .map_err(fail("look for the position table"))?;
        if exists.is_some() {
            m.position = stored(&mut conn, &m.layout, &m.place, false).await?;
        }
        if change {
            m.conn = Some(conn);
        } else {
            let _ = conn.disconnect().await;
        }
        Ok(m)
    }

    async fn connect(&mut self) -> Result<Conn, SinkError> {
        let who = format!("subscription {}", self.layout.subscription);
        let (conn, place) = connect(&self.url, self.password.as_deref(), &who, &[INIT])
            .await
            .map_err(|e| SinkError::from_db(&self.layout.subscription, e))?;
        self.place = place;
        Ok(conn)
    }

    /// The connection, made again after an error; then the stored position
    /// is the truth (a commit whose reply was lost has moved it).
    async fn conn(&mut self) -> Result<Conn, SinkError> {
        if let Some(c) = self.conn.take() {
            return Ok(c);
        }
        let mut c = self.connect().await?;
        self.position = stored(&mut c, &self.layout, &self.place, false).await?;
        Ok(c)
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub async fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, SinkError> {
        let mut conn = self.conn().await?;
        let plan = match Plan::new(&self.layout, &self.place, changes, reset, self.position) {
            Ok(p) => p,
            Err(e) => {
                self.conn = Some(conn);
                return Err(e);
            }
        };
        if plan.is_empty() {
            self.conn = Some(conn);
            return Ok(self.position);
        }
        // On an error the connection is dropped (its transaction with it).
        write(&mut conn, &self.layout, &self.place, &plan, self.position).await?;
        self.conn = Some(conn);
        self.position = plan.last;
        Ok(plan.last)
    }

    pub async fn purge(&mut self) -> Result<u64, SinkError> {
        let mut conn = self.conn().await?;
        let (layout, place) = (&self.layout, &self.place);
        let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e));
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(fail("begin"))?;
        tx.query_drop(layout.delete_received(DbKind::Mysql))
            .await
            .map_err(fail("delete the received rows"))?;
        let n = tx.affected_rows();
        tx.exec_drop(
            format!("DELETE FROM {APPLIED} WHERE subscription = ?"),
            (&layout.subscription,),
        )
        .await
        .map_err(fail("delete the position"))?;
        tx.commit().await.map_err(fail("commit"))?;
        self.conn = Some(conn);
        self.position = 0;
        Ok(n)
    }
}

async fn stored(conn: &mut impl Queryable, layout: &Layout, place: &str, lock: bool) -> Result<u64, SinkError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let seq: Option<i64> = conn
        .exec_first(
            format!("SELECT seq FROM {APPLIED} WHERE subscription = ?{lock}"),
            (&layout.subscription,),
        )
        .await
        .map_err(|e| SinkError::from_db(&layout.subscription, db_err(place, "read the position")(e)))?;
    Ok(seq.map_or(0, |s| s.max(0) as u64))
}

async fn write(conn: &mut Conn, layout: &Layout, place: &str, plan: &Plan, held: u64) -> Result<(), SinkError> {
    let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e));
    let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(fail("begin"))?;
    let stored = stored(&mut tx, layout, place, true).await?;
    if stored != held {
        return Err(table::moved(layout, place, stored, held));
    }
    if plan.reset {
        tx.query_drop(layout.delete_received(DbKind::Mysql))
            .await
            .map_err(fail("delete the received rows (reset)"))?;
    }
    let table = q(&layout.table);
    let keys: Vec<String> = layout.key_columns().map(q).collect();
    let mut rest = plan.keys.as_slice();
    while !rest.is_empty() {
        let (part, tail) = rest.split_at(chunk(rest.len()));
        rest = tail;
        let tuple = |n: usize| format!("({})", vec!["?"; n].join(", "));
        let sql = if keys.len() == 1 {
            format!("DELETE FROM {table} WHERE {} IN {}", keys[0], tuple(part.len()))
        } else {
            let tuples = vec![tuple(keys.len()); part.len()];
            format!(
                "DELETE FROM {table} WHERE ({}) IN ({})",
                keys.join(", "),
                tuples.join(", ")
            )
        };
        let params: Vec<Value> = part.iter().flatten().map(|k| Value::from(k.as_str())).collect();
        tx.exec_drop(sql, params)
            .await
            .map_err(fail("delete the changed keys"))?;
    }
    let columns: Vec<String> = layout.all_columns().map(q).collect();
    let mut rest = plan.rows.as_slice();
    while !rest.is_empty() {
        let (part, tail) = rest.split_at(chunk(rest.len()));
        rest = tail;
        let tuple = format!("({})", vec!["?"; columns.len()].join(", "));
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            columns.join(", "),
            vec![tuple; part.len()].join(", ")
        );
        let mut params: Vec<Value> = Vec::with_capacity(part.len() * columns.len());
        for row in part {
            params.extend(row.values.iter().map(|v| v.as_deref().map_or(Value::NULL, Value::from)));
            params.extend([
                Value::from(row.provider.as_str()),
                Value::from(row.agreement.as_str()),
                Value::from(row.seq),
                Value::from(row.captured_at_us),
            ]);
        }
        tx.exec_drop(sql, params)
            .await
            .map_err(fail("insert the changed rows"))?;
    }
    tx.exec_drop(
        format!(
            "INSERT INTO {APPLIED} (subscription, seq, updated_us) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE seq = VALUES(seq), updated_us = VALUES(updated_us)"
        ),
        (&layout.subscription, plan.last as i64, crate::clock::now_us()),
    )
    .await
    .map_err(fail("store the position"))?;
    tx.commit().await.map_err(fail("commit"))
}

/// The largest power of two up to `CHUNK` that fits in `n` (n > 0).
fn chunk(n: usize) -> usize {
    if n >= CHUNK {
        CHUNK
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

fn create_sql(layout: &Layout) -> String {
    let mut defs: Vec<String> = layout
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // A primary key cannot be TEXT: 191 characters of 4 bytes stay
            // within InnoDB's key length with several key columns.
            let ty = if layout.key.contains(&i) {
                "VARCHAR(191) NOT NULL"
            } else {
                "LONGTEXT NULL"
            };
            format!("{} {ty}", q(c))
        })
        .collect();
    defs.push(format!("{PROVIDER} TEXT NOT NULL"));
    defs.push(format!("{AGREEMENT} TEXT NOT NULL"));
    defs.push(format!("{SEQ} BIGINT NOT NULL"));
    defs.push(format!("{CAPTURED_AT} BIGINT NOT NULL"));
    let key: Vec<String> = layout.key_columns().map(q).collect();
    defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    // A binary collation: keys that differ only in case or trailing spaces
    // are different keys, as they are at the hub.
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        q(&layout.table),
        defs.join(", ")
    )
}
