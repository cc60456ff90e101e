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
source "$(dirname "$0")/lib.sh"

ports_free 18080 18100 18101
start_fake
cd "$ROOT"
settings=("${BOT_SETTINGS[@]}" SHARE_WORK="${SHARE_WORK:-true}")
for port in 18100 18101; do  # the first takes the load, the second idles
    env "${settings[@]}" "$PY" -m gunicorn -w 1 -k gthread --threads 8 -b "127.0.0.1:$port" benchmarks.adapter:app \
        >"$WORK/gunicorn-$port.log" 2>&1 &
    PIDS+=($!)
done
wait_up 18080 18100 18101
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
