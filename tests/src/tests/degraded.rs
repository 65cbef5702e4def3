//! /status names the conditions an operator must act on, each with its
//! reason, while the agent keeps working.

use std::time::Duration;

use pki::dev::Validity;

use crate::*;

fn has(degraded: &[String], code: &str) -> bool {
    degraded.iter().any(|d| d.starts_with(code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_conditions_are_reported_with_reasons() {
    let w = World::new();
    let hub_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    let (cert, key) = w.issue(
        GAJ,
        Validity {
            from_days: -1,
            to_days: 10,
        },
        "short-lived",
    );
    spec.cert = cert;
    spec.key = key;
    let config = w.agent_toml(&spec);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[health]\n",
        "[health]\nlink_down_after = \"1s\"\nqueue_age_after = \"1s\"\ndisk_min_free = \"1000TB\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config).await;
    let mut bad = person(1);
    bad[0] = "320282199001019990".into();
    let mut csv = people_csv(0..1);
    csv.push_str(&bad.join(","));
    csv.push('\n');
    w.drop_file("drop/people", "a.csv", csv.as_bytes());

    let degraded = eventually(
        "link down, old queue, low disk, expiring cert, growing quarantine",
        Duration::from_secs(30),
        || {
            agent.running.health.sample();
            let d = agent.status().degraded;
            let all = [
                "LINK_DOWN",
                "QUEUE_AGE",
                "DISK_LOW",
                "CERT_EXPIRING",
                "QUARANTINE_GROWING",
            ]
            .iter()
            .all(|c| has(&d, c));
            all.then_some(d.clone()).ok_or(format!("{d:#?}"))
        },
    )
    .await;
    let cert = degraded.iter().find(|d| d.starts_with("CERT_EXPIRING")).unwrap();
    assert!(cert.contains("(in 9 days)") || cert.contains("(in 10 days)"), "{cert}");
    assert!(
        degraded.iter().any(|d| d.contains("QUARANTINE_GROWING: 1 records")),
        "{degraded:#?}"
    );

    // The hub comes back: the link and the queue conditions clear.
    let hub = Hub::start(&w, hub_port).await;
    eventually("link and queue conditions cleared", Duration::from_secs(30), || {
        let d = agent.status().degraded;
        (!has(&d, "LINK_DOWN") && !has(&d, "QUEUE_AGE") && has(&d, "DISK_LOW"))
            .then_some(())
            .ok_or(format!("{d:#?}"))
    })
    .await;
    agent.stop().await;
    hub.stop().await;
}
