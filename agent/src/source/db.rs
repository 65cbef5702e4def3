//! Database sources: SQLite, PostgreSQL and MySQL/MariaDB (and the
//! databases that speak their protocols), captured by change-log triggers
//! or, where only SELECT is allowed, by a watermark column.
//!
//! Change-log capture: triggers installed on the table write every insert,
//! update and delete (row images before and after, as JSON) into the table
//! `qianzhi_changes` in the same transaction as the change. This source
//! reads the change log in id order, commits the records and the ids it
//! consumed to the outbox in one transaction, and only then deletes those
//! change-log rows, in batches (SQLite on a second connection, so that a
//! delete waiting for the write lock never holds up reading). Until a
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
//! Wake-ups: SQLite's `PRAGMA data_version` (checked when a watch on the
//! database's folder sees its files change, after waiting for a writer that
//! is still committing, and every `poll`), PostgreSQL's `LISTEN` (the
//! trigger sends `NOTIFY`), MySQL a cheap indexed query every `poll`.
//!
//! Incremental capture reads rows whose watermark is above the last one
//! taken and at most the highest watermark seen `lag` ago. It cannot see
//! deletes.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1::Operation;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::clock;
use crate::config::{CaptureMode, DbConfig, InstallMode, SourceConfig, SourceKind};
use crate::health::SourceStats;
use crate::normalize::{Field, Mapping, Origin, Outcome};
use crate::outbox::{self, Outbox, PositionUpdate, Write};

mod mysql;
mod postgres;
mod sqlite;

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
    pub kind: SourceKind,
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
            kind: config.kind,
            source: config.name.clone(),
            url: db.url.clone(),
            password,
            table: db.table.clone(),
            columns: config.columns.iter().map(|(c, _)| c.clone()).collect(),
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

/// The change-log position stored in the outbox with each chunk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LogPosition {
    /// The initial snapshot is complete (or was not wanted).
    snapshot: bool,
    /// Change-log ids consumed by the last chunk, as inclusive ranges:
    /// deleted from the change log at start if a crash left them.
    consumed: Vec<(i64, i64)>,
}

/// The watermark position of incremental capture.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MarkPosition {
    after: Option<String>,
}

const POSITION_KEY: &str = "db";

/// Runs a database source until cancelled.
pub struct DbSource {
    config: SourceConfig,
    db: DbConfig,
    mapping: Arc<Mapping>,
    outbox: Outbox,
    stats: Arc<SourceStats>,
}

/// A step failed: the source says why and tries again, the others go on.
enum Stop {
    Cancelled,
    Failed(DbError),
}

