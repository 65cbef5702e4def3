//! The receiving direction in the store: the feed receivers follow, the
//! agreements, what each receiver has applied, and every delivery.
//!
//! Tables:
//! - `feed(hseq, resource, box, seq)` (see the parent module).
//! - `agreements(id, resource, agency, items, purpose, valid_from_us,
//!   until_us, revoked_us, added_us)`: sharing agreements (article 21);
//!   `items` is a JSON array. Revoking sets `revoked_us`; nothing is deleted,
//!   so the report can name every agreement a delivery was made under.
//! - `subscribers(agency, resource, acked, agreement, first_us, last_us)`:
//!   the highest hub sequence each receiver has durably applied, and when
//!   it last said so.
//! - `deliveries(agency, resource, provider, agreement, from_seq, to_seq,
//!   records, at_us)`: what each receiver acknowledged having applied, as
//!   ranges of hub sequences (article 27's yearly check reads these).
//! - `horizons(resource, hseq)`: history at or below `hseq` may have been
//!   compacted ([`Store::compact`]); a receiver whose position is below it
//!   gets a fresh snapshot.
//!
//! Receivers read through their own connection ([`Reader`]): SQLite's WAL
//! lets them read while the writer commits. A reader sees only changes at
//! or below the durable hub sequence ([`Store::watch`]): a group committed
//! and not yet synced is not delivered, since a power cut could still take
//! it, and its hub sequences with it.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Error, Store, now_us};

#[cfg(test)]
mod tests;

/// A sharing agreement (article 21).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agreement {
    pub id: String,
    pub resource: String,
    /// The receiving agency.
    pub agency: String,
    /// The items it may receive besides the key items.
    pub items: Vec<String>,
    pub purpose: String,
    pub valid_from_us: i64,
    pub until_us: i64,
    pub revoked_us: Option<i64>,
    pub added_us: i64,
}

impl Agreement {
    /// Whether deliveries may be made under it at `now_us`.
    pub fn in_force(&self, now_us: i64) -> bool {
        self.revoked_us.is_none() && self.valid_from_us <= now_us && now_us < self.until_us
    }
}

/// One change as a receiver's stream reads it.
#[derive(Debug)]
pub struct Stored {
    pub hseq: u64,
    pub provider: String,
    /// The protobuf `Record` as the provider sent it.
    pub record: Vec<u8>,
}

/// What reading the feed after a position found.
#[derive(Debug)]
pub enum Feed {
    /// The changes after the position, oldest first (none: caught up).
    Changes(Vec<Stored>),
    /// History after the position was compacted: a snapshot is needed.
    Compacted { horizon: u64 },
}

/// Creates the receiving direction's tables, and gives a store made before
/// them its feed: every stored change in arrival order.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS feed (
             hseq INTEGER PRIMARY KEY AUTOINCREMENT,
             resource TEXT NOT NULL, box INTEGER NOT NULL, seq INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS feed_by_resource ON feed (resource, hseq);
         CREATE TABLE IF NOT EXISTS agreements (
             id TEXT PRIMARY KEY, resource TEXT NOT NULL, agency TEXT NOT NULL,
             items TEXT NOT NULL, purpose TEXT NOT NULL,
             valid_from_us INTEGER NOT NULL, until_us INTEGER NOT NULL,
             revoked_us INTEGER, added_us INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS subscribers (
             agency TEXT NOT NULL, resource TEXT NOT NULL, acked INTEGER NOT NULL,
             agreement TEXT NOT NULL, first_us INTEGER NOT NULL, last_us INTEGER NOT NULL,
             PRIMARY KEY (agency, resource));
         CREATE TABLE IF NOT EXISTS deliveries (
             agency TEXT NOT NULL, resource TEXT NOT NULL, provider TEXT NOT NULL,
             agreement TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
             records INTEGER NOT NULL, at_us INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS horizons (resource TEXT PRIMARY KEY, hseq INTEGER NOT NULL);",
    )?;
    let has_hseq: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('current') WHERE name = 'hseq'")?
        .exists([])?;
    if !has_hseq {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(
            "ALTER TABLE current ADD COLUMN hseq INTEGER;
             INSERT INTO feed (resource, box, seq)
                 SELECT resource, box, seq FROM history ORDER BY received_us, box, seq;
             UPDATE current SET hseq = (SELECT f.hseq FROM feed f WHERE f.box = current.box AND f.seq = current.seq);",
        )?;
        tx.commit()?;
    }
    conn.execute_batch(CURRENT_BY_HSEQ)
}

/// The index snapshots read `current` by.
pub(super) const CURRENT_BY_HSEQ: &str = "CREATE INDEX IF NOT EXISTS current_by_hseq ON current (resource, hseq);";

