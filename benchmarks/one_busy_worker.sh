#!/usr/bin/env bash
# Work sharing (bot/sharing.py) in the case it is for: all of the load on one process while another idles, as
# when gunicorn's gthread workers split wrk's keep-alive connections 16/0. Two single-worker gunicorns (gthread,
# 8 threads) share one journal; wrk (16 connections, 8 s) posts to the first only; the harness's fake CometChat
# answers. Prints callbacks/s, replies delivered during the load and 2 s after it. Loopback only, bounded.
#
#   PYTHON=/tmp/benchvenv/bin/python benchmarks/one_busy_worker.sh    # sharing on (the default)
#   SHARE_WORK=false benchmarks/one_busy_worker.sh                     # each process handles what it accepts
#   LATENCY_MS=100 benchmarks/one_busy_worker.sh                       # fake API answering after 100 ms
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'kill ${BUSY:-} ${IDLE:-} ${FAKE:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

for port in 18080 18100 18101; do
    if curl -s -o /dev/null "127.0.0.1:$port"; then echo "something already listens on 127.0.0.1:$port; stop it first" >&2; exit 1; fi
done
"$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; payloads.write_template('cometchat', '$WORK/tpl.json')"
"$PY" "$BENCH/fake_cometchat.py" --port 18080 --latency-ms "${LATENCY_MS:-0}" >"$WORK/fake.log" 2>&1 &
FAKE=$!
cd "$ROOT"
settings=(COMETCHAT_APP_ID=benchapp COMETCHAT_REGION=us COMETCHAT_API_KEY=bench-api-key COMETCHAT_BOT_UID=bot
    COMETCHAT_API_BASE=http://127.0.0.1:18080/v3 CALLBACK_BASIC_AUTH=cometchat:bench-basic-pass
    JOURNAL_PATH="$WORK/journal.sqlite3" SHARE_WORK="${SHARE_WORK:-true}")
env "${settings[@]}" "$PY" -m gunicorn -w 1 -k gthread --threads 8 -b 127.0.0.1:18100 benchmarks.adapter:app \
    >"$WORK/busy.log" 2>&1 &
BUSY=$!
env "${settings[@]}" "$PY" -m gunicorn -w 1 -k gthread --threads 8 -b 127.0.0.1:18101 benchmarks.adapter:app \
    >"$WORK/idle.log" 2>&1 &
IDLE=$!
for port in 18080 18100 18101; do
    for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/healthz" && break; sleep 0.1; done
done
AUTH=$("$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; print(payloads.basic_auth_header('cometchat', 'bench-basic-pass'))")
replies() { curl -s 127.0.0.1:18080/stats | "$PY" -c "import json, sys; print(json.load(sys.stdin)['replies'])"; }

R0=$(replies)
OUT=$(wrk -t1 -c16 -d8s -s "$BENCH/post.lua" http://127.0.0.1:18100/cometchat/callback -- \
      "$WORK/tpl.json" busy "$RANDOM$RANDOM" basic "$AUTH")
R1=$(replies)
sleep 2  # the replies of the last callbacks
R2=$(replies)
N=$(echo "$OUT" | grep -oP '\d+(?= requests in)')
echo "SHARE_WORK=${SHARE_WORK:-true} latency ${LATENCY_MS:-0} ms: $N callbacks ($(echo "$OUT" | grep -oP '(?<=Requests/sec:)\s*\S+' | tr -d ' ')/s)," \
     "$((R1 - R0)) replies during the load, $((R2 - R0)) 2 s later"
