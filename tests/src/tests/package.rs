//! The install artefacts: the Grafana dashboard asks only for metrics the
//! agent exports, the tarball's install script lays out a root and keeps an
//! operator's config on upgrade, and the .deb built by cargo-deb holds what
//! the operations guide says it does.

use std::process::Command;
use std::time::Duration;

use crate::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_uses_only_exported_metrics() {
    let w = World::new();
    let hub_port = free_port();
    let hub = Hub::start(&w, hub_port).await;
    // A subscription too, so that the receiving direction's series exist.
    let mut spec = w.agent_spec(hub_port);
    spec.sources
        .push_str("[[subscription]]\nresource = \"2010100/0001\"\ntype = \"folder\"\npath = \"inbox\"\n");
    std::fs::create_dir_all(w.path("inbox")).unwrap();
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    w.drop_file("drop/people", "a.csv", people_csv_with_a_bad_id(0..3, 9).as_bytes());
    w.drop_file("drop/people", "b.bin", b"not a table");
    eventually("delivery", Duration::from_secs(30), || {
        let s = agent.status();
        (s.link.acked >= 3 && s.quarantine >= 1 && w.files_in("drop/people/rejected").len() == 2)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let metrics = agent.running.health.metrics();
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let text = std::fs::read_to_string(workspace().join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("qianzhi_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.push(name);
            }
        }
    }
    assert!(used.len() >= 10, "dashboard queries: {used:?}");
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard asks for {name}, which /metrics does not export:\n{metrics}"
        );
    }
    agent.stop().await;
    hub.stop().await;
}

#[test]
fn tarball_installs_into_a_root_and_keeps_the_operators_config() {
    let w = World::new();
    let out = w.path("out");
    let tarball = run(Command::new(workspace().join("deploy/tarball.sh"))
        .arg(bin("qianzhi"))
        .arg(&out));
    let tarball = PathBuf::from(tarball.trim());
    assert!(tarball.is_file(), "{}", tarball.display());
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&out));
    let unpacked = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("unpacked folder");
    let root = w.path("root");
    let install = || run(Command::new(unpacked.join("install.sh")).env("DESTDIR", &root));
    install();

    for f in [
        "usr/local/bin/qianzhi",
        "etc/systemd/system/qianzhi.service",
        "etc/qianzhi/agent.toml",
        "etc/qianzhi/catalog.toml",
        "usr/local/share/doc/qianzhi/README.md",
        "usr/local/share/doc/qianzhi/grafana-dashboard.json",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    for d in ["var/lib/qianzhi", "srv/qianzhi/drop", "etc/qianzhi/tls"] {
        assert!(root.join(d).is_dir(), "{d} not created");
    }
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/qianzhi.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/qianzhi --config /etc/qianzhi/agent.toml run"));
    let version = run(Command::new(root.join("usr/local/bin/qianzhi")).arg("--version"));
    assert!(version.starts_with("qianzhi "), "{version}");
    // The installed example is a config the agent accepts once its paths exist.
    let example = std::fs::read_to_string(root.join("etc/qianzhi/agent.toml")).unwrap();
    assert_eq!(
        example,
        std::fs::read_to_string(workspace().join("deploy/agent.example.toml")).unwrap()
    );

    // An upgrade keeps the operator's config and puts the new example beside it.
    std::fs::write(root.join("etc/qianzhi/agent.toml"), "# edited by the operator\n").unwrap();
    let said = install();
    assert!(said.contains("kept /etc/qianzhi/agent.toml"), "{said}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/qianzhi/agent.toml")).unwrap(),
        "# edited by the operator\n"
    );
    assert!(root.join("etc/qianzhi/agent.toml.new").is_file());
}

/// cargo-deb is a cargo subcommand: present on CI (.ci/run installs it),
/// perhaps not on a developer's machine.
fn cargo_deb() -> Option<()> {
    let found = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("QIANZHI_REQUIRE_SERVICES").is_none(),
            "cargo-deb is missing (cargo install cargo-deb --locked)"
        );
        eprintln!("skipped: cargo-deb is not installed (cargo install cargo-deb --locked)");
        return None;
    }
    Some(())
}

#[test]
fn deb_package_installs_binary_unit_and_conffiles_without_starting() {
    if cargo_deb().is_none() {
        return;
    }
    let w = World::new();
    let deb = w.path("qianzhi.deb");
    // The binary this test run built (dev profile), not a fresh release build.
    let target = bin("qianzhi")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    run(Command::new("cargo")
        .current_dir(workspace())
        .args([
            "deb",
            "-p",
            "agent",
            "--no-build",
            "--fast",
            "--profile",
            "dev",
            "--output",
        ])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target));

    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for f in [
        "./usr/bin/qianzhi",
        "./etc/qianzhi/agent.toml",
        "./etc/qianzhi/catalog.toml",
        "/systemd/system/qianzhi.service",
        "./usr/share/doc/qianzhi/README.md",
        "./usr/share/doc/qianzhi/grafana-dashboard.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(f)),
            "{f} missing from the package:\n{contents}"
        );
    }
    let field = |name: &str| run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "qianzhi");
    assert!(field("Depends").contains("passwd"));

    let control = w.path("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/qianzhi/agent.toml"), "{conffiles}");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");
    assert!(postinst.contains("install -d -m 0750 -o qianzhi -g qianzhi /var/lib/qianzhi"));
    // Neither enabled nor started before the operator has configured it:
    // an upgrade keeps an enabled unit enabled, and restarts only a running one.
    let commands: Vec<&str> = postinst
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with("echo"))
        .collect();
    for word in ["deb-systemd-invoke start", "systemctl start", "systemctl enable"] {
        assert!(
            !commands.iter().any(|l| l.contains(word)),
            "postinst runs {word:?}:\n{postinst}"
        );
    }
    let enables = postinst.matches("deb-systemd-helper enable").count();
    let guarded = postinst.matches("was-enabled qianzhi.service").count();
    assert!(
        enables <= guarded,
        "postinst enables the unit unconditionally:\n{postinst}"
    );
    for script in ["postinst", "postrm"] {
        if control.join(script).exists() {
            run(Command::new("sh").arg("-n").arg(control.join(script)));
        }
    }
}
