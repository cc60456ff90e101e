"""gunicorn config for the harness's Redis-mode servers: a private Redis and ``BENCH_RQ_WORKERS`` RQ workers.

The harness starts and stops only gunicorn; these hooks start, with the
master, a ``redis-server`` on a unix socket in a fresh folder and the RQ
worker processes (``flask --app benchmarks.adapter:app bot worker``, the
Procfile's ``worker:`` line), and stop them when the master exits. The web
workers inherit ``REDIS_URL`` and only record callbacks; the RQ workers run
the echo bot and send the replies.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_children: list[subprocess.Popen] = []


def on_starting(server) -> None:
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    socket = os.path.join(folder, "redis.sock")
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", socket,
         "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    _children.append(redis)
    deadline = time.monotonic() + 10
    while not os.path.exists(socket):
        if time.monotonic() > deadline or redis.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)
    os.environ["REDIS_URL"] = f"unix://{socket}"
    for n in range(int(os.environ.get("BENCH_RQ_WORKERS", "2"))):
        _children.append(
            subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "benchmarks.adapter:app", "bot", "worker"],
                env={**os.environ, "BENCH_RQ_WORKER": str(n)},
            )
        )


def on_exit(server) -> None:
    for child in reversed(_children):  # workers first (a warm shutdown finishes the current job), Redis last
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
