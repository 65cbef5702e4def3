//! Business databases for the database-source tests: a scratch SQLite
//! file, or a uniquely named database on the local PostgreSQL or MariaDB
//! server, dropped when the test ends. Without a server the tests say that
//! they skipped, unless `QIANZHI_REQUIRE_SERVICES` is set (as on CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mysql_async::prelude::Queryable;

use crate::{PEOPLE, PEOPLE_COLUMNS, export, person};

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";

/// The people table's columns, in `PEOPLE_COLUMNS` order.
pub const COLUMNS: [&str; 8] = ["sfzh", "xm", "xb", "csrq", "mz", "zz", "lxdh", "djrq"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

/// A business database for one test.
pub struct Db {
    pub kind: Kind,
    /// The SQLite file, or the server URL of the scratch database.
    pub url: String,
    pub name: String,
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Says a service is missing: a skip, or a failure where services are required.
pub fn unavailable(what: &str, why: &str) -> Option<Db> {
    if std::env::var_os("QIANZHI_REQUIRE_SERVICES").is_some() {
        panic!("{what} is required (QIANZHI_REQUIRE_SERVICES) but unavailable: {why}");
    }
    eprintln!("skipped: {what} is unavailable: {why}");
    None
}

impl Db {
    pub fn sqlite(dir: &Path) -> Db {
        let path = dir.join("business.db");
        let c = rusqlite::Connection::open(&path).expect("create sqlite db");
        c.pragma_update(None, "journal_mode", "wal").expect("wal");
        Db {
            kind: Kind::Sqlite,
            url: path.to_string_lossy().into_owned(),
            name: "business.db".into(),
        }
    }

    /// A scratch database on the local PostgreSQL, or None (skipped).
    pub async fn postgres() -> Option<Db> {
        let name = unique("qz");
        let admin = match tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) => return unavailable("PostgreSQL at 127.0.0.1:5432", &e.to_string()),
        };
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Some(Db {
            kind: Kind::Postgres,
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }

    /// A scratch database on the local MariaDB/MySQL, or None (skipped).
    pub async fn mysql() -> Option<Db> {
        let name = unique("qz");
        let mut admin = match mysql_async::Conn::from_url(MYSQL_ADMIN).await {
            Ok(c) => c,
            Err(e) => return unavailable("MariaDB at 127.0.0.1:3306", &e.to_string()),
        };
        admin
            .query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            .await
            .expect("create database");
        let _ = admin.disconnect().await;
        Some(Db {
            kind: Kind::Mysql,
            url: format!("mysql://root@127.0.0.1:3306/{name}"),
            name,
        })
    }

    pub async fn connect(&self) -> Conn {
        match self.kind {
            Kind::Sqlite => {
                let c = rusqlite::Connection::open(&self.url).expect("open sqlite");
                c.busy_timeout(std::time::Duration::from_secs(30))
                    .expect("busy timeout");
                Conn::Sqlite(c)
            }
            Kind::Postgres => {
                let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                    .await
                    .expect("connect postgres");
                tokio::spawn(conn);
                Conn::Postgres(client)
            }
            Kind::Mysql => Conn::Mysql(mysql_async::Conn::from_url(&self.url).await.expect("connect mysql")),
        }
    }

    /// Creates the people table (with a `ver` column for incremental capture).
    pub async fn create_people(&self) {
        let date = if self.kind == Kind::Sqlite { "TEXT" } else { "DATE" };
        let sql = format!(
            "CREATE TABLE people (sfzh VARCHAR(18) PRIMARY KEY, xm VARCHAR(100) NOT NULL, xb VARCHAR(1), \
             csrq {date}, mz VARCHAR(2), zz VARCHAR(200), lxdh VARCHAR(20), djrq {date}, ver BIGINT NOT NULL DEFAULT 0)"
        );
        self.connect().await.exec(&sql).await.expect("create table");
    }

    /// The `[[source]]` table for the people table.
    pub fn source(&self, name: &str, extra: &str) -> String {
        let columns: Vec<(&str, &str)> = COLUMNS
            .iter()
            .zip(PEOPLE_COLUMNS)
            .map(|(c, (_, de))| (*c, de))
            .collect();
        self.source_for(name, PEOPLE, "people", &columns, extra)
    }

    /// A `[[source]]` table for `table`, its columns mapped to `resource`'s
    /// items: (column, item).
    pub fn source_for(&self, name: &str, resource: &str, table: &str, columns: &[(&str, &str)], extra: &str) -> String {
        let (kind, at) = match self.kind {
            Kind::Sqlite => ("sqlite", format!("path = \"{}\"", self.url)),
            Kind::Postgres => ("postgres", format!("url = \"{}\"", self.url)),
            Kind::Mysql => ("mysql", format!("url = \"{}\"", self.url)),
        };
        let mut s = format!(
            "[[source]]\nname = \"{name}\"\ntype = \"{kind}\"\nresource = \"{resource}\"\n{at}\ntable = \"{table}\"\n{extra}[source.columns]\n"
        );
        for (col, item) in columns {
            s.push_str(&format!("{col} = \"{item}\"\n"));
        }
        s
    }

    /// Waits until the agent has installed its triggers: changes made
    /// before that reach the hub only through the snapshot.
    pub async fn wait_for_triggers(&self) {
        let sql = match self.kind {
            Kind::Sqlite => "SELECT CAST(count(*) AS TEXT) FROM sqlite_master WHERE type = 'trigger'",
            Kind::Postgres => "SELECT count(*)::text FROM pg_trigger WHERE tgname = 'qianzhi_capture'",
            Kind::Mysql => {
                "SELECT CAST(count(*) AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
            }
        };
        let want = if self.kind == Kind::Postgres { "1" } else { "3" };
        let mut c = self.connect().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let n = c.strings(sql).await;
            if n.first().map(String::as_str) == Some(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not install its triggers: {n:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The keys (citizen IDs) in the people table.
    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.connect().await;
        c.strings("SELECT sfzh FROM people ORDER BY sfzh").await
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (kind, name) = (self.kind, self.name.clone());
        if kind == Kind::Sqlite {
            return;
        }
        // Drop the scratch database on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(rt) = rt else { return };
            rt.block_on(async move {
                match kind {
                    Kind::Postgres => {
                        if let Ok((client, conn)) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await {
                            tokio::spawn(conn);
                            let _ = client
                                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .await;
                        }
                    }
                    Kind::Mysql => {
                        if let Ok(mut c) = mysql_async::Conn::from_url(MYSQL_ADMIN).await {
                            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {name}")).await;
                            let _ = c.disconnect().await;
                        }
                    }
                    Kind::Sqlite => {}
                }
            });
        })
        .join();
    }
}

/// A connection to the PostgreSQL server's admin database.
pub async fn admin_pg() -> Conn {
    let (client, conn) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
        .await
        .expect("connect postgres");
    tokio::spawn(conn);
    Conn::Postgres(client)
}

/// A connection of a business system.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
}

impl Conn {
    /// Runs SQL (one statement, or several for SQLite and PostgreSQL).
    pub async fn exec(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(|e| e.to_string()),
            Conn::Postgres(c) => c.batch_execute(sql).await.map_err(|e| e.to_string()),
            Conn::Mysql(c) => c.query_drop(sql).await.map_err(|e| e.to_string()),
        }
    }

    /// The first column of every row, as text.
    pub async fn strings(&mut self, sql: &str) -> Vec<String> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql).expect("prepare");
                stmt.query_map([], |r| r.get::<_, String>(0))
                    .and_then(|r| r.collect())
                    .expect("query")
            }
            Conn::Postgres(c) => c
                .query(sql, &[])
                .await
                .expect("query")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect(),
            Conn::Mysql(c) => c.query(sql).await.expect("query"),
        }
    }
}

