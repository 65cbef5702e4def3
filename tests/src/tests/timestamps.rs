//! Date-times with fractions of a second and time zones, from real columns
//! of each database's date-time types (PostgreSQL `timestamp(6)`,
//! `timestamptz`, `timestamp(0)`; MariaDB `DATETIME(6)`, `TIMESTAMP(6)`,
//! `DATETIME`; SQLite text from `strftime`, `datetime('now')` and ISO with
//! `T` and offsets), filled by literals and by the databases' own clocks,
//! captured by the initial snapshot and by the change log: the hub stores
//! each value in its canonical form (`YYYYMMDDhhmmss`, the microseconds
//! without trailing zeros, instants in UTC+08:00) and nothing is
//! quarantined.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::db::Db;
use crate::*;

const EVENTS: &str = "1010100/0009";
/// The items of the events resource, in table column order after the key.
const ITEMS: [&str; 3] = ["GXSJ", "SK", "DJSJ"];

/// The example catalog and a resource of date-times: two items bound to the
/// built-in RQSJ 日期时间, one of type datetime without an element.
fn catalog() -> String {
    format!(
        "{CATALOG}
[[resource]]
code = \"{EVENTS}\"
name = \"事项时间\"
provider = \"{GAJ}\"
sharing = \"无条件共享\"
cycle = \"实时\"

[[resource.item]]
id = \"BH\"
name = \"编号\"
max_len = 20
key = true
required = true

[[resource.item]]
id = \"GXSJ\"
name = \"更新时间\"
element = \"RQSJ\"

[[resource.item]]
id = \"SK\"
name = \"时刻\"
element = \"RQSJ\"

[[resource.item]]
id = \"DJSJ\"
name = \"登记时间\"
type = \"datetime\"
"
    )
}

