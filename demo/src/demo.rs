//! The one-command demo: development certificates, a hub-stub and two
//! agents in one process. The provider's sample file is dropped into its
//! folder and its records are shown as they arrive at the hub; a second
//! agency, under a sharing agreement for one item, receives them into a
//! table of its own SQLite database.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use hub_stub::Store;
use hub_stub::config::HubConfig;
use prost::Message;

/// The example catalog (deploy/catalog.example.toml) the demo and the
/// tests share.
pub const CATALOG: &str = include_str!("../../deploy/catalog.example.toml");
pub const AGENCY: &str = "320282-gaj";
/// The receiving agency (民政局) and what it may receive of the people.
pub const RECEIVER: &str = "320282-mzj";
const AGREEMENT: &str = "DEMO-2026-001";

/// The sample export: five good rows, one with an impossible birth date,
/// one ragged row.
const SAMPLE: &str = "\u{FEFF}公民身份号码,姓名,性别,出生日期,民族,住址,联系电话,登记日期
320282199001019995,张伟,1,1990-01-01,01,宜兴市宜城街道人民路1号,13912345678,2024-03-01
320282199512319981,王芳,2,19951231,01,宜兴市丁蜀镇前墅村8号,13812345678,2024-03-02
11010519491001995X,李娜,2,1949-10-01,03,宜兴市和桥镇,,2024-03-02
320211200002299976,刘洋,1,2000-02-29,01, 宜兴市张渚镇 ,13712345678,2024-03-05
32028219960615118X,陈静,2,1996-06-15,01,宜兴市官林镇,13612345678,2024-03-06
320282199902301234,赵强,1,1999-02-30,01,宜兴市高塍镇,13512345678,2024-03-07
320282199001019990,周杰,1
";

pub async fn run(dir: &Path, keep: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    println!("== Qianzhi demo in {}", dir.display());
    let pki = dir.join("pki");
    pki::dev::write_dev(
        &pki,
        &[AGENCY.to_owned(), RECEIVER.to_owned()],
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    println!(
        "1. development PKI in {} (CA, hub, agencies {AGENCY} and {RECEIVER})",
        pki.display()
    );
    std::fs::write(dir.join("catalog.toml"), CATALOG)?;

    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hub_addr = listener.local_addr()?;
    // The hub runs from the hub.toml it leaves behind, so the `qianzhi-hub`
    // commands printed at the end read the same store and serve the same
    // port the agent's config names.
    let hub_toml = dir.join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            r#"# qianzhi-hub configuration written by qianzhi-demo. Paths are relative to this file.
listen = "{hub_addr}"
store = "hub/store.db"
catalog = "catalog.toml"
[tls]
ca = "pki/ca.pem"
cert = "pki/hub.pem"
key = "pki/hub.key"
"#
        ),
    )?;
    let hub = HubConfig::load(&hub_toml)?;
    let store = Arc::new(Store::open(&hub.store)?);
    let catalog = Arc::new(rules::catalog::Catalog::from_toml_str(&std::fs::read_to_string(
        &hub.catalog,
    )?)?);
    let tls = pki::tls::server_config(&hub.tls.ca, &hub.tls.cert, &hub.tls.key)?;
    tasks.spawn(hub_stub::serve_with(
        listener,
        tls,
        store.clone(),
        catalog,
        hub.limits.clone(),
        token.clone(),
    ));
    println!(
        "2. hub-stub listening on {hub_addr} with {} (mTLS, store {})",
        hub_toml.display(),
        hub.store.display()
    );

    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"agency = "{AGENCY}"
