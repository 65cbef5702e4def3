//! Database sources: SQLite, PostgreSQL and MySQL/MariaDB (and the
//! databases that speak their protocols), captured by change-log triggers
//! or, where only SELECT is allowed, by a watermark column.
//!
//! Change-log capture: triggers installed on the table write every insert,
//! update and delete (row images before and after, as JSON) into the table
//! `qianzhi_changes` in the same transaction as the change. This source
//! reads the change log in id order, commits the records and the ids it
//! consumed to the outbox in one transaction, and only then deletes those
//! change-log rows, in batches (at most a second apart; SQLite on a second
//! connection, so that a delete waiting for the write lock never holds up
//! reading). Until a
//! delete commits, its ids are left out of reads and listed in every
//! position; after a crash they are deleted again before anything is read,
//! so a change is never taken twice and never lost. Ids are not a commit
//! order (a transaction may take
//! an id and commit after a later one), so nothing is skipped by position:
//! whatever is in the log is pending. Changes to one row keep their order,
//! because the row's lock orders the transactions that change it.
//!
//! The initial snapshot reads the table and the ids of the change log in one
//! read transaction: those ids are already reflected in the rows read, and
//! are consumed with the snapshot's end.
//!
//! A trickle is read in chunks: a change that finds the source caught up
//! waits `LINGER` (35 ms) for the changes that follow it, so that a steady
//! 1,000 changes/s costs one read, one outbox commit and one batch per
//! ~35 changes; a backlog is read chunk after chunk without waiting.
//!
//! Wake-ups: SQLite's `PRAGMA data_version` (checked when a watch on the
//! database's folder sees its files change, after waiting for a writer that
//! is still committing, and every `poll`), PostgreSQL's `LISTEN` (the
//! trigger sends `NOTIFY`; the session listens only while the source is
//! idle, since a busy source reads anyway and a notification per commit
//! only woke the runtime), MySQL a cheap indexed query every `poll`.
//!
//! Incremental capture reads rows whose watermark is above the last one
//! taken and at most the highest watermark seen `lag` ago. It cannot see
//! deletes.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{CaptureMode, DbConfig, DbKind, InstallMode, SourceConfig};

pub(crate) mod mysql;
pub(crate) mod postgres;
mod runner;
pub(crate) mod sql;
mod sqlite;

pub use runner::DbSource;

/// Changes per outbox transaction, at most.
const CHUNK: usize = 4096;
/// The change-log table, shared by all captured tables of a database.
pub const LOG_TABLE: &str = "qianzhi_changes";
/// Consumed change-log rows are deleted at least this often while busy...
const FORGET_EVERY: Duration = Duration::from_secs(1);
/// ...or once this many are consumed, and whenever the log is drained.
const FORGET_IDS: usize = 16_384;
/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "qianzhi_changes";

/// Why a database step failed, in words for the operator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

/// One row image: column → JSON value, as the database rendered it.
pub type Image = serde_json::Map<String, serde_json::Value>;

