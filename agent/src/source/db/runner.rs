//! The database source's task: connects (with backoff, one source failing
//! alone), installs or checks the change log, takes the initial snapshot,
//! then follows the change log or the watermark, committing each chunk of
//! records with the position it reached through the source's
//! [`Committer`]. What a backend does is behind [`Backend`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1::Operation;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::sql::ranges;
use super::{
    Backend, CHUNK, Change, DbError, FORGET_EVERY, FORGET_IDS, Image, LOG_TABLE, Target, mysql, postgres, sqlite,
};
use crate::config::{CaptureMode, DbConfig, DbKind, InstallMode, SourceConfig};
use crate::health::SourceStats;
use crate::normalize::{Field, Mapping, Origin, Outcome, Row};
use crate::outbox::{self, Outbox};
use crate::source::commit::{Chunk, Committer, Position};

/// How long a change that finds the source caught up waits for the changes
/// that follow it, so that a trickle is read, committed and sent in chunks
/// rather than one change at a time: at 1,000 changes/s about 35 changes a
/// chunk, for at most this much more latency (under the 50 ms a change may
/// take to reach the hub). Each chunk costs about a millisecond of CPU
/// whatever it carries (a read, a commit with its fsync, a batch, thread
/// hand-offs), so this sets what a steady trickle costs. Measured at 1,000
/// changes/s (BENCHMARKS.md, "The trickle, third step"): 30 ms gave 4.1–5.3 %
/// of a core for SQLite at p99 37 ms, 35 ms 4.3–4.4 % at p99 42 ms; 40 ms
/// would leave too little of the 50 ms for a figure this noisy. A backlog
/// never waits: a full read is followed by the next read at once.
const LINGER: Duration = Duration::from_millis(35);

