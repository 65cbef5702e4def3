use std::path::Path;
use std::time::Duration;

use super::*;

const SUB: &str = "R001";

fn change(seq: u64, key: &str, name: &str) -> Delivered {
    Delivered {
        seq,
        key: vec![key.into()],
        op: Op::Upsert,
        items: [("sfzh", key), ("xm", name)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        provider: "P01".into(),
        agreement: String::new(),
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

fn table_spec(db: &Path, create: bool) -> SinkSpec {
    SinkSpec {
        subscription: SUB.into(),
        resource: SUB.into(),
        key: vec!["sfzh".into()],
        items: vec!["sfzh".into(), "xm".into(), "xb".into()],
        target: Target::Table(TableSpec {
            kind: DbKind::Sqlite,
            url: db.to_string_lossy().into_owned(),
            password: None,
            table: "received".into(),
            create,
            columns: vec![
                ("sfzh".into(), "sfzh".into()),
                ("xm".into(), "name".into()),
                ("xb".into(), "xb".into()),
            ],
        }),
    }
}

/// The received table: (sfzh, name, xb, seq), by key.
fn rows(db: &Path) -> Vec<(String, Option<String>, Option<String>, i64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT sfzh, name, xb, COALESCE(qianzhi_seq, 0) FROM received ORDER BY sfzh")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn row(k: &str, name: &str, seq: i64) -> (String, Option<String>, Option<String>, i64) {
    (k.into(), Some(name.into()), None, seq)
}

fn exec(db: &Path, sql: &str) {
    rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

#[tokio::test]
async fn table_upsert_update_delete_and_key_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    assert_eq!(sink.position(), 0);
    let pos = sink
        .apply(
            &[change(1, "a", "甲"), change(2, "b", "乙"), change(3, "c", "丙")],
            false,
        )
        .await
        .unwrap();
    assert_eq!(pos, 3);
    // An update, a delete, a key change (delete old + upsert new), and one
    // key changed twice in the same call: the last change wins.
    let pos = sink
        .apply(
            &[
                change(4, "a", "甲2"),
                delete(5, "b"),
                delete(6, "c"),
                change(7, "d", "丙"),
                change(8, "e", "x"),
                change(9, "e", "y"),
                delete(10, "missing"),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(pos, 10);
    assert_eq!(rows(&db), vec![row("a", "甲2", 4), row("d", "丙", 7), row("e", "y", 9)]);
    let c = rusqlite::Connection::open(&db).unwrap();
    let (provider, agreement, at): (String, String, i64) = c
        .query_row(
            "SELECT qianzhi_provider, qianzhi_agreement, qianzhi_captured_at FROM received WHERE sfzh = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (provider.as_str(), agreement.as_str(), at),
        ("P01", "", 1_700_000_000_000_004)
    );
    drop(sink);

    // Reopened: the position is the committed one; changes at or below it
    // are skipped.
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    assert_eq!(sink.position(), 10);
    assert_eq!(sink.apply(&[change(9, "e", "old")], false).await.unwrap(), 10);
    assert_eq!(rows(&db)[2], row("e", "y", 9));
    // Out of order is refused.
    let e = sink
        .apply(&[change(12, "f", "x"), change(11, "g", "x")], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("change 11 comes after change 12"), "{e}");
}

#[tokio::test]
async fn reset_and_purge_leave_the_agencys_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    sink.apply(&[change(1, "a", "1"), change(2, "b", "2")], false)
        .await
        .unwrap();
    // A row the agency wrote itself: no qianzhi_seq. (The table made by the
    // sink has NOT NULL provenance, so use a table made by hand.)
    exec(&db, "DROP TABLE received");
    exec(
        &db,
        "CREATE TABLE received (sfzh TEXT PRIMARY KEY, name TEXT, xb TEXT, qianzhi_provider TEXT, \
         qianzhi_agreement TEXT, qianzhi_seq BIGINT, qianzhi_captured_at BIGINT); \
         INSERT INTO received (sfzh, name) VALUES ('own', 'ours'); DELETE FROM qianzhi_applied",
    );
    let mut sink = Sink::open(table_spec(&db, false)).await.unwrap();
    assert_eq!(sink.position(), 0);
    sink.apply(&[change(1, "a", "1"), change(2, "b", "2")], false)
        .await
        .unwrap();
    sink.apply(&[change(3, "c", "3")], true).await.unwrap();
    let keys: Vec<String> = rows(&db).into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["c", "own"]);
    assert_eq!(sink.purge().await.unwrap(), 1);
    assert_eq!(sink.position(), 0);
    let keys: Vec<String> = rows(&db).into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["own"]);
    drop(sink);
    assert_eq!(Sink::open(table_spec(&db, false)).await.unwrap().position(), 0);
}

#[tokio::test]
async fn an_existing_table_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let e = Sink::open(table_spec(&db, false)).await.err().unwrap().to_string();
    assert!(e.contains("subscription R001") && e.contains("does not exist"), "{e}");

    exec(&db, "CREATE TABLE received (sfzh TEXT, name TEXT)");
    let e = Sink::open(table_spec(&db, false)).await.err().unwrap().to_string();
    assert!(e.contains("table received has no column xb"), "{e}");
    // `qianzhi check` says the same and changes nothing.
    let e = Sink::check(table_spec(&db, false)).await.unwrap_err().to_string();
    assert!(e.contains("has no column xb"), "{e}");

    exec(
        &db,
        "DROP TABLE received; CREATE TABLE received (sfzh TEXT, name VARCHAR(20), xb INTEGER, \
         qianzhi_provider TEXT, qianzhi_agreement TEXT, qianzhi_seq BIGINT, qianzhi_captured_at BIGINT)",
    );
    let e = Sink::open(table_spec(&db, false)).await.err().unwrap().to_string();
    assert!(
        e.contains("column xb of table received is INTEGER") && e.contains("TEXT affinity"),
        "{e}"
    );

    exec(&db, "DROP TABLE received");
    let fresh = dir.path().join("new.db");
    // Check of a table that create would make: fine, and nothing is made.
    Sink::check(table_spec(&fresh, true)).await.unwrap();
    assert!(!fresh.exists());
}

#[tokio::test]
async fn a_failed_apply_moves_nothing_and_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    sink.apply(&[change(1, "a", "1")], false).await.unwrap();
    exec(
        &db,
        "CREATE TRIGGER refuse BEFORE INSERT ON received WHEN NEW.name = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'refused by the business rule'); END",
    );
    let batch = [change(2, "b", "2"), change(3, "c", "bad"), change(4, "a", "changed")];
    let e = sink.apply(&batch, true).await.unwrap_err().to_string();
    assert!(
        e.contains("subscription R001") && e.contains("insert change 3") && e.contains("refused by the business rule"),
        "{e}"
    );
    assert_eq!(sink.position(), 1);
    assert_eq!(rows(&db), vec![row("a", "1", 1)]);
    drop(sink);
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    assert_eq!(sink.position(), 1);

    exec(&db, "DROP TRIGGER refuse");
    assert_eq!(sink.apply(&batch, true).await.unwrap(), 4);
    assert_eq!(
        rows(&db),
        vec![row("a", "changed", 4), row("b", "2", 2), row("c", "bad", 3)]
    );
    // A repeat of a committed reset (its reply lost) writes the same rows.
    assert_eq!(sink.apply(&batch, true).await.unwrap(), 4);
    assert_eq!(rows(&db).len(), 3);
}

