//! Table sinks against real servers: scratch databases on the local
//! PostgreSQL and MariaDB, through the public `agent::sink` API. The table
//! made or checked, upserts, deletes and key changes, the position committed
//! with the rows (seen by a new sink), a failed apply that moves nothing
//! and succeeds when repeated, a second writer refused, reset and purge.

use std::collections::BTreeMap;

use agent::config::DbKind;
use agent::sink::{Delivered, Op, Sink, SinkSpec, TableSpec, Target};

use crate::db::{Db, Kind};

const SUB: &str = "R001";

fn spec(db: &Db, table: &str, create: bool) -> SinkSpec {
    let kind = match db.kind {
        Kind::Sqlite => DbKind::Sqlite,
        Kind::Postgres => DbKind::Postgres,
        Kind::Mysql => DbKind::Mysql,
    };
    SinkSpec {
        subscription: SUB.into(),
        resource: SUB.into(),
        key: vec!["sfzh".into()],
        items: vec!["sfzh".into(), "xm".into(), "zz".into()],
        target: Target::Table(TableSpec {
            kind,
            url: db.url.clone(),
            password: None,
            table: table.into(),
            create,
            columns: vec![
                ("sfzh".into(), "sfzh".into()),
                ("xm".into(), "name".into()),
                ("zz".into(), "address".into()),
            ],
        }),
    }
}

fn change(seq: u64, key: &str, name: &str) -> Delivered {
    Delivered {
        seq,
        key: vec![key.into()],
        op: Op::Upsert,
        items: BTreeMap::from([("sfzh".into(), key.into()), ("xm".into(), name.into())]),
        provider: "P01".into(),
        agreement: "A-7".into(),
        captured_at_us: 1_700_000_000_000_000 + seq as i64,
    }
}

fn delete(seq: u64, key: &str) -> Delivered {
    Delivered {
        op: Op::Delete,
        items: BTreeMap::new(),
        ..change(seq, key, "")
    }
}

/// `key:name:seq` of every received row, by key.
async fn rows(db: &Db, table: &str) -> Vec<String> {
    let sql = match db.kind {
        Kind::Mysql => format!(
            "SELECT CONCAT(sfzh, ':', COALESCE(name, '-'), ':', COALESCE(address, '-'), ':', qianzhi_seq) \
             FROM {table} ORDER BY sfzh"
        ),
        _ => format!(
            "SELECT sfzh || ':' || COALESCE(name, '-') || ':' || COALESCE(address, '-') || ':' || qianzhi_seq \
             FROM {table} ORDER BY sfzh"
        ),
    };
    db.connect().await.strings(&sql).await
}

async fn scenario(db: Db) {
    let mut sink = Sink::open(spec(&db, "received", true)).await.expect("open");
    assert_eq!(sink.position(), 0);
    let pos = sink
        .apply(
            &[change(1, "a", "甲"), change(2, "b", "乙"), change(3, "c", "丙")],
            false,
        )
        .await
        .expect("apply");
    assert_eq!(pos, 3);
    // Update, delete, key change (delete old + upsert new), one key twice,
    // a delete of a missing key.
    let batch = [
        change(4, "a", "甲2"),
        delete(5, "b"),
        delete(6, "c"),
        change(7, "d", "丙"),
        change(8, "e", "x"),
        change(9, "e", "y"),
        delete(10, "missing"),
    ];
    assert_eq!(sink.apply(&batch, false).await.expect("apply"), 10);
    assert_eq!(rows(&db, "received").await, ["a:甲2:-:4", "d:丙:-:7", "e:y:-:9"]);
    let provenance = db
        .connect()
        .await
        .strings(&match db.kind {
            Kind::Mysql => "SELECT CONCAT(qianzhi_provider, '/', qianzhi_agreement, '/', qianzhi_captured_at) \
                            FROM received WHERE sfzh = 'a'"
                .to_owned(),
            _ => "SELECT qianzhi_provider || '/' || qianzhi_agreement || '/' || qianzhi_captured_at \
                  FROM received WHERE sfzh = 'a'"
                .to_owned(),
        })
        .await;
    assert_eq!(provenance, ["P01/A-7/1700000000000004"]);

    // The position committed with the rows: a new sink sees it, and skips
    // what it already has.
    drop(sink);
    let mut sink = Sink::open(spec(&db, "received", true)).await.expect("reopen");
    assert_eq!(sink.position(), 10);
    assert_eq!(sink.apply(&batch, false).await.expect("replay"), 10);

    // A second writer of the same subscription is refused.
    let mut other = Sink::open(spec(&db, "received", true)).await.expect("open");
    sink.apply(&[change(11, "f", "f")], false).await.expect("apply");
    let e = other
        .apply(&[change(11, "f", "f")], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("position stored in qianzhi_applied is 11, this sink holds 10"),
        "{e}"
    );
    drop(other);

    // A failure inside the transaction: nothing moves; repeated after the
    // cause is fixed, it applies.
    db.connect()
        .await
        .exec("ALTER TABLE received ADD CONSTRAINT no_bad CHECK (name <> 'bad')")
        .await
        .expect("add check");
    let batch = [change(12, "g", "g"), change(13, "h", "bad"), delete(14, "a")];
    let before = rows(&db, "received").await;
    let e = sink.apply(&batch, true).await.unwrap_err().to_string();
    assert!(
        e.contains("subscription R001") && e.contains("insert the changed rows"),
        "{e}"
    );
    assert_eq!(sink.position(), 11);
    assert_eq!(rows(&db, "received").await, before);
    assert_eq!(
        Sink::open(spec(&db, "received", true)).await.expect("open").position(),
        11
    );
    db.connect()
        .await
        .exec("ALTER TABLE received DROP CONSTRAINT no_bad")
        .await
        .expect("drop check");
    // The reset deleted everything received before the snapshot.
    assert_eq!(sink.apply(&batch, true).await.expect("retry"), 14);
    assert_eq!(rows(&db, "received").await, ["g:g:-:12", "h:bad:-:13"]);

    // A large batch: one transaction, few round trips.
    let n = 20_000u64;
    let big: Vec<Delivered> = (0..n).map(|i| change(15 + i, &format!("{i:018}"), "张三")).collect();
    let started = std::time::Instant::now();
    for part in big.chunks(2_000) {
        sink.apply(part, false).await.expect("apply");
    }
    eprintln!("{:?} sink: {n} changes in {:?}", db.kind, started.elapsed());
    assert_eq!(sink.position(), 14 + n);

    assert_eq!(sink.purge().await.expect("purge"), n + 2);
    assert_eq!(sink.position(), 0);
    assert!(rows(&db, "received").await.is_empty());
    drop(sink);
    assert_eq!(
        Sink::open(spec(&db, "received", true)).await.expect("open").position(),
        0
    );
}

