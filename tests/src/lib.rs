//! The end-to-end test harness: a scratch folder per test with its own
//! development PKI and catalog, a hub-stub and agents started in-process or
//! as real child processes, generated input files, and readers of the
//! hub's store.
//!
//! Child processes run the real `qianzhi` and `qianzhi-hub` binaries, which
//! `cargo test --workspace` builds next to this crate's test binary (the
//! agent and hub-stub crates have integration tests, which makes cargo
//! build their binaries first).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_stub::Store;
use pki::dev::{Ca, Validity};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod db;

#[cfg(test)]
mod tests;

pub const GAJ: &str = "320282-gaj";
pub const SCJGJ: &str = "320282-scjgj";
pub const PEOPLE: &str = "1010100/0001";
pub const CATALOG: &str = include_str!("../../deploy/catalog.example.toml");

/// The people resource's columns, in file order, and their data elements.
pub const PEOPLE_COLUMNS: [(&str, &str); 8] = [
    ("公民身份号码", "DE00001"),
    ("姓名", "DE00002"),
    ("性别", "DE00003"),
    ("出生日期", "DE00004"),
    ("民族", "DE00005"),
    ("住址", "DE00006"),
    ("联系电话", "DE00007"),
    ("登记日期", "DE00008"),
];

/// A test's scratch world: folder, PKI, catalog.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

/// What an agent config says; `Default` is a working agent of 320282-gaj.
#[derive(Clone)]
pub struct AgentSpec {
    pub agency: String,
    pub hub_port: u16,
    pub health_port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub catalog: PathBuf,
    /// Extra TOML lines for the `[hub]` table.
    pub hub_extra: String,
    /// `[[source]]` tables, whole.
    pub sources: String,
    pub data_dir: String,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("qianzhi-e2e-")
            .tempdir()
            .expect("temp dir");
        let ca = Ca::new("Qianzhi test CA").expect("ca");
        let w = World { dir, ca };
        std::fs::create_dir_all(w.path("pki")).expect("pki dir");
        w.write("pki/ca.pem", &w.ca.cert_pem());
        let hub =
            w.ca.issue_server(&["localhost".into(), "127.0.0.1".into()])
                .expect("hub cert");
        w.write("pki/hub.pem", &hub.cert_pem);
        w.write("pki/hub.key", &hub.key_pem);
        for agency in [GAJ, SCJGJ] {
            w.issue(agency, Validity::default(), agency);
        }
        w.write("catalog.toml", CATALOG);
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&p, contents).expect("write file");
        p
    }

    /// Issues an agency certificate as `pki/NAME.pem` and `.key`.
    pub fn issue(&self, agency: &str, validity: Validity, name: &str) -> (PathBuf, PathBuf) {
        let c = self.ca.issue_agency(agency, validity).expect("agency cert");
        (
            self.write(&format!("pki/{name}.pem"), &c.cert_pem),
            self.write(&format!("pki/{name}.key"), &c.key_pem),
        )
    }

    pub fn store_path(&self) -> PathBuf {
        self.path("hub/store.db")
    }

    pub fn hub_toml(&self, port: u16) -> PathBuf {
        self.write(
            "hub.toml",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nstore = \"hub/store.db\"\ncatalog = \"catalog.toml\"\n\
                 [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/hub.pem\"\nkey = \"pki/hub.key\"\n"
            ),
        )
    }

    /// A working agent spec for 320282-gaj with one people folder source.
    pub fn agent_spec(&self, hub_port: u16) -> AgentSpec {
        AgentSpec {
            agency: GAJ.into(),
            hub_port,
            health_port: 0,
            ca: self.path("pki/ca.pem"),
            cert: self.path(&format!("pki/{GAJ}.pem")),
            key: self.path(&format!("pki/{GAJ}.key")),
            catalog: self.path("catalog.toml"),
            hub_extra: "backoff_max = \"500ms\"\n".into(),
            sources: people_source("people", "drop/people", ""),
            data_dir: "agent-data".into(),
        }
    }

    pub fn agent_toml(&self, spec: &AgentSpec) -> PathBuf {
        let s = spec;
        self.write(
            "agent.toml",
            &format!(
                "agency = \"{}\"\ndata_dir = \"{}\"\ncatalog = \"{}\"\nshutdown_grace = \"5s\"\n\
                 [hub]\nurl = \"https://localhost:{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{}\
                 [health]\nlisten = \"127.0.0.1:{}\"\n{}",
                s.agency,
                s.data_dir,
                s.catalog.display(),
                s.hub_port,
                s.ca.display(),
                s.cert.display(),
                s.key.display(),
                s.hub_extra,
                s.health_port,
                s.sources
            ),
        )
    }

    /// Drops a file the way a business system should: written under a
    /// temporary name, then renamed into the folder.
    pub fn drop_file(&self, folder: &str, name: &str, bytes: &[u8]) {
        let dir = self.path(folder);
        std::fs::create_dir_all(&dir).expect("drop dir");
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::write(&tmp, bytes).expect("write drop file");
        std::fs::rename(&tmp, dir.join(name)).expect("rename drop file");
    }

    /// Files still waiting in a drop folder (not in done/ or rejected/).
    pub fn waiting(&self, folder: &str) -> usize {
        std::fs::read_dir(self.path(folder))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn files_in(&self, folder: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(folder))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

/// A `[[source]]` table for the people resource with the standard columns.
pub fn people_source(name: &str, path: &str, extra: &str) -> String {
    let mut s = format!(
        "[[source]]\nname = \"{name}\"\ntype = \"folder\"\nresource = \"{PEOPLE}\"\npath = \"{path}\"\nrescan = \"1s\"\n{extra}[source.columns]\n"
    );
    for (col, de) in PEOPLE_COLUMNS {
        s.push_str(&format!("\"{col}\" = \"{de}\"\n"));
    }
    s
}

/// A synthetic citizen ID, valid per GB 11643 and unique per `i` (below
/// about 20 million): the birth date counts thousands, the sequence the rest.
pub fn citizen_id(i: u64) -> String {
    let k = i / 1000;
    let body = format!(
        "320282{:04}{:02}{:02}{:03}",
        1950 + k / 336,
        1 + (k / 28) % 12,
        1 + k % 28,
        i % 1000
    );
    let check = rules::element::citizen_check(body.as_bytes());
    format!("{body}{check}")
}

/// A synthetic person: valid values in every column, unique key per `i`.
pub fn person(i: u64) -> [String; 8] {
    [
        citizen_id(i),
        format!("测试{i}"),
        ["1", "2"][(i % 2) as usize].to_owned(),
        format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28),
        format!("{:02}", 1 + i % 56),
        format!("宜兴市测试路{i}号"),
        format!("139{:08}", i % 100_000_000),
        "2024-01-01".to_owned(),
    ]
}

