//! The `qianzhi-demo` binary runs end to end, and what it reports is what
//! the hub's store holds.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qianzhi-demo");

#[test]
fn demo_runs_end_to_end() {
    let d = tempfile::Builder::new().prefix("qianzhi-demo-").tempdir().unwrap();
    let dir = d.path().canonicalize().unwrap();
    let out = Command::new(BIN).arg("--dir").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));

    // The hub's records: a table, not JSON, in hub sequence order.
    assert!(!text.contains("\"resource\""), "{text}");
    let table: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("5. at the hub"))
        .skip(1)
        .take_while(|l| l.starts_with("   "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table[0][..2], ["hub", "seq"], "{text}");
    let rows: Vec<(&str, &str)> = table[1..].iter().map(|r| (r[0], r[3])).collect();
    assert_eq!(
        rows,
        [
            ("1", "张伟"),
            ("2", "王芳"),
            ("3", "李娜"),
            ("4", "刘洋"),
            ("5", "陈静")
        ],
        "{text}"
    );
    assert!(text.contains("RAGGED_ROW") && text.contains("BIRTH_DATE"), "{text}");

    // The receiving agency got the five people, 姓名 only, marked with the
    // provider and the agreement.
    let received: Vec<&str> = text.lines().filter(|l| l.contains("under DEMO-2026-001")).collect();
    assert_eq!(received.len(), 5, "{text}");
    assert!(
        received
            .iter()
            .all(|l| l.contains("住址 (not shared)") && l.contains("from 320282-gaj")),
        "{text}"
    );

    // It ends with what to try next, with its own paths, says the folder
    // stays, mentions --keep, and prints no health link that is dead by now.
    let end = &text[text.find("== demo done").expect("the demo says it is done")..];
    let (agent_toml, hub_toml) = (dir.join("agent.toml"), dir.join("hub.toml"));
    for command in [
        "cargo build --release -p agent -p hub-stub".to_owned(),
        format!("qianzhi --config {} check", agent_toml.display()),
        format!("qianzhi --config {} quarantine list", agent_toml.display()),
        format!("qianzhi-hub export --config {}", hub_toml.display()),
        format!("qianzhi-hub report --config {}", hub_toml.display()),
    ] {
        assert!(end.contains(&command), "missing {command:?}:\n{text}");
    }
    assert!(
        end.contains(&format!("Files in {} (they stay", dir.display())),
        "{text}"
    );
    assert!(end.contains("--keep"), "{text}");
    assert!(!text.contains("http://"), "{text}");

    // The hub.toml it names loads and points at the store the demo filled.
    let hub = hub_stub::config::HubConfig::load(&hub_toml).unwrap();
    assert_eq!(hub.store, dir.join("hub/store.db"));
    assert!(hub.catalog.is_file() && hub.tls.key.is_file());
    let store = hub_stub::Store::open(&hub.store).unwrap();
    let mut history = Vec::new();
    store.export(None, true, &mut history).unwrap();
    assert_eq!(String::from_utf8_lossy(&history).lines().count(), 5);
}
