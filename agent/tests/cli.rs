//! The `qianzhi` binary as an operator meets it: exit codes, messages,
//! signals. (Also makes `cargo test --workspace` build the binary for the
//! end-to-end tests.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qianzhi");

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("qianzhi-cli-").tempdir().unwrap()
}

/// A port that was free a moment ago, for the agent's health port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `qianzhi --config CONFIG run` as a child process.
fn run_agent(config: &std::path::Path, stderr: Stdio) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn write_config(dir: &std::path::Path, extra_hub: &str, health_port: u16) -> std::path::PathBuf {
    std::fs::write(
        dir.join("catalog.toml"),
        include_str!("../../deploy/catalog.example.toml"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["pki", "dev", "--out"])
        .arg(dir.join("pki"))
        .args(["--agency", "320282-gaj"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agency = \"320282-gaj\"\ndata_dir = \"data\"\ncatalog = \"catalog.toml\"\nshutdown_grace = \"3s\"\n\
             [hub]\nurl = \"https://localhost:1\"\nca = \"pki/ca.pem\"\ncert = \"pki/agency-320282-gaj.pem\"\n\
             key = \"pki/agency-320282-gaj.key\"\n{extra_hub}[health]\nlisten = \"127.0.0.1:{health_port}\"\n"
        ),
    )
    .unwrap();
    config
}

#[test]
fn config_error_exits_78_naming_the_key_and_line() {
    let d = scratch();
    let config = write_config(d.path(), "batch_recordz = 5\n", 0);
    for cmd in ["check", "run"] {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg(cmd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("batch_recordz") && err.contains("line 10"), "{err}");
    }
}

#[test]
fn usage_error_exits_64() {
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_reports_an_unreachable_hub() {
    let d = scratch();
    let config = write_config(d.path(), "", 0);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok    data directory"), "{text}");
    assert!(text.contains("FAIL  hub https://localhost:1"), "{text}");
}

#[test]
fn pki_dev_keeps_private_keys_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch();
    write_config(d.path(), "", 0);
    for (file, mode) in [
        ("ca.key", 0o600),
        ("hub.key", 0o600),
        ("agency-320282-gaj.key", 0o600),
        ("ca.pem", 0o644),
    ] {
        let m = std::fs::metadata(d.path().join("pki").join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        if mode == 0o600 {
            assert_eq!(m, 0o600, "{file}");
        } else {
            assert!(m & 0o044 != 0, "{file} should be readable: {m:o}");
        }
    }
}

#[test]
fn status_reads_the_running_agent_and_sigterm_stops_it_cleanly() {
    let d = scratch();
    let port = free_port();
    let config = write_config(d.path(), "", port);
    let mut child = run_agent(&config, Stdio::piped());
    // Ready once the health port answers.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the health port never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // `qianzhi status` finds the health port through the config.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("agency   320282-gaj") && text.contains("queue    0 records, 0 B of 2.0 GiB;"),
        "{text}"
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["agency"], "320282-gaj");
    assert_eq!(json["queue"]["records"], 0);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("received shutdown signal") && err.contains("stopped"),
        "{err}"
    );
}

#[test]
fn systemd_sees_ready_status_and_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let d = scratch();
    let config = write_config(d.path(), "", 0);
    let socket_path = d.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: exec keeps the shell's.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" --config "$1" run"#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        assert!(Instant::now() < deadline, "no READY=1 and WATCHDOG=1: {seen}");
        let n = socket.recv(&mut buf).expect("a notification from the agent");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=") && seen.contains("queue 0 records"), "{seen}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let n = socket.recv(&mut buf).unwrap();
    let mut rest = String::from_utf8_lossy(&buf[..n]).into_owned();
    while !rest.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).unwrap();
        rest = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
}

/// `systemd-analyze` checks the shipped unit. Where it is not installed the
/// test says it skipped, unless QIANZHI_REQUIRE_SERVICES=1 (CI) makes that
/// a failure.
#[test]
fn the_unit_file_verifies_and_is_hardened() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("QIANZHI_REQUIRE_SERVICES").is_none(),
            "systemd-analyze is required in CI"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let d = scratch();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/qianzhi.service")).unwrap();
    // verify checks that ExecStart exists: point it at the built binary.
    let path = d.path().join("qianzhi.service");
    std::fs::write(&path, unit.replace("/usr/bin/qianzhi", BIN)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    // "→ Overall exposure level for qianzhi.service: 1.2 OK 🙂"
    let rated_ok = overall
        .split_whitespace()
        .any(|w| ["PERFECT", "SAFE", "OK"].contains(&w));
    assert!(rated_ok, "{overall}");
}

