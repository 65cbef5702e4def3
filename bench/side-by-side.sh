#!/usr/bin/env bash
# Qianzhi and Vector side by side on the same file (issue 14).
#
#   bench/side-by-side.sh [--vector PATH] [--rows N] [--rounds R] [--bin DIR] [--compression C] [--shuffled] [--keep]
#
# One people CSV is generated with `qianzhi-bench gen`: keys ascending, or
# with --shuffled in a fixed random order (a real export's; the hub's
# `current` then takes its upserts all over its b-tree). Each round runs
#   Vector:  file source → disk buffer → vector sink (mTLS, end-to-end
#            acknowledgements) → vector source → disk buffer → blackhole,
#            two `vector` processes (the agent's side and the hub's side);
#   Qianzhi: `qianzhi-bench flood --file`: the folder source → outbox → mTLS
#            gRPC → hub store, a `qianzhi` and a `qianzhi-hub` process;
# on that file, alternating (odd rounds start with Vector, even rounds with
# Qianzhi), and prints each round, the medians and the ratios: the rate from
# the file appearing to the far end having all of it, the CPU-seconds per
# million records of each process (from /proc, over the same span), and
# each process's peak RSS (VmHWM).
#
# Vector's completion is the hub side's blackhole having seen every line of
# the file (the header line too: Vector does not parse CSV). The script
# reads that count from the hub side's own metrics when the Vector binary
# has the prometheus_exporter sink (`internal_metrics` every 100 ms →
# `prometheus_exporter` on loopback, polled every 50 ms): each sample
# carries the time it was taken, so the moment lies between the last
# sample short of every line and the first with all of them, 100 ms apart.
# Without that sink it reads the blackhole's once-a-second summary in its
# log, which brackets the moment within a second. Either way the rate is
# printed as the midpoint with its bounds, and the ratios use the midpoint.
# The metrics cost the hub side a little CPU (ten scrapes a second of some
# sixty series, twenty requests a second).
#
# After each Vector round the script checks that the blackhole saw exactly
# the file's lines (no fewer, no more), that the agent side's file source
# checkpointed the whole file (with acknowledgements on, it checkpoints
# only what its sink acknowledged), and prints any WARN or ERROR line of
# either log.
#
# What differs between the two, on purpose or not:
# - Qianzhi parses every row, checks every value against its data element,
#   encodes a record, fsyncs its outbox before a record counts as queued,
#   and the hub checks and stores each record (fsync) before its ack.
#   Vector forwards lines; its disk buffers sync every 500 ms and
#   acknowledge once written.
# - Vector's sink sends uncompressed (its default), Qianzhi zstd (its
#   default): on loopback that favours Vector's CPU figures. With
#   `--compression none` Qianzhi's link sends uncompressed too (its
#   `hub.compression`), like for like: about 8 % less agent CPU per
#   million records here (tonic makes a zstd context per message).
# - Vector's file source looks for new files every 100 ms
#   (glob_minimum_cooldown_ms, default 1000 ms, which would add up to a
#   second to its time); Qianzhi's folder source is woken by inotify.
# - Vector's sink sends a batch when it has 1,000 events or after
#   batch.timeout_secs, here 0.1 s (default 1 s: the file's last, partial
#   batch would wait a second); Qianzhi's agent lingers 2 ms. In the flood
#   a batch fills in about 10 ms, so only the last one waits.
# - Both copies of the input are made before the clock starts, and the file
#   is renamed into the watched folder to start it.
#
# Run against Vector 0.58.0 built from its source with its own release
# profile (fat LTO, one codegen unit) and the features below (with
# sinks-prometheus), 2026-11-26: both configurations load with no warning,
# both Vector processes log "Vector has started.", the hub side's blackhole
# sees every line and no more, the agent side's file source checkpoints the
# whole file, and Vector's compile step (propagate_acknowledgements) turns
# on the vector source's acknowledgements because the blackhole downstream
# has them (and the file source's, because the vector sink has them): the
# hub side answers a request only once its events are in its disk buffer,
# and the agent side's sink releases a batch from its own disk buffer only
# on that answer. As Vector does with a disk buffer, the agent side's
# buffer acknowledges the file source once the lines are written to it.
# --keep keeps both logs of each round.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
vector=""
rows=1000000
rounds=3
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
keep=0
compression=zstd
shuffled=""

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --vector) vector=${2:?--vector needs a path}; shift 2 ;;
        --rows) rows=${2:?--rows needs a number}; shift 2 ;;
        --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
        --bin) bin=${2:?--bin needs a folder}; shift 2 ;;
        --compression) compression=${2:?--compression needs zstd, gzip or none}; shift 2 ;;
        --shuffled) shuffled=--shuffled; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage ;;
        *) echo "side-by-side: unknown argument $1" >&2; usage ;;
    esac
