//! Sinks: the receiving direction. The hub delivers other agencies' shared
//! data as hub-sequenced changes; a [`Sink`] applies them into the agency's
//! own database table or a folder, exactly once. It owns the target and
//! the position (the highest hub sequence durably applied); it does not
//! talk to the hub, parse config or decide when to retry (its caller does:
//! every method can be called again with the same input after an error).
//!
//! # Table sinks (SQLite, PostgreSQL, MySQL/MariaDB)
//!
//! The table holds one column per delivered item (`TableSpec::columns`,
//! text: TEXT, or VARCHAR/LONGTEXT on MySQL; a missing item is NULL) and
//! four provenance columns, because received data stays marked with where
//! it came from (article 20):
//!
//! | column | type | holds |
//! |---|---|---|
//! | `qianzhi_provider` | text | the providing agency's code |
//! | `qianzhi_agreement` | text | the sharing agreement, empty for unconditional sharing |
//! | `qianzhi_seq` | BIGINT | the hub sequence of the change that wrote the row |
//! | `qianzhi_captured_at` | BIGINT | when the provider captured it, µs since the epoch |
//!
//! `create = true` makes the table (the key columns its primary key); else
//! the table is checked: every column exists, item columns have a text type,
//! the two BIGINT columns an integer type, and on MySQL the table's engine is
//! transactional. Rows whose `qianzhi_seq` is NULL are not received data:
//! reset and purge leave them alone (an upsert still replaces a row with the
//! same key). One table receives one subscription.
//!
//! Exactly once: the position is the row of `qianzhi_applied (subscription
//! PRIMARY KEY, seq, updated_us)` in the same database (PostgreSQL: in the
//! table's schema; MySQL: the current database), written in the same
//! transaction as the rows. A crash before the commit loses the whole
//! transaction and the hub redelivers it; after it, the position says so.
//! Inside the transaction the stored position is read (locked) and must be
//! the one this sink holds: a second writer is refused. After a lost
//! connection the sink reconnects and takes the stored position, so a commit
//! whose reply was lost is not applied twice. Changes at or below the
//! position are skipped.
//!
//! Statements: one `apply` is one transaction. Changes to the same key are
//! collapsed to the last one; then every touched key is deleted and the
//! final upserts inserted (delete then insert, correct whether or not the
//! table has a unique constraint on the key; without an index on the key
//! columns each delete scans the table). SQLite runs cached per-row
//! statements; PostgreSQL one `DELETE … IN (SELECT * FROM unnest($1::text[],
//! …))` and one `INSERT … SELECT * FROM unnest(…)` per apply; MySQL
//! multi-row `DELETE … IN ((?,?),…)` and `INSERT … VALUES (…),(…)` in chunks
//! of 256, 128, … rows so that a handful of prepared statements cover every
//! size.
//!
//! # Folder sinks
//!
//! See [`folder`](self::folder): files written under a hidden temporary name,
//! renamed in when full, the position in a state file outside the folder.
//!
//! Not done here: the subscription protocol, config parsing and the task that
//! drives a sink (callers); TLS to PostgreSQL and MySQL (as for sources).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::DbKind;
use crate::source::format::bounded;

mod folder;
mod mysql;
mod postgres;
mod sqlite;
mod table;

/// What a change does to its key's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
}

/// One change delivered by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The hub's sequence: increasing, the sink's position once applied.
    pub seq: u64,
    /// The key items' values, in catalog order (`SinkSpec::key`).
    pub key: Vec<String>,
    pub op: Op,
    /// Item id → canonical text value (the keys included). An item that is
    /// missing is stored as NULL (empty in CSV).
    pub items: BTreeMap<String, String>,
    /// The providing agency's code.
    pub provider: String,
    /// The sharing agreement; empty for unconditional sharing.
    pub agreement: String,
    /// When the provider captured the change, µs since the epoch.
    pub captured_at_us: i64,
}

/// What one subscription receives and where it goes.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The name used in messages and as the position's key (the resource
    /// code).
    pub subscription: String,
    pub resource: String,
    /// The key item ids, in catalog order.
    pub key: Vec<String>,
    /// Every item id delivered, in catalog order, keys included.
    pub items: Vec<String>,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub enum Target {
    Table(TableSpec),
    Folder(FolderSpec),
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub kind: DbKind,
    /// SQLite: the database file; else a `postgres://` or `mysql://` URL,
    /// as database sources take them.
    pub url: String,
    pub password: Option<String>,
    /// The table, optionally `schema.table`.
    pub table: String,
    /// Make the table if it does not exist (else it must, with every column).
    pub create: bool,
    /// Item id → column, for every item of `SinkSpec::items`.
    pub columns: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct FolderSpec {
    /// The consumer's folder: it must exist.
    pub path: PathBuf,
    /// The position's file, in the agent's data directory: the sink keeps
    /// its state out of the consumer's folder.
    pub state: PathBuf,
    pub format: SinkFormat,
    pub encoding: Encoding,
    /// A file is renamed in once it holds this many changes...
    pub roll_records: usize,
    /// ...or this long after its first change (checked by [`Sink::tick`]).
    pub roll_after: Duration,
    /// Also create an empty `NAME.ok` once `NAME` is complete.
    pub ok_marker: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Jsonl,
    Csv,
}

/// The character set of the files written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Gb18030,
}

