use super::*;

const PEOPLE: &str = "1010100/0001";
const COMPANIES: &str = "2010100/0001";
const SECRET: &str = "9990000/0001";
const GAJ: &str = "320282-gaj";
const MZJ: &str = "320282-mzj";

/// The example catalog and one 不予共享 resource.
fn catalog() -> Catalog {
    let text = format!(
        "{}\n[[resource]]\ncode = \"{SECRET}\"\nname = \"内部\"\nprovider = \"{GAJ}\"\nsharing = \"不予共享\"\ncycle = \"每日\"\n\n\
         [[resource.item]]\nid = \"DE09001\"\nname = \"编号\"\ntype = \"string\"\nkey = true\nrequired = true\n",
        include_str!("../../../deploy/catalog.example.toml")
    );
    Catalog::from_toml_str(&text).unwrap()
}

fn agreement(id: &str, items: &[&str], from: i64, until: i64) -> Agreement {
    Agreement {
        id: id.into(),
        resource: PEOPLE.into(),
        agency: MZJ.into(),
        items: items.iter().map(|s| s.to_string()).collect(),
        purpose: "低保审核".into(),
        valid_from_us: from,
        until_us: until,
        revoked_us: None,
        added_us: 0,
    }
}

#[test]
fn unconditional_is_granted_to_anyone_with_every_item() {
    let g = grant(&catalog(), MZJ, COMPANIES, &[], &[], 0).unwrap();
    assert_eq!(g.agreement, "");
    assert_eq!(g.items.len(), catalog().resource(COMPANIES).unwrap().items().len());
}

#[test]
fn not_shared_is_refused_to_all_but_the_provider() {
    let refused = grant(&catalog(), MZJ, SECRET, &[], &[], 0).unwrap_err();
    assert!(refused.contains("不予共享"), "{refused}");
    assert!(grant(&catalog(), GAJ, SECRET, &[], &[], 0).is_ok());
}

#[test]
fn conditional_needs_an_agreement_in_force_and_gives_only_its_items_and_the_key() {
    let c = catalog();
    let none = grant(&c, MZJ, PEOPLE, &[], &[], 100).unwrap_err();
    assert!(none.contains("article 21"), "{none}");
    let a = agreement("A1", &["DE00002"], 10, 1000);
    let g = grant(&c, MZJ, PEOPLE, &[], std::slice::from_ref(&a), 100).unwrap();
    assert_eq!(g.items, ["DE00001", "DE00002"]);
    assert_eq!(g.agreement, "A1");
    // Not yet, no longer, revoked, another agency's.
    assert!(grant(&c, MZJ, PEOPLE, &[], std::slice::from_ref(&a), 5).is_err());
    assert!(grant(&c, MZJ, PEOPLE, &[], std::slice::from_ref(&a), 1000).is_err());
    let revoked = Agreement {
        revoked_us: Some(50),
        ..a.clone()
    };
    assert!(grant(&c, MZJ, PEOPLE, &[], &[revoked], 100).is_err());
    assert!(grant(&c, "320282-other", PEOPLE, &[], std::slice::from_ref(&a), 100).is_err());
}

#[test]
fn fewer_items_may_be_asked_for_but_not_unknown_ones() {
    let c = catalog();
    let a = agreement("A1", &["DE00002", "DE00003"], 0, 1000);
    let g = grant(&c, MZJ, PEOPLE, &["DE00003".into()], std::slice::from_ref(&a), 1).unwrap();
    assert_eq!(g.items, ["DE00001", "DE00003"]);
    // Asking for an item outside the agreement does not get it.
    let g = grant(&c, MZJ, PEOPLE, &["DE00006".into()], std::slice::from_ref(&a), 1).unwrap();
    assert_eq!(g.items, ["DE00001"]);
    let e = grant(&c, MZJ, PEOPLE, &["DE99999".into()], &[a], 1).unwrap_err();
    assert!(e.contains("no item DE99999"), "{e}");
}

#[test]
fn filter_keeps_only_granted_items() {
    let g = Grant {
        items: vec!["DE00001".into(), "DE00002".into()],
        agreement: "A1".into(),
        provider: GAJ.into(),
    };
    let items = [("DE00001", "1"), ("DE00002", "2"), ("DE00006", "secret")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let kept = filter(items, &g);
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["DE00001", "DE00002"]);
}

#[test]
fn agreements_are_checked_against_the_catalog() {
    let c = catalog();
    assert!(check_agreement(&c, &agreement("A1", &["DE00002"], 0, 10)).is_ok());
    let on_unconditional = Agreement {
        resource: COMPANIES.into(),
        ..agreement("A2", &[], 0, 10)
    };
    assert!(
        check_agreement(&c, &on_unconditional)
            .unwrap_err()
            .contains("无条件共享")
    );
    assert!(
        check_agreement(&c, &agreement("A3", &["DE99999"], 0, 10))
            .unwrap_err()
            .contains("no item")
    );
    assert!(
        check_agreement(&c, &agreement("A4", &[], 10, 10))
            .unwrap_err()
            .contains("until")
    );
    let to_provider = Agreement {
        agency: GAJ.into(),
        ..agreement("A5", &[], 0, 10)
    };
    assert!(check_agreement(&c, &to_provider).unwrap_err().contains("provider"));
}
