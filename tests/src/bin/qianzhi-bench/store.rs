//! `qianzhi-bench store [ROWS]`: the hub's work on a record without the
//! network, on this thread: records encoded by the agent's normalizer, in
//! batches of the agent's default 4,096, read and checked ([`prepare`]) and
//! stored ([`Store::apply`], one transaction and fsync per batch) into a
//! new store on disk. Twice: with keys in ascending order (the flood's
//! generated file) and in shuffled order (a real export's), which scatters
//! the upserts into `current` over the whole b-tree.
//!
//! The figures are this thread's CPU-seconds per million records
//! (`CLOCK_THREAD_CPUTIME_ID`): SQLite runs on the calling thread, its
//! checkpoints too (the last one when the store closes), so they are the
//! whole cost, and they do not depend on
//! what else the machine is doing the way a rate does.

use std::time::Instant;

use hub_stub::store::{Store, prepare};
use proto::v1::Entry;
use tests::*;

use crate::normalize::{encode, fields_of, people_mapping};

const BATCH: usize = 4096;

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

pub fn run(rows: u64) {
    let mapping = people_mapping();
    let catalog = rules::catalog::Catalog::from_toml_str(CATALOG).expect("catalog");
    let records: Vec<prost::bytes::Bytes> = (0..rows)
        .map(|i| {
            let values = fields_of(&mapping, &person(i));
            encode(&mapping, &values, i + 2).expect("a valid person").into()
        })
        .collect();
    let bytes: usize = records.iter().map(|r| r.len()).sum();
    println!(
        "| key order | records | prepare (read, check) CPU-s per million | store CPU-s per million | total | wall | store file |"
    );
    println!("|---|---|---|---|---|---|---|");
    for shuffled in [false, true] {
        let mut order: Vec<usize> = (0..records.len()).collect();
        if shuffled {
            shuffle(&mut order);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store.db")).expect("store");
        let (mut prepare_s, mut store_s) = (0.0, 0.0);
        let wall = Instant::now();
        for (b, chunk) in order.chunks(BATCH).enumerate() {
            let first = (b * BATCH) as u64 + 1;
            let entries: Vec<Entry> = chunk
                .iter()
                .enumerate()
                .map(|(i, &r)| Entry {
                    seq: first + i as u64,
                    record: records[r].clone(),
                })
                .collect();
            let t0 = thread_cpu();
            let prepared = prepare(GAJ, entries, &catalog, 64 << 10);
            let t1 = thread_cpu();
            let applied = store.apply(GAJ, "bench", &prepared).expect("apply");
            store_s += thread_cpu() - t1;
            prepare_s += t1 - t0;
            assert!(
                applied.rejected.is_empty() && applied.stop.is_none(),
                "every bench record is stored: {applied:?}"
            );
        }
        // Closing the store checkpoints what is left in the WAL: part of
        // the cost of storing.
        let path = store.path().to_owned();
        let t = thread_cpu();
        drop(store);
        store_s += thread_cpu() - t;
        let wall = wall.elapsed().as_secs_f64();
        let per_m = 1e6 / rows as f64;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!(
            "| {} | {rows} | {:.2} | {:.2} | **{:.2}** | {wall:.2} s | {} MiB |",
            if shuffled { "shuffled" } else { "ascending" },
            prepare_s * per_m,
            store_s * per_m,
            (prepare_s + store_s) * per_m,
            size >> 20
        );
    }
    println!();
    println!("mean record {} bytes", bytes / records.len().max(1));
}

/// A fixed permutation (xorshift, Fisher–Yates), the same every run.
pub fn shuffle<T>(v: &mut [T]) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}
