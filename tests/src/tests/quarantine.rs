//! The quarantine as a clerk uses it: list, export for Excel, retry after the
//! catalog was fixed, discard with a reason; with the real `qianzhi` binary.

use std::process::Command;
use std::time::Duration;

use crate::*;

fn qianzhi(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let (code, text) = quarantine_cmd(config, args);
    (code == Some(0), text)
}

/// `qianzhi quarantine ARGS`: its exit code and its output (stdout, then
/// stderr). Run without `$USER`, `$LOGNAME` and `$SUDO_USER`, as from a
/// systemd unit or cron, so that the discard record has to find the caller
/// by itself.
fn quarantine_cmd(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    run_quarantine(config, args, None)
}

/// `qianzhi quarantine ARGS` as above, with `$SUDO_USER` set to `sudo_user`
/// if given.
fn run_quarantine(config: &std::path::Path, args: &[&str], sudo_user: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(bin("qianzhi"));
    command
        .arg("--config")
        .arg(config)
        .arg("quarantine")
        .args(args)
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SUDO_USER");
    if let Some(by) = sudo_user {
        command.env("SUDO_USER", by);
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// An agent with no hub to reach: its folder source still quarantines.
async fn agent_without_hub(w: &World) -> (std::path::PathBuf, Agent) {
    let config = w.agent_toml(&w.agent_spec(free_port()));
    let agent = Agent::start(&config).await;
    (config, agent)
}

/// Drops `rows` into the people folder as `name` and waits until the agent
/// holds `held` entries.
async fn drop_and_hold(w: &World, agent: &Agent, name: &str, rows: &[[String; 8]], held: u64) {
    let mut text = people_csv(0..0);
    for row in rows {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    w.drop_file("drop/people", name, text.as_bytes());
    eventually(&format!("{held} held"), Duration::from_secs(30), || {
        let s = agent.status();
        (s.quarantine == held).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
}

fn bad_check_digit(i: u64) -> [String; 8] {
    let mut row = person(i);
    let good = row[0].pop();
    row[0].push(if good == Some('0') { '1' } else { '0' });
    row
}

fn long_address(i: u64) -> [String; 8] {
    let mut row = person(i);
    row[5] = "宜".repeat(120);
    row
}

/// Waits until the data directory's lock is free: `Agent::stop` returns
/// when the tasks are done, and the outbox's writer thread lets go of the
/// lock a moment later.
async fn lock_released(w: &World) {
    let path = w.path("agent-data/agent.lock");
    eventually("the data directory's lock released", Duration::from_secs(10), || {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        file.try_lock().map_err(|e| e.to_string())
    })
    .await;
}

/// The name of this process's effective uid in /etc/passwd: the test runs
/// as the same account as the `qianzhi` it starts.
fn my_user_name() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_in_any_case_unknown_rules_refused_json_and_export_in_catalog_order() {
    let w = World::new();
    let (config, agent) = agent_without_hub(&w).await;
    drop_and_hold(&w, &agent, "a.csv", &[bad_check_digit(1), long_address(2)], 2).await;

    // A rule code in lower case matches, and one entry is "1 entry".
    let (code, list) = quarantine_cmd(&config, &["list", "--rule", "check_digit"]);
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains("a.csv:2") && !list.contains("a.csv:3"), "{list}");
    assert!(list.ends_with("\n1 entry\n"), "{list}");
    // A typo is refused (64) with the rules the held entries broke.
    let (code, msg) = quarantine_cmd(&config, &["list", "--rule", "CHECK_DIGT"]);
    assert_eq!(code, Some(64), "{msg}");
    assert!(
        msg.contains("\"CHECK_DIGT\"") && msg.contains("CHECK_DIGIT, LENGTH"),
        "{msg}"
    );

    // JSON for scripts: every entry, its rule codes, its raw values by column.
    let (code, json) = quarantine_cmd(&config, &["list", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(list.len(), 2, "{json}");
    assert_eq!(list[0]["rules"], serde_json::json!(["CHECK_DIGIT"]), "{json}");
    assert_eq!(list[1]["line"], 3, "{json}");
    assert_eq!(list[1]["raw"]["住址"], "宜".repeat(120), "{json}");

    // The export's columns follow the resource's items, as the business
    // system's file does, not the characters' codes.
    let out = w.path("fix.csv");
    let (code, msg) = quarantine_cmd(&config, &["export", "--out", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("wrote 2 entries"), "{msg}");
    let exported = std::fs::read(&out).unwrap();
    let exported = String::from_utf8(exported[3..].to_vec()).unwrap();
    let header = exported.lines().next().unwrap();
    let columns: Vec<&str> = PEOPLE_COLUMNS.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        header,
        format!("隔离编号,来源,文件,行号,原因,{},原始内容", columns.join(",")),
        "{exported}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discards_are_listed_with_who_and_their_ids_never_come_back() {
    let w = World::new();
    let (config, agent) = agent_without_hub(&w).await;
    drop_and_hold(&w, &agent, "a.csv", &[bad_check_digit(1), long_address(2)], 2).await;
    agent.stop().await;
    lock_released(&w).await;

    // The newest entry goes: its number must not be given again.
    let (code, msg) = quarantine_cmd(&config, &["discard", "2", "--reason", "重复提交"]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("discarded 1 entry (reason: 重复提交)"), "{msg}");
    let (code, text) = quarantine_cmd(&config, &["discarded"]);
    assert_eq!(code, Some(0), "{text}");
    let who = my_user_name();
    assert!(
        text.contains(&format!("by {who}  reason: 重复提交")) && text.contains("entry #2 people a.csv:3"),
        "{text}"
    );
    assert!(text.ends_with("\n1 discarded entry\n"), "{text}");
    let (code, json) = quarantine_cmd(&config, &["discarded", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let discards: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(discards[0]["who"], who.as_str(), "{json}");
    assert_eq!(discards[0]["entry"]["quarantine_id"], 2, "{json}");

    let agent = Agent::start(&config).await;
    drop_and_hold(&w, &agent, "b.csv", &[long_address(3)], 2).await;
    agent.stop().await;
    let (code, json) = quarantine_cmd(&config, &["list", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let ids: Vec<&serde_json::Value> = list.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, [1, 3], "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_export_retry_and_discard() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let config = w.agent_toml(&w.agent_spec(hub.addr.port()));
    let agent = Agent::start(&config).await;
    // Two good rows, an address longer than the catalog allows, a bad check digit.
    let mut long = person(3);
    long[5] = "宜".repeat(120);
    let mut bad_id = person(4);
    bad_id[0] = "320282199001019990".into();
    let mut text = people_csv(0..2);
    for row in [&long, &bad_id] {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    w.drop_file("drop/people", "a.csv", text.as_bytes());
    eventually("two delivered, two held", Duration::from_secs(30), || {
        let s = agent.status();
        (s.link.acked == 2 && s.quarantine == 2)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;

    // Reading works while the agent runs, and so does a retry (through the
    // agent): nothing is fixed yet.
    let (ok, list) = qianzhi(&config, &["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("a.csv:4") && list.contains("LENGTH") && list.contains("a.csv:5") && list.contains("CHECK_DIGIT"),
        "{list}"
    );
    assert!(list.contains("2 entries"), "{list}");
    let (ok, msg) = qianzhi(&config, &["retry"]);
    assert!(ok && msg.contains("0 queued for the hub, 2 still failing"), "{msg}");
    assert!(msg.contains("through the running agent"), "{msg}");
    agent.stop().await;
    lock_released(&w).await;

    // Export for Excel: UTF-8 with a BOM, the source's columns, the raw values.
    let csv_path = w.path("fix.csv");
    let (ok, msg) = qianzhi(
        &config,
        &["export", "--rule", "LENGTH", "--out", csv_path.to_str().unwrap()],
    );
    assert!(ok, "{msg}");
    let exported = std::fs::read(&csv_path).unwrap();
    assert!(exported.starts_with(b"\xEF\xBB\xBF"));
    let exported = String::from_utf8(exported[3..].to_vec()).unwrap();
    let mut lines = exported.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("隔离编号,来源,文件,行号,原因,公民身份号码,"),
        "{exported}"
    );
    assert!(lines.next().unwrap().contains(&"宜".repeat(120)));
    assert_eq!(lines.next(), None);

    // The catalog allows longer addresses now (at the hub and the agent).
    let fixed = CATALOG.replacen("element = \"DZ\"\nmax_len = 100", "element = \"DZ\"\nmax_len = 200", 1);
    assert_ne!(fixed, CATALOG);
    w.write("catalog.toml", &fixed);
    let (ok, msg) = qianzhi(&config, &["retry"]);
    assert!(ok, "{msg}");
    assert!(msg.contains("1 queued for the hub, 1 still failing"), "{msg}");

    // A discard needs a reason, and keeps it.
    let (_, list) = qianzhi(&config, &["list"]);
    let id = list
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#')
        .to_owned();
    let (ok, msg) = qianzhi(&config, &["discard", &id]);
    assert!(!ok && msg.contains("--reason"), "{msg}");
    let (ok, msg) = qianzhi(&config, &["discard", &id, "--reason", "号码有误, 已由业务科室核实"]);
    assert!(ok && msg.contains("discarded 1 entry"), "{msg}");
    let (_, list) = qianzhi(&config, &["list"]);
    assert!(list.contains("0 entries"), "{list}");

    // The retried record reaches the hub once the agent runs again.
    hub.stop().await;
    let hub = Hub::start_with_catalog(&w, 0, &fixed).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/people", "");
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    eventually("the retried record delivered", Duration::from_secs(30), || {
        let n = export(&w.store_path(), false).len();
        (n == 3).then_some(()).ok_or(format!("{n} at the hub"))
    })
    .await;
    agent.stop().await;
    hub.stop().await;
}

/// `quarantine CMD` run as through `sudo` by `alice`: `$SUDO_USER` set.
fn quarantine_as_alice(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    run_quarantine(config, args, Some("alice"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_discard_go_through_the_running_agent() {
    let w = World::new();
    // The hub already allows 200 characters; the agent's catalog says 100.
    let fixed = CATALOG.replacen("element = \"DZ\"\nmax_len = 100", "element = \"DZ\"\nmax_len = 200", 1);
    assert_ne!(fixed, CATALOG);
    let hub = Hub::start_with_catalog(&w, 0, &fixed).await;
    let config = w.agent_toml(&w.agent_spec(hub.addr.port()));
    let agent = Agent::start(&config).await;
    let rows = [person(1), long_address(2), long_address(3), bad_check_digit(4)];
    drop_and_hold(&w, &agent, "a.csv", &rows, 3).await;

    // Only the agent's account (and root) can connect.
    use std::os::unix::fs::PermissionsExt;
    let socket = w.path("agent-data/control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());

    // The catalog is fixed on disk, but the agent still runs the old one:
    // a retry now would only repeat the old verdict.
    w.write("catalog.toml", &fixed);
    let (code, msg) = quarantine_cmd(&config, &["retry"]);
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("changed since the agent loaded them") && msg.contains("reload"),
        "{msg}"
    );
    assert_eq!(agent.status().quarantine, 3);

    agent
        .running
        .reload(agent::config::Config::load(&config).unwrap())
        .await
        .expect("reload");
    let (code, msg) = quarantine_cmd(&config, &["retry", "--rule", "length"]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(
        msg.contains("2 queued for the hub, 0 still failing") && msg.contains("through the running agent, pid"),
        "{msg}"
    );
    eventually("the retried records at the hub", Duration::from_secs(30), || {
        let n = export(&w.store_path(), false).len();
        (n == 3).then_some(()).ok_or(format!("{n} at the hub"))
    })
    .await;
    assert_eq!(agent.status().quarantine, 1);

    // A discard that names no entry is refused (64): nothing brings them back.
    let (code, msg) = quarantine_cmd(&config, &["discard", "--reason", "x"]);
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("--all"), "{msg}");
    assert_eq!(agent.status().quarantine, 1);

    // A typo is still a usage error (64), answered by the agent.
    let (code, msg) = quarantine_cmd(&config, &["discard", "--rule", "CHECK_DIGT", "--reason", "x"]);
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("CHECK_DIGIT"), "{msg}");

    // Who discarded is what the kernel says of the caller; `$SUDO_USER`
    // counts only for root.
    let (code, msg) = quarantine_as_alice(&config, &["discard", "--rule", "CHECK_DIGIT", "--reason", "号码有误"]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(
        msg.contains("discarded 1 entry (reason: 号码有误) (through the running agent"),
        "{msg}"
    );
    assert_eq!(agent.status().quarantine, 0);
    let (_, json) = quarantine_cmd(&config, &["discarded", "--json"]);
    let discards: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let me = my_user_name();
    let expected = if me == "root" {
        "root (sudo by alice)".to_owned()
    } else {
        me
    };
    assert_eq!(discards[0]["who"], expected.as_str(), "{json}");
    assert_eq!(discards[0]["entry"]["quarantine_id"], 3, "{json}");

    // The running agent never gives a number again either (the table is
    // empty now: a plain rowid would start at 1 again).
    drop_and_hold(&w, &agent, "b.csv", &[bad_check_digit(5)], 1).await;
    let (_, json) = quarantine_cmd(&config, &["list", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0]["id"], 4, "{json}");
    agent.stop().await;
    lock_released(&w).await;
    hub.stop().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_left_by_a_killed_agent_does_not_stop_the_offline_path() {
    let w = World::new();
    let config = w.agent_toml(&w.agent_spec(free_port()));
    let log = w.path("agent.log");
    let mut child = spawn("qianzhi", &["--config", config.to_str().unwrap(), "run"], &log);
    let rows: String = [bad_check_digit(1)].iter().map(|r| r.join(",") + "\n").collect();
    w.drop_file("drop/people", "a.csv", (people_csv(0..0) + &rows).as_bytes());
    let text = eventually("the entry held", Duration::from_secs(30), || {
        let (_, text) = quarantine_cmd(&config, &["list"]);
        if text.contains("1 entry") { Ok(text) } else { Err(text) }
    })
    .await;
    assert!(text.contains("CHECK_DIGIT"), "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        w.path("agent-data/control.sock").exists(),
        "a killed agent leaves its socket"
    );
    let (code, msg) = quarantine_cmd(&config, &["discard", "1", "--reason", "测试"]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(
        msg.contains("discarded 1 entry") && !msg.contains("running agent"),
        "{msg}"
    );
}