#[test]
fn sighup_reloads_and_a_bad_config_is_refused() {
    let d = scratch();
    let port = free_port();
    let config = write_config(d.path(), "", port);
    let mut child = run_agent(&config, Stdio::null());
    let addr = format!("127.0.0.1:{port}");
    let status = || -> Option<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--addr", &addr])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let start = Instant::now();
        loop {
            if let Some(s) = status()
                && f(&s)
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}: {:?}",
                status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the agent", &|s| s["sources"].as_array().is_some_and(|a| a.is_empty()));
    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        )
    };

    // A source added to the file appears after SIGHUP.
    let text = std::fs::read_to_string(&config).unwrap();
    let with_source = format!(
        "{text}[[source]]\nname = \"people\"\ntype = \"folder\"\nresource = \"1010100/0001\"\npath = \"drop\"\n\
         [source.columns]\n\"公民身份号码\" = \"DE00001\"\n\"姓名\" = \"DE00002\"\n"
    );
    std::fs::write(&config, &with_source).unwrap();
    hup();
    wait_for("the new source", &|s| s["sources"][0]["name"] == "people");

    // A broken file is refused with its reason; the agent keeps running.
    std::fs::write(&config, format!("{with_source}bogus = 1\n")).unwrap();
    hup();
    wait_for("the refusal", &|s| {
        s["degraded"].as_array().is_some_and(|d| {
            d.iter().any(|x| {
                x.as_str()
                    .is_some_and(|x| x.contains("RELOAD_REFUSED") && x.contains("bogus"))
            })
        })
    });
    assert!(child.try_wait().unwrap().is_none(), "the agent must keep running");
    assert_eq!(status().unwrap()["sources"][0]["name"], "people");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn check_warns_of_a_readable_key_and_pki_dev_narrows_existing_keys() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch();
    let config = write_config(d.path(), "", 0);
    let key = d.path().join("pki/agency-320282-gaj.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A drop folder every account may write.
    let drop = d.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[[source]]\nname = \"people\"\ntype = \"folder\"\nresource = \"1010100/0001\"\npath = \"drop\"\n\
         [source.columns]\n\"公民身份号码\" = \"DE00001\"\n\"姓名\" = \"DE00002\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARN") && text.contains("chmod 600"), "{text}");
    assert!(text.contains("writable by every account"), "{text}");
    // A new development PKI over the old files makes every key 0600.
    let out = Command::new(BIN)
        .args(["pki", "dev", "--out"])
        .arg(d.path().join("pki"))
        .args(["--agency", "320282-gaj"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// `qianzhi --config CONFIG status`: exit code, standard output and error.
fn status(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("status")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn status_finds_the_agent_through_its_data_directory_and_never_guesses() {
    let d = scratch();
    // Port 0: only the running agent knows its port.
    let config = write_config(d.path(), "", 0);
    let record = d.path().join("data/health.json");
    let mut child = run_agent(&config, Stdio::null());
    let start = Instant::now();
    while !record.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no {}", record.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let shown = format!("pid {}, config {}", child.id(), config.display());
    let (code, text, _) = status(&config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with(&format!("process  {shown}, health port 127.0.0.1:")),
        "{text}"
    );
    assert!(text.contains("agency   320282-gaj"), "{text}");

    // A config that no longer loads (a refused reload): status says so and
    // still shows the same agent, through the data_dir of the text.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}frobnicate = 1\n")).unwrap();
    let (code, text, err) = status(&config);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(
        err.contains("the config does not load") && err.contains("frobnicate"),
        "{err}"
    );
    assert!(err.contains(&d.path().join("data").display().to_string()), "{err}");
    assert!(text.starts_with(&format!("process  {shown}")), "{text}");

    // Stopped cleanly, the agent takes its record away; status says what
    // it looked for, and asks no port it was not told of.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!record.exists());
    std::fs::write(&config, good).unwrap();
    let (code, text, err) = status(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        err.contains(&format!("no running agent found: {} does not exist", record.display())),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1"), "{err}");

    // No config at all: the packaged data directory is where it looks.
    let (code, _, err) = status(&d.path().join("missing.toml"));
    assert_eq!(code, Some(1));
    assert!(err.contains("/var/lib/qianzhi/health.json does not exist"), "{err}");
}
