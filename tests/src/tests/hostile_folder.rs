//! The drop folder as a careless or hostile writer fills it: huge lines,
//! CRLF, stray bytes, files that change while read, hostile workbooks,
//! names that are not UTF-8, and links planted to read or overwrite files
//! outside the folder. Every row ends at the hub, in the quarantine, or in
//! rejected/ with its reason; nothing outside the folder is read or written.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::*;

/// An agent with the people folder and a running hub.
async fn start(w: &World, extra_sources: &str, outbox: &str) -> (Hub, Agent) {
    let hub = Hub::start(w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources.push_str(extra_sources);
    let config = w.agent_toml(&spec);
    if !outbox.is_empty() {
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replacen("[hub]", &format!("[outbox]\n{outbox}[hub]"), 1);
        std::fs::write(&config, text).unwrap();
    }
    let agent = Agent::start(&config).await;
    (hub, agent)
}

async fn handled(agent: &Agent, files: u64) {
    eventually(&format!("{files} files handled"), Duration::from_secs(120), || {
        let s = agent.status();
        let n: u64 = s.sources.iter().map(|x| x.files_done + x.files_rejected).sum();
        (n >= files && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
}

async fn quarantine(agent: &Agent) -> Vec<agent::normalize::Quarantined> {
    agent.running.outbox.read(|r| r.quarantine(1000)).await.unwrap()
}

/// A valid row, a line of 1 GiB (a sparse file), a valid row: the huge line
/// is quarantined cut to a prefix with its length and hash, and both rows
/// reach the hub (the chunk holding the first row once failed to commit
/// while a later chunk marked the file done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_line_is_quarantined_cut_and_the_rows_around_it_delivered() {
    let w = World::new();
    let (hub, agent) = start(&w, "", "").await;
    let dir = w.path("drop/people");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(".huge.part");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&tmp).unwrap();
        writeln!(f, "{}", person_json(1)).unwrap();
        f.write_all(b"{\"x\":\"").unwrap();
        // A hole: the line is 1 GiB of NUL bytes that take no disk.
        f.seek(SeekFrom::Current(1 << 30)).unwrap();
        f.write_all(b"\"}\n").unwrap();
        writeln!(f, "{}", person_json(2)).unwrap();
    }
    std::fs::rename(&tmp, dir.join("huge.jsonl")).unwrap();
    handled(&agent, 1).await;
    assert_hub_holds(&w.store_path(), [1, 2]);
    let q = quarantine(&agent).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].line, 2);
    assert!(q[0].reasons[0].starts_with("ROW_TOO_LONG"), "{:?}", q[0].reasons);
    assert!(
        q[0].raw.len() < 16 << 10 && q[0].raw.contains("sha256"),
        "{}",
        q[0].raw.len()
    );
    assert_eq!(w.files_in("drop/people/done"), ["huge.jsonl"]);
    agent.stop().await;
    hub.stop().await;
}

