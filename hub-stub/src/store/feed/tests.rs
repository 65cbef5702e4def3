use std::time::Duration;

use prost::Message;
use proto::v1::{Entry, Operation, Record};
use rules::catalog::Catalog;

use super::*;
use crate::store::prepare;

const GAJ: &str = "320282-gaj";
const PEOPLE: &str = "1010100/0001";
/// Valid citizen ids (GB 11643 check digits).
const IDS: [&str; 3] = ["320282199001019995", "320282199512319981", "11010519491231002X"];

fn catalog() -> Catalog {
    Catalog::from_toml_str(include_str!("../../../../deploy/catalog.example.toml")).unwrap()
}

fn entry(seq: u64, key: &str, name: &str, op: Operation) -> Entry {
    let mut items = std::collections::BTreeMap::new();
    items.insert("DE00001".to_owned(), key.to_owned());
    if op == Operation::Upsert {
        items.insert("DE00002".to_owned(), name.to_owned());
    }
    Entry {
        seq,
        record: Record {
            resource: PEOPLE.into(),
            key: vec![key.into()],
            op: op as i32,
            items,
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("store.db")).unwrap();
    (dir, s)
}

fn apply(s: &Store, entries: Vec<Entry>) {
    let applied = s.apply(GAJ, "ob", &prepare(GAJ, entries, &catalog(), 1 << 16)).unwrap();
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
}

/// A receiver's position as `Store::subscribed` takes it.
fn at(agency: &str, position: u64, agreement: &str) -> Delivery {
    Delivery {
        agency: agency.into(),
        resource: PEOPLE.into(),
        provider: GAJ.into(),
        agreement: agreement.into(),
        from: 0,
        to: position,
        records: 0,
    }
}

fn names(rows: &[Stored]) -> Vec<(u64, String)> {
    rows.iter()
        .map(|r| {
            let rec = Record::decode(r.record.as_slice()).unwrap();
            (r.hseq, rec.items.get("DE00002").cloned().unwrap_or_default())
        })
        .collect()
}

#[test]
fn the_feed_numbers_every_change_in_commit_order_and_wakes_watchers() {
    let (_d, s) = store();
    let mut watch = s.watch();
    apply(
        &s,
        vec![
            entry(1, IDS[0], "a", Operation::Upsert),
            entry(2, IDS[1], "b", Operation::Upsert),
            entry(3, IDS[0], "", Operation::Delete),
        ],
    );
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 3);
    let mut r = s.reader().unwrap();
    let Feed::Changes(rows) = r.feed(PEOPLE, 0, 10).unwrap() else {
        panic!("not compacted")
    };
    assert_eq!(names(&rows), [(1, "a".into()), (2, "b".into()), (3, String::new())]);
    let Feed::Changes(rows) = r.feed(PEOPLE, 2, 10).unwrap() else {
        panic!("not compacted")
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].provider, GAJ);
    assert_eq!(r.latest(PEOPLE).unwrap(), 3);
    assert_eq!(r.latest("2010100/0001").unwrap(), 0);
}

#[test]
fn a_snapshot_holds_current_rows_up_to_its_end_and_leaves_later_changes_to_the_feed() {
    let (_d, s) = store();
    apply(
        &s,
        vec![
            entry(1, IDS[0], "a1", Operation::Upsert),
            entry(2, IDS[1], "b1", Operation::Upsert),
            entry(3, IDS[2], "c1", Operation::Upsert),
            entry(4, IDS[0], "a2", Operation::Upsert),
        ],
    );
    let mut r = s.reader().unwrap();
    let upto = r.latest(PEOPLE).unwrap();
    // In pieces of one: b1 (2), c1 (3), a2 (4).
    let first = r.snapshot(PEOPLE, 0, upto, 1, || s.sync()).unwrap();
    assert_eq!(names(&first), [(2, "b1".into())]);
    // c changes after the snapshot started: it leaves the snapshot and
    // comes with the feed after its end.
    apply(&s, vec![entry(5, IDS[2], "c2", Operation::Upsert)]);
    let rest = r.snapshot(PEOPLE, 2, upto, 10, || s.sync()).unwrap();
    assert_eq!(names(&rest), [(4, "a2".into())]);
    let Feed::Changes(after) = r.feed(PEOPLE, upto, 10).unwrap() else {
        panic!("not compacted")
    };
    assert_eq!(names(&after), [(5, "c2".into())]);
}

