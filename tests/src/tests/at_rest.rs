//! The agent's other boundaries: the health port under half-open
//! connections, and its files at rest whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// 500 connections to the health port that never send a request: the agent
/// keeps its descriptors (it serves a bounded number and times out the
/// rest), still answers /status and still takes files. Its data directory
/// and outbox are private under a umask of 000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_health_connections_cost_bounded_descriptors_and_files_stay_private() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    let log = w.path("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} --config {} run",
            bin("qianzhi").display(),
            config.display()
        ))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{}", spec.health_port);
    wait_listening(spec.health_port).await;
    let data = w.path("agent-data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("outbox.db")), 0o600);

    let mut idle = Vec::new();
    for _ in 0..500 {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            idle.push(s);
        }
    }
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", child.id())).map_or(0, |d| d.count());
    eventually("the agent's descriptors bounded", Duration::from_secs(30), || {
        let n = fds();
        (n < 200).then_some(()).ok_or(format!("{n} descriptors"))
    })
    .await;
    w.drop_file("drop/people", "a.csv", people_csv(0..3).as_bytes());
    eventually(
        "the file delivered while the connections are held",
        Duration::from_secs(60),
        || {
            let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
            let s: agent::health::Status = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            (s.queue.records == 0 && s.sources[0].files_done == 1)
                .then_some(())
                .ok_or(body)
        },
    )
    .await;
    for wal in ["outbox.db-wal", "outbox.db-shm"] {
        if data.join(wal).exists() {
            assert_eq!(mode(&data.join(wal)), 0o600, "{wal}");
        }
    }
    drop(idle);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_hub_holds(&w.store_path(), 0..3);
    hub.stop().await;
}