/// `INSERT` of people `rows` as one statement.
pub fn insert_people(rows: impl IntoIterator<Item = u64>) -> String {
    let values: Vec<String> = rows
        .into_iter()
        .map(|i| {
            let v: Vec<String> = person(i).iter().map(|x| format!("'{x}'")).collect();
            format!("({}, {i})", v.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO people ({}, ver) VALUES {}",
        COLUMNS.join(", "),
        values.join(", ")
    )
}

/// `UPDATE` that makes the row of person `from` into person `to` (a key
/// change when they differ).
pub fn become_person(from: u64, to: u64, ver: u64) -> String {
    let p = person(to);
    let sets: Vec<String> = COLUMNS.iter().zip(&p).map(|(c, v)| format!("{c} = '{v}'")).collect();
    format!(
        "UPDATE people SET {}, ver = {ver} WHERE sfzh = '{}'",
        sets.join(", "),
        person(from)[0]
    )
}

/// Which person each key in the table is: citizen_id(i) → i, for up to `n`.
pub fn index_of(n: u64) -> BTreeMap<String, u64> {
    (0..n).map(|i| (crate::citizen_id(i), i)).collect()
}

/// Checks the hub against the table: the current state holds exactly the
/// people `rows`, and the history exactly `changes` records, no sequence twice.
pub fn assert_hub_matches(store: &Path, rows: &[u64], changes: usize) {
    let want: BTreeMap<String, serde_json::Value> = rows
        .iter()
        .map(|&i| (person(i)[0].clone(), crate::expected_items(i)))
        .collect();
    let current: BTreeMap<String, serde_json::Value> = export(store, false)
        .into_iter()
        .map(|l| (l["key"][0].as_str().unwrap_or_default().to_owned(), l["items"].clone()))
        .collect();
    let extra: Vec<&String> = current.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    let missing: Vec<&String> = want.keys().filter(|k| !current.contains_key(*k)).take(5).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "hub differs from the table: {} at the hub, {} in the table; extra {extra:?}, missing {missing:?}",
        current.len(),
        want.len()
    );
    for (k, v) in &want {
        assert_eq!(current.get(k), Some(v), "record {k} differs at the hub");
    }
    let history = export(store, true);
    let mut seen = std::collections::HashSet::new();
    for l in &history {
        assert!(
            seen.insert((l["outbox"].to_string(), l["seq"].as_i64())),
            "history holds a sequence twice: {l}"
        );
    }
    assert_eq!(
        history.len(),
        changes,
        "the hub's history should hold every change exactly once"
    );
}

/// The data folder of a SQLite database (for `PathBuf` callers).
pub fn sqlite_path(db: &Db) -> PathBuf {
    PathBuf::from(&db.url)
}
