//! A full disk: on a small filesystem the test mounts itself (tmpfs with a
//! size limit), the sources pause below the reserve, delivery goes on, and
//! everything arrives once when space comes back. Nothing crashes.

use std::process::Command;
use std::time::Duration;

use crate::*;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_sources_and_loses_nothing() {
    let w = World::new();
    let Some(_fs) = Tmpfs::mount(&w.path("small"), "64m") else {
        assert!(
            std::env::var_os("QIANZHI_REQUIRE_SERVICES").is_none(),
            "CI must be able to mount a tmpfs (root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let hub_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    spec.data_dir = "small".into();
    let config = w.agent_toml(&spec);
    let text =
        std::fs::read_to_string(&config)
            .unwrap()
            .replacen("[hub]", "[outbox]\nreserve_free = \"24MiB\"\n[hub]", 1);
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config).await;
    // About 40 MB of records for 40 MB above the reserve: it cannot all fit.
    const ROWS: u64 = 160_000;
    w.drop_file("drop/people", "big.csv", people_csv(0..ROWS).as_bytes());
    let paused = eventually("the sources paused by the disk", Duration::from_secs(120), || {
        let s = agent.status();
        let paused = s.degraded.iter().any(|d| d.starts_with("SOURCES_PAUSED"));
        (paused && s.sources[0].records < ROWS)
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(paused.queue.records > 0 && paused.queue.error.is_none(), "{paused:?}");
    assert!(w.path("drop/people/big.csv").exists(), "the file waits, unfinished");

    // The hub comes back: acks give the space back and the source resumes.
    let hub = Hub::start(&w, hub_port).await;
    eventually("everything delivered", Duration::from_secs(300), || {
        let s = agent.status();
        (s.link.acked == ROWS && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(!agent.status().degraded.iter().any(|d| d.starts_with("SOURCES_PAUSED")));
    assert_hub_holds(&w.store_path(), 0..ROWS);
    agent.stop().await;
    hub.stop().await;
}