/// Line numbers are the physical line where a row starts, for CRLF files
/// and rows after a quoted field that spans lines; an oversized value is
/// quarantined cut, not copied whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_line_numbers_hold_for_crlf_and_multiline_fields_and_values_are_bounded() {
    let w = World::new();
    let (hub, agent) = start(&w, "", "").await;
    let header = PEOPLE_COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(",");
    let mut bad = person(3);
    bad[3] = "1999-02-30".into();
    let mut multiline = person(1);
    multiline[5] = "\"宜兴市\r\n测试路1号\"".into();
    // Line 1 header, 2 person 0, 3-4 person 1 (two lines), 5 bad date.
    let crlf = format!(
        "{header}\r\n{}\r\n{}\r\n{}\r\n{}\r\n",
        person(0).join(","),
        multiline.join(","),
        bad.join(","),
        person(4).join(",")
    );
    w.drop_file("drop/people", "windows.csv", crlf.as_bytes());
    let mut long = person(6);
    long[5] = "长".repeat(1 << 20);
    let big = format!("{header}\n{}\n{}\n", long.join(","), person(7).join(","));
    w.drop_file("drop/people", "long.csv", big.as_bytes());
    handled(&agent, 2).await;
    let q = quarantine(&agent).await;
    let date = q.iter().find(|e| e.object == "windows.csv").expect("the bad date");
    assert_eq!(date.line, 5, "{date:?}");
    let long = q.iter().find(|e| e.object == "long.csv").expect("the long value");
    assert_eq!(long.line, 2);
    assert!(long.reasons[0].starts_with("VALUE_TOO_LONG"), "{:?}", long.reasons);
    assert!(long.raw.len() < 64 << 10, "{}", long.raw.len());
    let at_hub: Vec<String> = export(&w.store_path(), false)
        .iter()
        .map(|l| l["key"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(at_hub.len(), 4, "{at_hub:?}");
    for i in [0, 1, 4, 7] {
        assert!(at_hub.contains(&citizen_id(i)), "{i}");
    }
    agent.stop().await;
    hub.stop().await;
}

/// A UTF-8 file with one stray byte stays UTF-8: its other rows arrive
/// intact and the row with the byte waits in the quarantine. A UTF-8 file
/// in a folder configured for GB18030 is rejected with that reason, and a
/// GBK file in a folder configured for UTF-8 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_byte_never_turns_utf8_into_other_characters() {
    let w = World::new();
    let sources = people_source("gbk", "drop/gbk", "encoding = \"gb18030\"\n")
        + &people_source("utf8", "drop/utf8", "encoding = \"utf-8\"\n");
    let (hub, agent) = start(&w, &sources, "").await;
    let text = people_csv(20..22);
    let (gbk, _, unmappable) = encoding_rs::GB18030.encode(&text);
    assert!(!unmappable);
    w.drop_file("drop/utf8", "gbk.csv", &gbk);
    let mut bytes = people_csv(0..3).into_bytes();
    let mut stray = person(3).join(",").into_bytes();
    stray.insert(30, 0xB0);
    bytes.extend_from_slice(&stray);
    bytes.push(b'\n');
    w.drop_file("drop/people", "stray.csv", &bytes);
    w.drop_file("drop/gbk", "utf8.csv", people_csv(10..12).as_bytes());
    handled(&agent, 3).await;
    assert_hub_holds(&w.store_path(), 0..3);
    let q = quarantine(&agent).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].object.as_str(), q[0].line), ("stray.csv", 5));
    assert!(q[0].reasons[0].contains("UNDECODABLE"), "{:?}", q[0].reasons);
    let why = std::fs::read_to_string(w.path("drop/gbk/rejected/utf8.csv.error.txt")).unwrap();
    assert!(why.contains("looks like UTF-8"), "{why}");
    let why = std::fs::read_to_string(w.path("drop/utf8/rejected/gbk.csv.error.txt")).unwrap();
    assert!(
        why.contains("looks like GB18030/GBK") && why.contains("encoding = \"auto\""),
        "{why}"
    );
    agent.stop().await;
    hub.stop().await;
}

/// A file appended to after it was taken: the rows read are delivered and
/// the file goes to rejected/ with the reason, never to done/ unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changes_while_read_is_rejected_not_moved_to_done() {
    const ROWS: u64 = 40_000;
    let w = World::new();
    let hub_port = free_port();
    let mut spec = w.agent_spec(hub_port);
    spec.sources = people_source("people", "drop/people", "");
    let config = w.agent_toml(&spec);
    limit_outbox(&config, "1MiB");
    let agent = Agent::start(&config).await;
    w.drop_file("drop/people", "grows.csv", people_csv(0..ROWS).as_bytes());
    // The hub is down: the outbox fills and the file waits, part read. The
    // file is several chunks past the queue's limit: a chunk or two may be
    // handed over before the first commit shows the queue full.
    eventually("the source paused mid-file", Duration::from_secs(60), || {
        let s = agent.status();
        (s.queue.full && s.sources[0].rows < ROWS)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(w.path("drop/people/grows.csv"))
            .unwrap();
        for i in ROWS..ROWS + 19 {
            writeln!(f, "{}", person(i).join(",")).unwrap();
        }
    }
    let hub = Hub::start(&w, hub_port).await;
    handled(&agent, 1).await;
    assert_eq!(w.files_in("drop/people/done"), Vec::<String>::new());
    assert_eq!(w.files_in("drop/people/rejected"), ["grows.csv", "grows.csv.error.txt"]);
    let why = std::fs::read_to_string(w.path("drop/people/rejected/grows.csv.error.txt")).unwrap();
    assert!(why.contains("changed while it was read"), "{why}");
    let at_hub = export(&w.store_path(), false).len();
    assert!(
        at_hub >= ROWS as usize,
        "every row of the original file arrived: {at_hub}"
    );
    agent.stop().await;
    hub.stop().await;
}