#[tokio::test]
async fn a_reset_takes_a_snapshot_below_the_old_position() {
    // The hub compacted past this sink's position (or its store is new):
    // the snapshot that follows the reset has lower sequences, and none of
    // it may be skipped.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    sink.apply(&[change(10, "a", "1"), change(11, "b", "2")], false)
        .await
        .unwrap();
    assert_eq!(
        sink.apply(&[change(3, "c", "3"), change(7, "a", "4")], true)
            .await
            .unwrap(),
        7
    );
    assert_eq!(rows(&db), vec![row("a", "4", 7), row("c", "3", 3)]);
    // After it, the position is the snapshot's: later changes follow on.
    assert_eq!(
        sink.apply(&[change(7, "a", "4"), change(8, "d", "5")], false)
            .await
            .unwrap(),
        8
    );
    assert_eq!(rows(&db).len(), 3);
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut one = Sink::open(table_spec(&db, true)).await.unwrap();
    let mut two = Sink::open(table_spec(&db, true)).await.unwrap();
    one.apply(&[change(1, "a", "1")], false).await.unwrap();
    let e = two.apply(&[change(1, "a", "1")], false).await.unwrap_err().to_string();
    assert!(
        e.contains("the position stored in qianzhi_applied is 1, this sink holds 0"),
        "{e}"
    );
}