/// A table the agency made: checked, never altered.
async fn existing(db: Db) {
    let (text, int) = match db.kind {
        Kind::Mysql => ("VARCHAR(200) CHARACTER SET utf8mb4", "BIGINT"),
        _ => ("varchar(200)", "bigint"),
    };
    let e = Sink::open(spec(&db, "theirs", false))
        .await
        .err()
        .expect("missing table")
        .to_string();
    assert!(e.contains("table theirs does not exist"), "{e}");
    db.connect()
        .await
        .exec(&format!(
            "CREATE TABLE theirs (sfzh {text}, name {text}, address INTEGER, qianzhi_provider {text}, \
             qianzhi_agreement {text}, qianzhi_seq {int}, qianzhi_captured_at {int})"
        ))
        .await
        .expect("create");
    let e = Sink::check(spec(&db, "theirs", false))
        .await
        .expect_err("wrong type")
        .to_string();
    assert!(
        e.contains("subscription R001") && e.contains("column address of table theirs is int"),
        "{e}"
    );
    db.connect()
        .await
        .exec("ALTER TABLE theirs DROP COLUMN address")
        .await
        .expect("drop column");
    let e = Sink::open(spec(&db, "theirs", false))
        .await
        .err()
        .expect("missing")
        .to_string();
    assert!(e.contains("table theirs has no column address"), "{e}");
    db.connect()
        .await
        .exec(&format!("ALTER TABLE theirs ADD COLUMN address {text}"))
        .await
        .expect("add column");
    // No unique key on sfzh: delete then insert keeps one row per key.
    let mut sink = Sink::open(spec(&db, "theirs", false)).await.expect("open");
    sink.apply(&[change(1, "a", "1"), change(2, "a", "2")], false)
        .await
        .expect("apply");
    sink.apply(&[change(3, "a", "3")], false).await.expect("apply");
    assert_eq!(rows(&db, "theirs").await, ["a:3:-:3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_table_sink() {
    let Some(db) = Db::postgres().await else { return };
    scenario(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_table_sink() {
    let Some(db) = Db::mysql().await else { return };
    scenario(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_existing_table() {
    let Some(db) = Db::postgres().await else { return };
    existing(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_existing_table() {
    let Some(db) = Db::mysql().await else { return };
    existing(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_table() {
    let Some(db) = Db::postgres().await else { return };
    db.connect().await.exec("CREATE SCHEMA shared").await.expect("schema");
    let mut sink = Sink::open(spec(&db, "shared.received", true)).await.expect("open");
    sink.apply(&[change(1, "a", "1")], false).await.expect("apply");
    assert_eq!(rows(&db, "shared.received").await, ["a:1:-:1"]);
    let at = db
        .connect()
        .await
        .strings("SELECT seq::text FROM shared.qianzhi_applied")
        .await;
    assert_eq!(at, ["1"]);
}