/// One change-log row.
#[derive(Debug)]
pub struct Change {
    pub id: i64,
    /// `I`, `U` or `D`.
    pub op: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What a backend needs to know of the source.
#[derive(Debug, Clone)]
pub struct Target {
    pub source: String,
    pub url: String,
    pub password: Option<String>,
    pub table: String,
    /// The mapped columns, in mapping order.
    pub columns: Vec<String>,
    pub watermark: Option<String>,
}

impl Target {
    pub fn new(config: &SourceConfig, db: &DbConfig) -> Result<Target, DbError> {
        let password = match &db.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| DbError(format!("cannot read password_file {}: {e}", p.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Target {
            source: config.name.clone(),
            url: db.url.clone(),
            password,
            table: db.table.clone(),
            columns: config.mapping.columns.iter().map(|(c, _)| c.clone()).collect(),
            watermark: db.watermark.clone(),
        })
    }

    /// The table name for the change log's `tbl` column and messages.
    pub fn log_name(&self) -> &str {
        &self.table
    }

    /// A name for triggers: `qianzhi_<table>` with the schema dot replaced.
    pub fn trigger_base(&self) -> String {
        format!("qianzhi_{}", self.table.replace('.', "_"))
    }
}

/// What each database does for capture. Async so that the server databases
/// need no threads; SQLite runs its calls on the blocking pool.
pub trait Backend: Send + Sized + 'static {
    /// Connects and checks that the table has every mapped column.
    fn connect(target: &Target) -> impl Future<Output = Result<Self, DbError>> + Send;
    /// The statements that install the change log and the triggers.
    fn install_sql(target: &Target) -> Vec<String>;
    /// The statements that remove the triggers and the table's pending
    /// changes (the change-log table stays while other tables may use it).
    fn uninstall_sql(target: &Target) -> Vec<String>;
    /// Runs statements, in one transaction where the database allows.
    fn execute(&mut self, sql: &[String]) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Whether the change log and triggers are installed as `install_sql`
    /// would make them.
    fn installed(&mut self) -> impl Future<Output = Result<bool, DbError>> + Send;
    /// Up to `limit` pending changes of the table, oldest first, leaving
    /// out the id ranges `skip` (consumed, not yet deleted).
    fn changes(
        &mut self,
        limit: usize,
        skip: &[(i64, i64)],
    ) -> impl Future<Output = Result<Vec<Change>, DbError>> + Send;
    /// Deletes consumed change-log rows, given as inclusive id ranges. A
    /// backend may do it in the background: then `changes` leaves those
    /// rows out and `unconfirmed` lists them until the delete commits.
    fn forget(&mut self, ranges: &[(i64, i64)]) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Ranges handed to `forget` whose delete has not committed yet: they go
    /// into every position, so that a crash deletes them at the next start.
    fn unconfirmed(&self) -> Vec<(i64, i64)> {
        Vec::new()
    }
    /// Reads every row of the table, in chunks sent to `rows`, and returns
    /// the change-log ids visible in the same read transaction.
    fn snapshot(&mut self, rows: mpsc::Sender<Vec<String>>) -> impl Future<Output = Result<Vec<i64>, DbError>> + Send;
    /// The highest watermark value, as text.
    fn max_watermark(&mut self) -> impl Future<Output = Result<Option<String>, DbError>> + Send;
    /// Rows with `after < watermark <= upto` (or `= at` when `after` is
    /// None and `exact`), ordered by watermark: (image, watermark text).
    fn rows_between(
        &mut self,
        after: Option<String>,
        upto: String,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, String)>, DbError>> + Send;
    /// Every row whose watermark equals `at`.
    fn rows_at(&mut self, at: String) -> impl Future<Output = Result<Vec<(String, String)>, DbError>> + Send;
    /// Returns when there may be new changes, or after `timeout`.
    fn wait(&mut self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// The install or uninstall statements of a source, for `qianzhi source`.
pub fn statements(config: &SourceConfig, install: bool) -> Result<Vec<String>, DbError> {
    let db = database(config)?;
    if db.capture != CaptureMode::Changelog {
        return Err(DbError(format!(
            "source {} uses capture = \"incremental\": it needs no triggers",
            config.name
        )));
    }
    let t = Target::new(config, db)?;
    Ok(match (db.kind, install) {
        (DbKind::Sqlite, true) => sqlite::Sqlite::install_sql(&t),
        (DbKind::Sqlite, false) => sqlite::Sqlite::uninstall_sql(&t),
        (DbKind::Postgres, true) => postgres::Postgres::install_sql(&t),
        (DbKind::Postgres, false) => postgres::Postgres::uninstall_sql(&t),
        (DbKind::Mysql, true) => mysql::Mysql::install_sql(&t),
        (DbKind::Mysql, false) => mysql::Mysql::uninstall_sql(&t),
    })
}

/// Runs the install or uninstall statements of a source against its
/// database (`qianzhi source install|uninstall NAME`).
pub async fn apply(config: &SourceConfig, install: bool) -> Result<(), DbError> {
    let sql = statements(config, install)?;
    let db = database(config)?;
    let t = Target::new(config, db)?;
    match db.kind {
        DbKind::Sqlite => sqlite::Sqlite::connect(&t).await?.execute(&sql).await,
        DbKind::Postgres => postgres::Postgres::connect(&t).await?.execute(&sql).await,
        DbKind::Mysql => mysql::Mysql::connect(&t).await?.execute(&sql).await,
    }
}

/// Connects and checks the table, for `qianzhi check`.
pub async fn check(config: &SourceConfig) -> Result<(), DbError> {
    let db = database(config)?;
    let t = Target::new(config, db)?;
    let installed = match db.kind {
        DbKind::Sqlite => probe::<sqlite::Sqlite>(&t, db).await?,
        DbKind::Postgres => probe::<postgres::Postgres>(&t, db).await?,
        DbKind::Mysql => probe::<mysql::Mysql>(&t, db).await?,
    };
    if !installed && db.install == InstallMode::Manual {
        return Err(DbError(format!(
            "the change log is not installed: run `qianzhi source install {}`",
            config.name
        )));
    }
    Ok(())
}

/// The database of a source, or why it has none.
fn database(config: &SourceConfig) -> Result<&DbConfig, DbError> {
    config
        .database()
        .ok_or_else(|| DbError(format!("source {} is not a database source", config.name)))
}

async fn probe<B: Backend>(t: &Target, db: &DbConfig) -> Result<bool, DbError> {
    let mut b = B::connect(t).await?;
    match db.capture {
        CaptureMode::Changelog => b.installed().await,
        CaptureMode::Incremental => b.max_watermark().await.map(|_| true),
    }
}

/// Columns of the table that the mapping needs but the table lacks.
fn missing_columns(target: &Target, have: &[String]) -> Result<(), DbError> {
    let wanted = target.columns.iter().chain(target.watermark.as_ref());
    let missing: Vec<&String> = wanted.filter(|c| !have.contains(c)).collect();
    if have.is_empty() {
        return Err(DbError(format!(
            "table {} does not exist (or is not visible to this user)",
            target.table
        )));
    }
    if !missing.is_empty() {
        return Err(DbError(format!(
            "table {} has no column {}: the table does not match source.{}.columns",
            target.table,
            missing.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", "),
            target.source
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