async fn linger() {
    tokio::time::sleep(LINGER).await;
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
    committer: Committer,
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
    pub fn new(
        config: SourceConfig,
        db: DbConfig,
        mapping: Mapping,
        outbox: Outbox,
        stats: Arc<SourceStats>,
    ) -> DbSource {
        let committer = Committer::new(&config.name, &mapping.resource().code, &outbox, &stats);
        DbSource {
            config,
            db,
            mapping: Arc::new(mapping),
            outbox,
            committer,
            stats,
        }
    }

    pub async fn run(self, token: CancellationToken) {
        let span = info_span!("source", name = %self.config.name, table = %self.db.table);
        async move {
            match self.db.kind {
                DbKind::Sqlite => self.run_with::<sqlite::Sqlite>(token).await,
                DbKind::Postgres => self.run_with::<postgres::Postgres>(token).await,
                DbKind::Mysql => self.run_with::<mysql::Mysql>(token).await,
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
                    Chunk::default(),
                    &LogPosition {
                        snapshot: true,
                        consumed: vec![],
                    },
                )
                .await?;
            }
        }
        // Consumed ids whose change-log rows are not deleted yet: deletes are
        // batched (every FORGET_EVERY or FORGET_IDS, and at shutdown) so that
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
            let idle = fresh.is_empty();
            if !pending.is_empty() && (due || (idle && token.is_cancelled())) {
                let ids: Vec<i64> = pending.iter().copied().collect();
                b.forget(&ranges(&ids)).await?;
                pending.clear();
                since = None;
                continue;
            }
            if idle {
                if token.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                // What is pending is forgotten once FORGET_EVERY has passed,
                // even if nothing else comes.
                let timeout = since.map_or(self.db.poll, |t| {
                    FORGET_EVERY.saturating_sub(t.elapsed()).min(self.db.poll)
                });
                b.wait(timeout).await;
                linger().await;
                continue;
            }
            let full = changes.len() >= CHUNK;
            let now = crate::clock::now_us();
            let mut chunk = Chunk::default();
            for change in &fresh {
                self.change(change, now, &mut chunk)?;
                pending.insert(change.id);
            }
            let ids: Vec<i64> = pending.iter().copied().collect();
            let mut consumed = ranges(&ids);
            consumed.extend(unconfirmed);
            self.commit(
                chunk,
                &LogPosition {
                    snapshot: true,
                    consumed,
                },
            )
            .await?;
            since.get_or_insert_with(Instant::now);
            if !full {
                // Caught up: what comes next waits a moment for company.
                linger().await;
            }
        }
    }

    /// Turns one change into records (a key change is a delete of the old
    /// key, then the new row) or a quarantine entry.
    fn change(&self, c: &Change, now: i64, chunk: &mut Chunk) -> Result<(), DbError> {
        let origin = Origin {
            object: &self.db.table,
            line: c.id as u64,
        };
        let old = c.old.as_deref().map(|t| self.image(t, c.id)).transpose()?;
        let new = c.new.as_deref().map(|t| self.image(t, c.id)).transpose()?;
        match (c.op.as_str(), old, new) {
            ("I", _, Some(new)) => self.push(&new, origin, now, None, chunk)?,
            ("U", Some(old), Some(new)) => {
                let moved = self.mapping.key_columns().any(|k| old.get(k) != new.get(k));
                if moved {
                    // The old key goes first; an old row that never passed
                    // the rules never reached the hub and has nothing to delete.
                    let fields = self.fields(&old, c.id)?;
                    if let outcome @ Outcome::Record { .. } =
                        self.mapping.normalize_as(&fields, origin, now, Some(Operation::Delete))
                    {
                        chunk.push(outcome);
                    }
                }
                self.push(&new, origin, now, None, chunk)?;
            }
            ("D", Some(old), _) => self.push(&old, origin, now, Some(Operation::Delete), chunk)?,
            (op, _, _) => {
                return Err(DbError(format!(
                    "change {} in {LOG_TABLE} has op {op:?} without its row image: was the change log altered?",
                    c.id
                )));
            }
        }
        Ok(())
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

    /// Normalizes one image into the chunk.
    fn push(
        &self,
        image: &Image,
        origin: Origin<'_>,
        now: i64,
        op: Option<Operation>,
        chunk: &mut Chunk,
    ) -> Result<(), DbError> {
        let fields = self.fields(image, origin.line as i64)?;
        self.stats.rows.inc();
        let row = Row::Values {
            line: origin.line,
            fields,
            op,
        };
        chunk.push_row(&self.mapping, row, origin.object, now);
        Ok(())
    }

    /// Commits a chunk with the source's position after it.
    async fn commit(&self, chunk: Chunk, position: &impl Serialize) -> Result<(), Stop> {
        let position = Position {
            key: POSITION_KEY.to_owned(),
            value: serde_json::to_string(position).unwrap_or_default(),
            follows: None,
        };
        Ok(self.committer.commit(chunk, position).await?)
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
                let now = crate::clock::now_us();
                let mut chunk = Chunk::default();
                for text in &rows {
                    n += 1;
                    let origin = Origin {
                        object: &object,
                        line: n,
                    };
                    match serde_json::from_str::<Image>(text) {
                        Ok(image) => self.push(&image, origin, now, None, &mut chunk)?,
                        Err(e) => {
                            self.stats.rows.inc();
                            let row = Row::Unreadable {
                                line: origin.line,
                                raw: text.clone(),
                                reason: format!("row image: {e}"),
                            };
                            chunk.push_row(&self.mapping, row, origin.object, now);
                        }
                    }
                }
                total += chunk.records() as u64;
                self.commit(chunk, &LogPosition::default()).await?;
            }
            Ok::<u64, Stop>(total)
        };
        let (read, consumed) = tokio::join!(b.snapshot(tx), consume);
        let visible = read?;
        let total = consumed?;
        self.commit(
            Chunk::default(),
            &LogPosition {
                snapshot: true,
                consumed: ranges(&visible),
            },
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
                self.commit(Chunk::default(), &MarkPosition { after: now.clone() })
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
                    let now = crate::clock::now_us();
                    let mut chunk = Chunk::default();
                    for (n, (text, _)) in rows.iter().enumerate() {
                        let origin = Origin {
                            object: &self.db.table,
                            line: n as u64 + 1,
                        };
                        let image = self.image(text, 0)?;
                        self.push(&image, origin, now, None, &mut chunk)?;
                    }
                    after = Some(last);
                    self.commit(chunk, &MarkPosition { after: after.clone() }).await?;
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