#[tokio::test]
async fn sqlite_applies_a_large_batch_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = Sink::open(table_spec(&db, true)).await.unwrap();
    let n = 100_000u64;
    let batch: Vec<Delivered> = (1..=n).map(|i| change(i, &format!("{i:018}"), "张三")).collect();
    let started = std::time::Instant::now();
    for part in batch.chunks(5_000) {
        sink.apply(part, false).await.unwrap();
    }
    let took = started.elapsed();
    eprintln!(
        "SQLite sink: {n} changes in {took:?} ({:.0}/s)",
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(sink.position(), n);
    assert_eq!(rows(&db).len(), n as usize);
}

fn folder_spec(dir: &Path, format: SinkFormat, encoding: Encoding, roll_records: usize) -> SinkSpec {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    SinkSpec {
        subscription: SUB.into(),
        resource: "R/001".into(),
        key: vec!["sfzh".into()],
        items: vec!["sfzh".into(), "xm".into(), "xb".into()],
        target: Target::Folder(FolderSpec {
            path: dir.join("out"),
            state: dir.join("sink-R001.pos"),
            format,
            encoding,
            roll_records,
            roll_after: Duration::ZERO,
            ok_marker: true,
        }),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn file(first: u64, last: u64, ext: &str) -> String {
    format!("R_001-{first:020}-{last:020}.{ext}")
}

#[tokio::test]
async fn folder_rolls_by_count_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let spec = folder_spec(dir.path(), SinkFormat::Jsonl, Encoding::Utf8, 2);
    let mut sink = Sink::open(spec.clone()).await.unwrap();
    let batch: Vec<Delivered> = (1..=5).map(|i| change(i, &format!("k{i}"), "名")).collect();
    assert_eq!(sink.apply(&batch[..3], false).await.unwrap(), 2);
    assert_eq!(sink.apply(&batch, false).await.unwrap(), 4);
    let (a, b) = (file(1, 2, "jsonl"), file(3, 4, "jsonl"));
    assert_eq!(
        names(dir.path()),
        [
            ".qianzhi-R_001.tmp".to_owned(),
            a.clone(),
            format!("{a}.ok"),
            b.clone(),
            format!("{b}.ok")
        ]
    );
    let text = std::fs::read_to_string(dir.path().join("out").join(&a)).unwrap();
    assert_eq!(
        text,
        "{\"sfzh\":\"k1\",\"xm\":\"名\",\"xb\":null,\"_op\":\"upsert\",\"_seq\":1,\"_provider\":\"P01\",\
         \"_agreement\":\"\",\"_captured_at_us\":1700000000000001}\n\
         {\"sfzh\":\"k2\",\"xm\":\"名\",\"xb\":null,\"_op\":\"upsert\",\"_seq\":2,\"_provider\":\"P01\",\
         \"_agreement\":\"\",\"_captured_at_us\":1700000000000002}\n"
    );
    // roll_after (zero here) has passed: the open file is renamed in.
    assert_eq!(sink.tick().await.unwrap(), 5);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sink-R001.pos")).unwrap(),
        "5\n"
    );
    // A reset starts a file of its own; a delete carries only the key.
    sink.apply(&[delete(6, "k1")], true).await.unwrap();
    assert_eq!(sink.tick().await.unwrap(), 6);
    let text = std::fs::read_to_string(dir.path().join("out").join(file(6, 6, "jsonl"))).unwrap();
    assert!(
        text.starts_with(
            "{\"_op\":\"reset\"}\n{\"sfzh\":\"k1\",\"xm\":null,\"xb\":null,\"_op\":\"delete\",\"_seq\":6,"
        ),
        "{text}"
    );
    drop(sink);
    let mut sink = Sink::open(spec).await.unwrap();
    assert_eq!(sink.position(), 6);
    assert_eq!(sink.purge().await.unwrap(), 4);
    assert!(names(dir.path()).is_empty());
    assert_eq!(sink.position(), 0);
    assert!(!dir.path().join("sink-R001.pos").exists());
}

