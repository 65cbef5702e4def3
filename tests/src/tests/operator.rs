//! The operator's first hour with the real `qianzhi` binary: what `check`
//! says about folders, keys and sources, logs written to a file, a second
//! `run` on the same data directory, and the example config.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::*;

pub(super) fn check(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("qianzhi"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qianzhi run` with its standard error in `log`, as under systemd (not a
/// terminal) and without `NO_COLOR`.
fn run_logged(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    Command::new(bin("qianzhi"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
}

fn read(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_missing_drop_folder_names_loose_keys_and_speaks_plainly() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let mut spec = w.agent_spec(free_port());
    spec.sources = people_source("people", "drop/peple", "");
    spec.sources.push_str(
        "[[source]]\nname = \"business\"\ntype = \"sqlite\"\nresource = \"1010100/0001\"\npath = \"business.db\"\n\
         table = \"people\"\n[source.columns]\n",
    );
    for (column, (_, element)) in ["sfzh", "xm", "xb", "csrq", "mz", "zz", "lxdh", "djrq"]
        .iter()
        .zip(PEOPLE_COLUMNS)
    {
        spec.sources.push_str(&format!("{column} = \"{element}\"\n"));
    }
    let config = w.agent_toml(&spec);
    std::fs::set_permissions(&spec.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let folder = w.path("drop/peple");

    // A mistyped folder is an error naming the source and the path, and
    // check leaves it uncreated.
    let (code, text) = check(&config, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  source people: drop folder {}: does not exist",
            folder.display()
        )),
        "{text}"
    );
    assert!(text.contains("--create-folders"), "{text}");
    assert!(!folder.exists());
    // A key others can read: the file and the command that fixes it, with
    // the certificate it belongs to.
    let key = spec.key.display();
    let warning = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "WARN  client certificate {} (agency {GAJ}, valid ",
                spec.cert.display()
            ))
        })
        .unwrap_or_else(|| panic!("no warning on the certificate: {text}"));
    assert!(
        warning.ends_with(&format!(
            "): the private key {key} can be read by other accounts (mode 640): chmod 600 {key}"
        )),
        "{text}"
    );
    // A database source in words, not type names.
    assert!(
        text.contains("source business: SQLite table people, change-log capture"),
        "{text}"
    );
    assert!(text.contains("(2 sources, catalog"), "{text}");

    // Asked to, check creates the folder and says so.
    let (_, text) = check(&config, &["--create-folders"]);
    assert!(
        text.contains(&format!(
            "ok    source people: drop folder {} (created)",
            folder.display()
        )),
        "{text}"
    );
    assert!(folder.is_dir());
    // With the mode the operations guide asks for: setgid, no access for others.
    let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o2770, "{mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_carry_no_colour_escapes() {
    let w = World::new();
    let config = w.agent_toml(&w.agent_spec(free_port()));
    let log = w.path("agent.log");
    let mut agent = run_logged(&config, &log);
    // The link fails to reach the hub and says so at WARN, which a
    // terminal shows in colour.
    eventually("a warning in the log", Duration::from_secs(20), || {
        let text = read(&log);
        text.contains("WARN").then_some(()).ok_or(text)
    })
    .await;
    terminate(&mut agent);
    let text = read(&log);
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_says_at_once_whom_it_waits_for() {
    let w = World::new();
    let mut spec = w.agent_spec(free_port());
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    let mut first = run_logged(&config, &w.path("first.log"));
    wait_listening(spec.health_port).await;

    let second_log = w.path("second.log");
    let mut second = run_logged(&config, &second_log);
    let said = eventually("the second run says whom it waits for", Duration::from_secs(3), || {
        let text = read(&second_log);
        (text.contains("waiting") && text.contains(&format!("pid {}", first.id())))
            .then_some(text.clone())
            .ok_or(text)
    })
    .await;
    assert!(said.contains("qianzhi") && said.contains(" run"), "{said}");
    second.kill().unwrap();
    second.wait().unwrap();
    terminate(&mut first);
}

/// Every key `config::raw` accepts, by table (`""` for the top level, where
/// a table's own name stands for it).
fn raw_config_keys() -> BTreeSet<(String, String)> {
    let source = include_str!("../../../agent/src/config/raw.rs");
    // struct name -> its fields (key, type).
    let mut structs: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut rename: Option<String> = None;
    for line in source.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("pub(super) struct ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some(name.to_owned());
            structs.insert(name.to_owned(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let Some(name) = &current {
            if let Some((_, r)) = line.split_once("rename = \"") {
                rename = r.split('"').next().map(str::to_owned);
            } else if let Some((field, ty)) = line.strip_prefix("pub(super) ").and_then(|l| l.split_once(": ")) {
                let key = rename.take().unwrap_or_else(|| field.to_owned());
                structs.get_mut(name).unwrap().push((key, ty.to_owned()));
            }
        }
    }
    let top = structs.get("RawConfig").expect("RawConfig in raw.rs").clone();
    // A struct's table: the top-level key whose type names it.
    let mut keys = BTreeSet::new();
    for (key, ty) in &top {
        keys.insert((String::new(), key.clone()));
        for (name, fields) in &structs {
            if ty.contains(&format!("{name}>")) || ty.trim_end_matches(',') == name {
                for (field, _) in fields {
                    keys.insert((key.clone(), field.clone()));
                }
            }
        }
    }
    keys
}

/// Every key the example names, commented out or not, by table.
fn example_keys(text: &str) -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']');
            let (parent, key) = name.rsplit_once('.').unwrap_or(("", name));
            keys.insert((parent.to_owned(), key.to_owned()));
            table = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            keys.insert((table.clone(), key.trim().to_owned()));
        }
    }
    keys
}

#[test]
fn the_example_config_names_every_key() {
    let example = example_keys(include_str!("../../../deploy/agent.example.toml"));
    let missing: Vec<String> = raw_config_keys()
        .into_iter()
        .filter(|k| !example.contains(k))
        .map(|(table, key)| {
            if table.is_empty() {
                key
            } else {
                format!("{table}.{key}")
            }
        })
        .collect();
    assert!(missing.is_empty(), "deploy/agent.example.toml lacks {missing:?}");
}

/// The DER of the certificate the hub on `port` presents to an agency.
async fn presented(w: &World, port: u16) -> Vec<u8> {
    let client = pki::tls::client_config(
        &w.path("pki/ca.pem"),
        &w.path(&format!("pki/{GAJ}.pem")),
        &w.path(&format!("pki/{GAJ}.key")),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn first_cert(path: &std::path::Path) -> Vec<u8> {
    pki::tls::read_certs(path).unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reloads_its_catalog_and_certificates_on_sighup_and_refuses_a_bad_one() {
    let w = World::new();
    // Port 0, read back from the log: no other test can hold it.
    let config = w.hub_toml(0);
    let log = w.path("hub.log");
    let mut hub = spawn("qianzhi-hub", &["serve", "--config", &config.to_string_lossy()], &log);
    let port: u16 = eventually("the hub serving", Duration::from_secs(20), || {
        let text = read(&log);
        text.split("listen=127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .ok_or(text)
    })
    .await;
    assert_eq!(presented(&w, port).await, first_cert(&w.path("pki/hub.pem")));
    let hup = |hub: &std::process::Child| {
        let sent = Command::new("kill")
            .args(["-HUP", &hub.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };

    // A renewed certificate and a new catalog.
    let renewed = w.ca.issue_server(&["localhost".into()]).unwrap();
    w.write("pki/hub.pem", &renewed.cert_pem);
    w.write("pki/hub.key", &renewed.key_pem);
    let catalog = CATALOG.replacen("name = \"人口基本信息\"", "name = \"人口基本信息（修订）\"", 1);
    let digest = rules::catalog::Catalog::from_toml_str(&catalog)
        .expect("the new catalog")
        .digest()
        .to_owned();
    let old = rules::catalog::Catalog::from_toml_str(CATALOG).unwrap();
    assert_ne!(old.digest(), digest);
    w.write("catalog.toml", &catalog);
    hup(&hub);
    eventually("the reload in the log", Duration::from_secs(20), || {
        let text = read(&log);
        (text.contains("reloaded") && text.contains(&digest))
            .then_some(())
            .ok_or(text)
    })
    .await;
    assert_eq!(presented(&w, port).await, first_cert(&w.path("pki/hub.pem")));

    // A catalog that does not parse: refused, and the hub goes on with the
    // one it has.
    w.write("catalog.toml", "[[resource]\n");
    hup(&hub);
    eventually("the refusal in the log", Duration::from_secs(20), || {
        let text = read(&log);
        text.contains("reload refused; the running catalog and certificates stay")
            .then_some(())
            .ok_or(text)
    })
    .await;
    assert!(hub.try_wait().unwrap().is_none(), "{}", read(&log));
    assert_eq!(presented(&w, port).await, first_cert(&w.path("pki/hub.pem")));
    terminate(&mut hub);
    assert!(!read(&log).contains('\u{1b}'));
}

#[test]
fn the_docs_point_into_the_repository_and_name_the_files_pki_dev_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for doc in ["README.md", "ARCHITECTURE.md", "deploy/README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        assert!(!text.contains("shared/"), "{doc} points outside the repository");
        for target in text.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if !target.contains("://") && !target.starts_with('#') {
                let base = root.join(doc);
                let path = base.parent().unwrap().join(target);
                assert!(path.exists(), "{doc} links to {target}, which is missing");
            }
        }
    }
    for file in ["docs/regulation.md", "docs/standards.md"] {
        assert!(root.join(file).is_file(), "{file}");
    }

    // Every pki/ file the first hour names is one `pki dev` writes.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let hour = readme
        .split("## The first hour")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a first-hour section in README.md");
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(bin("qianzhi"))
        .args(["pki", "dev", "--out"])
        .arg(d.path().join("pki"))
        .args(["--agency", "320282-gaj"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let named: BTreeSet<&str> = hour
        .split(|c: char| c.is_whitespace() || c == '`' || c == '"')
        .filter_map(|w| w.strip_prefix("pki/"))
        .map(|w| w.trim_end_matches([',', ')', '.']))
        .collect();
    assert!(named.contains("agency-320282-gaj.pem"), "{named:?}");
    for name in named {
        assert!(
            d.path().join("pki").join(name).is_file(),
            "README names pki/{name}, which pki dev does not write"
        );
    }
}
