#!/usr/bin/env bash
# Runs the fuzz targets (see README.md). Not run by CI.
#
#   fuzz/run.sh [SECONDS] [TARGET...]    fuzz each target SECONDS (default 600)
#   fuzz/run.sh replay [TARGET...]       run the saved regressions once, no fuzzing
#
# Environment: JOBS (targets fuzzed at once, default 2), SANITIZER (address,
# the default, or none if ASan fails to link), NICE (default 10), KEEP_GOING=1
# (fork mode: keep fuzzing after a crash, saving each one).
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. New inputs go to work/TARGET (not committed); corpus/TARGET holds
# the committed seeds, artifacts/TARGET what crashed, logs/TARGET.log the run.
set -euo pipefail
cd "$(dirname "$0")"

all=(folder_csv folder_jsonl folder_xlsx elements hub_batch)
mode=fuzz
secs=600
if [[ ${1:-} == replay ]]; then
    mode=replay
    shift
elif [[ ${1:-} =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
jobs=${JOBS:-2}
sanitizer=${SANITIZER:-address}
nice=${NICE:-10}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Debug assertions on (-a): overflow checks and debug_assert! are findings.
flags=(-a -s "$sanitizer")
nice -n "$nice" cargo fuzz build "${flags[@]}"

# The largest input tried, per target.
max_len() {
    case $1 in
        folder_xlsx) echo 65536 ;;
        elements) echo 1024 ;;
        *) echo 16384 ;;
    esac
}

run() {
    local t=$1
    mkdir -p "work/$t" logs
    if [[ $mode == replay ]]; then
        # Each saved input once, known findings included: one that still
        # crashes fails the replay.
        local f failed=0
        for f in regressions/"$t"/*; do
            [[ -e $f ]] || continue
            if nice -n "$nice" cargo fuzz run "${flags[@]}" "$t" "$f" -- -runs=1 >"logs/replay-$t.log" 2>&1; then
                echo "fixed:   $f"
            else
                echo "crashes: $f ($(grep -m1 -E 'panicked at|ERROR: libFuzzer' "logs/replay-$t.log"))"
                failed=1
            fi
        done
        return $failed
    fi
    # Known findings (README.md) are set aside, so that fuzzing looks for new ones.
    export QIANZHI_FUZZ_SKIP_KNOWN=1
    local more=()
    [[ ${KEEP_GOING:-} == 1 ]] && more=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
    nice -n "$nice" cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- "${more[@]}" \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=120 -rss_limit_mb=2048 \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || true
    echo "== $t: $(grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units)' "logs/$t.log" | tr '\n' ' ')"
    grep -E 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written to' "logs/$t.log" || echo "   no crash"
}

if [[ $mode == replay ]]; then
    status=0
    for t in "${targets[@]}"; do run "$t" || status=1; done
    exit $status
fi
for t in "${targets[@]}"; do
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || true; done
    run "$t" &
done
wait