done

how_to_build_vector() {
    cat <<'EOF'
Vector is not a dependency of Qianzhi. To compare with it, build it from its
source with only the components of this job (issue 14 used Vector 0.58):

  git clone --depth 1 --branch v0.58.0 https://github.com/vectordotdev/vector
  cd vector
  cargo build --release --no-default-features \
    --features sources-file,sources-vector,sinks-vector,sinks-blackhole,sources-internal_metrics,tikv-jemallocator,sinks-prometheus

`sinks-prometheus` lets this script read the hub side's event count every
100 ms; without it the moment Vector finishes is known only to within a
second (the blackhole's summary). Then:

  bench/side-by-side.sh --vector vector/target/release/vector
EOF
}

for b in qianzhi-bench qianzhi qianzhi-hub; do
    if [[ ! -x "$bin/$b" ]]; then
        echo "side-by-side: $bin/$b is missing; build with:" >&2
        echo "  cargo build --release -p agent -p hub-stub -p tests --bins" >&2
        exit 1
    fi
done
if [[ -n "$vector" && ! -x "$vector" ]]; then
    echo "side-by-side: $vector is not an executable" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/side-by-side.XXXXXX")
cleanup() {
    # Vector processes of an interrupted round must not outlive the script.
    for pid in ${running:-}; do
        kill "$pid" 2>/dev/null || true
    done
    if [[ $keep -eq 1 ]]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
running=""

input="$work/people.csv"
"$bin/qianzhi-bench" gen "$rows" "$input" $shuffled
lines=$(wc -l <"$input")
hz=$(getconf CLK_TCK)

now() { date +%s.%N; }

# CPU seconds (user + system) of a process; the fields after "(comm) ".
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$hz" '{ print ($12 + $13) / hz }'; }

# Peak resident memory (VmHWM) of a process, MiB.
peak() { awk '/^VmHWM:/ { print $2 / 1024 }' "/proc/$1/status"; }

# A TCP port on loopback that nothing listens on.
free_port() {
    local p
    while true; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Waits until a file has a line matching a pattern, or fails after $3 s.
wait_for_line() {
    local file=$1 pattern=$2 limit=$3 start
    start=$(now)
    until grep -q -- "$pattern" "$file" 2>/dev/null; do
        if awk -v s="$start" -v n="$(now)" -v l="$limit" 'BEGIN { exit !(n - s > l) }'; then
            echo "side-by-side: no \"$pattern\" in $file after ${limit}s:" >&2
            tail -20 "$file" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# Stops a process: SIGTERM, then SIGKILL after 10 s.
stop_process() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Results, one line per round: system round seconds rate agent_cpu hub_cpu agent_peak hub_peak [rate_low rate_high]
results="$work/results.txt"
: >"$results"

qianzhi_round() {
    local r=$1 out="$work/qianzhi-$1.txt"
    "$bin/qianzhi-bench" flood --file "$input" --compression "$compression" >"$out"
    # | Qianzhi | input | records | seconds s | rate | agent CPU-s/M | hub CPU-s/M | agent MiB | hub MiB |
    awk -F'|' -v r="$r" '$2 ~ /^ Qianzhi / {
        printf "Qianzhi %s %.3f %.0f %.3f %.3f %.1f %.1f\n", r, $5 + 0, $6 + 0, $7 + 0, $8 + 0, $9 + 0, $10 + 0
    }' "$out" >>"$results"
    grep -q "^Qianzhi $r " "$results" || { echo "side-by-side: no Qianzhi row in $out" >&2; cat "$out" >&2; exit 1; }
}

# Whether the Vector binary has a component ("- name" lines of `vector
# list`, read once: grep -q would end the pipe early, which pipefail counts
# as a failure).
has_component() {
    components=${components:-$("$vector" list 2>/dev/null)}
    grep -qx -- "- $1" <<<"$components"
}

vector_configs() {
    local run=$1 port=$2 mport=$3 pki=$4
    cat >"$run/hub.toml" <<EOF
# The hub's side: vector source (mTLS, client certificates required) →
# disk buffer → blackhole. Acknowledgements on the blackhole make the source
# answer a request only once its events are in the disk buffer.
data_dir = "$run/hub-data"

[sources.from_agent]
type = "vector"
address = "127.0.0.1:$port"
tls.enabled = true
tls.ca_file = "$pki/ca.pem"
tls.crt_file = "$pki/hub.pem"
tls.key_file = "$pki/hub.key"
tls.verify_certificate = true

[sinks.hole]
type = "blackhole"
inputs = ["from_agent"]
# The summary the script reads when there are no metrics.
print_interval_secs = 1
acknowledgements.enabled = true
buffer.type = "disk"
buffer.max_size = 1073741824
buffer.when_full = "block"
EOF
    if [[ -n "$mport" ]]; then
        cat >>"$run/hub.toml" <<EOF

# How the script sees the blackhole's count: this side's own metrics.
[sources.metrics]
type = "internal_metrics"
scrape_interval_secs = 0.1

[sinks.metrics_out]
type = "prometheus_exporter"
inputs = ["metrics"]
address = "127.0.0.1:$mport"
EOF
    fi
    cat >"$run/agent.toml" <<EOF
# The agency's side: file source → disk buffer → vector sink (mTLS).
data_dir = "$run/agent-data"

[sources.drop]
type = "file"
include = ["$run/drop/*.csv"]
read_from = "beginning"
glob_minimum_cooldown_ms = 100

[sinks.to_hub]
type = "vector"
inputs = ["drop"]
address = "localhost:$port"
# A partial batch waits 0.1 s, not the default 1 s (only the file's last).
batch.timeout_secs = 0.1
acknowledgements.enabled = true
tls.enabled = true
tls.ca_file = "$pki/ca.pem"
tls.crt_file = "$pki/agency-320282-gaj.pem"
tls.key_file = "$pki/agency-320282-gaj.key"
buffer.type = "disk"
buffer.max_size = 1073741824
buffer.when_full = "block"
EOF
}

# Events the hub side's blackhole has seen and when, "count seconds": the
# latest sample of its metrics (the time internal_metrics took it), or the
# latest summary in its log (the time it was logged). Nothing before the
# first one.
seen() {
    local run=$1 mport=$2
    if [[ -n "$mport" ]]; then
        curl -s --max-time 1 "http://127.0.0.1:$mport/metrics" 2>/dev/null |
            sed -n 's/^vector_component_sent_events_total{[^}]*component_id="hole"[^}]*} \([0-9.e+]*\) \([0-9]*\)$/\1 \2/p' |
            awk 'NR == 1 { printf "%.0f %.3f\n", $1, $2 / 1000 }'
    else
        local line
        line=$(grep "Collected events\." "$run/hub.log" | tail -1)
        [[ -n "$line" ]] || return 0
        echo "$(sed -n 's/.*Collected events\. events=\([0-9]*\).*/\1/p' <<<"$line") $(date -d "${line%% *}" +%s.%N)"
    fi
}

# What a Vector round must show once both processes stopped: the blackhole's
# last summary has exactly the file's lines, the agent side's file source
# checkpointed the whole file, and no WARN or ERROR in either log (printed,
# not fatal). The blackhole logs a summary once a second and usually one
# when it stops, but not always (seen once in 40 rounds: its last summary,
# 0.6 s before the stop, had 975,423 events): then the count its metrics
# showed at completion ($3, empty without metrics) must be exactly the
# file's lines.
vector_checks() {
    local r=$1 run=$2 counted=${3:-} last position size
    last=$(sed -n 's/.*Collected events\. events=\([0-9]*\).*/\1/p' "$run/hub.log" | tail -1)
    if [[ -n "$counted" && "$counted" == "$lines" && "${last:-0}" -lt "$lines" ]]; then
        last=$counted
    fi
    if [[ "$last" != "$lines" ]]; then
        echo "side-by-side: Vector round $r: the blackhole saw ${last:-no} events, the file has $lines lines; logs in $run" >&2
        keep=1
        exit 1
    fi
    size=$(stat -c %s "$input")
    position=$(sed -n 's/.*"position":\([0-9]*\).*/\1/p' "$run/agent-data/drop/checkpoints.json" 2>/dev/null)
    if [[ "$position" != "$size" ]]; then
        echo "side-by-side: Vector round $r: the file source checkpointed ${position:-nothing} of $size bytes; logs in $run" >&2
        keep=1
        exit 1
    fi
    grep -hE '^[^ ]+ +(WARN|ERROR) ' "$run/agent.log" "$run/hub.log" | sed "s/^/Vector round $r: /" >&2 || true
}

vector_round() {
    local r=$1 run="$work/vector-$1" port mport="" hub_pid agent_pid
    mkdir -p "$run/stage" "$run/drop" "$run/agent-data" "$run/hub-data"
    cp "$input" "$run/stage/people.csv"
    port=$(free_port)
    if [[ $metrics -eq 1 ]]; then
        mport=$(free_port)
    fi
    vector_configs "$run" "$port" "$mport" "$work/pki"
    "$vector" --color never --config "$run/hub.toml" >"$run/hub.log" 2>&1 &
    hub_pid=$!
    running="$hub_pid"
    wait_for_line "$run/hub.log" "Vector has started." 60
    "$vector" --color never --config "$run/agent.toml" >"$run/agent.log" 2>&1 &
    agent_pid=$!
    running="$hub_pid $agent_pid"
    wait_for_line "$run/agent.log" "Vector has started." 60
    if [[ -n "$mport" ]]; then
        until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$mport/metrics"; do sleep 0.05; done
    fi

    local a0 h0 t0 t1 count at sample before last=-1 moved
    a0=$(cpu "$agent_pid")
    h0=$(cpu "$hub_pid")
    t0=$(now)
    before=$t0
    moved=$t0
    mv "$run/stage/people.csv" "$run/drop/people.csv"
    while true; do
        sample=$(seen "$run" "$mport")
        if [[ -n "$sample" ]]; then
            read -r count at <<<"$sample"
            if [[ $count -ge $lines ]]; then
                t1=$at
                break
            fi
            if [[ $count -ne $last ]]; then
                last=$count
                moved=$(now)
            fi
            # The latest sample short of every line (not one from before
            # the file came).
            if awk -v a="$at" -v b="$before" 'BEGIN { exit !(a > b) }'; then
                before=$at
            fi
        fi
        if ! kill -0 "$hub_pid" 2>/dev/null || ! kill -0 "$agent_pid" 2>/dev/null; then
            echo "side-by-side: a Vector process of round $r ended; logs in $run" >&2
            keep=1
            exit 1
        fi
        # Seen here twice in one day: Vector's hub side stopped short of the
        # file (156 lines, then 1) and never moved again. Such a round is
        # reported and left out of the medians; its logs are kept.
        if awk -v m="$moved" -v t="$(now)" 'BEGIN { exit !(t - m > 60) }'; then
            stop_process "$agent_pid"
            stop_process "$hub_pid"
            running=""
            keep=1
            echo "Vector round $r stalled at $( ((last < 0)) && echo "no count" || echo "$last of $lines lines") for 60 s and is not counted; logs in $run" |
                tee -a "$work/stalled.txt" >&2
            return 0
        fi
        sleep 0.05
    done
    local a1 h1 ap hp
    a1=$(cpu "$agent_pid")
    h1=$(cpu "$hub_pid")
    ap=$(peak "$agent_pid")
    hp=$(peak "$hub_pid")
    stop_process "$agent_pid"
    stop_process "$hub_pid"
    running=""
    vector_checks "$r" "$run" "$([[ -n "$mport" ]] && echo "$count")"
    # The moment lies between the last sample short of every line and the
    # first with all of them: the rate at both ends, and the midpoint.
    local low high
    low=$(awk -v t0="$t0" -v b="$t1" -v n="$rows" 'BEGIN { printf "%.0f", n / (b - t0) }')
    high=$(awk -v t0="$t0" -v a="$before" -v n="$rows" 'BEGIN { d = a - t0; printf "%.0f", (d > 0 ? n / d : 0) }')
    t1=$(awk -v a="$before" -v b="$t1" 'BEGIN { printf "%.6f", (a + b) / 2 }')
    awk -v r="$r" -v t0="$t0" -v t1="$t1" -v n="$rows" -v a0="$a0" -v a1="$a1" -v h0="$h0" -v h1="$h1" \
        -v ap="$ap" -v hp="$hp" -v low="$low" -v high="$high" 'BEGIN {
        s = t1 - t0
        printf "Vector %s %.3f %.0f %.3f %.3f %.1f %.1f %s %s\n", r, s, n / s, (a1 - a0) / n * 1e6, (h1 - h0) / n * 1e6, ap, hp, low, high
    }' >>"$results"
}

if [[ -z "$vector" ]]; then
    how_to_build_vector
    echo
    echo "No --vector: measuring Qianzhi alone ($rounds rounds, $rows rows)."
    for r in $(seq "$rounds"); do
        qianzhi_round "$r"
    done
else
    for c in file vector blackhole; do
        has_component "$c" || { echo "side-by-side: $vector lacks the $c component" >&2; how_to_build_vector >&2; exit 1; }
    done
    metrics=0
    if has_component prometheus_exporter && has_component internal_metrics && command -v curl >/dev/null; then
        metrics=1
    else
        echo "Vector's completion from the blackhole's once-a-second summary (no prometheus_exporter, internal_metrics or curl)."
    fi
    "$bin/qianzhi" pki dev --out "$work/pki" --agency 320282-gaj >/dev/null
    for r in $(seq "$rounds"); do
        if ((r % 2)); then
            vector_round "$r"
            qianzhi_round "$r"
        else
            qianzhi_round "$r"
            vector_round "$r"
        fi
    done
fi

# The table: every round, the medians, the ratios.
if [[ -s "$work/stalled.txt" ]]; then
    echo
    cat "$work/stalled.txt"
fi
med() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$results" | median; }
echo
echo "Input: $rows rows ($(du -m "$input" | cut -f1) MiB), $lines lines with the header."
echo "Qianzhi's link compression: $compression (Vector's sink: none, its default)."
echo
echo "| system | round | seconds | records/s | agent CPU-s per million | hub CPU-s per million | agent peak RSS MiB | hub peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
awk '{
    rate = $4
    if ($9 != "") rate = sprintf("%s (%s to %s)", $4, $9, $10)
    printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, rate, $5, $6, $7, $8
}' "$results"
for s in Qianzhi Vector; do
    grep -q "^$s " "$results" || continue
    printf "| **%s, median** | | %.3f | **%.0f** | %.2f | %.2f | %.1f | %.1f |\n" "$s" \
        "$(med "$s" 3)" "$(med "$s" 4)" "$(med "$s" 5)" "$(med "$s" 6)" "$(med "$s" 7)" "$(med "$s" 8)"
done
if grep -q "^Vector " "$results"; then
    echo
    echo "Qianzhi ÷ Vector (medians): above 1 is better for records/s, below 1 is better for CPU and memory."
    echo
    echo "| records/s | agent CPU-s per million | hub CPU-s per million | both CPU-s per million | agent peak RSS | hub peak RSS |"
    echo "|---|---|---|---|---|---|"
    awk -v q4="$(med Qianzhi 4)" -v v4="$(med Vector 4)" -v q5="$(med Qianzhi 5)" -v v5="$(med Vector 5)" \
        -v q6="$(med Qianzhi 6)" -v v6="$(med Vector 6)" -v q7="$(med Qianzhi 7)" -v v7="$(med Vector 7)" \
        -v q8="$(med Qianzhi 8)" -v v8="$(med Vector 8)" '
        function ratio(q, v) { return v > 0 ? sprintf("%.2f", q / v) : "n/a" }
        BEGIN {
            printf "| **%s×** | %s | %s | %s | %s | %s |\n", ratio(q4, v4), ratio(q5, v5), ratio(q6, v6),
                ratio(q5 + q6, v5 + v6), ratio(q7, v7), ratio(q8, v8)
        }'
fi
if [[ -n "$vector" ]] && ! grep -q "^Vector " "$results"; then
    echo "side-by-side: no Vector round finished; nothing to compare" >&2
    exit 1
fi
