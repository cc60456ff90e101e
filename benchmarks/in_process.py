"""CPU per callback in one process, without gunicorn or wrk: where the framework's own time goes, by thread.

    PY=/tmp/benchvenv/bin/python  # ours and the harness's requirements (benchmarks/README.md)
    $PY benchmarks/in_process.py                      # 6,000 callbacks, one request thread
    $PY benchmarks/in_process.py --threads 8          # eight at once (gunicorn's gthread)
    $PY benchmarks/in_process.py --app bare           # the harness's bare Flask, for scale
    HANDLER_THREADS=4 $PY benchmarks/in_process.py    # other settings from the environment

The harness's callbacks (``../shared/bench/payloads.py``) go through the WSGI
app (``benchmarks.adapter:app``: the echo bot, a fresh journal) from
``--threads`` threads; its fake CometChat (``fake_cometchat.py``) runs in a
subprocess on a free port of 127.0.0.1 and answers after ``--latency-ms``.
When every reply is in, one line: callbacks/s (on the request side), the
process's CPU per callback (user + system; the system part apart), the
request side's share (what the framework's ``bot-*`` threads did not use),
each ``bot-*`` thread's, and context switches per callback.

With more than one request thread the environ says the server is threaded
(``wsgi.multithread``), as gunicorn's gthread workers do, and the responses
are closed as a server closes them: quick routes (bot/quick.py) then run on
the request threads, after the answer.

With gunicorn and wrk out of the picture, runs of one setting differ by a few
per cent rather than the harness's ±30 %; the figures leave out gunicorn's
own cost per request (HTTP parsing, the socket), which bare Flask pays too.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("BENCH", ROOT.parent / "shared" / "bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake(latency_ms: int) -> tuple[subprocess.Popen, int]:
    """The harness's fake CometChat, once it answers (at most 10 s)."""
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_cometchat.py"), "--port", str(port), "--latency-ms", str(latency_ms)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            return fake, port
        except OSError:
            if time.monotonic() > deadline or fake.poll() is not None:
                fake.kill()
                raise SystemExit(f"the fake CometChat ({BENCH / 'fake_cometchat.py'}) did not start") from None
            time.sleep(0.05)


def thread_ticks() -> dict[str, int]:
    """Clock ticks (user + system) by thread name, the numbered ones together (``bot-handler-3`` -> ``bot-handler``)."""
    ticks: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        head, _, number = name.rpartition("-")
        name = head if head and number.isdigit() else name
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def context_switches() -> int:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=1, help="request threads posting at once")
    parser.add_argument("--latency-ms", type=int, default=0, help="the fake CometChat's answer time")
    parser.add_argument("--app", choices=["ours", "bare"], default="ours")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT), str(BENCH)]
    import payloads  # the harness's callbacks
    import servers  # the harness's settings for the servers it runs (its own module, not benchmarks/servers.py)
    from werkzeug.test import EnvironBuilder

    fake, port = start_fake(args.latency_ms)
    try:
        os.environ.update(
            servers.COMMON_ENV,
            COMETCHAT_API_BASE=f"http://127.0.0.1:{port}/v3",
            JOURNAL_PATH=os.path.join(tempfile.mkdtemp(), "journal.sqlite3"),
            LOG_LEVEL="warning",  # as the adapter maps gunicorn's --log-level warning, which the harness passes
        )
        if args.app == "bare":
            import bare_flask

            app, path, pipeline = bare_flask.app, "/callback", None
        else:
            from benchmarks.adapter import app
            from bot.factory import bot_app

            path, pipeline = "/cometchat/callback", bot_app(app)
        auth = payloads.basic_auth_header(servers.BASIC_USER, servers.BASIC_PASS)
        tag = f"inproc{os.getpid()}"
        environs = [
            EnvironBuilder(
                path=path, method="POST", data=payloads.render("cometchat", "9", n, tag).encode(),
                headers={"Authorization": auth, "Content-Type": "application/json"},
                multithread=args.threads > 1,  # as gunicorn's gthread workers say (bot/quick.py)
            ).get_environ()
            for n in range(args.callbacks + 1)
        ]  # fmt: skip

        refused: list[str] = []  # statuses other than 200 (list.append is thread-safe)

        def start_response(status: str, headers: list, exc_info: object = None) -> None:
            if not status.startswith("200"):
                refused.append(status)

        def post(environ: dict) -> None:
            body = app(environ, start_response)
            b"".join(body)
            body.close()

        post(environs.pop())  # the first callback starts the pipeline's threads
        if refused or (pipeline is not None and not pipeline.wait_idle(10)):
            raise SystemExit(f"the first callback was answered {refused[0]}" if refused else "no first reply")

        def post_all(chunk: list[dict]) -> None:
            for environ in chunk:
                post(environ)

        threads = [threading.Thread(target=post_all, args=(environs[n :: args.threads],)) for n in range(args.threads)]

        usage0, ticks0, switches0 = resource.getrusage(resource.RUSAGE_SELF), thread_ticks(), context_switches()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        posting = time.perf_counter() - started
        if refused:
            raise SystemExit(f"{len(refused)} callbacks were not answered 200 (the first: {refused[0]})")
        if pipeline is not None and not pipeline.wait_idle(60):
            raise SystemExit("the replies did not all arrive within 60 s")
        usage1, ticks1, switches1 = resource.getrusage(resource.RUSAGE_SELF), thread_ticks(), context_switches()
    finally:
        fake.kill()
        fake.wait()

    n, hz = args.callbacks, os.sysconf("SC_CLK_TCK")
    user, system = usage1.ru_utime - usage0.ru_utime, usage1.ru_stime - usage0.ru_stime
    ours = {name: (ticks1[name] - ticks0.get(name, 0)) / hz for name in ticks1 if name.startswith("bot-")}

    def per(seconds: float) -> str:  # µs per callback
        return f"{seconds / n * 1e6:.0f}"

    threads_used = ", ".join(f"{name} {per(seconds)}" for name, seconds in sorted(ours.items()) if seconds)
    print(
        f"{args.app}, {args.threads} request threads, {args.latency_ms} ms: {n / posting:,.0f} callbacks/s; "
        f"cpu per callback {per(user + system)} us (system {per(system)}), "
        f"request side {per(user + system - sum(ours.values()))}{', ' if threads_used else ''}{threads_used}; "
        f"context switches per callback {(switches1 - switches0) / n:.1f}"
    )


if __name__ == "__main__":
    main()
