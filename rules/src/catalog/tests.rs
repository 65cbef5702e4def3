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
fn items_listed_in_any_order_are_found_and_strangers_anywhere_refused() {
    // The catalog lists its items out of id order; a record's come by id.
    let shuffled = CATALOG.replace("DE00001", "DE00009").replace("DE00003", "DE00001");
    let catalog = Catalog::from_toml_str(&shuffled).unwrap();
    let r = catalog.resource("320282001/00001").unwrap();
    assert_eq!(r.item("DE00001").unwrap().name, "出生日期");
    assert_eq!(r.item("DE00009").unwrap().name, "公民身份号码");
    assert!(r.item("DE00005").is_none());
    assert_eq!(r.key_items().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["DE00009"]);
    let good = [("DE00001", "19900101"), ("DE00002", "张三"), ("DE00009", "1")];
    assert_eq!(r.check("AG1", &RecordView::of(&record(&good, "1"))), Ok(()));
    for stranger in ["A", "DE00001a", "DE00005", "Z"] {
        let mut items = good.to_vec();
        items.push((stranger, "1"));
        let e = r.check("AG1", &RecordView::of(&record(&items, "1"))).unwrap_err();
        assert!(
            e.reason.contains(&format!("item {stranger} is not in")),
            "{stranger}: {e:?}"
        );
    }
    // Each item meets its own rule: the date is the one checked as a date.
    let bad = [("DE00001", "1990-01-01"), ("DE00002", "x"), ("DE00009", "1")];
    let e = r.check("AG1", &RecordView::of(&record(&bad, "1"))).unwrap_err();
    assert!(e.reason.contains("item DE00001"), "{e:?}");
    let date_elsewhere = [
        ("DE00001", "19900101"),
        ("DE00002", "1990-01-01"),
        ("DE00009", "1990-01-01"),
    ];
    assert_eq!(
        r.check("AG1", &RecordView::of(&record(&date_elsewhere, "1990-01-01"))),
        Ok(())
    );
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

#[test]
fn an_item_calls_canonical_exactly_what_it_keeps() {
    let text = r#"
[[element]]
id = "ZJLX"
name = "证件类型代码"
codes = ["111", "414", "0"]
standard = "GA/T 2000.156"

[[element]]
id = "FKJE"
name = "罚款金额"
type = "decimal"
scale = 2
max_len = 6

[[element]]
id = "XKZH"
name = "许可证号"
pattern = "[A-Z]{2}[0-9]{4,8}"
min_len = 7
max_len = 9

[[element]]
id = "RS"
name = "人数"
type = "integer"
codes = ["0", "1", "10", "-1"]

[[resource]]
code = "R"
name = "r"
provider = "AG1"
sharing = "无条件共享"
cycle = "每日"
[[resource.item]]
id = "K"
name = "键"
key = true
required = true
max_len = 3
[[resource.item]]
id = "I"
name = "整数"
type = "integer"
[[resource.item]]
id = "D"
name = "小数"
type = "decimal"
max_len = 5
[[resource.item]]
id = "T"
name = "日期"
type = "date"
[[resource.item]]
id = "TS"
name = "日期时间"
type = "datetime"
[[resource.item]]
id = "M"
name = "手机"
element = "SJHM"
max_len = 10
[[resource.item]]
id = "X"
name = "姓名"
element = "XM"
max_len = 4
[[resource.item]]
id = "C"
name = "证件类型"
element = "ZJLX"
[[resource.item]]
id = "F"
name = "罚款"
element = "FKJE"
[[resource.item]]
id = "P"
name = "许可证"
element = "XKZH"
[[resource.item]]
id = "N"
name = "人数"
element = "RS"
"#;
    let catalog = Catalog::from_toml_str(text).unwrap();
    let r = catalog.resource("R").unwrap();
    // Split at |: some seeds hold spaces.
    let seeds = concat!(
        "0|1|10|-1|-0|007|12|1.5|1.50|-0.5|.5|0.5|123.4|12.34|1234.56|",
        "20240229|2024-02-29|20241231235959|20241231235959.5|13900000000|1390000000|",
        "测试|测试名字长|x|abcd|111|414|AB1234|AB12345|AB123456789|ab12345|１| 1"
    )
    .split('|');
    let mut kept = 0;
    let mut seen = 0;
    for seed in seeds {
        let chars: Vec<char> = seed.chars().collect();
        let mut candidates = vec![seed.to_owned()];
        for i in 0..chars.len() {
            for c in ['0', '5', '.', '-', 'A'] {
                candidates.push(chars[..i].iter().chain([&c]).chain(&chars[i + 1..]).collect());
            }
            candidates.push(chars[..i].iter().chain(&chars[i + 1..]).collect());
        }
        for v in candidates.iter().filter(|v| !v.is_empty()) {
            for item in &r.items {
                let keeps = matches!(item.normalize(v), Ok(n) if n.value == *v && n.warnings.is_empty());
                assert_eq!(item.is_canonical(v), keeps, "item {} {v:?}", item.id);
                assert_eq!(item.check(v).is_ok(), item.normalize(v).is_ok_and(|n| n.value == *v));
                kept += usize::from(keeps);
                seen += 1;
            }
        }
    }
    assert!(kept > 100, "only {kept} of {seen} canonical");
}