/// Why a sink step failed: a sentence for the operator naming the
/// subscription, the database and table or the file, and the rule. Values
/// quoted in it are cut and their control characters escaped. Every error
/// leaves the position where it was: the same call can be repeated.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(String);

impl SinkError {
    fn new(subscription: &str, place: &str, what: impl std::fmt::Display) -> SinkError {
        SinkError(format!("subscription {}: {place}: {what}", shown(subscription)))
    }

    fn from_db(subscription: &str, e: crate::source::db::DbError) -> SinkError {
        SinkError(format!("subscription {}: {}", shown(subscription), bounded(&e.0, 400)))
    }
}

/// A name or value for a message: at most 64 characters, control
/// characters escaped.
fn shown(s: &str) -> String {
    bounded(s, 64)
}

/// A running sink. Not shared: one task owns it and calls it in turn.
pub struct Sink {
    subscription: String,
    inner: Inner,
}

enum Inner {
    Sqlite(sqlite::Sqlite),
    /// Boxed: its prepared statements make it the largest by far.
    Postgres(Box<postgres::Postgres>),
    Mysql(mysql::Mysql),
    Folder(folder::Folder),
}

impl Sink {
    /// Opens the target. A table is created when `create` and missing, else
    /// checked; the position table is created; the position read. A folder
    /// must exist; a crash's leftover temporary file is deleted and the
    /// position recovered from the files already renamed in.
    pub async fn open(spec: SinkSpec) -> Result<Sink, SinkError> {
        Self::start(spec, true).await
    }

    /// What `qianzhi check` proves: the target can be opened and matches the
    /// spec. Changes nothing (no table or position table is created, no
    /// file deleted); a table that `create` would make may be missing.
    pub async fn check(spec: SinkSpec) -> Result<(), SinkError> {
        Self::start(spec, false).await.map(drop)
    }

    async fn start(spec: SinkSpec, change: bool) -> Result<Sink, SinkError> {
        let subscription = spec.subscription.clone();
        let inner = match &spec.target {
            Target::Table(t) => {
                let layout = table::Layout::new(&spec, t)?;
                match t.kind {
                    DbKind::Sqlite => Inner::Sqlite(sqlite::Sqlite::open(layout, t, change).await?),
                    DbKind::Postgres => Inner::Postgres(Box::new(postgres::Postgres::open(layout, t, change).await?)),
                    DbKind::Mysql => Inner::Mysql(mysql::Mysql::open(layout, t, change).await?),
                }
            }
            Target::Folder(f) => Inner::Folder(folder::Folder::open(&spec, f, change).await?),
        };
        Ok(Sink { subscription, inner })
    }

    /// The subscription's name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The highest hub sequence durably applied (0: none).
    pub fn position(&self) -> u64 {
        match &self.inner {
            Inner::Sqlite(s) => s.position(),
            Inner::Postgres(s) => s.position(),
            Inner::Mysql(s) => s.position(),
            Inner::Folder(s) => s.position(),
        }
    }

    /// Applies `changes` (increasing sequences; those at or below the
    /// position are skipped) in one transaction with the new position, the
    /// last sequence. `reset` first deletes everything received for the
    /// subscription (a folder writes a reset line): a fresh snapshot follows.
    /// Returns the position now durably committed: for a table the last
    /// sequence; for a folder the last sequence of the last file renamed in,
    /// which may be older (the rest waits in the open file).
    pub async fn apply(&mut self, changes: &[Delivered], reset: bool) -> Result<u64, SinkError> {
        match &mut self.inner {
            Inner::Sqlite(s) => s.apply(changes, reset).await,
            Inner::Postgres(s) => s.apply(changes, reset).await,
            Inner::Mysql(s) => s.apply(changes, reset).await,
            Inner::Folder(s) => s.apply(changes, reset).await,
        }
    }

    /// A folder renames its open file in once `roll_after` has passed since
    /// its first change. Returns the committed position. A table has nothing
    /// to do.
    pub async fn tick(&mut self) -> Result<u64, SinkError> {
        match &mut self.inner {
            Inner::Folder(s) => s.tick().await,
            _ => Ok(self.position()),
        }
    }

    /// On revocation (`on_revoke = "purge"`): a table deletes every received
    /// row and the position in one transaction and returns the rows deleted;
    /// a folder deletes the files it wrote that are still in the folder
    /// (with their markers), its open file and its state, and returns the
    /// files deleted (what the consumer already took is beyond its reach).
    /// The position is 0 afterwards.
    pub async fn purge(&mut self) -> Result<u64, SinkError> {
        match &mut self.inner {
            Inner::Sqlite(s) => s.purge().await,
            Inner::Postgres(s) => s.purge().await,
            Inner::Mysql(s) => s.purge().await,
            Inner::Folder(s) => s.purge().await,
        }
    }
}

#[cfg(test)]
mod tests;