/// A receiver stream's own read connection.
pub struct Reader {
    conn: Connection,
    /// The durable hub sequence: the highest any read returns.
    durable: tokio::sync::watch::Receiver<u64>,
    path: std::path::PathBuf,
}

impl Store {
    /// A read connection for a receiver's stream.
    pub fn reader(&self) -> Result<Reader, Error> {
        let err = |source| Error::Sqlite {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open(&self.path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        super::plan_once(&conn).map_err(err)?;
        Ok(Reader {
            conn,
            durable: self.watch(),
            path: self.path.clone(),
        })
    }

    /// Adds an agreement; refuses an id already used (a revoked agreement's
    /// id stays taken).
    pub fn add_agreement(&self, a: &Agreement) -> Result<bool, Error> {
        let conn = self.lock();
        let items = serde_json::to_string(&a.items).unwrap_or_default();
        conn.execute(
            "INSERT INTO agreements (id, resource, agency, items, purpose, valid_from_us, until_us, revoked_us, added_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8) ON CONFLICT (id) DO NOTHING",
            params![a.id, a.resource, a.agency, items, a.purpose, a.valid_from_us, a.until_us, a.added_us],
        )
        .map(|n| n == 1)
        .map_err(|e| self.err(e))
    }

    /// Revokes an agreement now; false if there is none in force by that id.
    pub fn revoke_agreement(&self, id: &str) -> Result<bool, Error> {
        let conn = self.lock();
        conn.execute(
            "UPDATE agreements SET revoked_us = ?2 WHERE id = ?1 AND revoked_us IS NULL",
            params![id, now_us()],
        )
        .map(|n| n == 1)
        .map_err(|e| self.err(e))
    }

    /// Every agreement, by id.
    pub fn agreements(&self) -> Result<Vec<Agreement>, Error> {
        let conn = self.lock();
        query_agreements(&conn, "1", []).map_err(|e| self.err(e))
    }

    /// Notes that `agency` subscribed to `resource` from `position`. A
    /// position above the one recorded means acknowledgements were lost
    /// (the hub stopped before it recorded them): the gap is recorded as a
    /// delivery in the same transaction, so that the report counts it.
    pub fn subscribed(&self, d: &Delivery) -> Result<(), Error> {
        let mut conn = self.lock();
        let now = now_us();
        let run =
            |conn: &mut Connection| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                let before: Option<i64> = tx
                    .query_row(
                        "SELECT acked FROM subscribers WHERE agency = ?1 AND resource = ?2",
                        params![d.agency, d.resource],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(before) = before
                    && (before as u64) < d.to
                {
                    let records: i64 = tx.query_row(
                        "SELECT count(*) FROM feed WHERE resource = ?1 AND hseq > ?2 AND hseq <= ?3",
                        params![d.resource, before, d.to as i64],
                        |r| r.get(0),
                    )?;
                    tx.execute(
                    "INSERT INTO deliveries (agency, resource, provider, agreement, from_seq, to_seq, records, at_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![d.agency, d.resource, d.provider, d.agreement, before + 1, d.to as i64, records, now],
                )?;
                }
                tx.execute(
                    "INSERT INTO subscribers (agency, resource, acked, agreement, first_us, last_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (agency, resource) DO UPDATE SET acked = excluded.acked,
                     agreement = excluded.agreement, last_us = excluded.last_us",
                    params![d.agency, d.resource, d.to as i64, d.agreement, now],
                )?;
                tx.commit()
            };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// Records that `agency` durably applied `records` changes of `resource`
    /// in `from..=to`, in one transaction with its position.
    pub fn delivered(&self, d: &Delivery) -> Result<(), Error> {
        let mut conn = self.lock();
        let now = now_us();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO subscribers (agency, resource, acked, agreement, first_us, last_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (agency, resource) DO UPDATE SET acked = excluded.acked,
                     agreement = excluded.agreement, last_us = excluded.last_us",
                params![d.agency, d.resource, d.to as i64, d.agreement, now],
            )?;
            if d.records > 0 {
                tx.execute(
                    "INSERT INTO deliveries (agency, resource, provider, agreement, from_seq, to_seq, records, at_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        d.agency,
                        d.resource,
                        d.provider,
                        d.agreement,
                        d.from as i64,
                        d.to as i64,
                        d.records as i64,
                        now
                    ],
                )?;
            }
            tx.commit()
        };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// Compacts history: deletes changes that are no longer any key's
    /// current state and that every receiver of their resource has applied,
    /// where a receiver not heard from within `keep` no longer holds history
    /// back (it gets a fresh snapshot when it returns). Returns the changes
    /// deleted.
    pub fn compact(&self, keep: Duration) -> Result<u64, Error> {
        let mut conn = self.lock();
        let since = now_us() - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let run = |conn: &mut Connection| -> rusqlite::Result<u64> {
            let tx = conn.transaction()?;
            let resources: Vec<(String, i64)> = tx
                .prepare("SELECT resource, max(hseq) FROM feed GROUP BY resource")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut deleted = 0u64;
            for (resource, latest) in resources {
                let needed: Option<i64> = tx.query_row(
                    "SELECT min(acked) FROM subscribers WHERE resource = ?1 AND last_us >= ?2",
                    params![resource, since],
                    |r| r.get(0),
                )?;
                let cut = needed.unwrap_or(latest).min(latest);
                let superseded = "SELECT f.hseq FROM feed f WHERE f.resource = ?1 AND f.hseq <= ?2
                     AND NOT EXISTS (SELECT 1 FROM current c WHERE c.resource = ?1 AND c.hseq = f.hseq)";
                tx.execute(
                    &format!(
                        "DELETE FROM history WHERE (box, seq) IN (SELECT box, seq FROM feed WHERE hseq IN ({superseded}))"
                    ),
                    params![resource, cut],
                )?;
                deleted += tx.execute(
                    &format!("DELETE FROM feed WHERE hseq IN ({superseded})"),
                    params![resource, cut],
                )? as u64;
                tx.execute(
                    "INSERT INTO horizons (resource, hseq) VALUES (?1, ?2)
                     ON CONFLICT (resource) DO UPDATE SET hseq = max(hseq, excluded.hseq)",
                    params![resource, cut],
                )?;
            }
            tx.commit()?;
            Ok(deleted)
        };
        run(&mut conn).map_err(|e| self.err(e))
    }

    /// The figures of `qianzhi-hub report`.
    pub fn report(&self) -> Result<ReportData, Error> {
        let conn = self.lock();
        let tx = self.durable_read(&conn)?;
        let conn = &*tx;
        let run = || -> rusqlite::Result<ReportData> {
            let provided = conn
                .prepare(
                    "SELECT o.agency, h.resource, count(*), max(h.received_us) FROM history h
                     JOIN outboxes o ON o.id = h.box GROUP BY o.agency, h.resource ORDER BY o.agency, h.resource",
                )?
                .query_map([], |r| {
                    Ok(Provided {
                        agency: r.get(0)?,
                        resource: r.get(1)?,
                        changes: r.get::<_, i64>(2)? as u64,
                        last_change_us: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let received = conn
                .prepare(
                    "SELECT s.agency, s.resource, s.acked, s.last_us,
                            coalesce(sum(d.records), 0), max(d.at_us), coalesce(group_concat(DISTINCT d.provider), ''),
                            coalesce(group_concat(DISTINCT d.agreement), ''),
                            (SELECT count(*) FROM feed f WHERE f.resource = s.resource AND f.hseq > s.acked)
                     FROM subscribers s
                     LEFT JOIN deliveries d ON d.agency = s.agency AND d.resource = s.resource
                     GROUP BY s.agency, s.resource ORDER BY s.agency, s.resource",
                )?
                .query_map([], |r| {
                    let split = |s: String| -> Vec<String> {
                        s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect()
                    };
                    Ok(Received {
                        agency: r.get(0)?,
                        resource: r.get(1)?,
                        applied_seq: r.get::<_, i64>(2)? as u64,
                        last_seen_us: r.get(3)?,
                        records: r.get::<_, i64>(4)? as u64,
                        last_delivery_us: r.get(5)?,
                        providers: split(r.get(6)?),
                        agreements: split(r.get(7)?),
                        behind: r.get::<_, i64>(8)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(ReportData { provided, received })
        };
        run().map_err(|e| self.err(e))
    }
}

/// What one receiver acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub agency: String,
    pub resource: String,
    pub provider: String,
    pub agreement: String,
    pub from: u64,
    pub to: u64,
    pub records: u64,
}

/// The store's side of the report.
#[derive(Debug, Default)]
pub struct ReportData {
    pub provided: Vec<Provided>,
    pub received: Vec<Received>,
}

#[derive(Debug, serde::Serialize)]
pub struct Provided {
    pub agency: String,
    pub resource: String,
    /// Changes the hub holds (compaction removes superseded ones).
    pub changes: u64,
    pub last_change_us: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct Received {
    pub agency: String,
    pub resource: String,
    pub applied_seq: u64,
    pub last_seen_us: i64,
    pub records: u64,
    pub last_delivery_us: Option<i64>,
    pub providers: Vec<String>,
    pub agreements: Vec<String>,
    /// Changes of the resource after what the receiver applied.
    pub behind: u64,
}

impl Reader {
    /// The durable hub sequence, as an SQLite integer.
    fn durable(&self) -> i64 {
        super::sql_seq(*self.durable.borrow())
    }

    /// The highest durable hub sequence of `resource` (0: none).
    pub fn latest(&self, resource: &str) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached("SELECT coalesce(max(hseq), 0) FROM feed WHERE resource = ?1 AND hseq <= ?2")?
            .query_row(params![resource, self.durable()], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// Up to `limit` current rows of `resource` whose change is in
    /// `after < hseq <= upto`, in hub sequence order: a snapshot read in
    /// pieces. A key changed after `upto` is left out here and comes with
    /// the feed after `upto`, so that change must not be one a power cut
    /// could still take: the piece is read from a snapshot pinned first and
    /// made durable by `sync` (the store's [`Store::sync`]) before the rows
    /// are read.
    pub fn snapshot(
        &mut self,
        resource: &str,
        after: u64,
        upto: u64,
        limit: usize,
        sync: impl FnOnce() -> Result<(), Error>,
    ) -> Result<Vec<Stored>, Error> {
        let path = self.path.clone();
        let err = |source| Error::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        super::pin_read(&tx).map_err(err)?;
        sync()?;
        // Read after the sync, which covered every commit the snapshot sees.
        let bound = super::sql_seq(upto.min(*self.durable.borrow()));
        let rows = tx
            .prepare_cached(
                "SELECT c.hseq, o.agency, h.record FROM current c
                 JOIN history h ON h.box = c.box AND h.seq = c.seq JOIN outboxes o ON o.id = c.box
                 WHERE c.resource = ?1 AND c.hseq > ?2 AND c.hseq <= ?3 ORDER BY c.hseq LIMIT ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![resource, after as i64, bound, limit as i64], stored)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(err)?;
        Ok(rows)
    }

    /// Up to `limit` changes of `resource` after `after`, or `Compacted` if
    /// history after it is no longer complete. One read transaction, so a
    /// compaction cannot come between the check and the read.
    pub fn feed(&mut self, resource: &str, after: u64, limit: usize) -> rusqlite::Result<Feed> {
        let durable = self.durable();
        let tx = self.conn.transaction()?;
        let horizon = horizon(&tx, resource)?;
        if after < horizon {
            return Ok(Feed::Compacted { horizon });
        }
        let rows = tx
            .prepare_cached(
                "SELECT f.hseq, o.agency, h.record FROM feed f
                 JOIN history h ON h.box = f.box AND h.seq = f.seq JOIN outboxes o ON o.id = f.box
                 WHERE f.resource = ?1 AND f.hseq > ?2 AND f.hseq <= ?4 ORDER BY f.hseq LIMIT ?3",
            )?
            .query_map(params![resource, after as i64, limit as i64, durable], stored)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Feed::Changes(rows))
    }

    /// Durable changes of `resource` after `after`, counted up to `cap`.
    pub fn behind(&self, resource: &str, after: u64, cap: u64) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM feed WHERE resource = ?1 AND hseq > ?2 AND hseq <= ?4 LIMIT ?3)",
            )?
            .query_row(params![resource, after as i64, cap as i64, self.durable()], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
    }

    /// The history horizon of `resource` (0: never compacted).
    pub fn horizon(&self, resource: &str) -> rusqlite::Result<u64> {
        horizon(&self.conn, resource)
    }

    /// The agreements for `agency` on `resource`, in force or not.
    pub fn agreements(&self, agency: &str, resource: &str) -> rusqlite::Result<Vec<Agreement>> {
        query_agreements(&self.conn, "agency = ?1 AND resource = ?2", params![agency, resource])
    }
}

fn horizon(conn: &Connection, resource: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT hseq FROM horizons WHERE resource = ?1")?
        .query_row([resource], |r| r.get::<_, i64>(0))
        .optional()
        .map(|h| h.unwrap_or(0) as u64)
}

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        hseq: r.get::<_, i64>(0)? as u64,
        provider: r.get(1)?,
        record: r.get(2)?,
    })
}

fn query_agreements(conn: &Connection, filter: &str, p: impl rusqlite::Params) -> rusqlite::Result<Vec<Agreement>> {
    conn.prepare(&format!(
        "SELECT id, resource, agency, items, purpose, valid_from_us, until_us, revoked_us, added_us
         FROM agreements WHERE {filter} ORDER BY id"
    ))?
    .query_map(p, |r| {
        Ok(Agreement {
            id: r.get(0)?,
            resource: r.get(1)?,
            agency: r.get(2)?,
            items: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
            purpose: r.get(4)?,
            valid_from_us: r.get(5)?,
            until_us: r.get(6)?,
            revoked_us: r.get(7)?,
            added_us: r.get(8)?,
        })
    })?
    .collect()
}
