use std::time::Duration;

use super::*;
use crate::config::HubConfig;

const BASE: &str = "listen = \"127.0.0.1:7443\"\nstore = \"s.db\"\ncatalog = \"c.toml\"\n\
                    [tls]\nca = \"ca.pem\"\ncert = \"hub.pem\"\nkey = \"hub.key\"\n";

fn parse(limits: &str) -> anyhow::Result<HubConfig> {
    HubConfig::from_toml_str(&format!("{BASE}{limits}"))
}

#[test]
fn a_config_without_limits_gets_the_defaults() {
    let c = parse("").unwrap();
    let d = Limits::default();
    assert_eq!(
        (
            c.limits.max_message_bytes,
            c.limits.max_batch_entries,
            c.limits.max_streams
        ),
        (d.max_message_bytes, d.max_batch_entries, d.max_streams)
    );
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
}

#[test]
fn limits_take_sizes_and_durations() {
    let c = parse(
        "[limits]\nmax_message_bytes = \"4MiB\"\nmax_queued_bytes = 1048576\nmax_batch_entries = 500\n\
         max_streams = 2\nmax_connections = 3\nmax_value_bytes = \"1KiB\"\nhello_timeout = \"2s\"\nidle_timeout = \"1m\"\n",
    )
    .unwrap();
    let l = c.limits;
    assert_eq!(
        (l.max_message_bytes, l.max_queued_bytes, l.max_value_bytes),
        (4 << 20, 1 << 20, 1024)
    );
    assert_eq!((l.max_batch_entries, l.max_streams, l.max_connections), (500, 2, 3));
    assert_eq!(
        (l.hello_timeout, l.idle_timeout),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
}

#[test]
fn unknown_and_unworkable_limits_are_refused() {
    let e = format!("{:#}", parse("[limits]\nmax_stream = 2\n").unwrap_err());
    assert!(e.contains("max_stream"), "{e}");
    let e = format!("{:#}", parse("[limits]\nmax_streams = 0\n").unwrap_err());
    assert!(e.contains("limits.max_streams: must be at least 1"), "{e}");
    let e = format!(
        "{:#}",
        parse("[limits]\nmax_message_bytes = \"16 parsecs\"\n").unwrap_err()
    );
    assert!(e.contains("not a size"), "{e}");
    let e = format!("{:#}", parse("[limits]\nidle_timeout = \"soon\"\n").unwrap_err());
    assert!(e.contains("not a duration"), "{e}");
    assert!(parse("[limits]\nmax_queued_bytes = \"8GiB\"\n").is_err());
}

#[test]
fn a_quota_counts_per_agency_and_frees_on_drop() {
    let q = Quota::new("streams", 2);
    let a1 = q.take("a").unwrap();
    let _a2 = q.take("a").unwrap();
    let e = q.take("a").err().unwrap();
    assert_eq!(e.to_string(), "agency a already has 2 streams open, the hub's limit");
    let _b = q.take("b").unwrap();
    drop(a1);
    assert_eq!(q.open("a"), 1);
    assert!(q.take("a").is_ok());
}
