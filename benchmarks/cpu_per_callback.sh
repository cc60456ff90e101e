#!/usr/bin/env bash
# CPU per callback of the embedded mode, the figure benchmarks/RESULTS.md quotes for the hot path:
# gunicorn (2 sync workers unless WORKERS says otherwise) with the echo bot against the harness's fake
# CometChat, wrk for 8 s, then the user and system CPU of gunicorn's processes divided by the callbacks
# answered, the same by thread (the framework's threads carry their names, bot/threads.py; "python" is
# gunicorn's: the request side), and the context switches of the workers' threads per callback. Loopback
# only, bounded.
#
#   PYTHON=/tmp/benchvenv/bin/python benchmarks/cpu_per_callback.sh          # fake API answering at once
#   LATENCY_MS=100 benchmarks/cpu_per_callback.sh                            # ... after 100 ms
#   ENV="HANDLER_THREADS=8" benchmarks/cpu_per_callback.sh                   # with other settings
#   WORKERS="-w 2 -k gthread --threads 8" benchmarks/cpu_per_callback.sh     # gthread workers
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'kill ${GUNICORN:-} ${FAKE:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

# A fake (or gunicorn) left running by another measurement would serve this one, with its own latency.
for port in 18080 18100; do
    if curl -s -o /dev/null "127.0.0.1:$port"; then echo "something already listens on 127.0.0.1:$port; stop it first" >&2; exit 1; fi
done
"$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; payloads.write_template('cometchat', '$WORK/tpl.json')"
"$PY" "$BENCH/fake_cometchat.py" --port 18080 --latency-ms "${LATENCY_MS:-0}" >"$WORK/fake.log" 2>&1 &
FAKE=$!
cd "$ROOT"
env COMETCHAT_APP_ID=benchapp COMETCHAT_REGION=us COMETCHAT_API_KEY=bench-api-key COMETCHAT_BOT_UID=bot \
    COMETCHAT_API_BASE=http://127.0.0.1:18080/v3 CALLBACK_BASIC_AUTH=cometchat:bench-basic-pass \
    JOURNAL_PATH="$WORK/journal.sqlite3" ${ENV:-} \
    "$PY" -m gunicorn ${WORKERS:--w 2} -b 127.0.0.1:18100 benchmarks.adapter:app >"$WORK/gunicorn.log" 2>&1 &
GUNICORN=$!
for _ in $(seq 100); do curl -s -o /dev/null 127.0.0.1:18100/healthz && break; sleep 0.1; done
AUTH=$("$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; print(payloads.basic_auth_header('cometchat', 'bench-basic-pass'))")

cpu() {  # user and system clock ticks of gunicorn's master and workers
    local user=0 sys=0 u s
    for pid in $GUNICORN $(pgrep -P $GUNICORN); do
        read -r u s <<<"$(awk '{print $14, $15}' /proc/$pid/stat)"
        user=$((user + u)); sys=$((sys + s))
    done
    echo "$user $sys"
}
switches() {  # context switches (voluntary and not) of every thread of gunicorn's workers
    local n=0 pid
    for pid in $(pgrep -P $GUNICORN); do
        n=$((n + $(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n + 0}')))
    done
    echo "$n"
}
by_thread() {  # clock ticks by thread name (handler threads together) over gunicorn's workers
    for pid in $(pgrep -P $GUNICORN); do
        for task in /proc/"$pid"/task/*; do echo "$(cat "$task"/comm) $(awk '{print $14 + $15}' "$task"/stat)"; done
    done | awk '{name = $1; sub(/-[0-9]+$/, "", name); ticks[name] += $2} END {for (n in ticks) print n, ticks[n]}' | sort
}
read -r U0 S0 <<<"$(cpu)"
C0=$(switches)
by_thread >"$WORK/threads0"
OUT=$(wrk -t1 -c16 -d8s -s "$BENCH/post.lua" http://127.0.0.1:18100/cometchat/callback -- \
      "$WORK/tpl.json" cpu "$RANDOM$RANDOM" basic "$AUTH")
sleep 1  # the replies of the last callbacks
read -r U1 S1 <<<"$(cpu)"
C1=$(switches)
by_thread >"$WORK/threads1"
N=$(echo "$OUT" | grep -oP '\d+(?= requests in)')
HZ=$(getconf CLK_TCK)
echo "$OUT" | grep -E 'Requests/sec'
"$PY" -c "print(f'cpu per callback: user {($U1-$U0)*1000/$HZ/$N:.3f} ms, system {($S1-$S0)*1000/$HZ/$N:.3f} ms ({$N} callbacks)')"
"$PY" -c "print(f'context switches per callback: {($C1-$C0)/$N:.1f}')"
echo "cpu per callback by thread (threads that ended meanwhile are not counted):"
join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/threads0" "$WORK/threads1" | awk -v n="$N" -v hz="$HZ" '{printf "  %-16s %6.1f us\n", $1, ($3 - $2) * 1e6 / hz / n}'
