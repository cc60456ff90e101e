#!/usr/bin/env bash
# CPU per callback of the embedded mode, the figure benchmarks/RESULTS.md quotes for the hot path:
# gunicorn (2 sync workers unless WORKERS says otherwise) with the echo bot against the harness's fake
# CometChat, wrk for 8 s, then the user and system CPU of gunicorn's processes divided by the callbacks
# answered, the same by thread (the framework's threads carry their names, bot/threads.py; "python" is
# gunicorn's: the request side), and the context switches of the workers' threads per callback (in all
# and by thread). Loopback only, bounded.
#
#   PYTHON=/tmp/benchvenv/bin/python benchmarks/cpu_per_callback.sh          # fake API answering at once
#   LATENCY_MS=100 benchmarks/cpu_per_callback.sh                            # ... after 100 ms
#   ENV="HANDLER_THREADS=8" benchmarks/cpu_per_callback.sh                   # with other settings
#   WORKERS="-w 2 -k gthread --threads 8" benchmarks/cpu_per_callback.sh     # gthread workers
#   SYSCALLS=1 benchmarks/cpu_per_callback.sh                                # + system calls per callback, by kind
#                                                                            #   (linux-perf; as root)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ports_free 18080 18100
start_fake
cd "$ROOT"
env "${BOT_SETTINGS[@]}" ${ENV:-} \
    "$PY" -m gunicorn ${WORKERS:--w 2} -b 127.0.0.1:18100 benchmarks.adapter:app >"$WORK/gunicorn.log" 2>&1 &
GUNICORN=$!
PIDS+=($GUNICORN)
wait_up 18100
wait_workers $GUNICORN "$(grep -oP '(?<=-w )\d+' <<<"${WORKERS:--w 2}")"

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
by_thread() {  # clock ticks and context switches by thread name (handler threads together) over gunicorn's workers
    for pid in $(pgrep -P $GUNICORN); do
        for task in /proc/"$pid"/task/*; do
            echo "$(cat "$task"/comm) $(awk '{print $14 + $15}' "$task"/stat)" \
                "$(awk '/ctxt_switches/ {n += $2} END {print n + 0}' "$task"/status)"
        done
    done | awk '{name = $1; sub(/-[0-9]+$/, "", name); ticks[name] += $2; cs[name] += $3}
                END {for (n in ticks) print n, ticks[n], cs[n]}' | sort
}
read -r U0 S0 <<<"$(cpu)"
C0=$(switches)
by_thread >"$WORK/threads0"
if [ -n "${SYSCALLS:-}" ]; then  # counted by the kernel's tracepoints over the load, workers' threads only
    KINDS=futex,pwrite64,pread64,fcntl,sendto,recvfrom,write,read,epoll_wait,epoll_ctl,ioctl
    perf stat -x, -o "$WORK/syscalls" -e raw_syscalls:sys_enter -e "$(sed 's/[a-z0-9_]\+/syscalls:sys_enter_&/g' <<<"$KINDS")" \
        -p "$(pgrep -P $GUNICORN | paste -sd,)" &
    PERF=$!
    PIDS+=($PERF)
fi
OUT=$(wrk -t1 -c16 -d8s -s "$BENCH/post.lua" http://127.0.0.1:18100/cometchat/callback -- \
      "$WORK/tpl.json" cpu "$RANDOM$RANDOM" basic "$AUTH")
sleep 1  # the replies of the last callbacks
[ -n "${SYSCALLS:-}" ] && kill -INT $PERF && wait $PERF || true
read -r U1 S1 <<<"$(cpu)"
C1=$(switches)
by_thread >"$WORK/threads1"
N=$(echo "$OUT" | grep -oP '\d+(?= requests in)')
HZ=$(getconf CLK_TCK)
echo "$OUT" | grep -E 'Requests/sec'
"$PY" -c "print(f'cpu per callback: user {($U1-$U0)*1000/$HZ/$N:.3f} ms, system {($S1-$S0)*1000/$HZ/$N:.3f} ms ({$N} callbacks)')"
"$PY" -c "print(f'context switches per callback: {($C1-$C0)/$N:.1f}')"
echo "cpu and context switches per callback by thread (threads that ended meanwhile are not counted):"
join -a 2 -e 0 -o 0,1.2,2.2,1.3,2.3 "$WORK/threads0" "$WORK/threads1" | awk -v n="$N" -v hz="$HZ" \
    '{printf "  %-16s %6.1f us %5.2f\n", $1, ($3 - $2) * 1e6 / hz / n, ($5 - $4) / n}'
if [ -n "${SYSCALLS:-}" ]; then
    echo "system calls per callback (workers, load and the second after it):"
    awk -F, -v n="$N" '$3 ~ /sys_enter/ {name = $3; sub(/.*sys_enter_?/, "", name); if (name == "") name = "all";
                       printf "  %-12s %5.1f\n", name, $1 / n}' "$WORK/syscalls"
fi
