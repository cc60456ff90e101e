"""gunicorn config for the harness's Redis-mode servers: a private Redis and ``BENCH_RQ_WORKERS`` RQ workers.

The harness starts and stops only gunicorn; these hooks start, with the
master, a ``redis-server`` on a unix socket in a fresh folder and the RQ
worker processes (``flask --app benchmarks.adapter:app bot worker``, the
Procfile's ``worker:`` line), and stop them when the master exits. The web
workers inherit ``REDIS_URL`` and only record callbacks; the RQ workers run
the echo bot and send the replies.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from bot.testing import redis_server

_redis = contextlib.ExitStack()
_children: list[subprocess.Popen] = []


def on_starting(server) -> None:
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    _redis.callback(shutil.rmtree, folder, ignore_errors=True)  # after Redis has stopped (last in, first out)
    os.environ["REDIS_URL"] = _redis.enter_context(redis_server(folder))
    for n in range(int(os.environ.get("BENCH_RQ_WORKERS", "2"))):
        _children.append(
            subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "benchmarks.adapter:app", "bot", "worker"],
                env={**os.environ, "BENCH_RQ_WORKER": str(n)},
            )
        )


def on_exit(server) -> None:
    for child in _children:  # workers first (a warm shutdown finishes the current job), Redis last
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    _redis.close()