#[tokio::test]
async fn folder_writes_gb18030_csv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = folder_spec(dir.path(), SinkFormat::Csv, Encoding::Gb18030, 3);
    let mut sink = Sink::open(spec).await.unwrap();
    let mut odd = change(2, "b", "𠀀, \"引号\"\n第二行");
    odd.agreement = "协议-7".into();
    sink.apply(&[change(1, "a", "张三"), odd, delete(3, "c")], false)
        .await
        .unwrap();
    let bytes = std::fs::read(dir.path().join("out").join(file(1, 3, "csv"))).unwrap();
    let (text, had_errors) = encoding_rs::GB18030.decode_without_bom_handling(&bytes);
    assert!(!had_errors);
    assert!(std::str::from_utf8(&bytes).is_err(), "the bytes are GB18030, not UTF-8");
    assert_eq!(
        text,
        "sfzh,xm,xb,_op,_seq,_provider,_agreement,_captured_at_us\r\n\
         a,张三,,upsert,1,P01,,1700000000000001\r\n\
         b,\"𠀀, \"\"引号\"\"\n第二行\",,upsert,2,P01,协议-7,1700000000000002\r\n\
         c,,,delete,3,P01,,1700000000000003\r\n"
    );
}

#[tokio::test]
async fn folder_recovers_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let spec = folder_spec(dir.path(), SinkFormat::Jsonl, Encoding::Utf8, 2);
    let mut sink = Sink::open(spec.clone()).await.unwrap();
    let batch: Vec<Delivered> = (1..=5).map(|i| change(i, &format!("k{i}"), "x")).collect();
    sink.apply(&batch[..2], false).await.unwrap();
    sink.apply(&batch[2..], false).await.unwrap();
    drop(sink);
    // A crash after the rename of 3-4 and before its marker and position;
    // 5 was only in the temporary file.
    std::fs::write(dir.path().join("sink-R001.pos"), "2\n").unwrap();
    std::fs::remove_file(dir.path().join("out").join(format!("{}.ok", file(3, 4, "jsonl")))).unwrap();
    // Another resource's file, and a name of ours that is not a file name.
    std::fs::write(
        dir.path()
            .join("out")
            .join(file(9, 9, "jsonl").replace("R_001", "R_0011")),
        "",
    )
    .unwrap();
    std::fs::write(dir.path().join("out").join("R_001-9-9.jsonl"), "").unwrap();

    let mut sink = Sink::open(spec).await.unwrap();
    assert_eq!(sink.position(), 4);
    let have = names(dir.path());
    assert!(!have.iter().any(|n| n.ends_with(".tmp")), "{have:?}");
    assert!(have.contains(&format!("{}.ok", file(3, 4, "jsonl"))), "{have:?}");
    // The hub sends 5 again (and 3-4, already in).
    assert_eq!(sink.apply(&batch[2..], false).await.unwrap(), 4);
    assert_eq!(sink.tick().await.unwrap(), 5);
    let text = std::fs::read_to_string(dir.path().join("out").join(file(5, 5, "jsonl"))).unwrap();
    assert_eq!(text.lines().count(), 1);
}

#[tokio::test]
async fn folder_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = folder_spec(dir.path(), SinkFormat::Jsonl, Encoding::Utf8, 2);
    if let Target::Folder(f) = &mut spec.target {
        f.path = dir.path().join("absent");
    }
    let e = Sink::open(spec).await.err().unwrap().to_string();
    assert!(e.contains("subscription R001: folder") && e.contains("absent"), "{e}");
}

#[tokio::test]
async fn folder_refuses_unknown_items_and_keeps_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::open(folder_spec(dir.path(), SinkFormat::Jsonl, Encoding::Utf8, 10))
        .await
        .unwrap();
    sink.apply(&[change(1, "a", "x")], false).await.unwrap();
    let mut odd = change(2, "b", "y");
    odd.items.insert("new_item".into(), "z".into());
    let e = sink.apply(&[odd], false).await.unwrap_err().to_string();
    assert!(e.contains("change 2 carries item new_item"), "{e}");
    assert_eq!(sink.apply(&[change(2, "b", "y")], false).await.unwrap(), 0);
    assert_eq!(sink.tick().await.unwrap(), 2);
    let text = std::fs::read_to_string(dir.path().join("out").join(file(1, 2, "jsonl"))).unwrap();
    assert_eq!(text.lines().count(), 2);
}
