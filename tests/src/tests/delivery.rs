//! Files dropped into the folder reach the hub exactly once, values intact
//! and canonical, in order, across a hub outage.

use std::time::Duration;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_files_reach_the_hub_once_in_every_format() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let agent = Agent::start(&w.agent_toml(&w.agent_spec(hub.addr.port()))).await;

    // UTF-8 with a BOM.
    w.drop_file(
        "drop/people",
        "a.csv",
        format!("\u{FEFF}{}", people_csv(0..300)).as_bytes(),
    );
    // GB18030 (as Excel writes "CSV" on Chinese Windows).
    let text = people_csv(300..600);
    let (gbk, _, unmappable) = encoding_rs::GB18030.encode(&text);
    assert!(!unmappable);
    w.drop_file("drop/people", "b.csv", &gbk);
    // JSON Lines, numbers and strings mixed.
    let mut jsonl = String::new();
    for i in 600..700u64 {
        let p = person(i);
        let mut obj = serde_json::Map::new();
        for ((col, _), v) in PEOPLE_COLUMNS.iter().zip(p) {
            obj.insert((*col).to_owned(), v.into());
        }
        jsonl.push_str(&serde_json::Value::Object(obj).to_string());
        jsonl.push('\n');
    }
    w.drop_file("drop/people", "c.jsonl", jsonl.as_bytes());

    eventually("700 records acknowledged", Duration::from_secs(60), || {
        let s = agent.status();
        (s.link.acked == 700 && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..700);
    assert_eq!(w.files_in("drop/people/done"), ["a.csv", "b.csv", "c.jsonl"]);
    assert_eq!(agent.status().quarantine, 0);

    // Freshness: the people resource changed just now; the legal-person
    // resource is another agency's and not listed.
    let resources = agent.status().resources;
    assert_eq!(resources.len(), 1);
    let people = &resources[0];
    assert_eq!(
        (people.resource.as_str(), people.cycle.as_str(), people.overdue),
        (PEOPLE, "实时", false)
    );
    let changed = people.last_change_us.expect("a change is recorded");
    // It survives a restart (it is committed with the records).
    agent.stop().await;
    let agent = Agent::start(&w.path("agent.toml")).await;
    assert_eq!(agent.status().resources[0].last_change_us, Some(changed));
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_grows_while_the_hub_is_down_and_drains_in_order() {
    let w = World::new();
    let hub_port = free_port();
    let health_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    spec.health_port = health_port;
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    for (n, name) in ["01.csv", "02.csv", "03.csv"].iter().enumerate() {
        let n = n as u64;
        w.drop_file("drop/people", name, people_csv(n * 1000..(n + 1) * 1000).as_bytes());
    }
    // /status, read over HTTP as an operator would, shows the backlog.
    let addr = format!("127.0.0.1:{health_port}");
    let status = eventually("3000 queued records in /status", Duration::from_secs(60), || {
        let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
        let s: agent::health::Status = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (s.queue.records == 3000).then_some(s).ok_or(body)
    })
    .await;
    assert_ne!(status.link.state, agent::health::LinkState::Up);
    assert!(status.queue.oldest_age_seconds.is_some());
    assert!(status.link.error.is_some(), "the link error is shown");
    let metrics = agent::cli::status::fetch(&addr, "/metrics").unwrap();

    assert!(metrics.contains("qianzhi_outbox_records 3000"), "{metrics}");
    assert!(metrics.contains("qianzhi_link_up 0"), "{metrics}");
    assert!(
        metrics.contains("qianzhi_resource_overdue{resource=\"1010100/0001\"} 0"),
        "{metrics}"
    );
    assert_eq!(export(&w.store_path(), false).len(), 0);

    let hub = Hub::start(&w, hub_port).await;
    eventually("the backlog delivered", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.records == 0 && s.link.acked == 3000)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..3000);
    // Commit-to-ack latency was measured for the delivered batches.
    let metrics = agent::cli::status::fetch(&addr, "/metrics").unwrap();
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("qianzhi_commit_to_ack_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(count.is_some_and(|c| c > 0), "{metrics}");
    // In order: the history follows the files and their lines.
    let order: Vec<String> = export(&w.store_path(), true)
        .iter()
        .map(|l| l["key"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..3000).map(|i| person(i)[0].clone()).collect();
    assert_eq!(order, want);
    agent.stop().await;
    hub.stop().await;
}
