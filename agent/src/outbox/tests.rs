use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qianzhi-outbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn records(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}

/// Queues `n` records tagged `tag` and waits for the commit.
async fn queue(ob: &Outbox, n: usize, tag: &str) {
    ob.write(Write {
        records: records(n, tag),
        ..Write::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn records_survive_reopen_and_leave_only_on_ack() {
    let d = dir("reopen");
    {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        queue(&ob, 10, "a").await;
        assert_eq!(ob.stats().records, 10);
        assert_eq!(ob.stats().last_seq, 10);
        ob.ack(4).await.unwrap();
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let s = ob.stats();
    assert_eq!((s.records, s.last_seq), (6, 10));
    let rows = ob.read(|r| r.records_from(0, 100, 1 << 20)).await.unwrap();
    assert_eq!(rows.first().map(|r| r.0), Some(5));
    assert_eq!(rows.last().map(|r| r.1.to_vec()), Some(b"a-9".to_vec()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn sequences_are_never_reused_and_identity_is_kept() {
    let d = dir("seq");
    let id = {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        queue(&ob, 3, "a").await;
        ob.ack(3).await.unwrap();
        assert_eq!(ob.stats().records, 0);
        ob.id().to_owned()
    };
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    assert_eq!(ob.id(), id);
    queue(&ob, 1, "b").await;
    assert_eq!(ob.read(|r| r.first_seq()).await.unwrap(), Some(4));
    std::fs::remove_dir_all(&d).unwrap();
    // A recreated outbox has a new identity and starts again at 1.
    let fresh = Outbox::open(&d, 1 << 30).unwrap();
    assert_ne!(fresh.id(), id);
    assert_eq!(fresh.stats().last_seq, 0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn position_records_and_quarantine_commit_together() {
    let d = dir("position");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let q = Quarantined {
        source: "s".into(),
        object: "f.csv".into(),
        line: 3,
        resource: "r".into(),
        reasons: vec!["BAD: x".into()],
        raw: "{}".into(),
    };
    ob.write(Write {
        records: records(2, "a"),
        quarantine: vec![q.clone()],
        positions: vec![PositionUpdate {
            source: "s".into(),
            key: "file:f.csv".into(),
            value: Some("p1".into()),
        }],
        ..Write::default()
    })
    .await
    .unwrap();
    let positions = ob.read(|r| r.positions("s")).await.unwrap();
    assert_eq!(positions, vec![("file:f.csv".to_owned(), "p1".to_owned())]);
    assert_eq!(ob.read(|r| r.quarantine(10)).await.unwrap(), vec![q]);
    assert_eq!(ob.stats().quarantined, 1);
    ob.write(Write {
        positions: vec![PositionUpdate {
            source: "s".into(),
            key: "file:f.csv".into(),
            value: None,
        }],
        ..Write::default()
    })
    .await
    .unwrap();
    assert!(ob.read(|r| r.positions("s")).await.unwrap().is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn reject_moves_one_record_to_quarantine() {
    let d = dir("reject");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    queue(&ob, 3, "a").await;
    ob.reject(
        2,
        Quarantined {
            reasons: vec!["HUB_NOT_PROVIDER: x".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Its sequence stays as an empty entry: sent again (to a hub behind
    // this outbox) it tells the hub there is nothing there.
    let left: Vec<(u64, usize)> = ob
        .read(|r| r.records_from(0, 10, 1 << 20))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.0, r.1.len()))
        .collect();
    assert_eq!(left, vec![(1, 3), (2, 0), (3, 3)]);
    assert_eq!((ob.stats().records, ob.stats().quarantined), (2, 1));
    assert_eq!(ob.read(|r| r.record(2)).await.unwrap(), None);
    assert_eq!(ob.read(|r| r.record(3)).await.unwrap(), Some(b"a-2".to_vec()));
    // A rejection repeated (its first move was not known to the hub)
    // quarantines nothing twice.
    ob.reject(2, Quarantined::default()).await.unwrap();
    assert_eq!((ob.stats().records, ob.stats().quarantined), (2, 1));
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn full_queue_blocks_room_until_acked() {
    let d = dir("full");
    let ob = Outbox::open(&d, 100).unwrap();
    ob.write(Write {
        records: vec![vec![0u8; 150]],
        ..Write::default()
    })
    .await
    .unwrap();
    assert!(ob.is_full());
    let waiter = {
        let ob = ob.clone();
        tokio::spawn(async move { ob.room().await })
    };
    assert!(!waiter.is_finished());
    ob.ack(1).await.unwrap();
    waiter.await.unwrap();
    assert!(!ob.is_full());
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn many_concurrent_writes_are_grouped_and_ordered_per_writer() {
    let d = dir("group");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(
            ob.submit(Write {
                records: records(10, &format!("w{i}")),
                ..Write::default()
            })
            .await
            .unwrap(),
        );
    }
    for r in receipts {
        r.committed().await.unwrap();
    }
    let all = ob.read(|r| r.records_from(0, 10_000, usize::MAX)).await.unwrap();
    assert_eq!(all.len(), 1000);
    assert!(all.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    assert_eq!(all[10].1, b"w1-0".to_vec());
    std::fs::remove_dir_all(&d).unwrap();
}

fn position(value: Option<&str>) -> PositionUpdate {
    PositionUpdate {
        source: "s".into(),
        key: "file:f.csv".into(),
        value: value.map(str::to_owned),
    }
}

/// A chunk that expects a position its predecessor never wrote (the
/// predecessor failed) changes nothing, and the writes around it go on.
#[tokio::test]
async fn a_write_that_follows_a_failed_one_is_refused_alone() {
    let d = dir("expect");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let first = Write {
        records: records(2, "a"),
        positions: vec![position(Some("chunk-1"))],
        expect: vec![position(None)],
        ..Write::default()
    };
    // Submitted together, so that all three share one transaction.
    let lost = ob
        .submit(Write {
            records: records(3, "lost"),
            positions: vec![position(Some("chunk-2"))],
            // As if the chunk before this one had failed.
            expect: vec![position(Some("chunk-x"))],
            ..Write::default()
        })
        .await
        .unwrap();
    let ok = ob.submit(first).await.unwrap();
    let other = ob
        .submit(Write {
            records: records(1, "other"),
            ..Write::default()
        })
        .await
        .unwrap();
    assert!(matches!(lost.committed().await, Err(Error::Conflict { .. })));
    ok.committed().await.unwrap();
    other.committed().await.unwrap();
    let rows = ob.read(|r| r.records_from(0, 100, 1 << 20)).await.unwrap();
    let data: Vec<String> = rows
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(data, ["a-0", "a-1", "other-0"]);
    assert_eq!(ob.stats().records, 3);
    let positions = ob.read(|r| r.positions("s")).await.unwrap();
    assert_eq!(positions, vec![("file:f.csv".to_owned(), "chunk-1".to_owned())]);
    drop(ob);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Damage in the middle of the file costs only the rows on damaged pages:
/// everything readable past it is recovered, and the loss is reported by
/// sequence range until an operator acknowledges it.
#[tokio::test]
async fn recovery_reads_past_damaged_pages() {
    let d = dir("salvage");
    const N: usize = 20_000;
    {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        // 200 bytes a record that do not compress: stored plain, a chunk
        // of 64 KiB spans four or five 16 KiB pages.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..(N / 1000) {
            let records = (0..1000)
                .map(|_| {
                    (0..25)
                        .flat_map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x.to_le_bytes()
                        })
                        .collect()
                })
                .collect();
            ob.write(Write {
                records,
                ..Write::default()
            })
            .await
            .unwrap();
        }
        ob.write(Write {
            positions: vec![position(Some("p"))],
            ..Write::default()
        })
        .await
        .unwrap();
    }
    // Checkpointed and closed: the records live in outbox.db itself.
    drop(DirLock::acquire_within(&d, std::time::Duration::from_secs(10)).unwrap());
    let path = d.join("outbox.db");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 1 << 20, "{len}");
    {
        use std::io::{Seek, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&vec![0xA5; 64 << 10]).unwrap();
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let rows = ob.read(|r| r.records_from(0, N, 1 << 30)).await.unwrap();
    // Every sequence is queued again: the lost ones as empty entries, which
    // tell the hub they were lost.
    assert_eq!(rows.len(), N);
    let recovered = rows.iter().filter(|(_, d)| !d.is_empty()).count() as u64;
    let report = ob.unacknowledged_recovery().expect("a recovery report");
    assert!(report.contains("sequences missing"), "{report}");
    // 64 KiB: four 16 KiB pages, of two or three chunks of ~320 records.
    assert!(
        recovered as usize >= N - 1000 && (recovered as usize) < N,
        "{recovered}: {report}"
    );
    assert_eq!(
        rows.last().map(|r| r.0),
        Some(N as u64),
        "the tail past the damage is recovered"
    );
    assert!(!rows.last().unwrap().1.is_empty());
    assert_eq!(ob.stats().last_seq, N as u64);
    // Stays until acknowledged, across restarts.
    drop(ob);
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    assert!(ob.unacknowledged_recovery().is_some());
    assert!(Recovery::acknowledge(&d).unwrap().is_some());
    assert!(ob.unacknowledged_recovery().is_none());
    drop(ob);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn a_held_ack_commits_with_the_next_write_alone_and_at_close() {
    let d = dir("later");
    {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        queue(&ob, 10, "a").await;
        // With the next write: its commit's figures include the delete.
        let held = ob.submit_ack(4).await.unwrap();
        queue(&ob, 1, "b").await;
        held.committed().await.unwrap();
        assert_eq!((ob.stats().records, ob.stats().acked_seq), (7, 4));
        // Alone: it still commits (within a second).
        ob.submit_ack(6).await.unwrap().committed().await.unwrap();
        assert_eq!(ob.stats().records, 5);
        // At close, without waiting for its commit.
        drop(ob.submit_ack(9).await.unwrap());
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    assert_eq!(ob.stats().records, 2);
    assert_eq!(ob.read(|r| r.first_seq()).await.unwrap(), Some(10));
    std::fs::remove_dir_all(&d).unwrap();
}

/// The link's read is one cached statement: binding its `LIMIT ?` again
/// used to expire it (SQLite plans with the bound limit), so that every
/// read parsed and planned it anew.
#[tokio::test]
async fn the_links_read_is_planned_once() {
    const READ: &str = "SELECT first, last, enqueued_us, packing, data FROM chunks
             WHERE first >= coalesce((SELECT max(first) FROM chunks WHERE first <= ?1), ?1)
             ORDER BY first LIMIT ?2";
    let d = dir("plan-once");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    queue(&ob, 10, "a").await;
    let reprepares = |conn: &Connection| {
        for (from, max) in [(1, 3), (4, 5), (9, 100)] {
            Reader::new(conn).records_from(from, max, 1 << 20).unwrap();
        }
        let stmt = conn.prepare_cached(READ).unwrap();
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    };
    // What the bundled SQLite does unless told otherwise: the test's
    // evidence that it measures something.
    let plain = Connection::open(d.join("outbox.db")).unwrap();
    assert!(
        reprepares(&plain) >= 2,
        "a plain connection re-prepares on every new LIMIT"
    );
    let ours = open_connection(&d.join("outbox.db")).unwrap();
    assert_eq!(reprepares(&ours), 0);
    drop(ob);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An outbox made before 16 KiB pages keeps its 4 KiB pages and its queue,
/// and still checkpoints every 16 MiB of WAL; a new one gets 16 KiB pages.
#[tokio::test]
async fn an_outbox_with_4_kib_pages_keeps_them_and_its_queue() {
    let page_and_checkpoint = |path: &Path| {
        let conn = open_connection(path).unwrap();
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let every: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        (page, every)
    };
    let d = dir("old-pages");
    std::fs::create_dir_all(&d).unwrap();
    {
        // What SQLite made by default: the page size is fixed by the first
        // write (here the switch to WAL).
        let conn = Connection::open(d.join("outbox.db")).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        queue(&ob, 500, "old").await;
        ob.ack(100).await.unwrap();
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    assert_eq!((ob.stats().records, ob.stats().last_seq), (400, 500));
    let rows = ob.read(|r| r.records_from(0, 1000, 1 << 20)).await.unwrap();
    assert_eq!(rows.first().map(|r| r.0), Some(101));
    drop(ob);
    drop(DirLock::acquire_within(&d, std::time::Duration::from_secs(10)).unwrap());
    assert_eq!(page_and_checkpoint(&d.join("outbox.db")), (4096, 4096));
    std::fs::remove_dir_all(&d).unwrap();

    let d = dir("new-pages");
    drop(Outbox::open(&d, 1 << 30).unwrap());
    drop(DirLock::acquire_within(&d, std::time::Duration::from_secs(10)).unwrap());
    assert_eq!(
        page_and_checkpoint(&d.join("outbox.db")),
        (PAGE_SIZE, (16 << 20) / PAGE_SIZE)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Records go in by statements of 64, 8 and 1 rows: every record keeps its
/// place and the next sequence, whatever the sizes of the writes.
#[tokio::test]
async fn writes_of_any_size_keep_order_and_sequences() {
    let d = dir("insert-sizes");
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let sizes = [1usize, 7, 8, 9, 63, 64, 65, 200, 0, 3];
    let mut want = Vec::new();
    for (w, &n) in sizes.iter().enumerate() {
        let tag = format!("w{w}");
        want.extend(records(n, &tag));
        queue(&ob, n, &tag).await;
        assert_eq!(ob.stats().last_seq, want.len() as u64, "after the write of {n}");
    }
    let rows = ob.read(|r| r.records_from(0, 10_000, 1 << 30)).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
    let data: Vec<Vec<u8>> = rows.into_iter().map(|r| r.1.to_vec()).collect();
    assert_eq!(data, want);
    let s = ob.stats();
    assert_eq!(s.records, want.len() as u64);
    assert_eq!(s.bytes, want.iter().map(|d| d.len() as u64).sum::<u64>());
    drop(ob);
    // The same figures when recomputed at open.
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let again = ob.stats();
    assert_eq!(
        (again.records, again.bytes, again.last_seq),
        (s.records, s.bytes, s.last_seq)
    );
    drop(ob);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An outbox made with a row per record (before chunks) keeps its queue,
/// its sequences and its acknowledged gap when opened: the rows move into
/// chunks in one transaction and the next record takes the next sequence.
#[tokio::test]
async fn an_outbox_with_a_row_per_record_moves_into_chunks() {
    let d = dir("row-per-record");
    std::fs::create_dir_all(&d).unwrap();
    {
        let conn = Connection::open(d.join("outbox.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES ('outbox_id', 'old-id'), ('created_us', '1');
             CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, enqueued_us INTEGER NOT NULL, data BLOB NOT NULL);",
        )
        .unwrap();
        // 1..=300 queued, 301..=310 acknowledged and deleted, 311..=320
        // queued again after an empty lost entry at 311.
        for seq in (1..=320).filter(|s| !(301..=310).contains(s)) {
            let data = if seq == 311 {
                Vec::new()
            } else {
                format!("old-{seq}").into_bytes()
            };
            conn.execute(
                "INSERT INTO records (seq, enqueued_us, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![seq, 1000 + seq, data],
            )
            .unwrap();
        }
        // The counter ran ahead of the rows (records 321..=325 acknowledged).
        conn.execute("UPDATE sqlite_sequence SET seq = 325 WHERE name = 'records'", [])
            .unwrap();
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    assert_eq!(ob.id(), "old-id");
    let s = ob.stats();
    // The lost entry is a sequence, not a record.
    assert_eq!((s.records, s.last_seq, s.oldest_us), (309, 325, Some(1001)));
    queue(&ob, 2, "new").await;
    let rows = ob.read(|r| r.records_from(1, 1000, 1 << 30)).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let want: Vec<u64> = (1..=300).chain(311..=320).chain(326..=327).collect();
    assert_eq!(seqs, want);
    assert_eq!(rows[0].1.as_ref(), b"old-1");
    assert!(rows[300].1.is_empty(), "the lost entry stays empty");
    assert_eq!(rows.last().unwrap().1.as_ref(), b"new-1");
    drop(ob);
    let conn = Connection::open(d.join("outbox.db")).unwrap();
    let old_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'records'")
        .unwrap()
        .exists([])
        .unwrap();
    assert!(!old_table, "the old table is gone");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A chunk whose bytes were scrambled on disk where SQLite does not look
/// (inside a row) is found at open: the file is recovered around it, and
/// the link is never handed a chunk it cannot read.
#[tokio::test]
async fn a_chunk_that_does_not_decode_is_found_at_open() {
    let d = dir("bad-chunk");
    {
        let ob = Outbox::open(&d, 1 << 30).unwrap();
        for w in 0..3 {
            // Compressible, as real records are: stored as zstd frames.
            queue(&ob, 400, &format!("w{w}-{:0>120}", 0)).await;
        }
    }
    drop(DirLock::acquire_within(&d, std::time::Duration::from_secs(10)).unwrap());
    {
        let conn = Connection::open(d.join("outbox.db")).unwrap();
        let (first, packing): (i64, i64) = conn
            .query_row(
                "SELECT first, packing FROM chunks WHERE first > 400 ORDER BY first LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(packing, 1, "the test's chunks are compressed");
        // One byte flipped in the middle of the frame.
        conn.execute(
            "UPDATE chunks SET data = substr(data, 1, length(data) / 2) || x'5A' || substr(data, length(data) / 2 + 2)
             WHERE first = ?1",
            [first],
        )
        .unwrap();
    }
    let ob = Outbox::open(&d, 1 << 30).unwrap();
    let report = ob.unacknowledged_recovery().expect("a recovery report");
    assert!(report.contains("sequences missing"), "{report}");
    let rows = ob.read(|r| r.records_from(1, 10_000, 1 << 30)).await.unwrap();
    assert_eq!(rows.len(), 1200, "every sequence is queued");
    let lost = rows.iter().filter(|r| r.1.is_empty()).count();
    assert!(lost > 0 && lost <= 400, "only the scrambled chunk is lost: {lost}");
    assert_eq!(ob.stats().records, 1200 - lost as u64);
    drop(ob);
    std::fs::remove_dir_all(&d).unwrap();
}
