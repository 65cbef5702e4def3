//! A damaged outbox (power loss, a disk error) does not stop the agent: the
//! file is moved aside, what can be read is recovered, /status says so, and
//! new input keeps flowing.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_is_moved_aside_and_the_agent_keeps_working() {
    let w = World::new();
    let hub_port = free_port();
    let config = w.agent_toml(&w.agent_spec(hub_port));
    // The hub is down: 3000 records wait in the outbox.
    let agent = Agent::start(&config).await;
    w.drop_file("drop/people", "a.csv", people_csv(0..3000).as_bytes());
    eventually("3000 queued", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.records == 3000).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    agent.stop().await;
    let data = w.path("agent-data");
    // Stopped means the data directory's lock is free (the outbox closed).
    eventually("the outbox closed", Duration::from_secs(10), || {
        agent::outbox::DirLock::acquire(&data)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;

    // Damage: garbage over the second half of the file.
    let db = data.join("outbox.db");
    let len = std::fs::metadata(&db).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&vec![0xA5; (len - len / 2) as usize]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let hub = Hub::start(&w, hub_port).await;
    let agent = Agent::start(&config).await;
    let degraded = agent.status().degraded;
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert!(
        degraded[0].contains("the outbox was damaged") && degraded[0].contains("recovered"),
        "{degraded:?}"
    );
    let aside: Vec<String> = w
        .files_in("agent-data")
        .into_iter()
        .filter(|f| f.starts_with("outbox.db.damaged-") && !f.ends_with("-wal") && !f.ends_with("-shm"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    // Not ready until an operator has read the report, however long it runs.
    let ready = agent.running.health.ready();
    assert!(
        ready.as_ref().is_err_and(|e| e.contains("qianzhi outbox acknowledge")),
        "{ready:?}"
    );
    let report = std::fs::read_to_string(data.join("outbox-recovered.txt")).unwrap();
    assert!(report.contains("sequences missing"), "{report}");
    let out = std::process::Command::new(bin("qianzhi"))
        .args(["--config", config.to_str().unwrap(), "outbox", "acknowledge"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(agent.running.health.ready(), Ok(()));
    assert!(agent.status().degraded.is_empty());

    // New input flows, and nothing reaches the hub twice.
    w.drop_file("drop/people", "b.csv", people_csv(3000..3500).as_bytes());
    eventually("b.csv delivered", Duration::from_secs(60), || {
        let s = agent.status();
        let at_hub: std::collections::HashSet<String> = export(&w.store_path(), false)
            .iter()
            .map(|l| l["key"][0].as_str().unwrap_or_default().to_owned())
            .collect();
        let all_new = (3000..3500).all(|i| at_hub.contains(&person(i)[0]));
        (all_new && s.queue.records == 0).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    let history = export(&w.store_path(), true);
    let mut keys = std::collections::HashSet::new();
    for l in &history {
        assert!(keys.insert(l["key"].to_string()), "a change reached the hub twice: {l}");
    }
    agent.stop().await;
    hub.stop().await;
}
