use prost::Message;
use proto::v1::{Entry, Operation, Record, RejectCode};

use super::*;

fn catalog() -> Catalog {
    Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap()
}

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
        .encode_to_vec(),
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
        .apply("320282-gaj", "ob1", &prepare("320282-gaj", batch.to_vec(), &c))
        .unwrap();
    assert_eq!((first.stored, first.hwm), (2, 2));
    let again = store
        .apply("320282-gaj", "ob1", &prepare("320282-gaj", batch.to_vec(), &c))
        .unwrap();
    assert_eq!((again.stored, again.replayed, again.hwm), (0, 2, 2));
    let more = [entry(2, r, B, Operation::Upsert), entry(3, r, A, Operation::Delete)];
    let applied = store
        .apply("320282-gaj", "ob1", &prepare("320282-gaj", more.to_vec(), &c))
        .unwrap();
    assert_eq!((applied.stored, applied.replayed), (1, 1));
    assert_eq!(export(&store, true).len(), 3);
    let current = export(&store, false);
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["key"][0], B);
    // Another outbox of the same agency has its own sequence.
    assert_eq!(
        store
            .apply("320282-gaj", "ob2", &prepare("320282-gaj", batch[..1].to_vec(), &c))
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
        .apply("320282-gaj", "ob1", &prepare("320282-gaj", batch.to_vec(), &c))
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
