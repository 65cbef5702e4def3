use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::config::Thresholds;

/// A `Health` over a fresh outbox in `dir`, watching `cert`.
fn health(dir: &Path, cert: PathBuf) -> Arc<Health> {
    let outbox = Outbox::open(&dir.join("data"), 1 << 30).unwrap();
    let catalog = rules::catalog::Catalog::from_toml_str("").unwrap();
    let tracker = crate::freshness::Tracker::new(&catalog, "X", [], 0);
    let watch = Watch {
        thresholds: Thresholds {
            link_down_after: Duration::from_secs(3600),
            queue_age_after: Duration::from_secs(3600),
            disk_min_free: 0,
            cert_warn_days: 30,
        },
        data_dir: dir.join("data"),
        cert,
    };
    Health::new("X", "https://hub.invalid", outbox, tracker, Some(watch))
}

fn codes(h: &Health) -> Vec<String> {
    h.status()
        .degraded
        .iter()
        .filter_map(|d| d.split(':').next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_certificate_is_read_at_start_and_on_each_sample_not_per_request() {
    let d = tempfile::tempdir().unwrap();
    let cert = d.path().join("agency.pem");
    let h = health(d.path(), cert.clone());
    assert_eq!(codes(&h), ["CERT_UNREADABLE"]);

    let ca = pki::dev::Ca::new("test CA").unwrap();
    let validity = pki::dev::Validity {
        from_days: -1,
        to_days: 10,
    };
    std::fs::write(&cert, ca.issue_agency("X", validity).unwrap().cert_pem).unwrap();
    // A request reads the result of the last sample.
    assert_eq!(codes(&h), ["CERT_UNREADABLE"]);

    h.sample();
    assert_eq!(codes(&h), ["CERT_EXPIRING"]);
    let text = h.status().degraded.remove(0);
    assert!(text.contains("(in 9 days)") || text.contains("(in 10 days)"), "{text}");
}

#[tokio::test]
async fn the_link_handle_writes_what_status_and_metrics_show() {
    let d = tempfile::tempdir().unwrap();
    let h = health(d.path(), d.path().join("agency.pem"));
    let link = h.link_stats();
    link.set_state(LinkState::Up, None);
    link.sent(3);
    link.acked(2);
    link.rejected();
    // A no-op handle changes nothing anyone reads.
    LinkStats::noop().sent(100);

    let s = h.status().link;
    assert_eq!((s.state, s.sent, s.acked, s.rejected), (LinkState::Up, 3, 2, 1));
    assert!(s.last_ack_seconds_ago.is_some());
    let metrics = h.metrics();
    for line in [
        "qianzhi_records_sent_total 3",
        "qianzhi_records_acked_total 2",
        "qianzhi_records_rejected_total 1",
        "qianzhi_link_up 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }

    link.set_state(LinkState::Down, Some("reset".into()));
    let s = h.status().link;
    assert_eq!((s.state, s.error.as_deref()), (LinkState::Down, Some("reset")));
}
