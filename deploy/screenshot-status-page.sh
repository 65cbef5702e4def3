#!/usr/bin/env bash
# A screenshot of an agent's status page (the health port's `/`), taken by
# headless Chromium: to see the page as an operator's browser shows it.
#
#   deploy/screenshot-status-page.sh [HOST:PORT] [OUT.png]
#
# HOST:PORT is a running agent's health address (`health.listen`, or the
# `addr` in DATA_DIR/health.json). Without it, the demo runs in the
# background (`cargo run -p demo -- --keep`, from this repository, in a
# scratch folder removed afterwards) and its agent's page is taken.
# OUT.png defaults to status-page.png.
#
# Needs chromium (Debian: apt-get install chromium) and, for the Chinese
# text, a CJK font (apt-get install fonts-noto-cjk, or fonts-wqy-microhei);
# the page itself needs no network.
set -euo pipefail

addr="${1:-}"
out="${2:-status-page.png}"
size="1280,900"

browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
    echo "screenshot-status-page: chromium is missing: apt-get install chromium (Debian), then run this again" >&2
    exit 1
fi
if command -v fc-list >/dev/null && [[ -z "$(fc-list :lang=zh)" ]]; then
    echo "screenshot-status-page: no CJK font: the Chinese text will show as boxes" \
        "(apt-get install fonts-noto-cjk, or fonts-wqy-microhei)" >&2
fi

demo_pid=""
scratch=""
stop_demo() {
    if [[ -n "$demo_pid" ]]; then
        # The demo stops its hub and agents on SIGINT, as on Ctrl-C.
        kill -INT "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
    if [[ -n "$scratch" ]]; then
        rm -rf "$scratch"
    fi
}
trap stop_demo EXIT

if [[ -z "$addr" ]]; then
    command -v cargo >/dev/null || { echo "screenshot-status-page: give HOST:PORT, or install cargo to run the demo" >&2; exit 1; }
    repo="$(cd "$(dirname "$0")/.." && pwd)"
    scratch="$(mktemp -d)"
    echo "starting the demo in $scratch (its log: $scratch/demo.log)"
    # `cargo run` becomes the demo's process (exec), so $! is the demo.
    (cd "$repo" && exec cargo run --quiet -p demo -- --keep --dir "$scratch/demo") >"$scratch/demo.log" 2>&1 &
    demo_pid=$!
    # The demo prints its agent's page once the sample has arrived.
    deadline=$((SECONDS + 900))
    until addr="$(grep -o 'status page: http://[0-9.:]*/' "$scratch/demo.log" | head -1 | sed 's|.*http://||; s|/$||')" \
        && [[ -n "$addr" ]]; do
        if ! kill -0 "$demo_pid" 2>/dev/null; then
            echo "screenshot-status-page: the demo stopped:" >&2
            cat "$scratch/demo.log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "screenshot-status-page: the demo did not start within 15 minutes; see $scratch/demo.log" >&2
            exit 1
        fi
        sleep 1
    done
fi

url="http://$addr/"
echo "taking $url at $size into $out"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$size" \
    --screenshot="$out" "$url" 2>/dev/null
if [[ ! -s "$out" ]]; then
    echo "screenshot-status-page: chromium wrote no screenshot of $url (is the agent running there?)" >&2
    exit 1
fi
echo "wrote $out"
