//! MySQL and MariaDB (and TiDB, OceanBase, GBase in MySQL mode): triggers
//! write `JSON_OBJECT` row images; the source polls the change log with an
//! indexed query every `poll` (MySQL has no LISTEN).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use tokio::sync::mpsc;

use super::sql::quote;
use super::{Backend, CHUNK, Change, DbError, LOG_TABLE, Target, missing_columns};
use crate::config::DbKind;

pub struct Mysql {
    conn: Conn,
    target: Target,
    place: String,
}

/// Connects to a MySQL URL with `SET NAMES utf8mb4` and the statements
/// `init` on every connection; returns the connection and the place to name
/// in messages (`MySQL host:port/db`). `who` names the source or the
/// subscription whose URL it is.
pub(crate) async fn connect(
    url: &str,
    password: Option<&str>,
    who: &str,
    init: &[&str],
) -> Result<(Conn, String), DbError> {
    let opts = Opts::from_url(url).map_err(|e| DbError(format!("{who}: url is not a MySQL URL: {e}")))?;
    let place = format!(
        "MySQL {}:{}/{}",
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or("")
    );
    let mut statements = vec!["SET NAMES utf8mb4".to_owned()];
    statements.extend(init.iter().map(|s| (*s).to_owned()));
    let mut builder = OptsBuilder::from_opts(opts)
        .conn_ttl(None::<Duration>)
        .tcp_keepalive(Some(30_000u32))
        .init(statements);
    if let Some(p) = password {
        builder = builder.pass(Some(p.to_owned()));
    }
    let conn = tokio::time::timeout(Duration::from_secs(10), Conn::new(builder))
        .await
        .map_err(|_| DbError(format!("{place}: connect: timed out after 10s")))?
        .map_err(err(&place, "connect"))?;
    Ok((conn, place))
}

/// An error in words, naming the privilege where one is missing.
pub(crate) fn err<'a>(place: &'a str, what: &'a str) -> impl Fn(mysql_async::Error) -> DbError + 'a {
    move |e| match &e {
        mysql_async::Error::Server(s) => match s.code {
            // Table, column, database or global privilege denied.
            1142 | 1143 | 1044 | 1227 | 1370 => DbError(format!(
                "{place}: missing privilege to {what} (server says: {} [{}])",
                s.message, s.code
            )),
            // Binary logging is on: creating a trigger needs SUPER, or
            // log_bin_trust_function_creators = 1.
            1419 => DbError(format!(
                "{place}: cannot {what}: {} (grant SUPER, or set log_bin_trust_function_creators = 1)",
                s.message
            )),
            1045 => DbError(format!("{place}: authentication failed: {}", s.message)),
            _ => DbError(format!("{place}: {what}: {} [{}]", s.message, s.code)),
        },
        _ => DbError(format!("{place}: {what}: {e}")),
    }
}

impl Mysql {
    async fn log_exists(&mut self) -> Result<bool, DbError> {
        let found: Option<i64> = self
            .conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                (LOG_TABLE,),
            )
            .await
            .map_err(err(&self.place, "look for the change log"))?;
        Ok(found.is_some())
    }

    fn table(&self) -> String {
        quote(DbKind::Mysql, &self.target.table)
    }

    fn mark(&self) -> String {
        quote(DbKind::Mysql, self.target.watermark.as_deref().unwrap_or("id"))
    }

    fn image_sql(target: &Target, row: &str) -> String {
        super::sql::image_sql(DbKind::Mysql, "JSON_OBJECT", target, row)
    }

    /// (trigger name as in information_schema, CREATE statement, body as
    /// the server stores it).
    fn triggers(target: &Target) -> Vec<(String, String, String)> {
        let table = quote(DbKind::Mysql, &target.table);
        super::sql::row_triggers(DbKind::Mysql, "JSON_OBJECT", target)
            .into_iter()
            .map(|(name, event, body)| {
                let create = format!("CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {body}");
                (name.trim_matches('`').to_owned(), create, body)
            })
            .collect()
    }
}

