//! The `qianzhi-demo` binary runs end to end, and what it reports is what
//! the hub's store holds.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qianzhi-demo");

#[test]
fn demo_runs_end_to_end() {
    let d = tempfile::Builder::new().prefix("qianzhi-demo-").tempdir().unwrap();
    let out = Command::new(BIN).arg("--dir").arg(d.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("\"resource\":\"1010100/0001\"").count(), 5, "{text}");
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
    let store = hub_stub::Store::open(&d.path().join("hub/store.db")).unwrap();
    let mut history = Vec::new();
    store.export(None, true, &mut history).unwrap();
    assert_eq!(String::from_utf8_lossy(&history).lines().count(), 5);
}
