//! PostgreSQL (and KingbaseES, openGauss): the trigger function writes the
//! row images with `to_jsonb` and sends `NOTIFY qianzhi_changes`; the
//! source `LISTEN`s on its connection, so a change travels without a poll.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::warn;

use super::sql::{literal, quote};
use super::{Backend, CHANNEL, CHUNK, Change, DbError, LOG_TABLE, Target, missing_columns};
use crate::config::DbKind;

pub struct Postgres {
    client: Client,
    target: Target,
    /// The watermark column's type, for casting text positions.
    mark_type: String,
    wake: Arc<Notify>,
    driver: JoinHandle<()>,
    place: String,
    /// Whether the session `LISTEN`s: only while the source is idle.
    listening: bool,
    /// A `LISTEN` failed in this session (said once).
    listen_failed: bool,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The connection settings of a PostgreSQL URL, and the place to name in
/// messages (`PostgreSQL host:port/db`). `who` names the source or the
/// subscription whose URL it is.
pub(crate) fn config(
    url: &str,
    password: Option<&str>,
    who: &str,
) -> Result<(tokio_postgres::Config, String), DbError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| DbError(format!("{who}: url is not a PostgreSQL URL: {e}")))?;
    if let Some(p) = password {
        config.password(p);
    }
    config.application_name("qianzhi");
    config.connect_timeout(Duration::from_secs(10));
    config.keepalives_idle(Duration::from_secs(30));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let place = format!(
        "PostgreSQL {host}:{}/{}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_dbname().unwrap_or("")
    );
    Ok((config, place))
}

/// An error in words, naming the privilege where one is missing.
pub(crate) fn err<'a>(place: &'a str, what: &'a str) -> impl Fn(tokio_postgres::Error) -> DbError + 'a {
    move |e| {
        let Some(db) = e.as_db_error() else {
            return DbError(format!("{place}: {what}: {e}"));
        };
        let code = db.code();
        let message = db.message();
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            DbError(format!(
                "{place}: missing privilege to {what} (PostgreSQL says: {message})"
            ))
        } else if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            DbError(format!(
                "{place}: authentication failed: {message} (check the user, password and pg_hba.conf)"
            ))
        } else {
            DbError(format!("{place}: {what}: {message} (SQLSTATE {})", code.code()))
        }
    }
}

impl Postgres {
    fn table(&self) -> String {
        quote(DbKind::Postgres, &self.target.table)
    }

    fn mark(&self) -> String {
        quote(DbKind::Postgres, self.target.watermark.as_deref().unwrap_or("ctid"))
    }

    async fn require(&self, privilege: &str, on: &str, sql: &str) -> Result<(), DbError> {
        let ok: Option<bool> = self
            .client
            .query_one(sql, &[&on, &privilege])
            .await
            .map_err(err(&self.place, "check privileges"))?
            .get(0);
        if ok == Some(false) {
            return Err(DbError(format!(
                "{}: missing privilege: {privilege} on {on} (GRANT {privilege} ON {on} TO the agent's user)",
                self.place
            )));
        }
        Ok(())
    }
}

