//! Crashes: the agent or the hub killed with SIGKILL at random points, mid
//! file and mid batch, and restarted. The hub's final state must equal the
//! input and its history must hold every change exactly once.

use std::time::Duration;

use crate::*;

const FILES: u64 = 4;
const ROWS: u64 = 15_000;

fn drop_input(w: &World) {
    for f in 0..FILES {
        w.drop_file(
            "drop/people",
            &format!("{f:02}.csv"),
            people_csv(f * ROWS..(f + 1) * ROWS).as_bytes(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_points_loses_and_repeats_nothing() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.hub_extra.push_str("batch_records = 500\nmax_in_flight = 4\n");
    // Kills this frequent can stop a file three times before its first
    // commit: not the crash loop that max_attempts guards against.
    spec.sources = people_source("people", "drop/people", "max_attempts = 1000\n");
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    let config = config.to_str().unwrap();
    drop_input(&w);
    let log = w.path("agent.log");
    let mut rng = Rng::seeded();
    for _ in 0..20 {
        let mut child = spawn("qianzhi", &["--config", config, "run"], &log);
        // The kill point: anywhere from start-up to well into the work.
        tokio::time::sleep(Duration::from_millis(20 + rng.below(500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = spawn("qianzhi", &["--config", config, "run"], &log);
    let addr = format!("127.0.0.1:{}", spec.health_port);
    eventually("every file delivered", Duration::from_secs(180), || {
        let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
        let s: agent::health::Status = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (w.waiting("drop/people") == 0 && s.queue.records == 0)
            .then_some(())
            .ok_or(body)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_hub_holds(&w.store_path(), 0..FILES * ROWS);
    assert_eq!(w.files_in("drop/people/done").len() as u64, FILES);
    assert!(w.files_in("drop/people/rejected").is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_mid_batch_loses_and_repeats_nothing() {
    let w = World::new();
    let port = free_port();
    let hub_toml = w.hub_toml(port);
    let hub_toml = hub_toml.to_str().unwrap();
    let log = w.path("hub.log");
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", hub_toml], &log);
    wait_listening(port).await;
    let mut spec = w.agent_spec(port);
    spec.hub_extra.push_str("batch_records = 500\nmax_in_flight = 4\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    drop_input(&w);
    let mut rng = Rng::seeded();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        hub.kill().unwrap();
        hub.wait().unwrap();
        hub = spawn("qianzhi-hub", &["serve", "--config", hub_toml], &log);
        wait_listening(port).await;
    }
    eventually("every record delivered", Duration::from_secs(180), || {
        let s = agent.status();
        (w.waiting("drop/people") == 0 && s.queue.records == 0 && s.link.state == agent::health::LinkState::Up)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    agent.stop().await;
    hub.kill().unwrap();
    hub.wait().unwrap();
    assert_hub_holds(&w.store_path(), 0..FILES * ROWS);
}
