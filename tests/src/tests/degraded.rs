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
    w.drop_file("drop/people", "a.csv", people_csv_with_a_bad_id(0..1, 1).as_bytes());

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
    // Emptied by a person (through the running agent): nothing left to act on.
    let out = std::process::Command::new(bin("qianzhi"))
        .arg("--config")
        .arg(&config)
        .args(["quarantine", "discard", "1", "--reason", "已核实"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(
        "the growth warning gone with the entries",
        Duration::from_secs(30),
        || {
            agent.running.health.sample();
            let d = agent.status().degraded;
            (!has(&d, "QUARANTINE_GROWING")).then_some(()).ok_or(format!("{d:#?}"))
        },
    )
    .await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_down_counts_from_its_first_failure_through_every_retry() {
    let w = World::new();
    let hub_port = free_port();
    let spec = w.agent_spec(hub_port);
    let agent = Agent::start(&w.agent_toml(&spec)).await;

    // Each reconnect attempt is a new state; the time down is not.
    let link = eventually("retries well after the first failure", Duration::from_secs(30), || {
        let l = agent.status().link;
        match l.down_seconds {
            Some(down) if l.error.is_some() && down > l.since_seconds + 2.0 => Ok(l),
            _ => Err(format!("{l:?}")),
        }
    })
    .await;
    let since = link.down_since.clone().expect("down since");
    let text = agent::cli::status::render(&agent.status());
    let line = text.lines().find(|l| l.starts_with("link")).unwrap();
    assert!(
        line.starts_with(&format!("link     DOWN since {} UTC (for ", &since[11..19])),
        "{line}"
    );
    assert!(text.contains("         last error: "), "{text}");
    // The JSON document says it too, from the health port.
    let json: serde_json::Value =
        serde_json::from_str(&agent::cli::status::fetch(&agent.running.health_addr.to_string(), "/status").unwrap())
            .unwrap();
    assert_eq!(json["link"]["down_since"], since.as_str());

    // Up again: no longer down.
    let hub = Hub::start(&w, hub_port).await;
    eventually("the link up", Duration::from_secs(30), || {
        let l = agent.status().link;
        (l.state == agent::health::LinkState::Up && l.down_since.is_none())
            .then_some(())
            .ok_or(format!("{l:?}"))
    })
    .await;
    let text = agent::cli::status::render(&agent.status());
    assert!(text.contains("link     up for "), "{text}");
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_held_in_rejected_are_counted_and_warned_until_a_person_moves_them() {
    let w = World::new();
    let spec = w.agent_spec(free_port());
    // Left by an earlier run.
    w.write("drop/people/rejected/old.csv", "x\n");
    w.write("drop/people/rejected/old.csv.error.txt", "reason: …\n");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    w.drop_file("drop/people", "empty.csv", b"");

    let rejected = w.path("drop/people/rejected");
    let warning = format!(
        "FILES_REJECTED: source people: 2 files in {}, each with its reason in NAME.error.txt",
        rejected.display()
    );
    let status = eventually("two files held in rejected/", Duration::from_secs(30), || {
        let s = agent.status();
        (s.sources[0].rejected_held == Some(2) && s.degraded.iter().any(|d| d.starts_with(&warning)))
            .then_some(s.clone())
            .ok_or(format!("{s:#?}"))
    })
    .await;
    let text = agent::cli::status::render(&status);
    assert!(
        text.contains("WARNING  FILES_REJECTED: source people: 2 files"),
        "{text}"
    );
    assert!(text.contains("1 rejected (2 held in rejected/)"), "{text}");

    // A person moves them away: the warning goes.
    for f in w.files_in("drop/people/rejected") {
        std::fs::remove_file(rejected.join(f)).unwrap();
    }
    eventually("rejected/ empty", Duration::from_secs(30), || {
        let s = agent.status();
        (s.sources[0].rejected_held == Some(0) && !s.degraded.iter().any(|d| d.starts_with("FILES_REJECTED")))
            .then_some(())
            .ok_or(format!("{s:#?}"))
    })
    .await;
    agent.stop().await;
}
