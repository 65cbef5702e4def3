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

#[test]
fn figures_read_as_people_write_them() {
    use super::units::{bytes, count, duration, percent};
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(1000), "1,000");
    assert_eq!(count(1_234_567), "1,234,567");
    assert_eq!(bytes(312 << 20), "312.0 MiB");
    assert_eq!(duration(80.0), "1m 20s");
    assert_eq!(percent(312, 1024), Some(30));
    assert_eq!(percent(2, 1), Some(100));
    assert_eq!(percent(0, 0), None);
}

#[tokio::test]
async fn the_page_escapes_every_value_from_outside() {
    let d = tempfile::tempdir().unwrap();
    let h = health(d.path(), d.path().join("agency.pem"));
    let hostile = "<img src=x onerror='alert(1)'>&\"";
    let source = h.source(hostile);
    source.set_error(Some(hostile.into()));
    source.set_problem(hostile, Some(hostile.into()));
    source.set_rejected_held(Path::new(hostile), 2, vec![hostile.into()]);
    source.quarantined_by_rule([(hostile, 1)]);
    let first = ReadAt {
        rows: 0,
        bytes: Some((0, 100)),
    };
    let read = source.start_reading(hostile, 100, ByteMeasure::File, first);
    read.advance(ReadAt {
        rows: 7,
        bytes: Some((30, 100)),
    });
    h.link_stats().set_state(LinkState::Down, Some(hostile.into()));
    h.set_reload_error(Some(hostile.into()));
    h.subscription(hostile).refused(hostile);

    let page = page::render(&h.status());
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("'alert"), "{page}");
    let escaped = "&lt;img src=x onerror=&#39;alert(1)&#39;&gt;&amp;&quot;";
    // The source's name, its error, problem, rejected file, rule and file
    // read; the link's error; the reload error; the subscription.
    assert!(page.matches(escaped).count() >= 10, "{page}");
    assert!(page.contains("<b class=\"pct\">30 %</b>"), "{page}");

    drop(read);
    assert!(h.status().sources[0].reading.is_none());
}
