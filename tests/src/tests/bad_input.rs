//! Bad input: every input row ends up at the hub, in the quarantine with
//! its reason, or its whole file in rejected/ with NAME.error.txt.

use std::time::Duration;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_rows_are_kept_with_reasons_and_the_rest_delivered() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources
        .push_str(&people_source("strict", "drop/strict", "encoding = \"utf-8\"\n"));
    let agent = Agent::start(&w.agent_toml(&spec)).await;

    // 3 good rows, a ragged row, an impossible date.
    let mut mixed = people_csv(0..3);
    mixed.push_str(&format!("{},短行\n", citizen_id(99)));
    let mut bad_date = person(98);
    bad_date[3] = "1999-02-30".into();
    mixed.push_str(&bad_date.join(","));
    mixed.push('\n');
    w.drop_file("drop/people", "mixed.csv", mixed.as_bytes());
    // Whole files that cannot be read.
    w.drop_file("drop/people", "empty.csv", b"");
    w.drop_file("drop/people", "wrong-header.csv", "身份证,名字\n1,2\n".as_bytes());
    w.drop_file("drop/people", "export.xml", b"<rows/>");
    // JSON Lines with a BOM: 2 good lines, one that is not JSON, and a
    // truncated last line.
    let obj = person_json;
    let truncated = obj(13);
    let jsonl = format!(
        "\u{FEFF}{}\n{}\nnot json at all\n{}",
        obj(10),
        obj(11),
        &truncated[..truncated.len() / 2]
    );
    w.drop_file("drop/people", "lines.jsonl", jsonl.as_bytes());
    // A UTF-8 source with undecodable bytes in one row.
    let mut bytes = people_csv(20..22).into_bytes();
    let mut broken = person(22).join(",").into_bytes();
    broken.splice(20..20, [0xFF, 0xFE]);
    bytes.extend_from_slice(&broken);
    bytes.push(b'\n');
    w.drop_file("drop/strict", "strict.csv", &bytes);

    eventually("every file handled", Duration::from_secs(60), || {
        let s = agent.status();
        let handled: u64 = s.sources.iter().map(|x| x.files_done + x.files_rejected).sum();
        (handled == 6 && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;

    // Delivered: 0..3, 10, 11, 20, 21.
    let at_hub = export(&w.store_path(), false).len();
    assert_eq!(at_hub, 7);
    let q = agent.running.outbox.read(|r| r.quarantine(100)).await.unwrap();
    let reasons: Vec<String> = q
        .iter()
        .map(|e| format!("{}:{} {}", e.object, e.line, e.reasons.join("|")))
        .collect();
    let has = |file_line: &str, code: &str| reasons.iter().any(|r| r.starts_with(file_line) && r.contains(code));
    assert!(has("mixed.csv:5 ", "RAGGED_ROW"), "{reasons:#?}");
    assert!(has("mixed.csv:6 ", "DATE: 出生日期"), "{reasons:#?}");
    assert!(has("lines.jsonl:3 ", "INVALID_JSON"), "{reasons:#?}");
    assert!(has("lines.jsonl:4 ", "INVALID_JSON"), "{reasons:#?}");
    assert!(has("strict.csv:4 ", "UNDECODABLE"), "{reasons:#?}");
    assert_eq!(q.len(), 5);
    // Rows in = rows at the hub + rows in quarantine (files rejected whole
    // are counted by file).
    let rows: u64 = agent.status().sources.iter().map(|s| s.rows).sum();
    assert_eq!(rows, (at_hub + q.len()) as u64);

    let rejected = w.files_in("drop/people/rejected");
    assert_eq!(
        rejected,
        [
            "empty.csv",
            "empty.csv.error.txt",
            "export.xml",
            "export.xml.error.txt",
            "wrong-header.csv",
            "wrong-header.csv.error.txt"
        ]
    );
    let why = |f: &str| std::fs::read_to_string(w.path(&format!("drop/people/rejected/{f}.error.txt"))).unwrap();
    assert!(why("empty.csv").contains("no header row"), "{}", why("empty.csv"));
    assert!(
        why("wrong-header.csv").contains("lacks mapped column(s)") && why("wrong-header.csv").contains("公民身份号码"),
        "{}",
        why("wrong-header.csv")
    );
    assert!(why("export.xml").contains("unknown file type"), "{}", why("export.xml"));
    agent.stop().await;
    hub.stop().await;
}
