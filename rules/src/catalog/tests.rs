use super::*;
use proto::v1::Record;
use proto::view::RecordView;

const CATALOG: &str = r#"
[[resource]]
code = "320282001/00001"
name = "人口基本信息"
provider = "AG1"
sharing = "无条件共享"
cycle = "实时"
[[resource.item]]
id = "DE00001"
name = "公民身份号码"
key = true
required = true
[[resource.item]]
id = "DE00002"
name = "姓名"
required = true
[[resource.item]]
id = "DE00003"
name = "出生日期"
type = "date"
"#;

fn record(items: &[(&str, &str)], key: &str) -> Record {
    Record {
        resource: "320282001/00001".into(),
        key: vec![key.into()],
        op: Operation::Upsert as i32,
        items: items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn parses_and_checks_records() {
    let catalog = Catalog::from_toml_str(CATALOG).unwrap();
    let r = catalog.resource("320282001/00001").unwrap();
    assert_eq!(r.provider, "AG1");
    assert_eq!(catalog.digest().len(), 64);
    let ok = record(&[("DE00001", "1"), ("DE00002", "张三"), ("DE00003", "19900101")], "1");
    assert_eq!(r.check("AG1", &RecordView::of(&ok)), Ok(()));
    assert_eq!(
        r.check("AG2", &RecordView::of(&ok)).unwrap_err().code,
        RejectCode::NotProvider
    );
    let missing = record(&[("DE00001", "1")], "1");
    assert!(
        r.check("AG1", &RecordView::of(&missing))
            .unwrap_err()
            .reason
            .contains("DE00002")
    );
    let bad_date = record(&[("DE00001", "1"), ("DE00002", "x"), ("DE00003", "1990-01-01")], "1");
    assert!(
        r.check("AG1", &RecordView::of(&bad_date))
            .unwrap_err()
            .reason
            .contains("NOT_CANONICAL")
    );
    assert!(
        r.check("AG1", &RecordView::of(&bad_date))
            .unwrap_err()
            .reason
            .contains("DE00003")
    );
    let unknown = record(&[("DE00001", "1"), ("DE00002", "x"), ("DE09999", "1")], "1");
    assert!(
        r.check("AG1", &RecordView::of(&unknown))
            .unwrap_err()
            .reason
            .contains("DE09999")
    );
    let key_mismatch = record(&[("DE00001", "1"), ("DE00002", "x")], "2");
    assert!(r.check("AG1", &RecordView::of(&key_mismatch)).is_err());
    let mut delete = record(&[], "1");
    delete.op = Operation::Delete as i32;
    assert_eq!(r.check("AG1", &RecordView::of(&delete)), Ok(()));
}

#[test]
fn refuses_bad_catalogs() {
    let no_key = CATALOG.replace("key = true\n", "");
    assert!(Catalog::from_toml_str(&no_key).unwrap_err().to_string().contains("key"));
    let bad_sharing = CATALOG.replace("无条件共享", "随便");
    assert!(
        Catalog::from_toml_str(&bad_sharing)
            .unwrap_err()
            .to_string()
            .contains("line")
    );
    let twice = format!("{CATALOG}{}", &CATALOG[CATALOG.find("[[resource]]").unwrap()..]);
    assert!(
        Catalog::from_toml_str(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
}

#[test]
fn canonical_forms() {
    let cases = [
        (ItemType::Integer, "007", Some("7")),
        (ItemType::Integer, "-0", Some("0")),
        (ItemType::Integer, "+12", Some("12")),
        (ItemType::Integer, "1e5", None),
        (ItemType::Decimal, "12.50", Some("12.5")),
        (ItemType::Decimal, ".5", Some("0.5")),
        (ItemType::Decimal, "3.", None),
        (ItemType::Date, "2016-06-23", Some("20160623")),
        (ItemType::Date, "20000229", Some("20000229")),
        (ItemType::Date, "19000229", None),
        (ItemType::Date, "2016-6-23", Some("20160623")),
        (ItemType::Date, "16-6-23", None),
        (ItemType::Datetime, "2016-06-23 14:05:00", Some("20160623140500")),
        (ItemType::Datetime, "20160623250000", None),
    ];
    for (kind, raw, want) in cases {
        assert_eq!(canonical(kind, raw).ok().as_deref(), want, "{kind:?} {raw:?}");
    }
}

#[test]
fn items_bind_builtin_and_custom_elements() {
    let text = r#"
[[element]]
id = "ZJLX"
name = "证件类型代码"
codes = ["111", "414"]
standard = "GA/T 2000.156"

[[element]]
id = "FKJE"
name = "罚款金额"
type = "decimal"
scale = 2

[[element]]
id = "CPH"
name = "车牌号"
pattern = "[京津沪渝苏浙][A-Z][A-Z0-9]{5}"
max_len = 7

[[resource]]
code = "R"
name = "r"
provider = "AG1"
sharing = "无条件共享"
cycle = "每日"
[[resource.item]]
id = "A"
name = "公民身份号码"
element = "GMSFHM"
key = true
required = true
[[resource.item]]
id = "B"
name = "证件类型"
element = "ZJLX"
[[resource.item]]
id = "C"
name = "车牌"
element = "CPH"
[[resource.item]]
id = "D"
name = "罚款"
element = "FKJE"
"#;
    let c = Catalog::from_toml_str(text).unwrap();
    let r = c.resource("R").unwrap();
    let norm = |id: &str, v: &str| r.item(id).unwrap().normalize(v).map(|n| n.value).map_err(|e| e.code);
    assert_eq!(norm("A", "32028219960615118x"), Ok("32028219960615118X".into()));
    assert_eq!(norm("A", "320282199001019990"), Err("CHECK_DIGIT"));
    assert_eq!(norm("B", "414"), Ok("414".into()));
    assert_eq!(norm("B", "999"), Err("CODE_SET"));
    assert_eq!(norm("C", "苏B12345"), Ok("苏B12345".into()));
    assert_eq!(norm("C", "苏b12345"), Err("PATTERN"));
    assert_eq!(norm("D", "200"), Ok("200.00".into()));
    assert_eq!(norm("D", "1.234"), Err("AMOUNT"));
    let unknown = text.replace("element = \"CPH\"", "element = \"NOPE\"");
    assert!(
        Catalog::from_toml_str(&unknown)
            .unwrap_err()
            .to_string()
            .contains("NOPE")
    );
}