data_dir = "agent-data"
catalog = "catalog.toml"
[hub]
url = "https://localhost:{port}"
ca = "pki/ca.pem"
cert = "pki/agency-{AGENCY}.pem"
key = "pki/agency-{AGENCY}.key"
[health]
listen = "127.0.0.1:0"
[[source]]
name = "people"
type = "folder"
resource = "1010100/0001"
path = "drop/people"
rescan = "1s"
[source.columns]
"公民身份号码" = "DE00001"
"姓名" = "DE00002"
"性别" = "DE00003"
"出生日期" = "DE00004"
"民族" = "DE00005"
"住址" = "DE00006"
"联系电话" = "DE00007"
"登记日期" = "DE00008"
"#,
            port = hub_addr.port()
        ),
    )?;
    let config = agent::config::Config::load(&agent_toml)?;
    let running = agent::start(config, &tasks, token.clone()).await?;
    println!("3. agent {AGENCY} running with {}", agent_toml.display());

    let drop = dir.join("drop/people");
    std::fs::create_dir_all(&drop)?;
    std::fs::write(drop.join(".people.csv.part"), SAMPLE)?;
    std::fs::rename(drop.join(".people.csv.part"), drop.join("people.csv"))?;
    println!("4. dropped people.csv (7 rows: 5 good, 1 impossible date, 1 ragged)");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = running.health.status();
        if s.link.acked >= 5 && s.quarantine >= 2 && s.queue.records == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the records did not arrive within 30s: {}",
                agent::cli::status::render(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("5. at the hub, resource 1010100/0001 in hub sequence order:");
    print!("{}", hub_table(&store, "1010100/0001")?);
    println!("6. in the agent's quarantine:");
    for q in running.outbox.read(|r| r.quarantine(100)).await? {
        println!("   {} line {}: {}", q.object, q.line, q.reasons.join("; "));
    }
    println!("7. agent status:");
    print!("{}", agent::cli::status::render(&running.health.status()));

    let receiver_health = receive(&dir, &store, hub_addr.port(), &tasks, &token).await?;

    if keep {
        println!("\nRunning until Ctrl-C. Meanwhile:");
        println!("   drop more files into {}", drop.display());
        println!(
            "   {AGENCY}'s status page: http://{}/ (JSON: /status), {RECEIVER}'s: http://{receiver_health}/",
            running.health_addr
        );
        agent::signal::shutdown().await;
    }
    token.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .context("shutdown took too long")?;
    println!("== demo done: the hub and both agents have stopped");
    print!("{}", next_steps(&dir, keep));
    Ok(())
}

/// What the demo leaves behind and what to try with it, with the demo's
/// own paths. Every command works on the stopped demo: the quarantine
/// commands need the agent stopped, `check` needs the hub served again.
fn next_steps(dir: &Path, keep: bool) -> String {
    let d = dir.display();
    let mut s = format!(
        "
Files in {d} (they stay: the commands below use them; remove the folder when done):
   hub.toml, agent.toml, receiver.toml   the configs of the hub and the two agents
   pki/                                  development CA and certificates
   hub/store.db                          the hub's store
   agent-data/, receiver-data/           the agents' outboxes, quarantines and audit trails
   received.db                           what {RECEIVER} received
   drop/people/                          {AGENCY}'s drop folder

What to try next. Build the binaries in the repository first:
   cargo build --release -p agent -p hub-stub    # target/release/qianzhi, target/release/qianzhi-hub
then, with target/release on PATH:
   qianzhi-hub export --config {d}/hub.toml            # the hub's records as JSON Lines
   qianzhi-hub report --config {d}/hub.toml            # what each agency provided and received
   qianzhi --config {d}/agent.toml quarantine list     # the two rows held back, and why
   qianzhi-hub serve --config {d}/hub.toml &           # the hub again, on the same port
   qianzhi --config {d}/agent.toml check               # config, folders, certificates, a session with the hub
   qianzhi --config {d}/agent.toml run                 # the agent again: drop files into {d}/drop/people
"
    );
    if !keep {
        s.push_str(
            "Run the demo again with --keep to keep the hub and agents running (and their status pages) until Ctrl-C.\n",
        );
    }
    s
}

