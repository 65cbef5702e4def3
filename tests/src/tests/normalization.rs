//! Normalization end to end: messy agency exports in three formats. Valid
//! rows arrive canonical at the hub, invalid rows wait in the quarantine
//! with the rule they broke, and the counts add up to the input exactly.

use std::time::Duration;

use crate::*;

const HEADER: [&str; 8] = [
    "公民身份号码",
    "姓名",
    "性别",
    "出生日期",
    "民族",
    "住址",
    "联系电话",
    "登记日期",
];

/// A row as exported, and its canonical items or the rule it breaks.
type Case = ([&'static str; 8], Result<[&'static str; 8], &'static str>);

fn rows() -> Vec<Case> {
    vec![
        (
            [
                "３２０２８２１９９００１０１９９９５",
                " 张伟\u{3000}",
                "男",
                "1990年1月1日",
                "汉族",
                "宜兴市，人民路1号",
                "+86 139 1234 5678",
                "2024/3/1",
            ],
            Ok([
                "320282199001019995",
                "张伟",
                "1",
                "19900101",
                "01",
                "宜兴市，人民路1号",
                "13912345678",
                "20240301",
            ]),
        ),
        (
            [
                "32028219960615118x",
                "陈静",
                "女性",
                "1996.6.15",
                "回",
                "",
                "0510-87654321",
                "20240306",
            ],
            Ok([
                "32028219960615118X",
                "陈静",
                "2",
                "19960615",
                "03",
                "",
                "0510-87654321",
                "20240306",
            ]),
        ),
        (
            [
                "320282800101123",
                "老李",
                "1",
                "1980-01-01",
                "01",
                "丁蜀镇",
                "",
                "二〇二四年三月七日",
            ],
            Ok([
                "320282198001011235",
                "老李",
                "1",
                "19800101",
                "01",
                "丁蜀镇",
                "",
                "20240307",
            ]),
        ),
        (
            [
                "320282199001019990",
                "周杰",
                "1",
                "1990-01-01",
                "01",
                "",
                "",
                "2024-03-01",
            ],
            Err("CHECK_DIGIT"),
        ),
        (
            [
                "320211200002299976",
                "刘洋",
                "1",
                "2000-02-30",
                "01",
                "",
                "",
                "2024-03-01",
            ],
            Err("DATE"),
        ),
        (
            [
                "11010519491001995X",
                "李娜",
                "2",
                "1949-10-01",
                "火星族",
                "",
                "",
                "2024-03-01",
            ],
            Err("CODE_SET"),
        ),
        (
            ["3.20282E+17", "赵强", "1", "1999-01-01", "01", "", "", "2024-03-01"],
            Err("SCIENTIFIC_NOTATION"),
        ),
    ]
}

fn expected(row: &[&str; 8]) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> = PEOPLE_COLUMNS
        .iter()
        .zip(row)
        .filter(|(_, v)| !v.is_empty())
        .map(|((_, de), v)| ((*de).to_owned(), (*v).into()))
        .collect();
    serde_json::Value::Object(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messy_exports_arrive_canonical_and_the_rest_waits_with_its_rule() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let agent = Agent::start(&w.agent_toml(&w.agent_spec(hub.addr.port()))).await;
    let rows = rows();

    // GB18030 CSV with Chinese headers (Excel's "CSV" on Chinese Windows).
    let mut csv = HEADER.join(",");
    csv.push('\n');
    for (r, _) in &rows {
        csv.push_str(
            &r.iter()
                .map(|v| {
                    if v.contains(',') || v.contains('，') {
                        format!("\"{v}\"")
                    } else {
                        (*v).to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    let (gbk, _, unmappable) = encoding_rs::GB18030.encode(&csv);
    assert!(!unmappable);
    w.drop_file("drop/people", "a.csv", &gbk);

    // JSON Lines with a BOM, the same rows.
    let mut jsonl = String::from("\u{FEFF}");
    for (r, _) in &rows {
        let m: serde_json::Map<String, serde_json::Value> = HEADER
            .iter()
            .zip(r)
            .map(|(h, v)| ((*h).to_owned(), (*v).into()))
            .collect();
        jsonl.push_str(&serde_json::Value::Object(m).to_string());
        jsonl.push('\n');
    }
    // (The second copy of each row updates the first at the hub.)
    w.drop_file("drop/people", "b.jsonl", jsonl.as_bytes());

    // Excel: real date cells, and one ID typed as a number.
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    let date = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
    sheet.write_string(1, 0, "320282199512319981").unwrap();
    sheet.write_string(1, 1, "王芳").unwrap();
    sheet.write_number(1, 2, 2).unwrap();
    let born = rust_xlsxwriter::ExcelDateTime::from_ymd(1995, 12, 31).unwrap();
    sheet.write_datetime_with_format(1, 3, &born, &date).unwrap();
    sheet.write_number(1, 4, 1).unwrap();
    sheet.write_number(1, 6, 13812345678.0).unwrap();
    sheet.write_number(1, 7, 45352).unwrap(); // an Excel serial: 2024-03-01
    sheet.write_number(2, 0, 320282199001019995.0).unwrap();
    sheet.write_string(2, 1, "数字").unwrap();
    book.save(w.path("staging.xlsx")).unwrap();
    w.drop_file("drop/people", "c.xlsx", &std::fs::read(w.path("staging.xlsx")).unwrap());

    let total_rows = 2 * rows.len() as u64 + 2;
    eventually("every file handled", Duration::from_secs(60), || {
        let s = agent.status();
        (s.sources[0].files_done == 3 && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let s = agent.status();
    assert_eq!(s.sources[0].rows, total_rows);
    // Counts add up: every row is at the hub or in the quarantine.
    assert_eq!(s.sources[0].records + s.sources[0].quarantined, total_rows);
    // The 15-digit ID, in the CSV and the JSON Lines file: warned and counted.
    assert_eq!(s.sources[0].warnings, 2);

    let history = export(&w.store_path(), true);
    let current = export(&w.store_path(), false);
    for (row, want) in &rows {
        if let Ok(canonical) = want {
            let at_hub: Vec<_> = history.iter().filter(|l| l["key"][0] == canonical[0]).collect();
            assert_eq!(
                at_hub.len(),
                2,
                "{} arrives from the CSV and the JSON Lines file",
                canonical[0]
            );
            for l in at_hub {
                assert_eq!(l["items"], expected(canonical), "{row:?}");
            }
        }
    }
    // The 15-digit number was upgraded, with a warning that travels along.
    let upgraded = history.iter().find(|l| l["key"][0] == "320282198001011235").unwrap();
    assert!(
        upgraded["warnings"][0].as_str().unwrap().starts_with("UPGRADED_15"),
        "{upgraded}"
    );
    let excel = current.iter().find(|l| l["key"][0] == "320282199512319981").unwrap();
    assert_eq!(
        excel["items"],
        expected(&[
            "320282199512319981",
            "王芳",
            "2",
            "19951231",
            "01",
            "",
            "13812345678",
            "20240301"
        ])
    );
    assert_eq!(current.len(), 4);

    let q = agent.running.outbox.read(|r| r.quarantine(100)).await.unwrap();
    assert_eq!(q.len() as u64, s.sources[0].quarantined);
    for (i, (_, want)) in rows.iter().enumerate() {
        if let Err(code) = want {
            for object in ["a.csv", "b.jsonl"] {
                let line = if object == "a.csv" { i as u64 + 2 } else { i as u64 + 1 };
                let entry = q.iter().find(|e| e.object == object && e.line == line);
                let entry = entry.unwrap_or_else(|| panic!("{object}:{line} not quarantined: {q:#?}"));
                assert!(
                    entry.reasons.iter().any(|r| r.starts_with(&format!("{code}: "))),
                    "{object}:{line} {:?}",
                    entry.reasons
                );
            }
        }
    }
    let numeric = q.iter().find(|e| e.object == "c.xlsx").unwrap();
    assert_eq!(numeric.line, 3);
    assert!(
        numeric.reasons[0].starts_with("NUMERIC_IDENTIFIER"),
        "{:?}",
        numeric.reasons
    );
    agent.stop().await;
    hub.stop().await;
}
