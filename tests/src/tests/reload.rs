//! Reloading the config while the agent runs: sources added, removed and
//! changed without losing the queue; what needs a restart is refused and the
//! running config stays.

use std::time::Duration;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_come_and_go_and_the_queue_stays() {
    let w = World::new();
    let hub_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    let config = w.agent_toml(&spec);
    let agent = Agent::start(&config).await;
    // Queued while the hub is down: a reload must not lose it.
    w.drop_file("drop/people", "a.csv", people_csv(0..100).as_bytes());
    eventually("100 queued", Duration::from_secs(30), || {
        let s = agent.status();
        (s.queue.records == 100).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;

    // Add a source.
    spec.sources.push_str(&people_source("second", "drop/second", ""));
    let summary = agent
        .running
        .reload(agent::config::Config::load(&w.agent_toml(&spec)).unwrap())
        .await
        .unwrap();
    assert!(
        summary.contains("started: [second]") && summary.contains("stopped: []"),
        "{summary}"
    );
    w.drop_file("drop/second", "b.csv", people_csv(100..150).as_bytes());
    eventually("the new source's rows queued", Duration::from_secs(30), || {
        let s = agent.status();
        (s.queue.records == 150).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;

    // Something that needs a restart is refused, and says so.
    let mut moved = spec.clone();
    moved.data_dir = "elsewhere".into();
    let refused = agent
        .running
        .reload(agent::config::Config::load(&w.agent_toml(&moved)).unwrap())
        .await;
    assert_eq!(refused.unwrap_err().key, "data_dir");
    assert!(agent.status().degraded.iter().any(|d| d.starts_with("RELOAD_REFUSED")));

    // Remove the first source: its folder is no longer read.
    spec.sources = people_source("second", "drop/second", "");
    let summary = agent
        .running
        .reload(agent::config::Config::load(&w.agent_toml(&spec)).unwrap())
        .await
        .unwrap();
    assert!(summary.contains("stopped: [people]"), "{summary}");
    assert!(!agent.status().degraded.iter().any(|d| d.starts_with("RELOAD_REFUSED")));
    assert_eq!(
        agent
            .status()
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["second"]
    );

    // A file in the removed source's folder is not read: the delivery below
    // would otherwise count 151.
    w.drop_file("drop/people", "late.csv", people_csv(200..201).as_bytes());

    // The hub comes back: all 150 arrive, once.
    let hub = Hub::start(&w, hub_port).await;
    eventually("everything delivered", Duration::from_secs(30), || {
        let s = agent.status();
        (s.queue.records == 0 && s.link.acked == 150)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..150);
    assert!(
        w.path("drop/people/late.csv").exists(),
        "a removed source reads nothing"
    );
    agent.stop().await;
    hub.stop().await;
}
