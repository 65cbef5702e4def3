//! What the operator reads of a running agent: the status page at `/` (the
//! real `qianzhi` process, over HTTP) and a file's progress while a drop
//! folder reads it (in `/status`, `qianzhi status` and the page).

use std::io::{Read, Write};
use std::time::Duration;

use crate::*;

/// A child process killed when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One GET on a health port: the response's head and body.
fn get(addr: &str, path: &str) -> Result<(String, String), String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no body")?;
    Ok((head.to_owned(), body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_agent_in_chinese_with_every_untrusted_name_escaped() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    // One row breaks the citizen ID's check digit; a file named like markup
    // cannot be read (it is empty) and waits in rejected/.
    w.drop_file("drop/people", "a.csv", people_csv_with_a_bad_id(0..1, 1).as_bytes());
    w.drop_file("drop/people", "<script>x.csv", b"");
    let agent = Killed(spawn(
        "qianzhi",
        &["--config", &config.to_string_lossy(), "run"],
        &w.path("agent.log"),
    ));
    let addr = format!("127.0.0.1:{}", spec.health_port);

    let (head, page) = eventually(
        "the page with the link up and both files handled",
        Duration::from_secs(30),
        || {
            let (head, body) = get(&addr, "/")?;
            let ready = body.contains("<span class=\"tag ok\">UP</span>")
                && body.contains("&lt;script&gt;x.csv")
                && body.contains("<code>CHECK_DIGIT</code>");
            ready
                .then_some((head.clone(), body.clone()))
                .ok_or(format!("{head}\n{body}"))
        },
    )
    .await;
    assert_eq!(head.split(' ').nth(1), Some("200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("content-type: text/html; charset=utf-8")),
        "{head}"
    );
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{page}");
    for heading in [
        "告警 Warnings",
        "链路 Link",
        "队列 Queue",
        "隔离区 Quarantine",
        "数据源 Sources",
        "被拒文件 Rejected files",
        "资源新鲜度 Freshness",
        "订阅 Subscriptions",
    ] {
        assert!(page.contains(&format!("<h2>{heading}")), "{heading} missing: {page}");
    }
    // The hostile name appears only escaped; the page has no script at all.
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("<li>&lt;script&gt;x.csv</li>"), "{page}");
    assert!(page.contains("<code>FILES_REJECTED</code>"), "{page}");
    assert!(page.contains("<td><b>people</b></td>"), "{page}");
    // The quarantine by rule, and the same figures /status gives.
    assert!(
        page.contains("<tr><td><code>CHECK_DIGIT</code></td><td class=\"n\">1</td></tr>"),
        "{page}"
    );
    let status: serde_json::Value = serde_json::from_str(&get(&addr, "/status").unwrap().1).unwrap();
    assert_eq!(status["quarantine"], 1);
    assert!(page.contains("<p><b>1</b> 条待处理 held</p>"), "{page}");
    assert!(page.contains(&format!("<b>{GAJ}</b>")), "{page}");
    assert!(page.contains("<code>1010100/0001</code>"), "{page}");

    drop(agent);
    hub.stop().await;
}

/// While a drop folder reads a file, `/status` says how far it is (rows,
/// the bytes the reader consumed of the file's size, the rate), as do
/// `qianzhi status` and the page; once the file is done, it no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_read_shows_its_progress_until_it_is_done() {
    const ROWS: u64 = 40_000;
    let w = World::new();
    let hub_port = free_port();
    let config = w.agent_toml(&w.agent_spec(hub_port));
    limit_outbox(&config, "1MiB");
    let agent = Agent::start(&config).await;
    let addr = agent.running.health_addr.to_string();
    let csv = people_csv(0..ROWS);
    w.drop_file("drop/people", "big.csv", csv.as_bytes());

    // The hub is down: the outbox fills and the file waits, part read
    // (several chunks past the queue's limit), its progress in view.
    let (status, progress) = eventually("the file's progress in /status", Duration::from_secs(60), || {
        let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
        let s: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let p = &s["sources"][0]["reading"];
        let paused = s["queue"]["full"] == true && p["rows"].as_u64().is_some_and(|r| r > 0);
        paused.then(|| (body.clone(), p.clone())).ok_or(body)
    })
    .await;
    let rows = progress["rows"].as_u64().unwrap();
    assert!(rows < ROWS, "{progress}");
    assert_eq!(progress["file"], "big.csv");
    assert_eq!(progress["size"], csv.len() as u64);
    assert_eq!(progress["bytes_of"], csv.len() as u64);
    assert_eq!(progress["measure"], "file");
    // The bytes are the reader's: exactly the header and the rows read.
    assert_eq!(progress["bytes"], people_csv(0..rows).len() as u64, "{progress}");
    assert!(
        progress["rows_per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{progress}"
    );
    assert!(progress["seconds_left"].as_f64().is_some(), "{progress}");

    let text = agent::cli::status::render(&serde_json::from_str(&status).unwrap());
    let line = text.lines().find(|l| l.starts_with("reading")).unwrap_or_default();
    let pct = people_csv(0..rows).len() as u64 * 100 / csv.len() as u64;
    assert!(
        line.starts_with(&format!("reading  big.csv: {} rows, ", group(rows)))
            && line.contains(&format!("({pct} %), ")),
        "{text}"
    );
    assert!(line.contains(" rows/s, about ") && line.ends_with(" left"), "{line}");
    let page = agent::cli::status::fetch(&addr, "/").unwrap();
    assert!(page.contains("正在读取 reading <b>big.csv</b>"), "{page}");

    // The hub comes back: the file is read to its end and its progress goes.
    let hub = Hub::start(&w, hub_port).await;
    eventually("the file done and its progress gone", Duration::from_secs(60), || {
        let body = agent::cli::status::fetch(&addr, "/status").map_err(|e| e.to_string())?;
        let s: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let source = &s["sources"][0];
        (source["files_done"] == 1 && source["reading"].is_null())
            .then_some(())
            .ok_or(body)
    })
    .await;
    let text = agent::cli::status::render(&agent.status());
    assert!(!text.contains("reading"), "{text}");
    agent.stop().await;
    hub.stop().await;
}

/// A count as status writes it: `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}
