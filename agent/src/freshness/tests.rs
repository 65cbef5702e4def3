use super::*;

#[test]
fn overdue_after_the_cycle_and_counted_from_creation_when_never_changed() {
    let catalog = Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
    let day = 24 * 3600 * 1_000_000i64;
    let mut t = Tracker::new(&catalog, "320282-scjgj", [], 0);
    // 法人基本信息 is 每日: fresh for a day after creation, then overdue.
    assert!(!t.report(day / 2)[0].overdue);
    assert!(t.report(2 * day)[0].overdue);
    t.changed("2010100/0001", 2 * day);
    let r = &t.report(2 * day + 1)[0];
    assert_eq!(
        (r.overdue, r.last_change_us, r.cycle.as_str()),
        (false, Some(2 * day), "每日")
    );
    assert!(t.report(4 * day)[0].overdue);
}
