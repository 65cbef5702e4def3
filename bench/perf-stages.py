#!/usr/bin/env python3
"""Per-stage CPU of the agent and the hub during a flood, from `perf` samples.

    target/release/qianzhi-bench flood &        # then, once both processes run:
    perf record -F 1999 -o agent.data -p $(pgrep -f 'qianzhi --config .* run') -- sleep 12 &
    perf record -F 1999 -o hub.data -p $(pgrep -f 'qianzhi-hub serve') -- sleep 12
    bench/perf-stages.py agent.data AGENT_CPU_S_PER_MILLION hub.data HUB_CPU_S_PER_MILLION

Each sample's function is put in a stage by its name (and the agent's outbox
writer thread by its thread name); the stage's share of the samples times the
process's CPU-seconds per million records (printed by the flood) is its cost
in microseconds per record. The attribution is approximate: malloc and
memcpy serve every stage and are shown on their own line.
"""
import re
import subprocess
import sys
from collections import Counter

NET = r"ZSTD|zstd|rustls|ring_core|aes|gcm|chacha|h2::|hyper|tonic|tokio_rustls|poly1305|sha256"
SQLITE = r"sqlite|pcache|wal|Vdbe|pager|rusqlite|Btree|balance_|cellSize|getPage|store::"


def agent_stage(comm, sym, dso):
    if comm.startswith("outbox-writer"):
        return "outbox append (writer thread: SQLite, WAL, fsync)"
    if re.search(NET, sym):
        return "TLS + HTTP/2 + zstd"
    if re.search(r"csv_core|format::csv|format::jsonl|encoding_rs|memchr|folder::|CsvRows|from_utf8", sym):
        return "read / parse"
    if re.search(r"prost|encode_varint", sym):
        return "encode (protobuf)"
    if re.search(r"rules::|normalize|fmt|Display|pad_integral|BTreeMap|btree|String as core::clone", sym):
        return "normalize"
    if re.search(SQLITE, sym, re.I):
        return "outbox read (SQLite, the link's reads)"
    if "kernel" in dso:
        return "kernel (sockets, file reads, scheduling)"
    if "libc" in dso:
        return "malloc / memcpy (all stages)"
    return "other (tokio, glue)"


def hub_stage(comm, sym, dso):
    if re.search(NET, sym):
        return "TLS + HTTP/2 + zstd"
    if re.search(r"prost|merge_loop|BytesAdapter|decode", sym):
        return "decode (protobuf)"
    if re.search(r"rules::|check|normalize|compact_code|BTreeMap|btree|foldhash", sym):
        return "check (catalog rules)"
    if re.search(SQLITE, sym, re.I):
        return "store (SQLite history + current, WAL)"
    if "kernel" in dso:
        return "kernel (sockets, writes, fsync, scheduling)"
    if "libc" in dso:
        return "malloc / memcpy / memcmp (all stages)"
    return "other (tokio, glue, acks)"


def rows(path):
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "comm,dso,sym", "-g", "none", "-q",
         "--stdio", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.+?)\s{2,}(\S+)\s+\[(.)\]\s+(.*)$", line)
        if m:
            yield float(m.group(1)), m.group(2).strip(), m.group(3), m.group(5)


def table(title, path, stage, cpu):
    shares = Counter()
    for pct, comm, dso, sym in rows(path):
        shares[stage(comm, sym, dso)] += pct
    total = sum(shares.values())
    print(f"| {title} stage | share | µs per record |\n|---|---|---|")
    for name, pct in shares.most_common():
        print(f"| {name} | {100 * pct / total:.0f} % | {cpu * pct / total:.2f} |")
    print(f"| all | 100 % | {cpu:.2f} |\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    table("agent", sys.argv[1], agent_stage, float(sys.argv[2]))
    table("hub", sys.argv[3], hub_stage, float(sys.argv[4]))