/// The hub's current records of `resource` as a table in hub sequence
/// order: the order receivers get them in.
fn hub_table(store: &Store, resource: &str) -> anyhow::Result<String> {
    const ITEMS: [(&str, &str); 4] = [
        ("DE00002", "姓名"),
        ("DE00003", "性别"),
        ("DE00004", "出生日期"),
        ("DE00006", "住址"),
    ];
    let mut reader = store.reader()?;
    let latest = reader.latest(resource)?;
    let mut rows = vec![
        ["hub seq", "provider", "key"]
            .into_iter()
            .chain(ITEMS.iter().map(|(_, name)| *name))
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ];
    for stored in reader.snapshot(resource, 0, latest, 1000, || store.sync())? {
        let record = proto::v1::Record::decode(stored.record.as_slice())?;
        let mut row = vec![stored.hseq.to_string(), stored.provider, record.key.join("/")];
        row.extend(
            ITEMS
                .iter()
                .map(|(id, _)| record.items.get(*id).cloned().unwrap_or_default()),
        );
        rows.push(row);
    }
    Ok(table(&rows))
}

/// Left-aligned columns, three spaces in, two between, sized by display
/// width so that Chinese text lines up in a terminal.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| width(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (cell, w) in row.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - width(cell) + 1));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Terminal columns `s` takes: two for East Asian wide characters (CJK,
/// Hangul, full-width forms), one otherwise. An approximation of Unicode
/// East Asian Width that is exact for the demo's text.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// The receiving direction: an agreement shares 姓名 (DE00002) of the
/// people with the receiving agency, whose agent applies what the hub
/// delivers into `received.db`. Returns the receiver's health address.
async fn receive(
    dir: &Path,
    store: &Store,
    port: u16,
    tasks: &TaskTracker,
    token: &CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let now = agent::clock::now_us();
    store.add_agreement(&hub_stub::store::feed::Agreement {
        id: AGREEMENT.into(),
        resource: "1010100/0001".into(),
        agency: RECEIVER.into(),
        items: vec!["DE00002".into()],
        purpose: "最低生活保障资格审核".into(),
        valid_from_us: now - 60_000_000,
        until_us: now + 365 * 86_400_000_000,
        revoked_us: None,
        added_us: now,
    })?;
    println!("8. agreement {AGREEMENT}: {RECEIVER} may receive 姓名 (DE00002) of 1010100/0001 (有条件共享)");
    let toml = dir.join("receiver.toml");
    std::fs::write(
        &toml,
        format!(
            r#"agency = "{RECEIVER}"
data_dir = "receiver-data"
catalog = "catalog.toml"
[hub]
url = "https://localhost:{port}"
ca = "pki/ca.pem"
cert = "pki/agency-{RECEIVER}.pem"
key = "pki/agency-{RECEIVER}.key"
[health]
listen = "127.0.0.1:0"
[[subscription]]
resource = "1010100/0001"
type = "sqlite"
path = "received.db"
table = "people"
create = true
[subscription.columns]
DE00001 = "sfzh"
DE00002 = "xm"
"#
        ),
    )?;
    let config = agent::config::Config::load(&toml)?;
    let running = agent::start(config, tasks, token.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = running.health.status();
        if s.subscriptions.first().is_some_and(|x| x.applied >= 5) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the receiver did not get the records within 30s: {}",
                agent::cli::status::render(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = dir.join("received.db");
    println!("9. received by {RECEIVER} into table people of {}:", db.display());
    let conn = rusqlite::Connection::open(&db)?;
    let mut stmt = conn.prepare(
        "SELECT sfzh, coalesce(xm, ''), coalesce(DE00006, '(not shared)'), qianzhi_provider, qianzhi_agreement, qianzhi_seq
         FROM people ORDER BY qianzhi_seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "   {}  {}  住址 {}  from {} under {} (hub seq {})",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?
        ))
    })?;
    for row in rows {
        println!("{}", row?);
    }
    Ok(running.health_addr)
}
