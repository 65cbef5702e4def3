use std::borrow::Cow;

use super::*;
use crate::config::MappingConfig;
use rules::catalog::Catalog;
use rules::element::Issue;

fn mapping(op_column: Option<&str>) -> Mapping {
    let catalog = Catalog::from_toml_str(include_str!("../../../deploy/catalog.example.toml")).unwrap();
    let config = MappingConfig {
        op_column: op_column.map(str::to_owned),
        transforms: [("id".to_owned(), vec![Transform::StripPrefix("ID:".into())])].into(),
        columns: vec![
            ("id".into(), "DE00001".into()),
            ("name".into(), "DE00002".into()),
            ("born".into(), "DE00004".into()),
        ],
    };
    Mapping::new(
        "320282-gaj",
        "people",
        &config,
        catalog.resource("1010100/0001").unwrap(),
    )
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
        Outcome::Record { bytes, .. } => {
            let r = Record::decode(bytes.as_slice()).unwrap();
            let mut items: Vec<_> = r.items.into_iter().collect();
            items.sort();
            format!(
                "{:?} {:?} {items:?} {:?}",
                Operation::try_from(r.op).unwrap(),
                r.key,
                r.warnings
            )
        }
        Outcome::Quarantine(q) => format!("quarantine {}", q.reasons.join(" | ")),
    }
}

#[test]
fn rows() {
    const ID: &str = "320282199001019995";
    /// (row, operation column, expected).
    type Case<'a> = (&'a [Option<&'a str>], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[
                Some(" 320282199001019995\u{3000}"),
                Some(" 张伟 "),
                Some("1990年1月1日"),
            ],
            None,
            r#"Upsert ["320282199001019995"] [("DE00001", "320282199001019995"), ("DE00002", "张伟"), ("DE00004", "19900101")] []"#,
        ),
        (
            &[Some("320282800101123"), Some("张伟"), None],
            None,
            r#"Upsert ["320282198001011235"] [("DE00001", "320282198001011235"), ("DE00002", "张伟")] ["UPGRADED_15: 公民身份号码 由 15 位升级为 18 位 (GB 11643): 320282800101123 → 320282198001011235 (列 id → DE00001)"]"#,
        ),
        (
            &[Some(ID), Some(""), None],
            None,
            "quarantine MISSING_REQUIRED: 必填项 姓名 (DE00002) 为空",
        ),
        (
            &[Some("ID:320282199001019995"), Some("x"), None],
            None,
            r#"Upsert ["320282199001019995"] [("DE00001", "320282199001019995"), ("DE00002", "x")] []"#,
        ),
        (
            &[None, Some("x"), None],
            None,
            "quarantine MISSING_KEY: 主键项 公民身份号码 (DE00001) 为空",
        ),
        (
            &[Some("320282199001019990"), Some("x"), Some("1999-02-30")],
            None,
            "quarantine CHECK_DIGIT: 公民身份号码 校验位错误 (GB 11643): expected 5, got 0 (列 id → DE00001) | \
             DATE: 出生日期 日期 \"1999-02-30\" 无效 (GB/T 7408): no such day; expected YYYYMMDD, YYYY-MM-DD, YYYY/M/D, YYYY.M.D or YYYY年M月D日 (列 born → DE00004)",
        ),
        (
            &[Some(ID), None, None, Some("D")],
            Some("op"),
            r#"Delete ["320282199001019995"] [("DE00001", "320282199001019995")] []"#,
        ),
        (
            &[Some(ID), Some("x"), None, Some("删除")],
            Some("op"),
            r#"Delete ["320282199001019995"] [("DE00001", "320282199001019995")] []"#,
        ),
        (
            &[Some(ID), Some("x"), None, Some("X")],
            Some("op"),
            "quarantine INVALID_OPERATION: 操作 \"X\" 无法识别 (expected I/U/D, insert/update/delete, 新增/修改/删除)",
        ),
        (
            &[Some("3.20282E+17"), Some("x"), None],
            None,
            "quarantine SCIENTIFIC_NOTATION: 公民身份号码 \"3.20282E+17\" 是科学计数法, 位数已丢失: save identifiers as text (Excel keeps 15 significant digits) (列 id → DE00001)",
        ),
    ];
    for (row, op, want) in cases {
        assert_eq!(check(row, *op), *want, "{row:?}");
    }
}

#[test]
fn undecodable_field_is_quarantined_with_raw_values() {
    let undecodable = Issue {
        code: "UNDECODABLE",
        message: "无法解码: invalid UTF-8 at byte 2".into(),
    };
    let fields: Vec<Field<'_>> = vec![
        Some(Ok(Cow::Borrowed("320282199001019995"))),
        Some(Err(undecodable)),
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
    assert_eq!(
        q.reasons[0],
        "UNDECODABLE: 无法解码: invalid UTF-8 at byte 2 (列 name → DE00002)"
    );
    assert!(q.raw.contains("\"id\":\"320282199001019995\""), "{}", q.raw);
}

/// What `qianzhi quarantine export` guards against formulas (a leading `'`)
/// normalizes to the value it guarded.
#[test]
fn a_value_guarded_against_spreadsheet_formulas_normalizes_to_itself() {
    for v in ["=1+1", "+8613912345678", "-5", "@SUM(A1)", "\tx"] {
        assert!(super::needs_csv_guard(v), "{v}");
        assert_eq!(super::csv_guard(&format!("'{v}")), v);
    }
    // A real apostrophe before anything else stays.
    assert_eq!(super::csv_guard("'O'Brien"), "'O'Brien");
    let name = check(&[Some("320282199001019995"), Some("'=李四"), Some("1990-01-01")], None);
    let unguarded = check(&[Some("320282199001019995"), Some("=李四"), Some("1990-01-01")], None);
    assert_eq!(name, unguarded);
}