/// A workbook with cells A1 and XFD1048576 (once 512 GiB in memory and an
/// abort at every restart) is read cell by cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_worksheet_with_a_far_cell_is_read_in_bounded_memory() {
    let w = World::new();
    let (hub, agent) = start(&w, "", "").await;
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, (name, _)) in PEOPLE_COLUMNS.iter().enumerate() {
        sheet.write_string(0, c as u16, *name).unwrap();
    }
    for (c, v) in person(5).iter().enumerate() {
        sheet.write_string(1, c as u16, v).unwrap();
    }
    sheet.write_string(1_048_575, 16_383, "far").unwrap();
    let bytes = book.save_to_buffer().unwrap();
    assert!(bytes.len() < 16 << 10);
    w.drop_file("drop/people", "far.xlsx", &bytes);
    handled(&agent, 1).await;
    assert_hub_holds(&w.store_path(), [5]);
    assert_eq!(w.files_in("drop/people/done"), ["far.xlsx"]);
    agent.stop().await;
    hub.stop().await;
}

/// A file whose name is not UTF-8 (GBK names from Windows shares) is taken
/// like any other, and does not stop the files after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_utf8_are_taken_and_do_not_stop_the_folder() {
    let w = World::new();
    let (hub, agent) = start(&w, "", "").await;
    let dir = w.path("drop/people");
    std::fs::create_dir_all(&dir).unwrap();
    // 人民.csv in GBK.
    let gbk = std::ffi::OsStr::from_bytes(b"\xc8\xcb\xc3\xf1.csv");
    std::fs::write(dir.join(".x.part"), people_csv(0..2)).unwrap();
    std::fs::rename(dir.join(".x.part"), dir.join(gbk)).unwrap();
    w.drop_file("drop/people", "later.csv", people_csv(2..4).as_bytes());
    handled(&agent, 2).await;
    assert_hub_holds(&w.store_path(), 0..4);
    assert!(w.path("drop/people/done").join(gbk).exists());
    agent.stop().await;
    hub.stop().await;
}

