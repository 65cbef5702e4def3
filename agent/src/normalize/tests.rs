use std::borrow::Cow;

use super::*;
use crate::catalog::Catalog;
use crate::config::{AfterDone, Completion, Encoding, FileFormat, SourceConfig, SourceKind};

fn mapping(op_column: Option<&str>) -> Mapping {
    let catalog = Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
    let source = SourceConfig {
        name: "people".into(),
        kind: SourceKind::Folder,
        resource: "1010100/0001".into(),
        path: "/tmp".into(),
        format: FileFormat::Csv,
        encoding: Encoding::Auto,
        complete: Completion::Rename,
        settle: std::time::Duration::ZERO,
        rescan: std::time::Duration::ZERO,
        after: AfterDone::Move,
        op_column: op_column.map(str::to_owned),
        columns: vec![
            ("id".into(), "DE00001".into()),
            ("name".into(), "DE00002".into()),
            ("born".into(), "DE00004".into()),
        ],
    };
    Mapping::new("320282-gaj", &source, catalog.resource("1010100/0001").unwrap())
}

fn check(row: &[Option<&str>], op_column: Option<&str>) -> String {
    let fields: Vec<Field<'_>> = row.iter().map(|v| v.map(|s| Ok(Cow::Borrowed(s)))).collect();
    match mapping(op_column).normalize(
        &fields,
        Origin {
            object: "f.csv",
            line: 2,
        },
        0,
    ) {
        Outcome::Record(bytes) => {
            let r = Record::decode(bytes.as_slice()).unwrap();
            let mut items: Vec<_> = r.items.into_iter().collect();
            items.sort();
            format!("{:?} {:?} {items:?}", Operation::try_from(r.op).unwrap(), r.key)
        }
        Outcome::Quarantine(q) => format!("quarantine {}", q.reasons.join(" | ")),
    }
}

#[test]
fn rows() {
    /// (row, operation column, expected).
    type Case<'a> = (&'a [Option<&'a str>], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[Some(" 320282199001019995\u{3000}"), Some("张伟"), Some("1990-01-01")],
            None,
            r#"Upsert ["320282199001019995"] [("DE00001", "320282199001019995"), ("DE00002", "张伟"), ("DE00004", "19900101")]"#,
        ),
        (
            &[Some("1"), Some(""), None],
            None,
            "quarantine MISSING_REQUIRED: 必填项 姓名 (DE00002) 为空",
        ),
        (
            &[None, Some("x"), None],
            None,
            "quarantine MISSING_KEY: 主键项 公民身份号码 (DE00001) 为空",
        ),
        (
            &[Some("1"), Some("x"), Some("1999-02-30")],
            None,
            r#"quarantine INVALID_VALUE: 出生日期 (DE00004) 值 "1999-02-30" 不合规: not a date (expected YYYYMMDD or YYYY-MM-DD)"#,
        ),
        (
            &[Some("1"), None, None, Some("D")],
            Some("op"),
            r#"Delete ["1"] [("DE00001", "1")]"#,
        ),
        (
            &[Some("1"), Some("x"), None, Some("删除")],
            Some("op"),
            r#"Delete ["1"] [("DE00001", "1")]"#,
        ),
        (
            &[Some("1"), Some("x"), None, Some("X")],
            Some("op"),
            "quarantine INVALID_OPERATION: 操作 \"X\" 无法识别 (expected I/U/D, insert/update/delete, 新增/修改/删除)",
        ),
        (
            &[Some("1234567890123456789"), Some("x"), None],
            None,
            r#"quarantine INVALID_VALUE: 公民身份号码 (DE00001) 值 "1234567890123456789" 不合规: 19 characters, at most 18 allowed"#,
        ),
    ];
    for (row, op, want) in cases {
        assert_eq!(check(row, *op), *want, "{row:?}");
    }
}

#[test]
fn undecodable_field_is_quarantined_with_raw_values() {
    let fields: Vec<Field<'_>> = vec![
        Some(Ok(Cow::Borrowed("1"))),
        Some(Err("invalid UTF-8 at byte 2".into())),
        None,
    ];
    let Outcome::Quarantine(q) = mapping(None).normalize(
        &fields,
        Origin {
            object: "f.csv",
            line: 9,
        },
        0,
    ) else {
        panic!("expected a quarantine entry");
    };
    assert_eq!(q.line, 9);
    assert!(q.reasons[0].starts_with("UNDECODABLE: 列 name"), "{:?}", q.reasons);
    assert!(q.raw.contains("\"id\":\"1\""), "{}", q.raw);
}
