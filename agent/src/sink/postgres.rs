//! The PostgreSQL table sink: one connection, reconnected after an error; one
//! transaction per apply with a fixed handful of prepared statements whose
//! rows travel as arrays (`unnest`), so a thousand changes are one delete and
//! one insert, not a thousand round trips.

use std::collections::HashSet;

use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::table::{self, AGREEMENT, APPLIED, CAPTURED_AT, Layout, PROVIDER, Plan, SEQ};
use super::{Delivered, SinkError, TableSpec};
use crate::config::DbKind;
use crate::source::db::postgres::{config, err as db_err};
use crate::source::db::sql::quote;

pub struct Postgres {
    /// None after an error: the next call reconnects (and takes the stored
    /// position, in case a commit's reply was lost).
    conn: Option<Conn>,
    config: tokio_postgres::Config,
    layout: Layout,
    place: String,
    position: u64,
}

struct Conn {
    client: Client,
    driver: JoinHandle<()>,
    read: Statement,
    delete: Statement,
    insert: Statement,
    store: Statement,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn q(name: &str) -> String {
    quote(DbKind::Postgres, name)
}

/// The position table: in the sink table's schema, else the search path's.
fn applied(layout: &Layout) -> String {
    match layout.schema() {
        Some(s) => format!("{}.{APPLIED}", q(s)),
        None => APPLIED.to_owned(),
    }
}

impl Postgres {
    pub async fn open(layout: Layout, t: &TableSpec, change: bool) -> Result<Postgres, SinkError> {
        let who = format!("subscription {}", layout.subscription);
        let (config, place) =
            config(&t.url, t.password.as_deref(), &who).map_err(|e| SinkError::from_db(&layout.subscription, e))?;
        let mut pg = Postgres {
            conn: None,
            config,
            layout,
            place,
            position: 0,
        };
        let (client, driver) = pg.connect().await?;
        let fail = |w: &'static str| {
            let (layout, place) = (&pg.layout, &pg.place);
            move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e))
        };
        let table = q(&pg.layout.table);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory = 'S' \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table],
            )
            .await
            .map_err(fail("read the table's columns"))?;
        let have: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // Types of the string category (text, varchar, char, citext, ...).
        let strings: HashSet<String> = rows.iter().filter(|r| r.get(2)).map(|r| r.get(1)).collect();
        if have.is_empty() && t.create {
            if change {
                client
                    .batch_execute(&create_sql(&pg.layout))
                    .await
                    .map_err(fail("create the table (needs CREATE on the schema)"))?;
            }
        } else {
            pg.layout.check_columns(
                &pg.place,
                &have,
                |ty| strings.contains(ty),
                "a string type (text, varchar, char)",
                |ty| ty == "bigint" || ty.starts_with("numeric"),
                "bigint (or numeric)",
            )?;
        }
        if change {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (subscription text PRIMARY KEY, seq bigint NOT NULL, \
                     updated_us bigint NOT NULL)",
                    applied(&pg.layout)
                ))
                .await
                .map_err(fail("create the position table"))?;
            let conn = pg.prepare(client, driver).await?;
            pg.position = Self::stored(&pg.layout, &pg.place, &conn.client, &conn.read).await?;
            pg.conn = Some(conn);
        } else {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&applied(&pg.layout)])
                .await
                .map_err(fail("look for the position table"))?
                .get(0);
            if exists {
                let read = client
                    .prepare(&read_sql(&pg.layout, false))
                    .await
                    .map_err(fail("read the position"))?;
                pg.position = Self::stored(&pg.layout, &pg.place, &client, &read).await?;
            }
            driver.abort();
        }
        Ok(pg)
    }

    async fn connect(&self) -> Result<(Client, JoinHandle<()>), SinkError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| SinkError::from_db(&self.layout.subscription, db_err(&self.place, "connect")(e)))?;
        let driver = tokio::spawn(async move {
            // The error shows in the next statement's result.
            let _ = connection.await;
        });
        Ok((client, driver))
    }

    async fn prepare(&self, client: Client, driver: JoinHandle<()>) -> Result<Conn, SinkError> {
        let layout = &self.layout;
        let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(&self.place, w)(e));
        let table = q(&layout.table);
        let keys: Vec<String> = layout.key_columns().map(q).collect();
        let arrays: Vec<String> = (1..=keys.len()).map(|i| format!("${i}::text[]")).collect();
        let delete = format!(
            "DELETE FROM {table} WHERE ({}) IN (SELECT * FROM unnest({}))",
            keys.join(", "),
            arrays.join(", ")
        );
        let columns: Vec<String> = layout.all_columns().map(q).collect();
        let n = layout.columns.len();
        let arrays: Vec<String> = (1..=n + 4)
            .map(|i| format!("${i}::{}[]", if i > n + 2 { "int8" } else { "text" }))
            .collect();
        let insert = format!(
            "INSERT INTO {table} ({}) SELECT * FROM unnest({})",
            columns.join(", "),
            arrays.join(", ")
        );
        let store = format!(
            "INSERT INTO {} (subscription, seq, updated_us) VALUES ($1, $2, $3) ON CONFLICT (subscription) \
             DO UPDATE SET seq = excluded.seq, updated_us = excluded.updated_us",
            applied(layout)
        );
        Ok(Conn {
            read: client
                .prepare(&read_sql(layout, true))
                .await
                .map_err(fail("prepare the position read"))?,
            delete: client.prepare(&delete).await.map_err(fail("prepare the delete"))?,
            insert: client.prepare(&insert).await.map_err(fail("prepare the insert"))?,
            store: client
                .prepare(&store)
                .await
                .map_err(fail("prepare the position write"))?,
            client,
            driver,
        })
    }

    async fn stored(layout: &Layout, place: &str, client: &Client, read: &Statement) -> Result<u64, SinkError> {
        let row = client
            .query_opt(read, &[&layout.subscription])
            .await
            .map_err(|e| SinkError::from_db(&layout.subscription, db_err(place, "read the position")(e)))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// The connection, made again after an error; then the stored position
    /// is the truth (a commit whose reply was lost has moved it).
    async fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            let (client, driver) = self.connect().await?;
            let conn = self.prepare(client, driver).await?;
            self.position = Self::stored(&self.layout, &self.place, &conn.client, &conn.read).await?;
            self.conn = Some(conn);
        }
        // Set just above.
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::new(&self.layout.subscription, &self.place, "not connected"))
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub async fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, SinkError> {
        self.conn().await?;
        let plan = Plan::new(&self.layout, &self.place, changes, reset, self.position)?;
        if plan.is_empty() {
            return Ok(self.position);
        }
        let result = self.write(&plan).await;
        if result.is_err() {
            self.conn = None;
        }
        result?;
        self.position = plan.last;
        Ok(plan.last)
    }

    async fn write(&mut self, plan: &Plan) -> Result<(), SinkError> {
        let (layout, place, held) = (&self.layout, &self.place, self.position);
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::new(&layout.subscription, place, "not connected"));
        };
        let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e));
        let tx = conn.client.transaction().await.map_err(fail("begin"))?;
        let stored = tx
            .query_opt(&conn.read, &[&layout.subscription])
            .await
            .map_err(fail("read the position"))?
            .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        if stored != held {
            return Err(table::moved(layout, place, stored, held));
        }
        if plan.reset {
            tx.execute(&layout.delete_received(DbKind::Postgres), &[])
                .await
                .map_err(fail("delete the received rows (reset)"))?;
        }
        if !plan.keys.is_empty() {
            let columns: Vec<Vec<&str>> = (0..layout.key.len())
                .map(|i| plan.keys.iter().map(|k| k[i].as_str()).collect())
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            tx.execute(&conn.delete, &params)
                .await
                .map_err(fail("delete the changed keys"))?;
        }
        if !plan.rows.is_empty() {
            let texts: Vec<Vec<Option<&str>>> = (0..layout.columns.len())
                .map(|i| plan.rows.iter().map(|r| r.values[i].as_deref()).collect())
                .collect();
            let provider: Vec<&str> = plan.rows.iter().map(|r| r.provider.as_str()).collect();
            let agreement: Vec<&str> = plan.rows.iter().map(|r| r.agreement.as_str()).collect();
            let seq: Vec<i64> = plan.rows.iter().map(|r| r.seq).collect();
            let captured: Vec<i64> = plan.rows.iter().map(|r| r.captured_at_us).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = texts.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            params.extend([&provider as &(dyn ToSql + Sync), &agreement, &seq, &captured]);
            tx.execute(&conn.insert, &params)
                .await
                .map_err(fail("insert the changed rows"))?;
        }
        tx.execute(
            &conn.store,
            &[&layout.subscription, &(plan.last as i64), &crate::clock::now_us()],
        )
        .await
        .map_err(fail("store the position"))?;
        tx.commit().await.map_err(fail("commit"))
    }

    pub async fn purge(&mut self) -> Result<u64, SinkError> {
        self.conn().await?;
        let result = self.purge_tx().await;
        if result.is_err() {
            self.conn = None;
        }
        let n = result?;
        self.position = 0;
        Ok(n)
    }

    async fn purge_tx(&mut self) -> Result<u64, SinkError> {
        let (layout, place) = (&self.layout, &self.place);
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::new(&layout.subscription, place, "not connected"));
        };
        let fail = |w: &'static str| move |e| SinkError::from_db(&layout.subscription, db_err(place, w)(e));
        let tx = conn.client.transaction().await.map_err(fail("begin"))?;
        let n = tx
            .execute(&layout.delete_received(DbKind::Postgres), &[])
            .await
            .map_err(fail("delete the received rows"))?;
        tx.execute(
            &format!("DELETE FROM {} WHERE subscription = $1", applied(layout)),
            &[&layout.subscription],
        )
        .await
        .map_err(fail("delete the position"))?;
        tx.commit().await.map_err(fail("commit"))?;
        Ok(n)
    }
}

fn read_sql(layout: &Layout, lock: bool) -> String {
    let lock = if lock { " FOR UPDATE" } else { "" };
    format!("SELECT seq FROM {} WHERE subscription = $1{lock}", applied(layout))
}

fn create_sql(layout: &Layout) -> String {
    let mut defs: Vec<String> = layout
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let not_null = if layout.key.contains(&i) { " NOT NULL" } else { "" };
            format!("{} text{not_null}", q(c))
        })
        .collect();
    defs.push(format!("{PROVIDER} text NOT NULL"));
    defs.push(format!("{AGREEMENT} text NOT NULL"));
    defs.push(format!("{SEQ} bigint NOT NULL"));
    defs.push(format!("{CAPTURED_AT} bigint NOT NULL"));
    let key: Vec<String> = layout.key_columns().map(q).collect();
    defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!("CREATE TABLE IF NOT EXISTS {} ({})", q(&layout.table), defs.join(", "))
}
