use super::sql::*;
use super::*;

#[test]
fn ranges_round_trip() {
    let ids = [7, 3, 4, 5, 10, 11, 20];
    let r = ranges(&ids);
    assert_eq!(r, vec![(3, 5), (7, 7), (10, 11), (20, 20)]);
    assert!(ranges(&[]).is_empty());
    assert_eq!(
        forget_sql(&r),
        vec![format!(
            "DELETE FROM {LOG_TABLE} WHERE id BETWEEN 3 AND 5 OR id = 7 OR id BETWEEN 10 AND 11 OR id = 20"
        )]
    );
    assert_eq!(forget_sql(&vec![(1, 1); 600]).len(), 3);
}

#[test]
fn quoting_follows_the_dialect() {
    assert_eq!(quote(DbKind::Postgres, "hr.people"), "\"hr\".\"people\"");
    assert_eq!(quote(DbKind::Mysql, "people"), "`people`");
    assert_eq!(literal("o'k"), "'o''k'");
}
