"""gunicorn config for the harness's Redis-mode servers: a private Redis and ``BENCH_RQ_WORKERS`` RQ workers.

The harness starts and stops only gunicorn; these hooks start, with the
master, a ``redis-server`` on a unix socket in a fresh folder and the RQ
worker processes (``flask --app benchmarks.adapter:app bot worker``, the
Procfile's ``worker:`` line), and stop them when the master exits. The web
workers inherit ``REDIS_URL`` and only record callbacks; the RQ workers run
the echo bot and send the replies.

In a deployment the RQ workers are processes of their own that go on
delivering when the web side stops; here they stop with gunicorn's master,
and the private Redis with them. So before they are stopped, they get up to
``BENCH_RQ_DRAIN_S`` seconds (default 8) to empty the queue, as they would
have had they been left running: the harness counts what is delivered by the
end of the graceful shutdown (it waits for the master for its graceful
timeout + 5 s, 15 s by default). With 2 RQ workers at 100 ms the harness's
30 s drain can end with messages still queued (130 in 20261207T064631Z).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from redis import Redis, RedisError
from rq import Queue

from bot.redis_queue import QUEUE, BotQueue, queue_depth
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
    queue = BotQueue(QUEUE, connection=Redis.from_url(os.environ["REDIS_URL"]))
    wait_for_empty_queue(queue, _children, float(os.environ.get("BENCH_RQ_DRAIN_S", "8")))
    for child in _children:  # workers first (a warm shutdown finishes the current job), Redis last
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    _redis.close()


def wait_for_empty_queue(queue: Queue, workers: Sequence[subprocess.Popen], seconds: float) -> bool:
    """Wait until nothing is queued, running or waiting in ``queue`` (read twice in a row: a job a worker has just
    taken off the queue is in neither for a moment), at most ``seconds``, and only while a worker process lives.
    Returns whether the queue emptied."""
    deadline, empty_before = time.monotonic() + seconds, False
    while time.monotonic() < deadline and any(worker.poll() is None for worker in workers):
        try:
            depth = queue_depth(queue)
        except RedisError:  # Redis is gone: nothing more will be delivered
            return False
        empty = depth.queued + depth.running + depth.waiting == 0
        if empty and empty_before:
            return True
        empty_before = empty
        time.sleep(0.1)
    return False
