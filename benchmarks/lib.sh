# Shared by the benchmark scripts (source it): a scratch folder removed on exit, the harness's fake CometChat
# started on 127.0.0.1:18080, and helpers. Loopback only.
#   ROOT: this project; BENCH: the harness (../shared/bench); PY: the Python with gunicorn and the harness's needs.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
PIDS=()  # processes to stop on exit
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The settings of the harness's server entry: the fake CometChat, Basic auth, a journal in the scratch folder.
BOT_SETTINGS=(COMETCHAT_APP_ID=benchapp COMETCHAT_REGION=us COMETCHAT_API_KEY=bench-api-key COMETCHAT_BOT_UID=bot
    COMETCHAT_API_BASE=http://127.0.0.1:18080/v3 CALLBACK_BASIC_AUTH=cometchat:bench-basic-pass
    JOURNAL_PATH="$WORK/journal.sqlite3")

ports_free() {  # a fake (or gunicorn) left running by another measurement would serve this one
    local port
    for port in "$@"; do
        if curl -s -o /dev/null "127.0.0.1:$port"; then echo "something already listens on 127.0.0.1:$port; stop it first" >&2; exit 1; fi
    done
}

start_fake() {  # the harness's fake CometChat, answering after LATENCY_MS; writes the callback template too
    "$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; payloads.write_template('cometchat', '$WORK/tpl.json')"
    "$PY" "$BENCH/fake_cometchat.py" --port 18080 --latency-ms "${LATENCY_MS:-0}" >"$WORK/fake.log" 2>&1 &
    PIDS+=($!)
    AUTH=$("$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; print(payloads.basic_auth_header('cometchat', 'bench-basic-pass'))")
}

wait_up() {  # until each port answers /healthz (at most 10 s each)
    local port
    for port in "$@"; do
        for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/healthz" && break; sleep 0.1; done
    done
}

wait_workers() {  # MASTER N: until each of gunicorn's N workers has taken a callback (at most 10 s)
    # A worker still importing the app takes no connection: wrk's keep-alive connections, made at once, would
    # all go to the other one (a 16/0 split with gthread workers) and stay there for the whole measurement.
    local master=$1 n=$2 ready pid i
    for i in $(seq 100); do
        ready=0
        for pid in $(pgrep -P "$master"); do
            grep -qx bot-finisher /proc/"$pid"/task/*/comm 2>/dev/null && ready=$((ready + 1))  # bot.pipeline's
        done
        [ "$ready" -ge "$n" ] && return 0
        curl -s -o /dev/null -H "Authorization: $AUTH" -H "Content-Type: application/json" \
            -d "$("$PY" -c "import sys; sys.path.insert(0, '$BENCH'); import payloads; print(payloads.render('cometchat', '8', $i, 'warm'))")" \
            127.0.0.1:18100/cometchat/callback
        sleep 0.1
    done
    echo "only $ready of $n gunicorn workers took a callback within 10 s" >&2
    return 1
}