/// A CSV file (UTF-8) with the standard header and these people.
pub fn people_csv(rows: impl IntoIterator<Item = u64>) -> String {
    let mut s = PEOPLE_COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(",");
    s.push('\n');
    for i in rows {
        s.push_str(&person(i).join(","));
        s.push('\n');
    }
    s
}

/// A citizen ID whose GB 11643 check digit is wrong.
pub const BAD_ID: &str = "320282199001019990";

/// `people_csv(good)` followed by person `bad` with [`BAD_ID`]: a file with
/// one row for the quarantine.
pub fn people_csv_with_a_bad_id(good: std::ops::Range<u64>, bad: u64) -> String {
    let mut row = person(bad);
    row[0] = BAD_ID.into();
    let mut csv = people_csv(good);
    csv.push_str(&row.join(","));
    csv.push('\n');
    csv
}

/// Gives the agent config at `config` an outbox of at most `max_bytes`.
pub fn limit_outbox(config: &Path, max_bytes: &str) {
    let text = std::fs::read_to_string(config).expect("agent config").replacen(
        "[hub]",
        &format!("[outbox]\nmax_bytes = \"{max_bytes}\"\n[hub]"),
        1,
    );
    std::fs::write(config, text).expect("agent config");
}

/// Person `i` as one JSON Lines object (column → value).
pub fn person_json(i: u64) -> String {
    let m: serde_json::Map<String, serde_json::Value> = PEOPLE_COLUMNS
        .iter()
        .zip(person(i))
        .map(|((c, _), v)| ((*c).to_owned(), v.into()))
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// The canonical items the hub must hold for person `i`.
pub fn expected_items(i: u64) -> serde_json::Value {
    let p = person(i);
    let mut m = serde_json::Map::new();
    for ((_, de), v) in PEOPLE_COLUMNS.iter().zip(p) {
        let v = if v.len() == 10 && v.as_bytes()[4] == b'-' {
            v.replace('-', "")
        } else {
            v
        };
        m.insert((*de).to_owned(), v.into());
    }
    serde_json::Value::Object(m)
}

/// The hub store's lines (current state, or history).
pub fn export(store: &Path, history: bool) -> Vec<serde_json::Value> {
    if !store.exists() {
        return Vec::new();
    }
    let s = Store::open(store).expect("open store");
    let mut out = Vec::new();
    s.export(None, history, &mut out).expect("export");
    String::from_utf8(out)
        .expect("utf-8 export")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Checks the hub against people `rows`: current state equal to the input,
/// every change in the history exactly once.
pub fn assert_hub_holds(store: &Path, rows: impl IntoIterator<Item = u64>) {
    let want: BTreeMap<String, serde_json::Value> = rows
        .into_iter()
        .map(|i| (person(i)[0].clone(), expected_items(i)))
        .collect();
    let current: BTreeMap<String, serde_json::Value> = export(store, false)
        .into_iter()
        .map(|l| (l["key"][0].as_str().unwrap_or_default().to_owned(), l["items"].clone()))
        .collect();
    assert_eq!(
        current.len(),
        want.len(),
        "current state has the wrong number of records"
    );
    for (k, v) in &want {
        assert_eq!(current.get(k), Some(v), "record {k} differs at the hub");
    }
    let history = export(store, true);
    let mut seen = std::collections::HashSet::new();
    for l in &history {
        let id = (l["outbox"].to_string(), l["seq"].as_i64());
        assert!(seen.insert(id), "history holds a sequence twice: {l}");
    }
    let mut keys = std::collections::HashSet::new();
    for l in &history {
        assert!(keys.insert(l["key"].to_string()), "history holds a change twice: {l}");
    }
    assert_eq!(history.len(), want.len(), "history has the wrong number of changes");
}

/// Polls `f` until it returns `Some`, or panics after `limit` naming what
/// was awaited and the last observation.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("timed out waiting for {what}; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A port that was free a moment ago (for a server started later, or as a
/// separate process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An in-process hub-stub.
pub struct Hub {
    pub addr: SocketAddr,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Hub {
    pub async fn start(world: &World, port: u16) -> Hub {
        Hub::start_with_catalog(world, port, CATALOG).await
    }

    /// A hub validating against `catalog` instead of the example catalog.
    pub async fn start_with_catalog(world: &World, port: u16, catalog: &str) -> Hub {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind hub");
        let addr = listener.local_addr().expect("hub addr");
        let tls = pki::tls::server_config(
            &world.path("pki/ca.pem"),
            &world.path("pki/hub.pem"),
            &world.path("pki/hub.key"),
        )
        .expect("hub tls");
        let store = Arc::new(Store::open(&world.store_path()).expect("store"));
        let catalog = Arc::new(rules::catalog::Catalog::from_toml_str(catalog).expect("catalog"));
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move {
            hub_stub::serve(listener, tls, store, catalog, t)
                .await
                .expect("hub serve");
        });
        Hub { addr, token, task }
    }

    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

/// An in-process agent.
pub struct Agent {
    pub running: agent::Running,
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Agent {
    pub async fn start(config: &Path) -> Agent {
        let config = agent::config::Config::load(config).expect("agent config");
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let running = agent::start(config, &tasks, token.clone()).await.expect("agent start");
        Agent { running, token, tasks }
    }

    pub fn status(&self) -> agent::health::Status {
        self.running.health.status()
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .expect("agent stops within its grace period");
    }
}

/// A test that fails drops its agent without `stop`: the agent is told to
/// stop all the same, or a file's read waiting for room in a full queue
/// would hold the runtime's shutdown, and the failed test, forever.
impl Drop for Agent {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The path of a workspace binary: beside the running executable (the
/// benchmark) or one folder up (a test binary in `deps/`), as built by
/// `cargo test --workspace` or `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe folder");
    let candidates = [here.join(name), here.parent().map(|p| p.join(name)).unwrap_or_default()];
    let found = candidates.iter().find(|p| p.is_file());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{name} is missing beside {}: run `cargo test --workspace`",
            here.display()
        )
    })
}

/// Starts a real process with its output appended to `log`.
pub fn spawn(bin_name: &str, args: &[&str], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(bin(bin_name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn")
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_listening(port: u16) {
    eventually(&format!("a listener on port {port}"), Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

/// A small deterministic generator for kill points (seed printed by tests).
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}
