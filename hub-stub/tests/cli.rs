//! The `qianzhi-hub` binary: its error messages.
//! (Also makes `cargo test --workspace` build the binary for the
//! end-to-end tests.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qianzhi-hub");

#[test]
fn export_of_a_missing_store_says_so() {
    let out = Command::new(BIN)
        .args(["export", "--store", "/nonexistent/store.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store at /nonexistent/store.db"));
}

#[test]
fn serve_refuses_an_unknown_key() {
    let d = tempfile::Builder::new().prefix("qianzhi-hubcfg-").tempdir().unwrap();
    let cfg = d.path().join("hub.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nstore = \"s.db\"\ncatalog = \"c.toml\"\nport = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port") && err.contains("line 4"), "{err}");
}

#[test]
fn serve_refuses_an_unworkable_limit() {
    let d = tempfile::Builder::new().prefix("qianzhi-hubcfg-").tempdir().unwrap();
    let cfg = d.path().join("hub.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nstore = \"s.db\"\ncatalog = \"c.toml\"\n\
         [tls]\nca = \"ca.pem\"\ncert = \"hub.pem\"\nkey = \"hub.key\"\n[limits]\nmax_streams = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_streams: must be at least 1"), "{err}");
}

#[test]
fn the_example_config_parses_with_its_limits() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hub.example.toml")).unwrap();
    let c = hub_stub::config::HubConfig::from_toml_str(&text).unwrap();
    let d = hub_stub::Limits::default();
    assert_eq!(
        (
            c.limits.max_message_bytes,
            c.limits.max_queued_bytes,
            c.limits.max_streams
        ),
        (d.max_message_bytes, d.max_queued_bytes, d.max_streams)
    );
    assert_eq!(
        (c.limits.hello_timeout, c.limits.idle_timeout),
        (d.hello_timeout, d.idle_timeout)
    );
}