/// Links planted in the folder are never followed: a symbolic link swapped
/// over a file just after the scan, an error file planted as a link to the
/// agent's own outbox, and a done/ that is a link to elsewhere. Links, FIFOs
/// and folders are reported once and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_the_drop_folder_are_never_followed() {
    let w = World::new();
    // done/ of the other folder is a link to a folder outside.
    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(w.path("drop/other")).unwrap();
    std::os::unix::fs::symlink(&outside, w.path("drop/other/done")).unwrap();
    w.drop_file("drop/other", "o.csv", people_csv([5000]).as_bytes());
    let (hub, agent) = start(&w, &people_source("other", "drop/other", ""), "").await;
    let dir = w.path("drop/people");
    std::fs::create_dir_all(dir.join("rejected")).unwrap();
    // Outside the folder: a secret with a record of its own.
    let secret = w.path("secret/机密.csv");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, people_csv([777])).unwrap();
    let victim = w.path("victim.txt");
    std::fs::write(&victim, "untouched").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("rejected/bad.csv.error.txt")).unwrap();
    w.drop_file("drop/people", "bad.csv", b"");
    // Swap races, bounded: a file renamed in, then a link renamed over it.
    for round in 0..40 {
        let name = format!("race{round}.csv");
        w.drop_file("drop/people", &name, people_csv([1000 + round]).as_bytes());
        let link = dir.join(format!(".link{round}"));
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        std::fs::rename(&link, dir.join(&name)).unwrap();
    }
    std::os::unix::fs::symlink(&secret, dir.join("plain-link.csv")).unwrap();
    rustix_mkfifo(&dir.join("pipe.csv"));
    std::fs::create_dir_all(dir.join("sub.csv")).unwrap();

    eventually(
        "bad.csv rejected and the links counted",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            let people = s.sources.iter().find(|x| x.name == "people").unwrap();
            let other = s.sources.iter().find(|x| x.name == "other").unwrap();
            (people.files_rejected == 1 && people.files_skipped >= 3 && other.error.is_some())
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    let s = agent.status();
    let other = s.sources.iter().find(|x| x.name == "other").unwrap();
    assert!(other.error.as_deref().unwrap().contains("not a folder"), "{other:?}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing moved outside"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let keys: Vec<String> = export(&w.store_path(), false)
        .iter()
        .map(|l| l["key"][0].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !keys.contains(&citizen_id(777)),
        "a file outside the folder reached the hub"
    );
    assert!(
        w.path("drop/people/rejected/bad.csv.1.error.txt").exists()
            || w.files_in("drop/people/rejected")
                .iter()
                .any(|f| f.starts_with("bad.csv") && f.ends_with(".error.txt") && f != "bad.csv.error.txt")
    );
    agent.stop().await;
    hub.stop().await;
}

fn rustix_mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success());
}

/// The agent's count of attempts at reading poison.jsonl, read from its
/// outbox (SQLite allows a reader beside the running agent).
fn reading_attempt(outbox: &std::path::Path) -> Option<String> {
    let conn = rusqlite::Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row(
        "SELECT value FROM positions WHERE key = 'reading:poison.jsonl'",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Whether process `pid` has `name` open.
fn has_open(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .any(|p| p.to_string_lossy().ends_with(name))
        })
        .unwrap_or(false)
}

/// A file the agent dies reading (here: killed while it reads a 2 GiB
/// file, each time before its first commit) is set aside in rejected/ after
/// `max_attempts` such restarts, instead of stopping the agent for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_agent_keeps_dying_on_is_set_aside() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.sources = people_source("people", "drop/people", "max_attempts = 2\n");
    spec.sources.push_str(&people_source("later", "drop/later", ""));
    spec.health_port = free_port();
    let config = w.agent_toml(&spec);
    let config = config.to_str().unwrap();
    let dir = w.path("drop/people");
    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(dir.join(".poison.part")).unwrap();
        writeln!(f, "{}", person_json(1)).unwrap();
        f.seek(SeekFrom::Current(2 << 30)).unwrap();
        f.write_all(b"\n").unwrap();
    }
    std::fs::rename(dir.join(".poison.part"), dir.join("poison.jsonl")).unwrap();
    let log = w.path("agent.log");
    let outbox = w.path("agent-data/outbox.db");
    for attempt in 1..=2 {
        let mut child = spawn("qianzhi", &["--config", config, "run"], &log);
        let pid = child.id();
        // Killed while it reads: the attempt is on disk and the file open.
        eventually("the agent reading the file", Duration::from_secs(30), || {
            let counted = reading_attempt(&outbox).is_some_and(|a| a.starts_with(&format!("{attempt}:")));
            (counted && has_open(pid, "poison.jsonl"))
                .then_some(())
                .ok_or_else(String::new)
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = spawn("qianzhi", &["--config", config, "run"], &log);
    w.drop_file("drop/later", "later.csv", people_csv(2..3).as_bytes());
    let why = w.path("drop/people/rejected/poison.jsonl.error.txt");
    eventually("the file set aside", Duration::from_secs(60), || {
        std::fs::read_to_string(&why).map_err(|e| e.to_string())
    })
    .await;
    assert!(
        std::fs::read_to_string(&why)
            .unwrap()
            .contains("stopped while reading this file 2 times")
    );
    eventually("the agent goes on", Duration::from_secs(60), || {
        (export(&w.store_path(), false).len() == 1)
            .then_some(())
            .ok_or_else(String::new)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    hub.stop().await;
}
