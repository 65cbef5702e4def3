//! Drop-folder rules: when a file counts as complete, what happens to it
//! afterwards, and backpressure when the outbox is full.

use std::time::Duration;

use crate::*;

fn delivered(agent: &Agent) -> u64 {
    agent.status().sources.iter().map(|s| s.records).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_rule_waits_for_the_ok_file_and_delete_removes_it() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/people", "complete = \"marker\"\nafter = \"delete\"\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    // Written in place, under its final name, with no marker yet.
    std::fs::create_dir_all(w.path("drop/people")).unwrap();
    std::fs::write(w.path("drop/people/a.csv"), people_csv(0..5)).unwrap();
    // A second file with its marker: taken, which proves the folder was
    // scanned while a.csv waited.
    w.drop_file("drop/people", "b.csv", people_csv(5..7).as_bytes());
    w.drop_file("drop/people", "b.csv.ok", b"");
    eventually("b.csv taken", Duration::from_secs(30), || {
        (agent.status().link.acked == 2)
            .then_some(())
            .ok_or(format!("{:?}", agent.status()))
    })
    .await;
    assert!(
        w.path("drop/people/a.csv").exists(),
        "a.csv has no marker and must wait"
    );
    assert_eq!(delivered(&agent), 2);
    w.drop_file("drop/people", "a.csv.ok", b"");
    eventually("a.csv taken", Duration::from_secs(30), || {
        (agent.status().link.acked == 7)
            .then_some(())
            .ok_or(format!("{:?}", agent.status()))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..7);
    // Deleted, markers too, and nothing moved to done/.
    assert_eq!(w.files_in("drop/people"), ["done", "rejected"]);
    assert!(w.files_in("drop/people/done").is_empty());
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_rule_takes_a_file_only_once_it_stops_changing() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/people", "complete = \"settle\"\nsettle = \"3s\"\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    std::fs::create_dir_all(w.path("drop/people")).unwrap();
    let path = w.path("drop/people/a.csv");
    std::fs::write(&path, people_csv(0..3)).unwrap();
    // Keep appending (every 300 ms, well inside the 3 s settle time) while
    // the agent watches: each change restarts the settle time, so the file
    // must not be taken half-written.
    for i in 3..8u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&person(i).join(","));
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        assert_eq!(delivered(&agent), 0, "taken before it settled");
    }
    eventually("a.csv taken once settled", Duration::from_secs(30), || {
        (agent.status().link.acked == 8)
            .then_some(())
            .ok_or(format!("{:?}", agent.status()))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..8);
    assert_eq!(w.files_in("drop/people/done"), ["a.csv"]);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_pauses_the_sources_and_loses_nothing() {
    let w = World::new();
    let hub_port = free_port();
    let config = w.agent_toml(&w.agent_spec(hub_port));
    limit_outbox(&config, "1MiB");
    let agent = Agent::start(&config).await;
    // About 2.5 MB of records: more than twice what the outbox may hold.
    w.drop_file("drop/people", "big.csv", people_csv(0..10_000).as_bytes());
    let paused = eventually("the outbox full and the source paused", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.full && s.sources[0].records < 10_000)
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(paused.queue.bytes >= paused.queue.max_bytes);
    assert!(w.path("drop/people/big.csv").exists(), "the file waits, unfinished");
    let hub = Hub::start(&w, hub_port).await;
    eventually("everything delivered", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.records == 0 && s.link.acked == 10_000)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..10_000);
    agent.stop().await;
    hub.stop().await;
}

/// A drop folder that does not exist is not made by the service (a typo
/// in `path` would become a folder nobody drops into): the source says so
/// in /status, and takes files once the folder is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_drop_folder_is_reported_not_created_and_found_later() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/peple", "");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    let error = eventually("the source's error", Duration::from_secs(30), || {
        let s = agent.status();
        s.sources[0].error.clone().ok_or(format!("{:?}", s.sources))
    })
    .await;
    assert!(
        error.contains("drop/peple does not exist") && error.contains("path"),
        "{error}"
    );
    assert!(!w.path("drop/peple").exists(), "the service made the folder");
    w.drop_file("drop/peple", "a.csv", people_csv(0..3).as_bytes());
    eventually(
        "the file taken once the folder is there",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s.link.acked == 3 && s.sources[0].error.is_none())
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    assert_hub_holds(&w.store_path(), 0..3);
    agent.stop().await;
    hub.stop().await;
}