#[test]
fn compaction_keeps_what_a_receiver_needs_and_sends_one_that_fell_behind_to_a_snapshot() {
    let (_d, s) = store();
    apply(
        &s,
        vec![
            entry(1, IDS[0], "a1", Operation::Upsert),
            entry(2, IDS[0], "a2", Operation::Upsert),
            entry(3, IDS[1], "b1", Operation::Upsert),
            entry(4, IDS[1], "", Operation::Delete),
            entry(5, IDS[0], "a3", Operation::Upsert),
        ],
    );
    // A receiver that applied up to 2 holds back 3..=5.
    s.subscribed(&at("320282-mzj", 2, "XY-1")).unwrap();
    assert_eq!(
        s.compact(Duration::from_secs(3600)).unwrap(),
        2,
        "1 and 2 are superseded and applied"
    );
    let mut r = s.reader().unwrap();
    assert!(matches!(r.feed(PEOPLE, 2, 10).unwrap(), Feed::Changes(rows) if rows.len() == 3));
    assert!(matches!(r.feed(PEOPLE, 1, 10).unwrap(), Feed::Compacted { horizon: 2 }));
    // The current state survives whatever is compacted.
    s.delivered(&Delivery {
        agency: "320282-mzj".into(),
        resource: PEOPLE.into(),
        provider: GAJ.into(),
        agreement: "XY-1".into(),
        from: 3,
        to: 5,
        records: 3,
    })
    .unwrap();
    assert_eq!(s.compact(Duration::from_secs(3600)).unwrap(), 2, "3 and 4");
    let current = r.snapshot(PEOPLE, 0, 5, 10, || s.sync()).unwrap();
    assert_eq!(names(&current), [(5, "a3".into())]);
    // A receiver silent for longer than `keep` holds nothing back.
    s.subscribed(&at("320282-rsj", 0, "")).unwrap();
    apply(&s, vec![entry(6, IDS[0], "a4", Operation::Upsert)]);
    assert_eq!(s.compact(Duration::ZERO).unwrap(), 1, "5 is superseded by 6");
    assert!(matches!(r.feed(PEOPLE, 0, 10).unwrap(), Feed::Compacted { horizon: 6 }));
    let report = s.report().unwrap();
    let mzj = report.received.iter().find(|x| x.agency == "320282-mzj").unwrap();
    assert_eq!((mzj.records, mzj.applied_seq, mzj.behind), (3, 5, 1));
}

#[test]
fn a_store_from_before_the_feed_gets_one_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let s = Store::open(&path).unwrap();
        apply(
            &s,
            vec![
                entry(1, IDS[0], "a1", Operation::Upsert),
                entry(2, IDS[1], "b1", Operation::Upsert),
                entry(3, IDS[0], "a2", Operation::Upsert),
            ],
        );
    }
    // Make it look like a store from before the feed: no feed, and
    // `current` as it was then (no hseq, NOT NULL box and seq).
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TABLE feed; DELETE FROM sqlite_sequence WHERE name = 'feed';
         CREATE TABLE old_current (
             resource TEXT NOT NULL, key TEXT NOT NULL, box INTEGER NOT NULL, seq INTEGER NOT NULL,
             PRIMARY KEY (resource, key)) WITHOUT ROWID;
         INSERT INTO old_current SELECT resource, key, box, seq FROM current;
         DROP TABLE current;
         ALTER TABLE old_current RENAME TO current;",
    )
    .unwrap();
    drop(c);
    let s = Store::open(&path).unwrap();
    assert_eq!(*s.watch().borrow(), 3);
    let mut r = s.reader().unwrap();
    let snap = r.snapshot(PEOPLE, 0, 3, 10, || s.sync()).unwrap();
    assert_eq!(names(&snap), [(2, "b1".into()), (3, "a2".into())]);
}

#[test]
fn acknowledgements_lost_with_the_hub_are_counted_when_the_receiver_returns() {
    let (_d, s) = store();
    apply(
        &s,
        vec![
            entry(1, IDS[0], "a1", Operation::Upsert),
            entry(2, IDS[1], "b1", Operation::Upsert),
            entry(3, IDS[2], "c1", Operation::Upsert),
        ],
    );
    s.subscribed(&at("320282-mzj", 0, "XY-1")).unwrap();
    s.delivered(&Delivery {
        from: 1,
        to: 1,
        records: 1,
        ..at("320282-mzj", 0, "XY-1")
    })
    .unwrap();
    // The hub stopped before it recorded 2..=3; the receiver comes back
    // at 3.
    s.subscribed(&at("320282-mzj", 3, "XY-1")).unwrap();
    let report = s.report().unwrap();
    let mzj = &report.received[0];
    assert_eq!((mzj.records, mzj.applied_seq, mzj.behind), (3, 3, 0));
    assert_eq!(
        (mzj.providers.as_slice(), mzj.agreements.as_slice()),
        ([GAJ.to_owned()].as_slice(), ["XY-1".to_owned()].as_slice())
    );
}
