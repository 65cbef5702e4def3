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

/// A 16 MiB data filesystem, an 8 MiB reserve (half of it the ballast), the
/// hub down and 200,000 rows dropped at once: they would take about 9 MiB
/// of outbox, compressed, and fill what the reserve leaves within a second. `junk` fills what is
/// left to the last byte from outside the agent (a business system sharing
/// the disk) before the hub comes back; it is removed once everything
/// queued was delivered, and the rest of the file follows.
async fn fill_the_disk(junk: bool) {
    let w = World::new();
    let Some(_fs) = Tmpfs::mount(&w.path("small"), "16m") else {
        assert!(
            std::env::var_os("QIANZHI_REQUIRE_SERVICES").is_none(),
            "CI must be able to mount a tmpfs (root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let hub_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    spec.data_dir = "small/data".into();
    let config = w.agent_toml(&spec);
    let text =
        std::fs::read_to_string(&config)
            .unwrap()
            .replacen("[hub]", "[outbox]\nreserve_free = \"8MiB\"\n[hub]", 1);
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config).await;
    const ROWS: u64 = 200_000;
    w.drop_file("drop/people", "big.csv", people_csv(0..ROWS).as_bytes());
    let paused = eventually("the sources paused by the disk", Duration::from_secs(120), || {
        let s = agent.status();
        let paused = s.degraded.iter().any(|d| d.starts_with("SOURCES_PAUSED"));
        (paused && s.sources[0].records < ROWS)
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(paused.queue.records > 0, "{paused:?}");
    assert!(paused.queue.error.is_none(), "no commit failed: {paused:?}");
    assert!(w.path("drop/people/big.csv").exists(), "the file waits, unfinished");
    let junk_path = w.path("small/junk");
    if junk {
        // Another writer takes every byte left, the reserve included.
        use std::io::Write;
        let mut f = std::fs::File::create(&junk_path).unwrap();
        let block = vec![7u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        assert!(agent::disk::free_bytes(&w.path("small")).unwrap() < 1 << 20);
    }

    // The hub comes back: deletes after acks still run on a full disk.
    let hub = Hub::start(&w, hub_port).await;
    eventually("what was queued delivered", Duration::from_secs(300), || {
        let s = agent.status();
        (s.queue.records == 0).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    if junk {
        std::fs::remove_file(&junk_path).unwrap();
    }
    eventually("everything delivered", Duration::from_secs(300), || {
        let s = agent.status();
        (s.sources[0].records == ROWS && s.queue.records == 0 && w.waiting("drop/people") == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    eventually("the sources resumed", Duration::from_secs(30), || {
        let s = agent.status();
        (!s.degraded.iter().any(|d| d.starts_with("SOURCES_PAUSED")))
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_hub_holds(&w.store_path(), 0..ROWS);
    agent.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_fast_pauses_the_sources_and_loses_nothing() {
    fill_the_disk(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_to_the_last_byte_by_others_still_delivers_and_resumes() {
    fill_the_disk(true).await;
}
