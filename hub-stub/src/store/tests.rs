use prost::Message;
use proto::v1::{Entry, Operation, Record, RejectCode};

use super::*;

fn catalog() -> Catalog {
    Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap()
}

const MAX_VALUE: usize = 64 << 10;
const GAJ: &str = "320282-gaj";
const PEOPLE: &str = "1010100/0001";

const A: &str = "320282199001019995";
const B: &str = "320282199512319981";

fn entry(seq: u64, resource: &str, key: &str, op: Operation) -> Entry {
    let mut items = std::collections::BTreeMap::new();
    items.insert("DE00001".to_owned(), key.to_owned());
    if op == Operation::Upsert {
        items.insert("DE00002".to_owned(), format!("name {seq}"));
    }
    Entry {
        seq,
        record: Record {
            resource: resource.into(),
            key: vec![key.into()],
            op: op as i32,
            items,
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    }
}

fn export(store: &Store, history: bool) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    store.export(None, history, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replays_store_nothing_twice_and_deletes_remove_state() {
    let path = std::env::temp_dir().join(format!("qianzhi-store-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path).unwrap();
    let (c, r) = (catalog(), "1010100/0001");
    let batch = [entry(1, r, A, Operation::Upsert), entry(2, r, B, Operation::Upsert)];
    let first = store
        .apply(
            "320282-gaj",
            "ob1",
            &prepare("320282-gaj", batch.to_vec(), &c, MAX_VALUE),
        )
        .unwrap();
    assert_eq!((first.stored, first.hwm), (2, 2));
    let again = store
        .apply(
            "320282-gaj",
            "ob1",
            &prepare("320282-gaj", batch.to_vec(), &c, MAX_VALUE),
        )
        .unwrap();
    assert_eq!((again.stored, again.replayed, again.hwm), (0, 2, 2));
    let more = [entry(2, r, B, Operation::Upsert), entry(3, r, A, Operation::Delete)];
    let applied = store
        .apply(
            "320282-gaj",
            "ob1",
            &prepare("320282-gaj", more.to_vec(), &c, MAX_VALUE),
        )
        .unwrap();
    assert_eq!((applied.stored, applied.replayed), (1, 1));
    assert_eq!(export(&store, true).len(), 3);
    let current = export(&store, false);
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["key"][0], B);
    // Another outbox of the same agency has its own sequence.
    assert_eq!(
        store
            .apply(
                "320282-gaj",
                "ob2",
                &prepare("320282-gaj", batch[..1].to_vec(), &c, MAX_VALUE)
            )
            .unwrap()
            .stored,
        1
    );
    drop(store);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn rejections_are_kept_until_the_agent_moves_past_them() {
    let path = std::env::temp_dir().join(format!("qianzhi-store-rej-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path).unwrap();
    let c = catalog();
    let batch = [
        entry(1, "1010100/0001", A, Operation::Upsert),
        entry(2, "2010100/0001", B, Operation::Upsert),
        entry(3, "nope", A, Operation::Upsert),
    ];
    let applied = store
        .apply(
            "320282-gaj",
            "ob1",
            &prepare("320282-gaj", batch.to_vec(), &c, MAX_VALUE),
        )
        .unwrap();
    let codes: Vec<i32> = applied.rejected.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![RejectCode::NotProvider as i32, RejectCode::UnknownResource as i32]
    );
    assert_eq!(applied.hwm, 3);
    let (hwm, rejections) = store.welcome("320282-gaj", "ob1", 2).unwrap();
    assert_eq!((hwm, rejections.len()), (3, 2));
    let (_, rejections) = store.welcome("320282-gaj", "ob1", 3).unwrap();
    assert_eq!(rejections.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(export(&store, false).len(), 1);
    drop(store);
    let _ = std::fs::remove_file(&path);
}

fn scratch() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("hub/store.db")).unwrap();
    (d, store)
}

fn people(seqs: &[u64]) -> Vec<Entry> {
    seqs.iter()
        .map(|&s| entry(s, PEOPLE, &citizen(s), Operation::Upsert))
        .collect()
}

/// A valid citizen id per sequence (GB 11643 check digit).
fn citizen(seq: u64) -> String {
    let body = format!("32028219900101{:03}", seq % 1000);
    format!("{body}{}", rules::element::citizen_check(body.as_bytes()))
}

fn apply(store: &Store, outbox: &str, seqs: &[u64]) -> Applied {
    store
        .apply(GAJ, outbox, &prepare(GAJ, people(seqs), &catalog(), MAX_VALUE))
        .unwrap()
}

fn stored_seqs(store: &Store) -> Vec<i64> {
    export(store, true).iter().map(|l| l["seq"].as_i64().unwrap()).collect()
}

#[test]
fn a_gap_stops_the_batch_after_what_came_before_it() {
    let (_d, store) = scratch();
    let a = apply(&store, "ob", &[1, 2, 4, 5]);
    assert_eq!((a.stored, a.hwm), (2, 2));
    assert_eq!(a.stop, Some(SeqError::Gap { expected: 3, got: 4 }));
    assert_eq!(stored_seqs(&store), [1, 2]);
    // The hub's Welcome says 2: nothing beyond what it stored.
    assert_eq!(store.welcome(GAJ, "ob", 1).unwrap().0, 2);
    // A gap right at the start of a new outbox stops it too.
    let a = apply(&store, "other", &[7]);
    assert_eq!(
        (a.stored, a.hwm, a.stop),
        (0, 0, Some(SeqError::Gap { expected: 1, got: 7 }))
    );
}

#[test]
fn backwards_and_repeated_entries_are_replays() {
    let (_d, store) = scratch();
    let a = apply(&store, "ob", &[1, 2, 2, 1, 3]);
    assert_eq!((a.stored, a.replayed, a.hwm, a.stop), (3, 2, 3, None));
    assert_eq!(stored_seqs(&store), [1, 2, 3]);
}

#[test]
fn sequences_beyond_i64_are_refused_and_later_ones_still_stored() {
    let (_d, store) = scratch();
    let a = apply(&store, "ob", &[1, u64::MAX, 2]);
    assert_eq!((a.stored, a.hwm), (1, 1));
    assert!(matches!(
        a.stop,
        Some(SeqError::OutOfRange {
            expected: 2,
            got: u64::MAX
        })
    ));
    let a = apply(&store, "ob", &[2, 3]);
    assert_eq!((a.stored, a.hwm, a.stop), (2, 3, None));
    assert_eq!(stored_seqs(&store), [1, 2, 3]);
    assert_eq!(
        next_in_line(i64::MAX as u64, i64::MAX as u64 + 1),
        Err(SeqError::OutOfRange {
            expected: i64::MAX as u64 + 1,
            got: i64::MAX as u64 + 1
        })
    );
    assert_eq!(next_in_line(i64::MAX as u64 - 1, i64::MAX as u64), Ok(()));
}

#[test]
fn rejection_reasons_are_bounded_where_they_are_made() {
    let (_d, store) = scratch();
    let c = catalog();
    let hostile = format!("\n\u{1b}[31m{}", "9".repeat(20_000));
    let mut invalid = entry(1, PEOPLE, A, Operation::Upsert);
    let mut record = Record::decode(invalid.record.as_ref()).unwrap();
    // The key item differs from the key: the rule quotes the value twice.
    record.items.insert("DE00001".into(), hostile.clone());
    invalid.record = record.encode_to_vec().into();
    let mut huge = entry(2, PEOPLE, B, Operation::Upsert);
    let mut record = Record::decode(huge.record.as_ref()).unwrap();
    record.items.insert("DE00002".into(), "x".repeat(MAX_VALUE + 1));
    huge.record = record.encode_to_vec().into();
    let unknown = entry(3, &format!("\n{}", "r".repeat(10_000)), A, Operation::Upsert);
    let a = store
        .apply(GAJ, "ob", &prepare(GAJ, vec![invalid, huge, unknown], &c, MAX_VALUE))
        .unwrap();
    assert_eq!(a.rejected.len(), 3);
    assert!(
        a.rejected[1]
            .reason
            .contains(&format!("{} bytes, over the hub's limit", MAX_VALUE + 1))
    );
    let (_, kept) = store.welcome(GAJ, "ob", 1).unwrap();
    for r in a.rejected.iter().chain(&kept) {
        assert!(r.reason.len() <= crate::text::REASON_BYTES + 64, "{}", r.reason.len());
        assert!(!r.reason.chars().any(char::is_control), "{:?}", r.reason);
    }
    assert!(a.rejected[0].reason.contains("truncated"), "{}", a.rejected[0].reason);
}

#[test]
fn the_store_is_private_whatever_was_there_before() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("new/hub/store.db");
    let store = Store::open(&path).unwrap();
    apply(&store, "ob", &[1]);
    assert_eq!(mode(&d.path().join("new")), 0o700);
    assert_eq!(mode(&d.path().join("new/hub")), 0o700);
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        assert_eq!(mode(&d.path().join("new/hub").join(f)), 0o600, "{f}");
    }
    // Files made world-readable (by an older hub) are made private again
    // when the store is opened.
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        std::fs::set_permissions(d.path().join("new/hub").join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let again = Store::open(&path).unwrap();
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        assert_eq!(mode(&d.path().join("new/hub").join(f)), 0o600, "{f}");
    }
    drop((again, store));
}

/// A store made before 16 KiB pages keeps its 4 KiB pages and its records,
/// and still checkpoints every 128 MiB of WAL; a new one gets 16 KiB pages.
#[test]
fn a_store_with_4_kib_pages_keeps_them_and_its_records() {
    let page_and_checkpoint = |store: &Store| {
        let conn = store.lock();
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let every: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        (page, every)
    };
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("store.db");
    {
        // What SQLite made by default: the page size is fixed by the first
        // write (here the switch to WAL).
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(apply(&store, "box-1", &[1, 2, 3]).stored, 3);
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(page_and_checkpoint(&store), (4096, 32768));
    assert_eq!(stored_seqs(&store), vec![1, 2, 3]);
    assert_eq!(apply(&store, "box-1", &[3, 4]).stored, 1);
    assert_eq!(stored_seqs(&store), vec![1, 2, 3, 4]);

    let (_d, fresh) = scratch();
    assert_eq!(page_and_checkpoint(&fresh), (16 << 10, (128 << 20) / (16 << 10)));
}

/// A batch's accepted changes go in by statements of 64, 8 and 1 rows: each
/// gets the next hub sequence in sequence order, `current` points at its
/// own feed row, and a hub sequence is not used again after the feed's
/// highest row is compacted away.
#[test]
fn every_accepted_change_gets_the_next_hub_sequence_whatever_the_batch() {
    let (_d, store) = scratch();
    // 1..=150: two statements of 64, two of 8, six of one; 30 is rejected
    // (a resource the catalog lacks) and 31 was lost by the agent.
    let mut batch = people(&(1..=150).collect::<Vec<_>>());
    batch[29] = entry(30, "0000000/0000", &citizen(30), Operation::Upsert);
    batch[30].record.clear();
    let applied = store
        .apply(GAJ, "box-1", &prepare(GAJ, batch, &catalog(), MAX_VALUE))
        .unwrap();
    assert_eq!(
        (applied.stored, applied.rejected.len(), applied.lost, applied.hwm),
        (148, 1, 1, 150)
    );
    assert_eq!(apply(&store, "box-1", &[151, 152, 153]).stored, 3);
    let stored: Vec<i64> = (1..=153).filter(|s| ![30, 31].contains(s)).collect();
    {
        let conn = store.lock();
        let feed: Vec<(i64, i64)> = conn
            .prepare("SELECT hseq, seq FROM feed ORDER BY hseq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want: Vec<(i64, i64)> = stored.iter().enumerate().map(|(i, &s)| (i as i64 + 1, s)).collect();
        assert_eq!(feed, want);
        let astray: i64 = conn
            .query_row(
                "SELECT count(*) FROM current c LEFT JOIN feed f ON f.hseq = c.hseq
                 WHERE f.box IS NOT c.box OR f.seq IS NOT c.seq",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(astray, 0, "current points at its own feed rows");
    }
    assert_eq!(stored_seqs(&store), stored);
    assert_eq!(*store.watch().borrow(), stored.len() as u64);

    // The last change deletes a key: compaction removes its feed row, the
    // highest; the next change still gets a new hub sequence.
    let last = stored.len() as i64;
    let delete = vec![entry(154, PEOPLE, &citizen(153), Operation::Delete)];
    assert_eq!(
        store
            .apply(GAJ, "box-1", &prepare(GAJ, delete, &catalog(), MAX_VALUE))
            .unwrap()
            .stored,
        1
    );
    assert!(store.compact(std::time::Duration::ZERO).unwrap() > 0);
    let highest: i64 = store
        .lock()
        .query_row("SELECT coalesce(max(hseq), 0) FROM feed", [], |r| r.get(0))
        .unwrap();
    assert!(highest < last + 1, "the delete's row {} is compacted away", last + 1);
    assert_eq!(apply(&store, "box-1", &[155]).stored, 1);
    let newest: i64 = store
        .lock()
        .query_row("SELECT max(hseq) FROM feed", [], |r| r.get(0))
        .unwrap();
    assert_eq!(newest, last + 2);
}

/// In one batch, the same key several times (inside one statement of many
/// rows and across statements) and deletes between upserts: `current` ends
/// as if each change were applied alone, in sequence order.
#[test]
fn current_follows_sequence_order_within_a_batch() {
    let (_d, store) = scratch();
    let key = |k: u64| citizen(k);
    let mut batch = Vec::new();
    let mut last_seq_of = std::collections::BTreeMap::new();
    let mut seq = 0;
    // 100 upserts over ten keys, a delete of key 3 and of key 4, key 3
    // upserted again, then 20 more upserts that skip keys 3 and 4.
    for i in 0..100 {
        seq += 1;
        batch.push(entry(seq, PEOPLE, &key(i % 10), Operation::Upsert));
        last_seq_of.insert(i % 10, seq);
    }
    for k in [3, 4] {
        seq += 1;
        batch.push(entry(seq, PEOPLE, &key(k), Operation::Delete));
        last_seq_of.remove(&k);
    }
    seq += 1;
    batch.push(entry(seq, PEOPLE, &key(3), Operation::Upsert));
    last_seq_of.insert(3, seq);
    for i in 0..20u64 {
        let k = [0, 1, 2, 5, 6, 7, 8, 9][(i % 8) as usize];
        seq += 1;
        batch.push(entry(seq, PEOPLE, &key(k), Operation::Upsert));
        last_seq_of.insert(k, seq);
    }
    let applied = store
        .apply(GAJ, "box-1", &prepare(GAJ, batch, &catalog(), MAX_VALUE))
        .unwrap();
    assert_eq!(applied.stored, seq);
    let current: std::collections::BTreeMap<String, i64> = export(&store, false)
        .iter()
        .map(|l| (l["key"][0].as_str().unwrap().to_owned(), l["seq"].as_i64().unwrap()))
        .collect();
    let want: std::collections::BTreeMap<String, i64> = last_seq_of.iter().map(|(&k, &s)| (key(k), s as i64)).collect();
    assert_eq!(current, want);
    assert!(!current.contains_key(&key(4)), "deleted and not upserted again");
}

#[test]
fn values_numbers_each_rows_own_parameters_in_turn() {
    assert_eq!(values(1, 2, "(#, ?1, #)"), "(?2, ?1, ?3)");
    assert_eq!(values(3, 3, "(?1, #, ?2)"), "(?1, ?3, ?2), (?1, ?4, ?2), (?1, ?5, ?2)");
}

/// `current`'s columns as every store declared them before
/// [`CURRENT_COLUMNS`].
const STRICT_CURRENT_COLUMNS: &str = "resource TEXT NOT NULL, key TEXT NOT NULL, box INTEGER NOT NULL, \
     seq INTEGER NOT NULL, hseq INTEGER, PRIMARY KEY (resource, key)";

/// A store whose `current` declares `box` and `seq` NOT NULL (every store
/// made before the upsert lost its statement journal) gets the relaxed
/// table at open, with every row and the snapshot index, and goes on
/// updating and deleting state.
#[test]
fn a_current_with_not_null_columns_is_rebuilt_with_its_rows() {
    let not_null = |store: &Store| -> Vec<String> {
        let conn = store.lock();
        conn.prepare("SELECT name FROM pragma_table_info('current') WHERE \"notnull\" ORDER BY cid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("store.db");
    let before = {
        let store = Store::open(&path).unwrap();
        assert_eq!(not_null(&store), ["resource", "key"]);
        assert_eq!(apply(&store, "box-1", &[1, 2, 3, 4]).stored, 4);
        // Make `current` the previous version's table, rows and index.
        store
            .lock()
            .execute_batch(&format!(
                "CREATE TABLE old_current ({STRICT_CURRENT_COLUMNS}) WITHOUT ROWID;
                 INSERT INTO old_current SELECT resource, key, box, seq, hseq FROM current;
                 DROP TABLE current;
                 ALTER TABLE old_current RENAME TO current;
                 CREATE INDEX current_by_hseq ON current (resource, hseq);",
            ))
            .unwrap();
        assert_eq!(not_null(&store), ["resource", "key", "box", "seq"]);
        (export(&store, false), current_rows(&store))
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(not_null(&store), ["resource", "key"]);
    assert_eq!((export(&store, false), current_rows(&store)), before);
    let index: i64 = store
        .lock()
        .query_row(
            "SELECT count(*) FROM pragma_index_list('current') WHERE name = 'current_by_hseq'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1);
    // Seq 5 adds a key, 6 deletes seq 1's and 7 updates seq 2's.
    let mut batch = people(&[5]);
    batch.push(entry(6, PEOPLE, &citizen(1), Operation::Delete));
    batch.push(entry(7, PEOPLE, &citizen(2), Operation::Upsert));
    let applied = store
        .apply(GAJ, "box-1", &prepare(GAJ, batch, &catalog(), MAX_VALUE))
        .unwrap();
    assert_eq!((applied.stored, applied.hwm), (3, 7));
    let mut seqs: Vec<i64> = export(&store, false)
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [3, 4, 5, 7]);
}

/// Every column of every `current` row, in key order.
fn current_rows(store: &Store) -> Vec<(String, String, i64, i64, i64)> {
    store
        .lock()
        .prepare("SELECT resource, key, box, seq, hseq FROM current ORDER BY resource, key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The upsert into `current` has no constraint check that ABORTs (its
/// `DO UPDATE` checks with ABORT whatever the statement says), so SQLite
/// keeps no statement journal for it. The same statement on the table as it
/// was declared before has two, the NULL checks of `box` and `seq`.
#[test]
fn the_upsert_into_current_checks_no_constraint_that_could_abort_it() {
    const OE_ABORT: i64 = 2;
    let aborting = |conn: &Connection| -> usize {
        let mut explain = conn.prepare(&format!("EXPLAIN {}", insert_sql(64).upsert)).unwrap();
        // EXPLAIN runs nothing: its parameters stay unbound.
        let mut rows = explain.raw_query();
        let mut n = 0;
        while let Some(row) = rows.next().unwrap() {
            let (op, p2): (String, i64) = (row.get(1).unwrap(), row.get(3).unwrap());
            n += usize::from(op.starts_with("Halt") && p2 == OE_ABORT);
        }
        n
    };
    let (_d, store) = scratch();
    assert_eq!(aborting(&store.lock()), 0);
    let old = Connection::open_in_memory().unwrap();
    old.execute_batch(&format!(
        "CREATE TABLE current ({STRICT_CURRENT_COLUMNS}) WITHOUT ROWID;"
    ))
    .unwrap();
    assert_eq!(aborting(&old), 2);
}

/// A group committed without an fsync is shown to no one: receivers' reads
/// and the hub sequence they wait on stay below it until a sync, and a
/// Welcome that reports it syncs it first. A process that committed and
/// died before its sync leaves the group to the next one, which syncs it
/// at open.
#[test]
fn a_group_committed_without_its_sync_is_shown_to_no_one() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("hub/store.db");
    let store = Store::open(&path).unwrap();
    let mut reader = store.reader().unwrap();
    let shown = |reader: &mut feed::Reader| {
        let feed = match reader.feed(PEOPLE, 0, 100).unwrap() {
            feed::Feed::Changes(rows) => rows.len(),
            feed::Feed::Compacted { .. } => panic!("nothing was compacted"),
        };
        let snapshot = reader.snapshot(PEOPLE, 0, u64::MAX, 100, || Ok(())).unwrap().len();
        (
            reader.latest(PEOPLE).unwrap(),
            feed,
            snapshot,
            reader.behind(PEOPLE, 0, 100).unwrap(),
        )
    };

    let applied = store
        .apply_unsynced(GAJ, "ob", &prepare(GAJ, people(&[1, 2]), &catalog(), MAX_VALUE))
        .unwrap();
    assert_eq!((applied.stored, applied.hwm), (2, 2));
    assert_eq!(*store.watch().borrow(), 0);
    assert_eq!(shown(&mut reader), (0, 0, 0, 0));
    // A snapshot piece syncs between pinning its read and reading: the
    // group it sees is durable, so it is in the piece.
    let piece = reader.snapshot(PEOPLE, 0, u64::MAX, 100, || store.sync()).unwrap();
    assert_eq!(piece.len(), 2);
    assert_eq!(*store.watch().borrow(), 2);
    assert_eq!(shown(&mut reader), (2, 2, 2, 2));

    store.sync().unwrap();
    assert_eq!(*store.watch().borrow(), 2);
    assert_eq!(shown(&mut reader), (2, 2, 2, 2));

    store
        .apply_unsynced(GAJ, "ob", &prepare(GAJ, people(&[3]), &catalog(), MAX_VALUE))
        .unwrap();
    assert_eq!(shown(&mut reader), (2, 2, 2, 2));
    let (hwm, _) = store.welcome(GAJ, "ob", 1).unwrap();
    assert_eq!(hwm, 3);
    assert_eq!(*store.watch().borrow(), 3, "the Welcome synced what it reported");
    assert_eq!(shown(&mut reader), (3, 3, 3, 3));

    store
        .apply_unsynced(GAJ, "ob", &prepare(GAJ, people(&[4]), &catalog(), MAX_VALUE))
        .unwrap();
    drop(reader);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(*store.watch().borrow(), 4, "synced at open");
    assert_eq!(shown(&mut store.reader().unwrap()), (4, 4, 4, 4));
}

/// The sync reaches the WAL file at the store's path, even after that file
/// was replaced, and a missing WAL has nothing to sync.
#[test]
fn the_wal_synced_is_the_file_at_its_path() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("store.db");
    let wal = sidecar(&db, "-wal");
    let mut held = None;
    let e = current_wal(&db, &mut held).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    std::fs::write(&wal, b"first").unwrap();
    let first = current_wal(&db, &mut held).unwrap().metadata().unwrap().ino();
    assert_eq!(current_wal(&db, &mut held).unwrap().metadata().unwrap().ino(), first);
    // Another file under the name, while the first is still open.
    std::fs::write(d.path().join("next"), b"second").unwrap();
    std::fs::rename(d.path().join("next"), &wal).unwrap();
    let second = current_wal(&db, &mut held).unwrap().metadata().unwrap();
    assert_ne!(second.ino(), first);
    assert_eq!(second.ino(), std::fs::metadata(&wal).unwrap().ino());
}

/// After a failed fsync nothing more counts as durable: every later sync,
/// and so every Welcome and ack, fails, though the writes still commit.
#[test]
fn a_failed_sync_is_final() {
    let (_d, store) = scratch();
    store
        .apply_unsynced(GAJ, "ob", &prepare(GAJ, people(&[1]), &catalog(), MAX_VALUE))
        .unwrap();
    store.fail("an fsync of the WAL failed: Input/output error (os error 5)".into());
    let e = store.sync().unwrap_err().to_string();
    assert!(e.contains("syncs nothing more until the hub is restarted"), "{e}");
    assert!(store.welcome(GAJ, "ob", 1).is_err());
    store
        .apply_unsynced(GAJ, "ob", &prepare(GAJ, people(&[2]), &catalog(), MAX_VALUE))
        .unwrap();
    assert!(store.sync().is_err());
    assert_eq!(*store.watch().borrow(), 0, "nothing shown to receivers");
}