impl Backend for Postgres {
    async fn connect(target: &Target) -> Result<Self, DbError> {
        let (config, place) = config(
            &target.url,
            target.password.as_deref(),
            &format!("source {}", target.source),
        )?;
        let (client, mut connection) = config.connect(NoTls).await.map_err(err(&place, "connect"))?;
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        // The trigger's payload is the table's name in the change log: a
        // commit to another table of the same database wakes nobody here.
        let ours = target.log_name().to_owned();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.payload() == ours => w.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            // Wake the source so that its next query reports the loss.
            w.notify_one();
        });
        let mut pg = Postgres {
            client,
            target: target.clone(),
            mark_type: String::new(),
            wake,
            driver,
            place,
            listening: false,
            listen_failed: false,
        };
        let table = pg.table();
        let have: Vec<String> = pg
            .client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                 AND attnum > 0 AND NOT attisdropped",
                &[&table],
            )
            .await
            .map_err(err(&pg.place, "read the table's columns"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        missing_columns(target, &have).map_err(|e| DbError(format!("{}: {e}", pg.place)))?;
        pg.require("SELECT", &table, "SELECT has_table_privilege(to_regclass($1), $2)")
            .await?;
        if let Some(wm) = &target.watermark {
            pg.mark_type = pg
                .client
                .query_one(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attname = $2",
                    &[&table, wm],
                )
                .await
                .map_err(err(&pg.place, "read the watermark column's type"))?
                .get(0);
        } else {
            // The change log is a queue read in id order with a LIMIT. While
            // its statistics are stale (it fills and empties faster than
            // autovacuum analyzes it) the planner prefers a bitmap scan and a
            // sort of the whole log: 400 ms instead of 12 ms for 4,096 of
            // 200,000 rows. This session only reads the log, so it asks for
            // the index order outright.
            pg.client
                .batch_execute("SET enable_bitmapscan = off; SET enable_sort = off")
                .await
                .map_err(err(&pg.place, "set the planner options"))?;
        }
        Ok(pg)
    }

    fn install_sql(target: &Target) -> Vec<String> {
        let table = quote(DbKind::Postgres, &target.table);
        let tbl = literal(target.log_name());
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {LOG_TABLE} (id bigserial PRIMARY KEY, tbl text NOT NULL, \
                 op char(1) NOT NULL, old jsonb, new jsonb, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ),
            format!("CREATE INDEX IF NOT EXISTS {LOG_TABLE}_tbl ON {LOG_TABLE} (tbl, id)"),
            // SECURITY DEFINER: the business system's users need no
            // privilege on the change log.
            format!(
                "CREATE OR REPLACE FUNCTION qianzhi_capture() RETURNS trigger LANGUAGE plpgsql \
                 SECURITY DEFINER SET search_path FROM CURRENT AS $qianzhi$\n\
                 BEGIN\n\
                 \x20 IF TG_OP = 'INSERT' THEN\n\
                 \x20   INSERT INTO {LOG_TABLE} (tbl, op, new) VALUES (TG_ARGV[0], 'I', to_jsonb(NEW));\n\
                 \x20 ELSIF TG_OP = 'UPDATE' THEN\n\
                 \x20   INSERT INTO {LOG_TABLE} (tbl, op, old, new) VALUES (TG_ARGV[0], 'U', to_jsonb(OLD), to_jsonb(NEW));\n\
                 \x20 ELSE\n\
                 \x20   INSERT INTO {LOG_TABLE} (tbl, op, old) VALUES (TG_ARGV[0], 'D', to_jsonb(OLD));\n\
                 \x20 END IF;\n\
                 \x20 PERFORM pg_notify('{CHANNEL}', TG_ARGV[0]);\n\
                 \x20 RETURN NULL;\n\
                 END\n$qianzhi$"
            ),
            format!(
                "CREATE OR REPLACE TRIGGER qianzhi_capture AFTER INSERT OR UPDATE OR DELETE ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION qianzhi_capture({tbl})"
            ),
        ]
    }

    fn uninstall_sql(target: &Target) -> Vec<String> {
        let table = quote(DbKind::Postgres, &target.table);
        let tbl = literal(target.log_name());
        vec![
            format!("DROP TRIGGER IF EXISTS qianzhi_capture ON {table}"),
            format!(
                "DO $qianzhi$ BEGIN IF to_regclass('{LOG_TABLE}') IS NOT NULL THEN \
                 DELETE FROM {LOG_TABLE} WHERE tbl = {tbl}; END IF; END $qianzhi$"
            ),
        ]
    }

    async fn execute(&mut self, sql: &[String]) -> Result<(), DbError> {
        let tx = self.client.transaction().await.map_err(err(&self.place, "begin"))?;
        for s in sql {
            let what = format!(
                "run `{}` (creating the change log needs CREATE on the schema; a trigger needs TRIGGER \
                 on the table or its ownership)",
                s.lines().next().unwrap_or_default()
            );
            tx.batch_execute(s).await.map_err(err(&self.place, &what))?;
        }
        tx.commit().await.map_err(err(&self.place, "commit"))
    }

    async fn installed(&mut self) -> Result<bool, DbError> {
        let table = self.table();
        let row = self
            .client
            .query_one(
                "SELECT to_regclass($2) IS NOT NULL AND EXISTS (SELECT 1 FROM pg_trigger \
                 WHERE tgrelid = to_regclass($1) AND tgname = 'qianzhi_capture' AND NOT tgisinternal)",
                &[&table, &LOG_TABLE],
            )
            .await
            .map_err(err(&self.place, "look for the change log"))?;
        let installed: bool = row.get(0);
        if installed {
            self.require(
                "SELECT, DELETE",
                LOG_TABLE,
                "SELECT has_table_privilege(to_regclass($1), $2)",
            )
            .await?;
        }
        Ok(installed)
    }

    async fn changes(&mut self, limit: usize, skip: &[(i64, i64)]) -> Result<Vec<Change>, DbError> {
        let skip = super::sql::skip_sql(skip);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, op::text, old::text, new::text FROM {LOG_TABLE} WHERE tbl = $1{skip} \
                     ORDER BY id LIMIT $2"
                ),
                &[&self.target.log_name(), &(limit as i64)],
            )
            .await
            .map_err(err(&self.place, "read the change log"))?;
        // Busy again: the reads follow one another without waiting, and a
        // notification per commit would only wake the driver. A failure
        // costs only those wake-ups; a lost connection shows in the next
        // read.
        if self.listening && !rows.is_empty() && self.client.batch_execute(&format!("UNLISTEN {CHANNEL}")).await.is_ok()
        {
            self.listening = false;
        }
        Ok(rows
            .iter()
            .map(|r| Change {
                id: r.get(0),
                op: r.get(1),
                old: r.get(2),
                new: r.get(3),
            })
            .collect())
    }

    async fn forget(&mut self, ranges: &[(i64, i64)]) -> Result<(), DbError> {
        let sql = super::sql::forget_sql(ranges).join(";\n");
        self.client
            .batch_execute(&format!("BEGIN;\n{sql};\nCOMMIT"))
            .await
            .map_err(err(&self.place, "delete consumed changes"))
    }

    async fn snapshot(&mut self, rows: mpsc::Sender<Vec<String>>) -> Result<Vec<i64>, DbError> {
        let table = self.table();
        let place = self.place.clone();
        let c = &self.client;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(err(&place, "begin snapshot"))?;
        // Both reads see one snapshot: the rows, and the change-log ids
        // they already reflect.
        let visible: Vec<i64> = c
            .query(
                &format!("SELECT id FROM {LOG_TABLE} WHERE tbl = $1"),
                &[&self.target.log_name()],
            )
            .await
            .map_err(err(&place, "snapshot the change log"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        c.batch_execute(&format!(
            "DECLARE qianzhi_snapshot NO SCROLL CURSOR FOR SELECT to_jsonb(t)::text FROM {table} t"
        ))
        .await
        .map_err(err(&place, "snapshot the table"))?;
        loop {
            let chunk: Vec<String> = c
                .query(&format!("FETCH {CHUNK} FROM qianzhi_snapshot"), &[])
                .await
                .map_err(err(&place, "snapshot the table"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if chunk.is_empty() {
                break;
            }
            if rows.send(chunk).await.is_err() {
                return Err(DbError("snapshot stopped".into()));
            }
        }
        c.batch_execute("COMMIT").await.map_err(err(&place, "end snapshot"))?;
        Ok(visible)
    }

    async fn max_watermark(&mut self) -> Result<Option<String>, DbError> {
        let sql = format!("SELECT max(t.{})::text FROM {} t", self.mark(), self.table());
        self.client
            .query_one(&sql, &[])
            .await
            .map(|r| r.get(0))
            .map_err(err(&self.place, "read the watermark"))
    }

    async fn rows_between(
        &mut self,
        after: Option<String>,
        upto: String,
        limit: usize,
    ) -> Result<Vec<(String, String)>, DbError> {
        let (wm, ty) = (self.mark(), &self.mark_type);
        let lower = if after.is_some() {
            format!("t.{wm} > $3::text::{ty} AND ")
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT to_jsonb(t)::text, t.{wm}::text FROM {} t WHERE {lower}t.{wm} <= $1::text::{ty} \
             ORDER BY t.{wm} LIMIT $2",
            self.table()
        );
        let limit = limit as i64;
        let rows = match &after {
            Some(a) => self.client.query(&sql, &[&upto, &limit, a]).await,
            None => self.client.query(&sql, &[&upto, &limit]).await,
        }
        .map_err(err(&self.place, "incremental read"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn rows_at(&mut self, at: String) -> Result<Vec<(String, String)>, DbError> {
        let (wm, ty) = (self.mark(), &self.mark_type);
        let sql = format!(
            "SELECT to_jsonb(t)::text, t.{wm}::text FROM {} t WHERE t.{wm} = $1::text::{ty}",
            self.table()
        );
        let rows = self
            .client
            .query(&sql, &[&at])
            .await
            .map_err(err(&self.place, "incremental read"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The session listens only while the source is idle: at 1,000
    /// single-row commits a second, a notification each woke the runtime
    /// a thousand times a second while the source was reading anyway. The
    /// first wait after a busy spell only starts listening and returns, so
    /// that the change log is read once more: a commit between the last
    /// read and the `LISTEN` sent its notification to nobody.
    async fn wait(&mut self, timeout: Duration) {
        let mut timeout = timeout;
        if self.target.watermark.is_none() && !self.listening {
            match self.client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                Ok(()) => {
                    self.listening = true;
                    return;
                }
                // A lost connection shows in the next read. Otherwise the
                // source looks every second until a LISTEN goes through.
                Err(e) => {
                    if !self.listen_failed {
                        warn!(source = %self.target.source, error = %err(&self.place, "LISTEN")(e),
                            "changes are looked for every second instead of notified");
                        self.listen_failed = true;
                    }
                    timeout = timeout.min(Duration::from_secs(1));
                }
            }
        }
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(timeout) => {}
        }
    }
}
