//! The data-element rules on arbitrary text: every built-in element, every
//! item of the example catalog (and of a catalog using the custom and
//! type-only rules), a whole people row through `Mapping::normalize`, and
//! `Resource::check` on a `Record` read from the input bytes as the hub
//! reads it (`RecordView`).
//!
//! Invariants: a canonical value normalizes to itself (what the hub's
//! `Item::check` relies on), is trimmed and not empty; `is_canonical` says
//! true exactly when `normalize` keeps a value as it is, with no warning; a record the agent
//! makes passes the hub's check; the hub's `RecordView` reads what prost
//! decodes, alike, and refuses only what prost refuses or a group; nothing
//! panics.

#![no_main]

use std::borrow::Cow;

use rules::catalog::{ItemType, canonical};
use agent::normalize::Transform;
use rules::element::DICTIONARY;
use agent::normalize::{Field, Mapping, Origin, Outcome, trim};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1::Operation;
use proto::view::RecordView;
use qianzhi_fuzz::{AGENCY, PEOPLE, catalog, check_record, people_source, rules_catalog};

fn mappings() -> &'static [Mapping] {
    static MAPPINGS: std::sync::OnceLock<Vec<Mapping>> = std::sync::OnceLock::new();
    MAPPINGS.get_or_init(|| {
        let resource = catalog().resource(PEOPLE).expect("people resource");
        let plain = people_source(Some("操作"));
        // The transforms deploy/agent.example.toml shows, and the others.
        let mut transformed = people_source(Some("操作"));
        transformed.transforms = [
            (
                "联系电话".to_owned(),
                vec![Transform::StripPrefix("电话:".into()), Transform::RemoveSpaces],
            ),
            (
                "性别".to_owned(),
                vec![
                    Transform::Map("M".into(), "1".into()),
                    Transform::Map("F".into(), "2".into()),
                ],
            ),
            (
                "公民身份号码".to_owned(),
                vec![Transform::Upper, Transform::StripSuffix("号".into())],
            ),
            ("民族".to_owned(), vec![Transform::DigitsOnly]),
            ("姓名".to_owned(), vec![Transform::Lower]),
        ]
        .into();
        vec![
            Mapping::new(AGENCY, "people", &plain, resource),
            Mapping::new(AGENCY, "people", &transformed, resource),
        ]
    })
}

/// A canonical value is trimmed, not empty, and its own canonical form.
fn fixed_point(what: &str, raw: &str, canonical: &str, again: Result<String, String>) {
    assert!(!canonical.is_empty(), "{what}: {raw:?} normalizes to an empty value");
    assert_eq!(
        trim(canonical),
        canonical,
        "{what}: {raw:?} normalizes to an untrimmed value"
    );
    assert_eq!(
        again.as_deref(),
        Ok(canonical),
        "{what}: {raw:?} normalizes to {canonical:?}, which does not normalize to itself"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let value = trim(&text);
    if !value.is_empty() {
        for e in DICTIONARY {
            let keeps = matches!(e.rule.normalize(e.name, value), Ok(n) if n.value == value && n.warnings.is_empty());
            assert_eq!(e.rule.is_canonical(value), keeps, "{}: is_canonical({value:?})", e.id);
            if let Ok(n) = e.rule.normalize(e.name, value) {
                let again = e
                    .rule
                    .normalize(e.name, &n.value)
                    .map(|m| m.value)
                    .map_err(|i| i.to_string());
                fixed_point(e.id, value, &n.value, again);
            }
        }
        for catalog in [catalog(), rules_catalog()] {
            for resource in catalog.resources() {
                for item in resource.items() {
                    let keeps = matches!(item.normalize(value), Ok(n) if n.value == value && n.warnings.is_empty());
                    assert_eq!(item.is_canonical(value), keeps, "{}: is_canonical({value:?})", item.id);
                    if let Ok(n) = item.normalize(value) {
                        let again = item
                            .check(&n.value)
                            .map(|()| n.value.clone())
                            .map_err(|i| i.to_string());
                        fixed_point(&item.id, value, &n.value, again);
                    }
                }
            }
        }
        for kind in [
            ItemType::String,
            ItemType::Integer,
            ItemType::Decimal,
            ItemType::Date,
            ItemType::Datetime,
        ] {
            if let Ok(c) = canonical(kind, value) {
                fixed_point(&format!("{kind:?}"), value, &c, canonical(kind, &c));
            }
        }
    }

    // A row: the eight people columns and the operation, split at '|'
    // (an empty cell is an absent value, as a CSV reader gives it).
    let fields: Vec<Field<'_>> = text
        .split('|')
        .map(|v| (!v.is_empty()).then_some(Ok(Cow::Borrowed(v))))
        .chain(std::iter::repeat(None))
        .take(9)
        .collect();
    let origin = Origin {
        object: "fuzz",
        line: 2,
    };
    for mapping in mappings() {
        for given in [None, Some(Operation::Upsert), Some(Operation::Delete)] {
            if let Outcome::Record { bytes, .. } = mapping.normalize_as(&fields, origin, 0, given) {
                check_record(&bytes);
            }
        }
    }

    // The hub's check of a record as it arrives, read in place; the same
    // bytes mean the same record to the subscribers, who decode with prost.
    let view = RecordView::decode(data);
    match (&view, proto::v1::Record::decode(data)) {
        (Ok(view), Ok(record)) => assert_eq!(*view, RecordView::of(&record), "the view and prost differ"),
        (Ok(view), Err(e)) => panic!("the view read {view:?} where prost refused: {e}"),
        (Err(e), Ok(_)) => assert!(e.to_string().contains("group"), "the view refused ({e}) what prost decodes"),
        (Err(_), Err(_)) => {}
    }
    if let Ok(record) = view {
        for catalog in [catalog(), rules_catalog()] {
            for resource in catalog.resources() {
                let _ = resource.check(&resource.provider, &record);
                let _ = resource.check("other-agency", &record);
            }
        }
    }
});
