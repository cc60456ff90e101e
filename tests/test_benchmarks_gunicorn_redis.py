"""benchmarks/gunicorn_redis.py: before the benchmark stops the RQ workers, they empty the queue (bounded).

Against the test redis-server and real worker processes, as tests/test_redis_queue.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import BOT_UID
from redis import Redis

import app as app_module
from benchmarks.gunicorn_redis import wait_for_empty_queue
from bot.redis_queue import QUEUE, BotQueue, queue_depth
from bot.testing import make_callback
from bots.weather import forecast
from tests.helpers import start_worker

pytestmark = pytest.mark.redis


@pytest.fixture
def queue(redis_url) -> BotQueue:
    return BotQueue(QUEUE, connection=Redis.from_url(redis_url))


@pytest.fixture
def idle_process() -> Iterator[subprocess.Popen]:
    """A live process that takes nothing off the queue (stands for a worker that does not get through it)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def accept(settings: dict[str, str], basic_auth: dict[str, str], cities: list[str]) -> None:
    """Callbacks asking the weather bot (bots/weather.py) about ``cities``, each from its own user."""
    web = app_module.create_app(settings).test_client()
    for n, city in enumerate(cities):
        body = make_callback(f"/weather {city}", id=f"70{n}", sender=f"u{n}", bot=BOT_UID)
        assert web.post("/cometchat/callback", json=body, headers=basic_auth).status_code == 200


def test_returns_once_the_workers_have_delivered_everything(redis_settings, basic_auth, queue, fake, tmp_path):
    cities = ["Oslo", "Lima", "Pune"]
    accept(redis_settings, basic_auth, cities)
    assert queue_depth(queue).queued == 3
    worker = start_worker(redis_settings, tmp_path / "worker.log")
    try:
        assert wait_for_empty_queue(queue, [worker], seconds=30), (tmp_path / "worker.log").read_text()
        assert sorted(fake.texts()) == sorted(forecast(city) for city in cities)
    finally:
        worker.terminate()
        worker.wait(15)


def test_gives_up_after_the_time_it_was_given(redis_settings, basic_auth, queue, idle_process):
    accept(redis_settings, basic_auth, ["waits"])
    started = time.monotonic()
    assert not wait_for_empty_queue(queue, [idle_process], seconds=0.5)
    assert time.monotonic() - started >= 0.5
    assert queue_depth(queue).queued == 1


def test_does_not_wait_once_no_worker_is_left(redis_settings, basic_auth, queue, idle_process):
    accept(redis_settings, basic_auth, ["nobody takes it"])
    idle_process.kill()
    idle_process.wait()
    started = time.monotonic()
    assert not wait_for_empty_queue(queue, [idle_process], seconds=30)
    assert time.monotonic() - started < 5


def test_an_empty_queue_counts_at_once(queue, idle_process):
    started = time.monotonic()
    assert wait_for_empty_queue(queue, [idle_process], seconds=30)
    assert time.monotonic() - started < 5