impl Backend for Mysql {
    async fn connect(target: &Target) -> Result<Self, DbError> {
        let (conn, place) = connect(
            &target.url,
            target.password.as_deref(),
            &format!("source {}", target.source),
            &[],
        )
        .await?;
        let mut m = Mysql {
            conn,
            target: target.clone(),
            place,
        };
        let have: Vec<String> = m
            .conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = ?",
                (target.table.clone(),),
            )
            .await
            .map_err(err(&m.place, "read the table's columns"))?;
        missing_columns(target, &have).map_err(|e| DbError(format!("{}: {e}", m.place)))?;
        let probe = format!("SELECT 1 FROM {} LIMIT 0", m.table());
        m.conn
            .query_drop(probe)
            .await
            .map_err(err(&m.place, &format!("SELECT from {}", target.table)))?;
        Ok(m)
    }

    fn install_sql(target: &Target) -> Vec<String> {
        let log = vec![format!(
            "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             tbl VARCHAR(191) NOT NULL, op CHAR(1) NOT NULL, old LONGTEXT NULL, new LONGTEXT NULL, \
             at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), KEY {LOG_TABLE}_tbl (tbl, id)) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )];
        let triggers = Self::triggers(target)
            .into_iter()
            .map(|(name, create, _)| (name, create))
            .collect();
        super::sql::install_row_triggers(DbKind::Mysql, log, triggers)
    }

    fn uninstall_sql(target: &Target) -> Vec<String> {
        let names = Self::triggers(target).into_iter().map(|(name, _, _)| name).collect();
        super::sql::uninstall_row_triggers(DbKind::Mysql, target, names)
    }

    async fn execute(&mut self, sql: &[String]) -> Result<(), DbError> {
        // DDL commits implicitly in MySQL: the statements run one by one.
        for s in sql {
            // Uninstalling twice: the log may be gone already.
            if s.starts_with("DELETE FROM") && !self.log_exists().await? {
                continue;
            }
            let what = format!("run `{s}` (needs CREATE on the database and TRIGGER on the table)");
            self.conn.query_drop(s).await.map_err(err(&self.place, &what))?;
        }
        Ok(())
    }

    async fn installed(&mut self) -> Result<bool, DbError> {
        if !self.log_exists().await? {
            return Ok(false);
        }
        for (name, _, body) in Self::triggers(&self.target) {
            let have: Option<String> = self
                .conn
                .exec_first(
                    "SELECT ACTION_STATEMENT FROM information_schema.TRIGGERS \
                     WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = ?",
                    (name,),
                )
                .await
                .map_err(err(&self.place, "look for the triggers"))?;
            if have.as_deref() != Some(body.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn changes(&mut self, limit: usize, skip: &[(i64, i64)]) -> Result<Vec<Change>, DbError> {
        let skip = super::sql::skip_sql(skip);
        let rows: Vec<(i64, String, Option<String>, Option<String>)> = self
            .conn
            .exec(
                format!("SELECT id, op, old, new FROM {LOG_TABLE} WHERE tbl = ?{skip} ORDER BY id LIMIT ?"),
                (self.target.log_name(), limit as u64),
            )
            .await
            .map_err(err(&self.place, "read the change log"))?;
        Ok(rows
            .into_iter()
            .map(|(id, op, old, new)| Change { id, op, old, new })
            .collect())
    }

    async fn forget(&mut self, ranges: &[(i64, i64)]) -> Result<(), DbError> {
        for sql in super::sql::forget_sql(ranges) {
            self.conn
                .query_drop(sql)
                .await
                .map_err(err(&self.place, "delete consumed changes"))?;
        }
        Ok(())
    }

    async fn snapshot(&mut self, rows: mpsc::Sender<Vec<String>>) -> Result<Vec<i64>, DbError> {
        let image = Self::image_sql(&self.target, "");
        let table = self.table();
        let place = self.place.clone();
        let tbl = self.target.log_name().to_owned();
        let c = &mut self.conn;
        c.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(err(&place, "begin snapshot"))?;
        // The consistent snapshot starts here: the rows, and the change-log
        // ids they already reflect.
        c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(err(&place, "begin snapshot"))?;
        let visible: Vec<i64> = c
            .exec(format!("SELECT id FROM {LOG_TABLE} WHERE tbl = ?"), (tbl,))
            .await
            .map_err(err(&place, "snapshot the change log"))?;
        {
            let mut result = c
                .query_iter(format!("SELECT {image} FROM {table}"))
                .await
                .map_err(err(&place, "snapshot the table"))?;
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(row) = result.next().await.map_err(err(&place, "snapshot the table"))? {
                let text: String =
                    mysql_async::from_row_opt(row).map_err(|e| DbError(format!("{place}: snapshot: {e}")))?;
                chunk.push(text);
                if chunk.len() == CHUNK && rows.send(std::mem::take(&mut chunk)).await.is_err() {
                    return Err(DbError("snapshot stopped".into()));
                }
            }
            if !chunk.is_empty() && rows.send(chunk).await.is_err() {
                return Err(DbError("snapshot stopped".into()));
            }
        }
        c.query_drop("COMMIT").await.map_err(err(&place, "end snapshot"))?;
        Ok(visible)
    }

    async fn max_watermark(&mut self) -> Result<Option<String>, DbError> {
        let sql = format!("SELECT CAST(MAX({}) AS CHAR) FROM {}", self.mark(), self.table());
        let v: Option<Option<String>> = self
            .conn
            .query_first(sql)
            .await
            .map_err(err(&self.place, "read the watermark"))?;
        Ok(v.flatten())
    }

    async fn rows_between(
        &mut self,
        after: Option<String>,
        upto: String,
        limit: usize,
    ) -> Result<Vec<(String, String)>, DbError> {
        let (wm, table) = (self.mark(), self.table());
        let image = Self::image_sql(&self.target, "");
        let rows = match after {
            Some(a) => {
                let sql = format!(
                    "SELECT {image}, CAST({wm} AS CHAR) FROM {table} WHERE {wm} > ? AND {wm} <= ? ORDER BY {wm} LIMIT ?"
                );
                self.conn.exec(sql, (a, upto, limit as u64)).await
            }
            None => {
                let sql =
                    format!("SELECT {image}, CAST({wm} AS CHAR) FROM {table} WHERE {wm} <= ? ORDER BY {wm} LIMIT ?");
                self.conn.exec(sql, (upto, limit as u64)).await
            }
        };
        rows.map_err(err(&self.place, "incremental read"))
    }

    async fn rows_at(&mut self, at: String) -> Result<Vec<(String, String)>, DbError> {
        let (wm, table) = (self.mark(), self.table());
        let image = Self::image_sql(&self.target, "");
        let sql = format!("SELECT {image}, CAST({wm} AS CHAR) FROM {table} WHERE {wm} = ?");
        self.conn
            .exec(sql, (at,))
            .await
            .map_err(err(&self.place, "incremental read"))
    }

    async fn wait(&mut self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
}