impl From<DbError> for Stop {
    fn from(e: DbError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<outbox::Error> for Stop {
    fn from(e: outbox::Error) -> Stop {
        Stop::Failed(DbError(format!("outbox: {e}")))
    }
}

impl DbSource {
    pub fn new(config: SourceConfig, mapping: Mapping, outbox: Outbox, stats: Arc<SourceStats>) -> DbSource {
        let db = config
            .db
            .clone()
            .unwrap_or_else(|| unreachable!("database source without db config"));
        DbSource {
            config,
            db,
            mapping: Arc::new(mapping),
            outbox,
            stats,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let span = info_span!("source", name = %self.config.name, table = %self.db.table);
        async move {
            match self.config.kind {
                SourceKind::Sqlite => self.run_with::<sqlite::Sqlite>(token).await,
                SourceKind::Postgres => self.run_with::<postgres::Postgres>(token).await,
                SourceKind::Mysql => self.run_with::<mysql::Mysql>(token).await,
                SourceKind::Folder => unreachable!("folder source in the database runner"),
            }
        }
        .instrument(span)
        .await
    }

    async fn run_with<B: Backend>(&self, token: CancellationToken) {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build();
        info!(capture = ?self.db.capture, "database source starting");
        loop {
            let result = tokio::select! {
                r = self.session::<B>(&token) => r,
                () = token.cancelled() => Err(Stop::Cancelled),
            };
            match result {
                Ok(()) | Err(Stop::Cancelled) => break,
                Err(Stop::Failed(e)) => {
                    warn!(error = %e, "database source failed; retrying");
                    self.stats.set_error(Some(e.0));
                }
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!("source stopped");
    }

    /// One connection's life: connect, install if wanted, catch up, follow.
    async fn session<B: Backend>(&self, token: &CancellationToken) -> Result<(), Stop> {
        let target = Target::new(&self.config, &self.db)?;
        let mut b = B::connect(&target).await?;
        match self.db.capture {
            CaptureMode::Changelog => {
                if !b.installed().await? {
                    if self.db.install == InstallMode::Manual {
                        return Err(Stop::Failed(DbError(format!(
                            "the change log is not installed on table {} (install = \"manual\"): \
                             run `qianzhi source install {}` (see --dry-run)",
                            self.db.table, self.config.name
                        ))));
                    }
                    b.execute(&B::install_sql(&target))
                        .await
                        .map_err(|e| DbError(format!("cannot install the change log: {e}")))?;
                    info!("change log and triggers installed");
                }
                self.stats.set_error(None);
                self.follow_log(&mut b, token).await
            }
            CaptureMode::Incremental => {
                self.stats.set_error(None);
                self.follow_watermark(&mut b, token).await
            }
        }
    }

    async fn stored<T: for<'de> Deserialize<'de> + Default>(&self) -> Result<Option<T>, Stop> {
        let source = self.config.name.clone();
        let stored = self
            .outbox
            .read(move |r| Ok(r.positions(&source)?.into_iter().find(|(k, _)| k == POSITION_KEY)))
            .await?;
        Ok(stored.map(|(_, v)| serde_json::from_str(&v).unwrap_or_default()))
    }

    async fn follow_log<B: Backend>(&self, b: &mut B, token: &CancellationToken) -> Result<(), Stop> {
        let position: Option<LogPosition> = self.stored().await?;
        match position {
            Some(p) => {
                if !p.consumed.is_empty() {
                    b.forget(&p.consumed).await?;
                }
                if !p.snapshot {
                    self.snapshot(b).await?;
                }
            }
            None if self.db.snapshot => self.snapshot(b).await?,
            None => {
                self.commit(
                    Write::default(),
                    &LogPosition {
                        snapshot: true,
                        consumed: vec![],
                    },
                    0,
                )
                .await?;
            }
        }
        // Consumed ids whose change-log rows are not deleted yet: deletes are
        // batched (every FORGET_EVERY or FORGET_IDS, and when idle) so that
        // the business database sees few writes from the agent. Every chunk's
        // position lists them all, so a crash deletes them at the next start.
        let mut pending: std::collections::BTreeSet<i64> = Default::default();
        let mut since: Option<Instant> = None;
        loop {
            let skip = ranges(&pending.iter().copied().collect::<Vec<_>>());
            let changes = b.changes(CHUNK, &skip).await?;
            // Deletes handed to the backend but not committed yet.
            let unconfirmed = b.unconfirmed();
            let fresh: Vec<&Change> = changes.iter().filter(|c| !pending.contains(&c.id)).collect();
            let due =
                since.is_some_and(|t| t.elapsed() >= FORGET_EVERY) || pending.len() >= FORGET_IDS || skip.len() >= 256;
            if !pending.is_empty() && (fresh.is_empty() || due) {
                let ids: Vec<i64> = pending.iter().copied().collect();
                b.forget(&ranges(&ids)).await?;
                pending.clear();
                since = None;
                continue;
            }
            if fresh.is_empty() {
                if token.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                b.wait(self.db.poll).await;
                continue;
            }
            let now = clock::now_us();
            let mut write = Write::default();
            let mut records = 0;
            for change in &fresh {
                records += self.change(change, now, &mut write)?;
                pending.insert(change.id);
            }
            let ids: Vec<i64> = pending.iter().copied().collect();
            let mut consumed = ranges(&ids);
            consumed.extend(unconfirmed);
            self.commit(
                write,
                &LogPosition {
                    snapshot: true,
                    consumed,
                },
                records,
            )
            .await?;
            since.get_or_insert_with(Instant::now);
        }
    }

    /// Turns one change into records (a key change is a delete of the old
    /// key, then the new row) or a quarantine entry. Returns the records.
    fn change(&self, c: &Change, now: i64, write: &mut Write) -> Result<u64, DbError> {
        let origin = Origin {
            object: &self.db.table,
            line: c.id as u64,
        };
        let old = c.old.as_deref().map(|t| self.image(t, c.id)).transpose()?;
        let new = c.new.as_deref().map(|t| self.image(t, c.id)).transpose()?;
        let mut records = 0;
        match (c.op.as_str(), old, new) {
            ("I", _, Some(new)) => records += self.push(&new, origin, now, None, write)?,
            ("U", Some(old), Some(new)) => {
                let moved = self.mapping.key_columns().any(|k| old.get(k) != new.get(k));
                if moved {
                    // The old key goes first; an old row that never passed
                    // the rules never reached the hub and has nothing to delete.
                    let fields = self.fields(&old, c.id)?;
                    if let Outcome::Record { bytes, .. } =
                        self.mapping.normalize_as(&fields, origin, now, Some(Operation::Delete))
                    {
                        write.records.push(bytes);
                        records += 1;
                    }
                }
                records += self.push(&new, origin, now, None, write)?;
            }
            ("D", Some(old), _) => records += self.push(&old, origin, now, Some(Operation::Delete), write)?,
            (op, _, _) => {
                return Err(DbError(format!(
                    "change {} in {LOG_TABLE} has op {op:?} without its row image: was the change log altered?",
                    c.id
                )));
            }
        }
        Ok(records)
    }

    fn image(&self, text: &str, id: i64) -> Result<Image, DbError> {
        serde_json::from_str(text).map_err(|e| {
            DbError(format!(
                "change {id} in {LOG_TABLE}: row image is not a JSON object: {e}"
            ))
        })
    }

    /// The mapping's fields from a row image. A mapped column missing from
    /// the image means the table no longer matches the mapping: an error
    /// for the source, not a record with holes.
    fn fields<'a>(&self, image: &'a Image, id: i64) -> Result<Vec<Field<'a>>, DbError> {
        self.mapping
            .columns()
            .map(|c| match image.get(c) {
                None => Err(DbError(format!(
                    "row {id} of table {} has no column {c:?}: the table no longer matches the mapping \
                     (fix source.{}.columns, then reinstall: qianzhi source install {})",
                    self.db.table, self.config.name, self.config.name
                ))),
                Some(v) => Ok(value(v)),
            })
            .collect()
    }

    /// Normalizes one image into the write; returns 1 for a record, 0 for
    /// a quarantine entry.
    fn push(
        &self,
        image: &Image,
        origin: Origin<'_>,
        now: i64,
        op: Option<Operation>,
        write: &mut Write,
    ) -> Result<u64, DbError> {
        let fields = self.fields(image, origin.line as i64)?;
        self.stats.rows.inc();
        Ok(match self.mapping.normalize_as(&fields, origin, now, op) {
            Outcome::Record { bytes, warnings } => {
                self.stats.warnings.inc_by(warnings as u64);
                write.records.push(bytes);
                1
            }
            Outcome::Quarantine(q) => {
                write.quarantine.push(q);
                0
            }
        })
    }

    /// Commits a chunk with its position (and the resource's freshness).
    async fn commit(&self, mut write: Write, position: &impl Serialize, records: u64) -> Result<(), Stop> {
        let now = clock::now_us();
        let quarantined = write.quarantine.len() as u64;
        if records > 0 {
            write
                .positions
                .push(crate::freshness::changed(&self.mapping.resource().code, now));
        }
        write.positions.push(PositionUpdate {
            source: self.config.name.clone(),
            key: POSITION_KEY.to_owned(),
            value: Some(serde_json::to_string(position).unwrap_or_default()),
        });
        self.outbox.room().await;
        self.outbox.write(write).await?;
        self.stats.records.inc_by(records);
        self.stats.quarantined.inc_by(quarantined);
        if records > 0 {
            self.stats.changed(&self.mapping.resource().code, now);
        }
        Ok(())
    }

    /// The initial snapshot: every row as an upsert, then the change-log
    /// ids it already reflects, consumed.
    async fn snapshot<B: Backend>(&self, b: &mut B) -> Result<(), Stop> {
        info!("initial snapshot starting");
        let started = Instant::now();
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(2);
        let consume = async {
            let mut n = 0u64;
            let mut total = 0u64;
            let object = format!("{} (snapshot)", self.db.table);
            while let Some(rows) = rx.recv().await {
                let now = clock::now_us();
                let mut write = Write::default();
                let mut records = 0;
                for text in &rows {
                    n += 1;
                    let origin = Origin {
                        object: &object,
                        line: n,
                    };
                    match serde_json::from_str::<Image>(text) {
                        Ok(image) => records += self.push(&image, origin, now, None, &mut write)?,
                        Err(e) => {
                            self.stats.rows.inc();
                            write.quarantine.push(self.mapping.unreadable(
                                origin,
                                text.clone(),
                                format!("row image: {e}"),
                            ));
                        }
                    }
                }
                total += records;
                self.commit(write, &LogPosition::default(), records).await?;
            }
            Ok::<u64, Stop>(total)
        };
        let (read, consumed) = tokio::join!(b.snapshot(tx), consume);
        let visible = read?;
        let total = consumed?;
        self.commit(
            Write::default(),
            &LogPosition {
                snapshot: true,
                consumed: ranges(&visible),
            },
            0,
        )
        .await?;
        if !visible.is_empty() {
            b.forget(&ranges(&visible)).await?;
        }
        info!(
            records = total,
            seconds = started.elapsed().as_secs_f64(),
            "initial snapshot done"
        );
        Ok(())
    }

    async fn follow_watermark<B: Backend>(&self, b: &mut B, token: &CancellationToken) -> Result<(), Stop> {
        let mut after = match self.stored::<MarkPosition>().await? {
            Some(p) => p.after,
            None if self.db.snapshot => None,
            None => {
                let now = b.max_watermark().await?;
                self.commit(Write::default(), &MarkPosition { after: now.clone() }, 0)
                    .await?;
                now
            }
        };
        // (when seen, highest watermark then): the bound is the newest one
        // seen at least `lag` ago.
        let mut seen: std::collections::VecDeque<(Instant, String)> = Default::default();
        loop {
            if let Some(max) = b.max_watermark().await?
                && seen.back().is_none_or(|(_, m)| *m != max)
            {
                seen.push_back((Instant::now(), max));
            }
            while seen.len() >= 2 && seen[1].0.elapsed() >= self.db.lag {
                seen.pop_front();
            }
            let upto = seen
                .front()
                .filter(|(at, _)| at.elapsed() >= self.db.lag)
                .map(|(_, m)| m.clone());
            let mut progressed = false;
            if let Some(upto) = upto {
                let mut rows = b.rows_between(after.clone(), upto, CHUNK).await?;
                if rows.len() == CHUNK {
                    // Rows sharing the last watermark may go on past the
                    // limit: take them all, or stop before them.
                    let last = rows[rows.len() - 1].1.clone();
                    if rows[0].1 == last {
                        rows = b.rows_at(last).await?;
                    } else {
                        rows.retain(|(_, w)| *w != last);
                    }
                }
                if let Some((_, last)) = rows.last() {
                    let last = last.clone();
                    let now = clock::now_us();
                    let mut write = Write::default();
                    let mut records = 0;
                    for (n, (text, _)) in rows.iter().enumerate() {
                        let origin = Origin {
                            object: &self.db.table,
                            line: n as u64 + 1,
                        };
                        let image = self.image(text, 0)?;
                        records += self.push(&image, origin, now, None, &mut write)?;
                    }
                    after = Some(last);
                    self.commit(write, &MarkPosition { after: after.clone() }, records)
                        .await?;
                    progressed = true;
                }
            }
            if !progressed {
                if token.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                tokio::time::sleep(self.db.poll).await;
            }
        }
    }
}

/// A JSON value as the text the data-element rules read.
fn value(v: &serde_json::Value) -> Field<'_> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Ok(Cow::Borrowed(s.as_str()))),
        serde_json::Value::Number(n) => Some(Ok(Cow::Owned(n.to_string()))),
        serde_json::Value::Bool(b) => Some(Ok(Cow::Owned(b.to_string()))),
        other => Some(Ok(Cow::Owned(other.to_string()))),
    }
}

/// Sorted ids → inclusive ranges of consecutive ids.
fn ranges(ids: &[i64]) -> Vec<(i64, i64)> {
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
fn skip_sql(skip: &[(i64, i64)]) -> String {
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
fn forget_sql(ranges: &[(i64, i64)]) -> Vec<String> {
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
fn quote(kind: SourceKind, name: &str) -> String {
    let q = if kind == SourceKind::Mysql { '`' } else { '"' };
    name.split('.')
        .map(|p| format!("{q}{p}{q}"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The JSON object of a row's mapped columns, built by the database's
/// `object` function (`json_object`, `JSON_OBJECT`); `row` is `NEW.`,
/// `OLD.` or empty.
fn image_sql(kind: SourceKind, object: &str, target: &Target, row: &str) -> String {
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
fn row_triggers(kind: SourceKind, object: &str, target: &Target) -> Vec<(String, &'static str, String)> {
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
fn install_row_triggers(kind: SourceKind, mut sql: Vec<String>, triggers: Vec<(String, String)>) -> Vec<String> {
    for (name, create) in triggers {
        sql.push(format!("DROP TRIGGER IF EXISTS {}", quote(kind, &name)));
        sql.push(create);
    }
    sql
}

/// Uninstall statements for row triggers: each dropped, then the table's
/// pending changes forgotten.
fn uninstall_row_triggers(kind: SourceKind, target: &Target, names: Vec<String>) -> Vec<String> {
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
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The install or uninstall statements of a source, for `qianzhi source`.
pub fn statements(config: &SourceConfig, install: bool) -> Result<Vec<String>, DbError> {
    let db = config
        .db
        .as_ref()
        .ok_or_else(|| DbError(format!("source {} is not a database source", config.name)))?;
    if db.capture != CaptureMode::Changelog {
        return Err(DbError(format!(
            "source {} uses capture = \"incremental\": it needs no triggers",
            config.name
        )));
    }
    let t = Target::new(config, db)?;
    Ok(match (config.kind, install) {
        (SourceKind::Sqlite, true) => sqlite::Sqlite::install_sql(&t),
        (SourceKind::Sqlite, false) => sqlite::Sqlite::uninstall_sql(&t),
        (SourceKind::Postgres, true) => postgres::Postgres::install_sql(&t),
        (SourceKind::Postgres, false) => postgres::Postgres::uninstall_sql(&t),
        (SourceKind::Mysql, true) => mysql::Mysql::install_sql(&t),
        (SourceKind::Mysql, false) => mysql::Mysql::uninstall_sql(&t),
        (SourceKind::Folder, _) => vec![],
    })
}

/// Runs the install or uninstall statements of a source against its
/// database (`qianzhi source install|uninstall NAME`).
pub async fn apply(config: &SourceConfig, install: bool) -> Result<(), DbError> {
    let sql = statements(config, install)?;
    let db = config
        .db
        .as_ref()
        .ok_or_else(|| DbError("not a database source".into()))?;
    let t = Target::new(config, db)?;
    match config.kind {
        SourceKind::Sqlite => sqlite::Sqlite::connect(&t).await?.execute(&sql).await,
        SourceKind::Postgres => postgres::Postgres::connect(&t).await?.execute(&sql).await,
        SourceKind::Mysql => mysql::Mysql::connect(&t).await?.execute(&sql).await,
        SourceKind::Folder => Ok(()),
    }
}

/// Connects and checks the table, for `qianzhi check`.
pub async fn check(config: &SourceConfig) -> Result<(), DbError> {
    let db = config
        .db
        .as_ref()
        .ok_or_else(|| DbError("not a database source".into()))?;
    let t = Target::new(config, db)?;
    let installed = match config.kind {
        SourceKind::Sqlite => probe::<sqlite::Sqlite>(&t, db).await?,
        SourceKind::Postgres => probe::<postgres::Postgres>(&t, db).await?,
        SourceKind::Mysql => probe::<mysql::Mysql>(&t, db).await?,
        SourceKind::Folder => true,
    };
    if !installed && db.install == InstallMode::Manual {
        return Err(DbError(format!(
            "the change log is not installed: run `qianzhi source install {}`",
            config.name
        )));
    }
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let ids = [7, 3, 4, 5, 10, 11, 20];
        let r = ranges(&ids);
        assert_eq!(r, vec![(3, 5), (7, 7), (10, 11), (20, 20)]);
        assert!(ranges(&[]).is_empty());
        assert_eq!(
            forget_sql(&r),
            vec![format!(
                "DELETE FROM {LOG_TABLE} WHERE id BETWEEN 3 AND 5 OR id = 7 OR id BETWEEN 10 AND 11 OR id = 20"
            )]
        );
        assert_eq!(forget_sql(&vec![(1, 1); 600]).len(), 3);
    }

    #[test]
    fn quoting_follows_the_dialect() {
        assert_eq!(quote(SourceKind::Postgres, "hr.people"), "\"hr\".\"people\"");
        assert_eq!(quote(SourceKind::Mysql, "people"), "`people`");
        assert_eq!(literal("o'k"), "'o''k'");
    }
}
