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
    let store = Arc::new(Store::open(&dir.join("hub/store.db"))?);
    let catalog = Arc::new(rules::catalog::Catalog::from_toml_str(CATALOG)?);
    let tls = pki::tls::server_config(&pki.join("ca.pem"), &pki.join("hub.pem"), &pki.join("hub.key"))?;
    tasks.spawn(hub_stub::serve(listener, tls, store.clone(), catalog, token.clone()));
    println!(
        "2. hub-stub listening on {hub_addr} (mTLS, store {})",
        dir.join("hub/store.db").display()
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
    println!(
        "3. agent running with {} (health port http://{}/status)",
        agent_toml.display(),
        running.health_addr
    );

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
    println!(
        "5. at the hub (qianzhi-hub export --store {}):",
        dir.join("hub/store.db").display()
    );
    let mut out = Vec::new();
    store.export(None, false, &mut out)?;
    print!("{}", String::from_utf8_lossy(&out));
    println!("6. in the agent's quarantine:");
    for q in running.outbox.read(|r| r.quarantine(100)).await? {
        println!("   {} line {}: {}", q.object, q.line, q.reasons.join("; "));
    }
    println!("7. agent status:");
    print!("{}", agent::cli::status::render(&running.health.status()));

    receive(&dir, &store, hub_addr.port(), &tasks, &token).await?;

    if keep {
        println!("Running until Ctrl-C. Drop more files into {}", drop.display());
        agent::signal::shutdown().await;
    }
    token.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .context("shutdown took too long")?;
    println!("== demo done");
    Ok(())
}

/// The receiving direction: an agreement shares 姓名 (DE00002) of the
/// people with the receiving agency, whose agent applies what the hub
/// delivers into `received.db`.
async fn receive(
    dir: &Path,
    store: &Store,
    port: u16,
    tasks: &TaskTracker,
    token: &CancellationToken,
) -> anyhow::Result<()> {
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
    Ok(())
}