/// One database's date-time columns and what the hub must hold for them.
struct Case {
    /// `events (bh, t1, t2, t3)`, each time column with a default from the
    /// database's clock.
    create: &'static str,
    /// Run on the change-log writer's session before it writes.
    session: Option<&'static str>,
    /// Rows of literals: key, the three values as SQL, the canonical values.
    /// `fix-snap` is read by the snapshot, `fix-log` from the change log.
    fixed: [(&'static str, [&'static str; 3], [&'static str; 3]); 2],
    /// The rows filled by the database's clock (keys `now-…`), rendered by
    /// the database itself: `bh|t1|t2|t3`, local times with the fraction
    /// (trailing zeros are trimmed here), instants in UTC+08:00.
    oracle: &'static str,
}

fn postgres_case() -> Case {
    Case {
        create: "CREATE TABLE events (bh varchar(20) PRIMARY KEY, t1 timestamp(6) DEFAULT now(), \
                 t2 timestamptz DEFAULT now(), t3 timestamp(0) DEFAULT now())",
        // to_jsonb writes a timestamptz in the session's time zone.
        session: Some("SET TIME ZONE 'America/New_York'"),
        fixed: [
            (
                "fix-snap",
                [
                    "'2026-11-25 17:15:46.586856'",
                    "'2026-11-25 17:15:46.586856+00'",
                    "'2026-11-25 17:15:46'",
                ],
                ["20261125171546.586856", "20261126011546.586856", "20261125171546"],
            ),
            (
                "fix-log",
                [
                    "'2026-11-25 17:15:46.5'",
                    "'2026-11-25 23:45:00.25+05:30'",
                    "'2026-12-31 23:59:59'",
                ],
                ["20261125171546.5", "20261126021500.25", "20261231235959"],
            ),
        ],
        oracle: "SELECT bh || '|' || to_char(t1, 'YYYYMMDDHH24MISS.US') || '|' \
                 || to_char(t2 AT TIME ZONE 'UTC' + interval '8 hours', 'YYYYMMDDHH24MISS.US') || '|' \
                 || to_char(t3, 'YYYYMMDDHH24MISS.US') FROM events WHERE bh LIKE 'now%' ORDER BY bh",
    }
}

fn mysql_case() -> Case {
    Case {
        create: "CREATE TABLE events (bh VARCHAR(20) PRIMARY KEY, t1 DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6), \
                 t2 TIMESTAMP(6) NULL DEFAULT CURRENT_TIMESTAMP(6), t3 DATETIME DEFAULT CURRENT_TIMESTAMP)",
        session: None,
        fixed: [
            (
                "fix-snap",
                [
                    "'2026-11-25 17:15:46.586856'",
                    "'2026-11-25 17:15:46.586856'",
                    "'2026-11-25 17:15:46'",
                ],
                ["20261125171546.586856", "20261125171546.586856", "20261125171546"],
            ),
            (
                "fix-log",
                [
                    "'2026-11-25 17:15:46.5'",
                    "'2026-12-31 23:59:59.000001'",
                    "'2026-12-31 23:59:59'",
                ],
                ["20261125171546.5", "20261231235959.000001", "20261231235959"],
            ),
        ],
        oracle: "SELECT CONCAT_WS('|', bh, DATE_FORMAT(t1, '%Y%m%d%H%i%s.%f'), DATE_FORMAT(t2, '%Y%m%d%H%i%s.%f'), \
                 DATE_FORMAT(t3, '%Y%m%d%H%i%s.%f')) FROM events WHERE bh LIKE 'now%' ORDER BY bh",
    }
}

fn sqlite_case() -> Case {
    Case {
        create: "CREATE TABLE events (bh TEXT PRIMARY KEY, \
                 t1 TEXT DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')), \
                 t2 TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
                 t3 TEXT DEFAULT (datetime('now')))",
        session: None,
        fixed: [
            (
                "fix-snap",
                [
                    "'2026-11-25 17:15:46.586'",
                    "'2026-11-25T17:15:46.586856Z'",
                    "'2026-11-25 17:15:46'",
                ],
                ["20261125171546.586", "20261126011546.586856", "20261125171546"],
            ),
            (
                "fix-log",
                [
                    "'2026-11-25T17:15:46.500'",
                    "'2026-11-25T23:45:00.25+05:30'",
                    "'2026-12-31T23:59:59'",
                ],
                ["20261125171546.5", "20261126021500.25", "20261231235959"],
            ),
        ],
        // SQLite's %f has milliseconds, as its clock defaults do.
        oracle: "SELECT bh || '|' || strftime('%Y%m%d%H%M%f', t1) || '|' || strftime('%Y%m%d%H%M%f', t2, '+8 hours') \
                 || '|' || strftime('%Y%m%d%H%M%S', t3) FROM events WHERE bh LIKE 'now%' ORDER BY bh",
    }
}

/// A fraction without trailing zeros, and without its point when nothing is left.
fn trim_fraction(v: &str) -> String {
    match v.split_once('.') {
        Some((whole, f)) if f.trim_end_matches('0').is_empty() => whole.to_owned(),
        Some((whole, f)) => format!("{whole}.{}", f.trim_end_matches('0')),
        None => v.to_owned(),
    }
}

fn insert(key: &str, values: &[&str; 3]) -> String {
    format!(
        "INSERT INTO events (bh, t1, t2, t3) VALUES ('{key}', {}, {}, {})",
        values[0], values[1], values[2]
    )
}

/// The hub's current items per key.
fn at_hub(w: &World) -> BTreeMap<String, serde_json::Value> {
    export(&w.store_path(), false)
        .into_iter()
        .map(|l| (l["key"][0].as_str().unwrap_or_default().to_owned(), l["items"].clone()))
        .collect()
}

async fn timestamps_reach_the_hub(db: Db, case: Case) {
    let w = World::new();
    let catalog = catalog();
    w.write("catalog.toml", &catalog);
    let mut c = db.connect().await;
    c.exec(case.create).await.expect("create table");
    let (snap, log) = (&case.fixed[0], &case.fixed[1]);
    c.exec(&insert(snap.0, &snap.1)).await.expect("insert");
    c.exec("INSERT INTO events (bh) VALUES ('now-snap')")
        .await
        .expect("insert");

    let hub = Hub::start_with_catalog(&w, 0, &catalog).await;
    let mut spec = w.agent_spec(hub.addr.port());
    let columns: Vec<(&str, &str)> = [("bh", "BH"), ("t1", ITEMS[0]), ("t2", ITEMS[1]), ("t3", ITEMS[2])].into();
    spec.sources = db.source_for("events", EVENTS, "events", &columns, "poll = \"100ms\"\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    db.wait_for_triggers().await;
    eventually("the snapshot at the hub", Duration::from_secs(30), || {
        let n = at_hub(&w).len();
        (n == 2)
            .then_some(())
            .ok_or(format!("{n} at the hub; {:?}", agent.status().sources))
    })
    .await;

    // The change log, written by a business session of its own.
    let mut writer = db.connect().await;
    if let Some(s) = case.session {
        writer.exec(s).await.expect("session");
    }
    writer.exec(&insert(log.0, &log.1)).await.expect("insert");
    writer
        .exec("INSERT INTO events (bh) VALUES ('now-log')")
        .await
        .expect("insert");
    writer
        .exec(&format!("UPDATE events SET t1 = {} WHERE bh = 'now-snap'", log.1[0]))
        .await
        .expect("update");
    eventually("every change at the hub", Duration::from_secs(30), || {
        let n = export(&w.store_path(), true).len();
        (n == 5)
            .then_some(())
            .ok_or(format!("{n} at the hub; {:?}", agent.status()))
    })
    .await;

    let hub_items = at_hub(&w);
    let mut want: BTreeMap<String, [String; 3]> = case
        .fixed
        .iter()
        .map(|(key, _, canonical)| ((*key).to_owned(), canonical.map(str::to_owned)))
        .collect();
    for line in c.strings(case.oracle).await {
        let parts: Vec<&str> = line.split('|').collect();
        let [key, t1, t2, t3] = parts.as_slice() else {
            panic!("oracle row {line:?}")
        };
        want.insert((*key).to_owned(), [t1, t2, t3].map(|v| trim_fraction(v)));
    }
    assert_eq!(want.len(), 4, "{want:?}");
    assert_eq!(
        want["now-snap"][0], log.2[0],
        "the update's value, as the database holds it"
    );
    assert_eq!(hub_items.len(), 4, "{hub_items:?}");
    for (key, values) in &want {
        let items = &hub_items[key];
        for (item, value) in ITEMS.iter().zip(values) {
            assert_eq!(items[*item].as_str(), Some(value.as_str()), "{key} {item}: {items}");
        }
    }
    let s = agent.status();
    assert_eq!(s.quarantine, 0, "nothing quarantined: {s:?}");
    assert!(
        s.sources.iter().all(|x| x.quarantined == 0 && x.error.is_none()),
        "{s:?}"
    );
    assert_eq!(s.link.rejected, 0, "the hub accepted every value: {s:?}");
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_text_timestamps_with_fractions_and_offsets_reach_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    timestamps_reach_the_hub(Db::sqlite(dir.path()), sqlite_case()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_timestamp_and_timestamptz_reach_the_hub() {
    if let Some(db) = Db::postgres().await {
        timestamps_reach_the_hub(db, postgres_case()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_datetime_and_timestamp_reach_the_hub() {
    if let Some(db) = Db::mysql().await {
        timestamps_reach_the_hub(db, mysql_case()).await;
    }
}
