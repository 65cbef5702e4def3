//! The quarantine as a clerk uses it: list, export for Excel, retry after the
//! catalog was fixed, discard with a reason; with the real `qianzhi` binary.

use std::process::Command;
use std::time::Duration;

use crate::*;

fn qianzhi(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("qianzhi"))
        .arg("--config")
        .arg(config)
        .arg("quarantine")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_export_retry_and_discard() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let config = w.agent_toml(&w.agent_spec(hub.addr.port()));
    let agent = Agent::start(&config).await;
    // Two good rows, an address longer than the catalog allows, a bad check digit.
    let mut long = person(3);
    long[5] = "宜".repeat(120);
    let mut bad_id = person(4);
    bad_id[0] = "320282199001019990".into();
    let mut text = people_csv(0..2);
    for row in [&long, &bad_id] {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    w.drop_file("drop/people", "a.csv", text.as_bytes());
    eventually("two delivered, two held", Duration::from_secs(30), || {
        let s = agent.status();
        (s.link.acked == 2 && s.quarantine == 2)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;

    // Reading works while the agent runs; changing does not.
    let (ok, list) = qianzhi(&config, &["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("a.csv:4") && list.contains("LENGTH") && list.contains("a.csv:5") && list.contains("CHECK_DIGIT"),
        "{list}"
    );
    assert!(list.contains("2 entries"), "{list}");
    let (ok, msg) = qianzhi(&config, &["retry"]);
    assert!(!ok && msg.contains("stop it first"), "{msg}");
    agent.stop().await;

    // Export for Excel: UTF-8 with a BOM, the source's columns, the raw values.
    let csv_path = w.path("fix.csv");
    let (ok, msg) = qianzhi(
        &config,
        &["export", "--rule", "LENGTH", "--out", csv_path.to_str().unwrap()],
    );
    assert!(ok, "{msg}");
    let exported = std::fs::read(&csv_path).unwrap();
    assert!(exported.starts_with(b"\xEF\xBB\xBF"));
    let exported = String::from_utf8(exported[3..].to_vec()).unwrap();
    let mut lines = exported.lines();
    assert!(
        lines.next().unwrap().starts_with("隔离编号,来源,文件,行号,原因,住址,"),
        "{exported}"
    );
    assert!(lines.next().unwrap().contains(&"宜".repeat(120)));
    assert_eq!(lines.next(), None);

    // The catalog allows longer addresses now (at the hub and the agent).
    let fixed = CATALOG.replacen("element = \"DZ\"\nmax_len = 100", "element = \"DZ\"\nmax_len = 200", 1);
    assert_ne!(fixed, CATALOG);
    w.write("catalog.toml", &fixed);
    let (ok, msg) = qianzhi(&config, &["retry"]);
    assert!(ok, "{msg}");
    assert!(msg.contains("1 queued for the hub, 1 still failing"), "{msg}");

    // A discard needs a reason, and keeps it.
    let (_, list) = qianzhi(&config, &["list"]);
    let id = list
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#')
        .to_owned();
    let (ok, msg) = qianzhi(&config, &["discard", &id]);
    assert!(!ok && msg.contains("--reason"), "{msg}");
    let (ok, msg) = qianzhi(&config, &["discard", &id, "--reason", "号码有误, 已由业务科室核实"]);
    assert!(ok && msg.contains("discarded 1 entries"), "{msg}");
    let (_, list) = qianzhi(&config, &["list"]);
    assert!(list.contains("0 entries"), "{list}");

    // The retried record reaches the hub once the agent runs again.
    hub.stop().await;
    let hub = Hub::start_with_catalog(&w, 0, &fixed).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/people", "");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    eventually("the retried record delivered", Duration::from_secs(30), || {
        let n = export(&w.store_path(), false).len();
        (n == 3).then_some(()).ok_or(format!("{n} at the hub"))
    })
    .await;
    agent.stop().await;
    hub.stop().await;
}
