"""Redis + RQ mode against a real redis-server and real worker processes.

`make test` installs redis-server; the fixture starts a private one on a
unix socket (no TCP port to collide with) and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import BOT_UID
from redis import Redis
from rq.executions import Execution
from rq.registry import StartedJobRegistry

import app as app_module
import config
from bot import Router
from bot.client import LocalSender
from bot.dispatch import Dispatcher
from bot.factory import bot_app, build_app
from bot.journal import RateLimit
from bot.redis_queue import (
    _TAKE_TOKEN,
    HEARTBEAT_TTL,
    MAINTENANCE_LOCK_TTL,
    PREFIX,
    SENDING,
    STUCK_AFTER,
    RedisDelivery,
    ThreadWorker,
)
from bot.testing import make_callback
from bots.weather import forecast
from tests.helpers import start_worker, wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.redis


@pytest.fixture
def settings(redis_settings) -> dict[str, str]:
    return redis_settings


def post(app, body: dict, basic_auth: dict) -> dict:
    response = app.test_client().post("/cometchat/callback", json=body, headers=basic_auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def weather_messages(users: int, per_user: int) -> list[tuple[str, dict, str]]:
    return [
        (f"u{u}", make_callback(f"/weather R{u}x{i}", sender=f"u{u}", bot=BOT_UID), forecast(f"R{u}x{i}"))
        for i in range(per_user)
        for u in range(users)
    ]


# ------------------------------------------------------------------ web side


def test_redelivered_callback_is_enqueued_once_across_web_processes(settings, basic_auth):
    web1, web2 = app_module.create_app(settings), app_module.create_app(settings)
    body = make_callback("hello", id="5150", bot=BOT_UID)
    assert post(web1, body, basic_auth)["status"] == "accepted"
    assert post(web2, body, basic_auth)["status"] == "duplicate"
    assert bot_app(web1).delivery.depth().queued == 1


def test_later_messages_of_a_conversation_wait_for_the_earlier_one(settings, basic_auth):
    web = app_module.create_app(settings)
    for text in ["one", "two", "three"]:
        post(web, make_callback(text, sender="alice", bot=BOT_UID), basic_auth)
    post(web, make_callback("other", sender="bob", bot=BOT_UID), basic_auth)
    depth = bot_app(web).delivery.depth()
    assert (depth.queued, depth.waiting) == (2, 2)  # alice's first and bob's; alice's two others deferred


def test_redis_down_is_a_503_not_a_500(live_settings, tmp_path, basic_auth):
    web = app_module.create_app({**live_settings, "REDIS_URL": f"unix://{tmp_path}/no-such.sock"})
    response = web.test_client().post("/cometchat/callback", json=make_callback("hi", bot=BOT_UID), headers=basic_auth)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"


def test_worker_command_needs_redis(live_settings):
    web = app_module.create_app(live_settings)
    result = web.test_cli_runner().invoke(args=["bot", "worker", "--burst"])
    assert result.exit_code != 0 and "REDIS_URL" in result.output


def test_worker_command_refuses_a_metrics_address_without_a_port(settings):
    web = app_module.create_app(settings)
    result = web.test_cli_runner().invoke(args=["bot", "worker", "--burst", "--metrics", "localhost"])
    assert result.exit_code == 2 and "expected HOST:PORT" in result.output


def test_worker_command_refuses_zero_threads(settings):
    web = app_module.create_app(settings)
    result = web.test_cli_runner().invoke(args=["bot", "worker", "--burst", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


# ------------------------------------------------------------------ workers


def test_workers_deliver_every_reply_once_in_conversation_order(settings, fake, basic_auth, tmp_path):
    web = app_module.create_app(settings)
    messages = weather_messages(users=3, per_user=6)
    workers = [start_worker(settings, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for _, body, _ in messages:
            post(web, body, basic_auth)
        assert wait_for(lambda: len(fake.texts()) >= len(messages), 60), (tmp_path / "worker0.log").read_text()
        assert bot_app(web).wait_idle(10)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(20)
    texts = fake.texts()
    assert sorted(texts) == sorted(expected for _, _, expected in messages)
    for u in range(3):
        assert [t for t in texts if f"R{u}x" in t] == [e for user, _, e in messages if user == f"u{u}"]


def test_one_worker_process_runs_several_conversations_at_once_and_stops_warm(settings, fake, basic_auth, tmp_path):
    """WORKER_THREADS jobs run at once in one process; SIGTERM (which only the main thread receives) lets every
    thread finish its job and take no other."""
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    fake.gate.clear()  # replies hang at the API: each job holds its thread
    messages = weather_messages(users=3, per_user=2)
    for _, body, _ in messages:
        post(web, body, basic_auth)
    log = tmp_path / "worker.log"
    worker = start_worker({**settings, "WORKER_THREADS": "3"}, log)
    try:
        assert wait_for(lambda: fake.attempts >= 3, 30), log.read_text()
        assert StartedJobRegistry(queue=delivery.queue).count == 3
        worker.send_signal(signal.SIGTERM)
        fake.gate.set()
        assert worker.wait(20) == 0, log.read_text()
    finally:
        worker.kill()
    first_messages = [expected for _, _, expected in messages[:3]]
    assert sorted(fake.texts()) == sorted(first_messages)
    depth = delivery.depth()
    assert (depth.running, depth.queued) == (0, 3)  # the second message of each conversation, left for others
    delivery.work(burst=True, threads=2)
    texts = fake.texts()
    for u in range(3):
        assert [t for t in texts if f"R{u}x" in t] == [e for user, _, e in messages if user == f"u{u}"]


def test_a_second_sigterm_stops_a_worker_process_without_waiting_for_its_jobs(settings, fake, basic_auth, tmp_path):
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    fake.gate.clear()  # the jobs hang at the API
    for _, body, _ in weather_messages(users=2, per_user=1):
        post(web, body, basic_auth)
    log = tmp_path / "worker.log"
    # Both jobs wait for the API's answer for up to 30 s (the fake's gate): the signals are handled at once regardless,
    # since the main thread runs no job.
    worker = start_worker({**settings, "COMETCHAT_TIMEOUT": "60"}, log, "--threads", "2")
    try:
        assert wait_for(lambda: fake.attempts >= 2, 30), log.read_text()
        worker.send_signal(signal.SIGTERM)  # warm: would wait for both jobs
        assert wait_for(lambda: "stopping after the running jobs" in log.read_text(), 10), log.read_text()
        worker.send_signal(signal.SIGTERM)  # cold
        assert worker.wait(10) == 1, log.read_text()
    finally:
        worker.kill()
    assert fake.texts() == []
    assert StartedJobRegistry(queue=delivery.queue).count == 2  # abandoned: they run again when their heartbeat lapses


@pytest.mark.parametrize(
    "how",
    ["return False", "raise RuntimeError('boom')"],  # RQ's loop ended on an error / an error before RQ's loop
)
def test_a_worker_thread_that_ends_on_its_own_stops_its_process(settings, tmp_path, how):
    """A process one worker thread short would go unnoticed: the process stops instead, with status 1, for its
    supervisor to restart it."""
    log = tmp_path / "worker.log"
    failing = (
        "import bot.redis_queue as q\n"
        "work = q.ThreadWorker.work\n"
        "def failing_work(self, **options):\n"
        f"    if self.name == 'w-1': {how}\n"
        "    return work(self, **options)\n"
        "q.ThreadWorker.work = failing_work\n"
        "from flask.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, **settings, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-c", failing, "--app", "app", "bot", "worker", "--threads", "2", "--name", "w"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert worker.wait(20) == 1, log.read_text()
    finally:
        worker.kill()
    assert "worker w-1 ended on its own; stopping the other workers of this process" in log.read_text()
    assert "Error: worker w-1 ended on an error; the others were stopped" in log.read_text()


def test_a_worker_process_that_cannot_reach_redis_exits_with_an_error(settings, tmp_path):
    log = tmp_path / "worker.log"
    worker = start_worker({**settings, "REDIS_URL": f"unix://{tmp_path}/no-such.sock"}, log, "--threads", "2")
    try:
        assert worker.wait(20) == 1, log.read_text()
    finally:
        worker.kill()
    assert "Error: Redis cannot be reached (REDIS_URL)" in log.read_text()


def test_a_worker_process_serves_its_metrics(settings, fake, basic_auth, tmp_path):
    """RQ workers serve no HTTP: with WORKER_METRICS each process answers /metrics with its handler, send and
    delivery figures (the web processes' /metrics has only the callbacks and the queue)."""
    web = app_module.create_app(settings)
    log = tmp_path / "worker.log"
    worker = start_worker({**settings, "WORKER_METRICS": "127.0.0.1:0"}, log, "--threads", "2")
    try:
        assert wait_for(lambda: "worker metrics at http://" in log.read_text(), 30), log.read_text()
        url = re.search(r"worker metrics at (http://\S+)", log.read_text()).group(1)
        post(web, make_callback("/weather Oslo", bot=BOT_UID), basic_auth)
        assert wait_for(lambda: fake.texts() == [forecast("Oslo")], 30), log.read_text()
        assert wait_for(lambda: "cometchat_bot_delivery_seconds_count 1.0" in scrape(url), 10), scrape(url)
        text = scrape(url)
        assert 'cometchat_bot_handler_seconds_count{outcome="replied"} 1.0' in text
        assert "cometchat_bot_send_seconds_count 1.0" in text
        assert 'cometchat_bot_queue{state="queued"} 0.0' in text
        assert json.loads(scrape(url.replace("/metrics", "/readyz")))["status"] == "ready"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
        assert missing.value.code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_a_worker_killed_mid_job_loses_nothing(settings, fake, basic_auth, tmp_path):
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    fake.gate.clear()  # replies hang at the API until the worker is gone
    messages = weather_messages(users=2, per_user=2)
    for _, body, _ in messages:
        post(web, body, basic_auth)
    doomed = start_worker(settings, tmp_path / "doomed.log")  # its threads take both conversations' first message
    registry = StartedJobRegistry(queue=delivery.queue)
    try:
        assert wait_for(lambda: fake.attempts >= 2, 30), (tmp_path / "doomed.log").read_text()
        assert registry.count == 2
        # A running job's heartbeat lapses HEARTBEAT_TTL seconds after the last beat (not the job's timeout).
        for _, lapses_at in delivery.redis.zrange(registry.key, 0, -1, withscores=True):
            assert lapses_at <= time.time() + HEARTBEAT_TTL + 1
    finally:
        doomed.kill()  # SIGKILL, mid-job
        doomed.wait(10)
    # Until Redis has seen the dead worker's connections close, its idle threads' dequeues still wait there and
    # would take (and lose for a minute, until RQ's maintenance) the jobs pushed below.
    assert wait_for(lambda: not blocked_dequeues(delivery.redis), 10)
    fake.gate.set()
    # Maintenance finds the job abandoned once the heartbeat lapsed: jump there instead of waiting for it.
    registry.cleanup(timestamp=time.time() + HEARTBEAT_TTL + 1)
    survivor = start_worker(settings, tmp_path / "survivor.log")
    try:
        assert wait_for(lambda: len(fake.texts()) >= len(messages), 60), (
            queue_state(delivery),
            (tmp_path / "survivor.log").read_text(),
        )
        assert delivery.wait_idle(10)
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(20)
    assert sorted(fake.texts()) == sorted(expected for _, _, expected in messages)


def test_the_scheduler_process_of_a_killed_worker_ends_with_it(settings, tmp_path):
    """RQ forks a scheduler process per worker that loops until told to stop: after a SIGKILL of its worker it
    lived on, an orphan holding the scheduler lock."""
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        assert wait_for(lambda: children(worker.pid), 30), log.read_text()
        [scheduler] = children(worker.pid)
    finally:
        worker.kill()
        worker.wait(10)
    assert wait_for(lambda: not running(scheduler), 10), f"scheduler {scheduler} still runs"


def test_a_killed_worker_leaves_no_reader_behind_in_redis(settings, tmp_path):
    """The scheduler process RQ forks inherits the worker's Redis sockets. While it held them, the blocked
    dequeues of a killed worker's idle threads stayed open in Redis and swallowed the next jobs (stuck for a
    minute or two). The scheduler is stopped here so that it cannot end with its worker and close them that way."""
    redis = Redis.from_url(settings["REDIS_URL"])
    assert wait_for(lambda: not blocked_dequeues(redis), 10), blocked_dequeues(redis)  # none left by other tests
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, "--threads", "3")
    scheduler = None
    try:
        assert wait_for(lambda: len(blocked_dequeues(redis)) == 3 and children(worker.pid), 30), log.read_text()
        [scheduler] = children(worker.pid)
        os.kill(scheduler, signal.SIGSTOP)
        worker.kill()
        worker.wait(10)
        assert wait_for(lambda: not blocked_dequeues(redis), 10), blocked_dequeues(redis)
    finally:
        worker.kill()
        if scheduler is not None:
            os.kill(scheduler, signal.SIGKILL)


def queue_state(delivery: RedisDelivery) -> dict:
    """Where the jobs are (for a failing test's message)."""
    queue = delivery.queue
    return {
        "depth": delivery.depth(),
        "queued": queue.get_job_ids(),
        "intermediate": delivery.redis.lrange(queue.intermediate_queue_key, 0, -1),
        "started": StartedJobRegistry(queue=queue).get_job_ids(),
        "failed": queue.failed_job_registry.get_job_ids(),
        "finished": queue.finished_job_registry.get_job_ids(),
        "clients": [client["cmd"] for client in delivery.redis.client_list()],
    }


def blocked_dequeues(redis: Redis) -> list[dict]:
    return [client for client in redis.client_list() if client["cmd"] in ("blmove", "blpop", "brpoplpush")]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state is the parent's pid
                found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may not reap it at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_final_send_failures_become_dead_letters(settings, fake, basic_auth):
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    fake.status_for[forecast("Nowhere")] = (404, "ERR_UID_NOT_FOUND")
    post(web, make_callback("/weather Nowhere", bot=BOT_UID), basic_auth)
    post(web, make_callback("/weather Lyon", bot=BOT_UID), basic_auth)
    delivery.work(burst=True)
    assert fake.texts() == [forecast("Lyon")]
    [letter] = delivery.dead_letters()
    assert (letter["error_code"], letter["attempts"]) == ("ERR_UID_NOT_FOUND", 1)
    assert letter["body"]["data"]["text"] == forecast("Nowhere")
    result = web.test_cli_runner().invoke(args=["bot", "dead-letters"])
    assert "ERR_UID_NOT_FOUND" in result.output and letter["id"] in result.output

    # Once the cause is fixed, the letter is sent again from a job (and leaves the dead letters).
    del fake.status_for[forecast("Nowhere")]
    result = web.test_cli_runner().invoke(args=["bot", "dead-letters", "retry", letter["id"]])
    assert (result.exit_code, result.output.strip()) == (0, f"dead letter {letter['id']} queued again")
    assert delivery.dead_letters() == []
    delivery.work(burst=True)
    assert fake.texts() == [forecast("Lyon"), forecast("Nowhere")]
    again = web.test_cli_runner().invoke(args=["bot", "dead-letters", "retry", letter["id"]])
    assert again.exit_code == 1 and f"no dead reply with id {letter['id']}" in again.output


def test_a_job_run_again_does_not_resend_a_delivered_reply(settings, fake, basic_auth):
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    body = make_callback("/weather Oslo", id="8080", bot=BOT_UID)
    post(web, body, basic_auth)
    delivery.work(burst=True)
    delivery.process(json.dumps(body).encode())  # what a retried job does after a crash after sending
    assert fake.texts() == [forecast("Oslo")]


@pytest.mark.parametrize("cometchat_has_it", [True, False], ids=["taken before the kill", "never arrived"])
def test_a_job_run_again_after_a_kill_mid_send_looks_the_reply_up(settings, fake, basic_auth, cometchat_has_it):
    """The earlier run marked the reply as being sent and was killed before it could record CometChat's answer."""
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    body = make_callback("/weather Oslo", id="8081", bot=BOT_UID)
    post(web, body, basic_auth)
    delivery.work(burst=True)
    [sent] = fake.delivered
    delivery.redis.set(f"{PREFIX}:sent:{sent['muid']}", SENDING)  # where the killed run had got to
    if not cometchat_has_it:
        fake.delivered.clear()
        fake.messages.clear()

    delivery.process(json.dumps(body).encode())  # the job, run again

    assert fake.texts() == [forecast("Oslo")]  # once, either way
    assert [lookup["conversationId"] for lookup in fake.lookups] == [f"alice_user_{BOT_UID}"]  # uids sorted
    assert json.loads(delivery.redis.get(f"{PREFIX}:sent:{sent['muid']}")) == {}  # recorded as sent now
    found = delivery.metrics.registry.get_sample_value("cometchat_bot_replies_found_delivered_total")
    assert found == (1 if cometchat_has_it else 0)


def test_a_reply_whose_answer_was_lost_is_looked_up_before_it_is_tried_again(settings, fake, basic_auth):
    web = app_module.create_app(settings)
    delivery: RedisDelivery = bot_app(web).delivery
    fake.answer_lost_for.add(forecast("Bergen"))  # CometChat took it; a gateway answered 504
    post(web, make_callback("/weather Bergen", id="8082", bot=BOT_UID), basic_auth)
    delivery.work(burst=True)
    assert fake.texts() == [forecast("Bergen")]
    assert len(fake.lookups) == 1 and fake.attempts == 1


@pytest.mark.parametrize("mark_expired", [False, True], ids=["within the dedup window", "after it"])
def test_a_dead_letter_sent_again_is_looked_up_if_its_attempt_may_have_been_carried_out(
    settings, fake, basic_auth, mark_expired
):
    web = app_module.create_app({**settings, "COMETCHAT_MAX_RETRIES": "0"})
    delivery: RedisDelivery = bot_app(web).delivery
    fake.answer_lost_for.add(forecast("Bergen"))  # CometChat took it; a gateway answered 504: no retry left
    accepted = time.time()
    post(web, make_callback("/weather Bergen", id="8083", bot=BOT_UID), basic_auth)
    delivery.work(burst=True)
    [letter] = delivery.dead_letters()
    assert (letter["error_code"], letter["in_doubt"]) == ("HTTP_504", True)
    assert accepted <= letter["accepted_at"] <= letter["failed_at"]
    if mark_expired:  # the reply's "sending" mark outlives the dedup window only
        delivery.redis.delete(f"{PREFIX}:sent:{fake.delivered[0]['muid']}")

    assert delivery.requeue_dead_letter(letter["id"])
    delivery.work(burst=True)
    assert fake.texts() == [forecast("Bergen")] and fake.attempts == 1  # not sent again
    [lookup] = fake.lookups
    assert int(lookup["fromTimestamp"]) == int(letter["accepted_at"]) - 60  # from its callback, not from now


def server_time(redis: Redis) -> float:
    seconds, microseconds = redis.time()
    return seconds + microseconds / 1e6


def test_shared_token_bucket(redis_url):
    redis = Redis.from_url(redis_url)
    take = redis.register_script(_TAKE_TOKEN)
    limit = RateLimit(2, 1)  # 2/s, burst 2
    key = f"{PREFIX}:rate"

    def wait() -> float:
        return float(take(keys=[key], args=[limit.per_second, limit.burst]))

    assert [wait(), wait()] == [0.0, 0.0]
    assert 0 < wait() <= 0.5  # empty: the next token in at most half a second
    redis.hset(key, mapping={"tokens": 0, "at": server_time(redis) - 0.5})
    assert wait() == 0.0  # one token came back in the half second, by Redis's clock
    assert wait() > 0  # and no more
    ahead = server_time(redis) + 60  # a take written when Redis's clock read a minute later (then stepped back)
    redis.hset(key, mapping={"tokens": 1, "at": ahead})
    assert wait() == 0.0
    assert float(redis.hget(key, "at")) == ahead  # the bucket's time did not move back ...
    assert wait() == pytest.approx(0.5)  # ... so the minute is not refilled again later


def test_the_shared_bucket_keeps_redis_clock_not_the_workers(redis_url, monkeypatch):
    """Workers on hosts whose clocks differ share one bucket: a worker whose clock is an hour ahead does not
    keep the others from their tokens for that hour."""
    limit = RateLimit(20, 1)  # a token every 50 ms, burst 20
    redis = Redis.from_url(redis_url)
    ahead, behind = (RedisDelivery(redis, Dispatcher(Router()), LocalSender(), rate_limit=limit) for _ in range(2))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    for _ in range(20):
        ahead._pace()  # the bucket is empty now
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    paced = threading.Thread(target=lambda: [behind._pace() for _ in range(3)], daemon=True)
    started = time.monotonic()
    paced.start()
    paced.join(5)
    assert not paced.is_alive()  # it took its three tokens
    assert time.monotonic() - started >= 0.1  # paced: two of them had to come back first


def test_a_running_job_keeps_its_heartbeat_alive(redis_url, monkeypatch):
    """While a handler runs, the worker's heartbeat thread renews the job's entry in the started registry, so a
    slow handler is not taken for a dead one (and a dead worker's job lapses soon)."""
    monkeypatch.setattr("bot.redis_queue.HEARTBEAT_EVERY", 0.05)
    router, seen = Router(), []

    @router.fallback
    def slow(msg):
        registry = StartedJobRegistry(queue=delivery.queue)
        [(_, first)] = delivery.redis.zrange(registry.key, 0, -1, withscores=True)
        assert wait_for(lambda: delivery.redis.zrange(registry.key, 0, -1, withscores=True)[0][1] > first, 5)
        seen.append(msg.text)

    app = build_app(config.load({"REDIS_URL": redis_url}), [router])
    delivery: RedisDelivery = bot_app(app).delivery
    response = app.test_client().post("/cometchat/callback", json=make_callback("slow one"))
    assert response.status_code == 200
    delivery.work(burst=True)
    assert seen == ["slow one"]


# ------------------------------------------------------------------ jobs whose worker died before starting them


@pytest.fixture
def recording(redis_url) -> tuple[RedisDelivery, list[str]]:
    """A Redis-mode app's delivery whose handler records the texts it ran for."""
    router, seen = Router(), []

    @router.fallback
    def record(msg):
        seen.append(msg.text)

    app = build_app(config.load({"REDIS_URL": redis_url}), [router])
    for text in ["first", "second"]:  # one conversation: "second" waits for "first"
        assert app.test_client().post("/cometchat/callback", json=make_callback(text)).status_code == 200
    return bot_app(app).delivery, seen


def take(delivery: RedisDelivery) -> str:
    """Take the next job off the queue as RQ's dequeue does (BLMOVE into the intermediate queue), and no more:
    what a worker killed before it started the job leaves behind."""
    return delivery.redis.lmove(delivery.queue.key, delivery.queue.intermediate_queue_key).decode()


def maintain(delivery: RedisDelivery, *, later: float = 0.0) -> None:
    """One of RQ's maintenance passes, ``later`` s after the jobs waiting there were first found."""
    key = delivery.queue.intermediate_queue.waiting_since_key
    for job_id, since in delivery.redis.hgetall(key).items():
        delivery.redis.hset(key, job_id, float(since) - later)
    ThreadWorker([delivery.queue], connection=delivery.redis).clean_registries()


def taken(delivery: RedisDelivery) -> list[str]:
    return [job_id.decode() for job_id in delivery.redis.lrange(delivery.queue.intermediate_queue_key, 0, -1)]


def test_a_job_taken_by_a_worker_that_died_before_starting_it_runs_again(recording):
    """RQ itself would run it again only after a minute and more, the conversation waiting behind it."""
    delivery, seen = recording
    job_id = take(delivery)
    maintain(delivery)
    assert (taken(delivery), delivery.queue.get_job_ids()) == ([job_id], [])  # a live worker starts it any moment
    maintain(delivery, later=STUCK_AFTER - 2)
    assert (taken(delivery), delivery.queue.get_job_ids()) == ([job_id], [])
    maintain(delivery, later=3)
    assert (taken(delivery), delivery.queue.get_job_ids()) == ([], [job_id])
    delivery.work(burst=True)
    assert seen == ["first", "second"]


def test_a_started_job_is_left_to_its_worker(recording):
    delivery, _ = recording
    job_id = take(delivery)
    job = delivery.queue.fetch_job(job_id)
    with delivery.redis.pipeline() as pipeline:  # what the worker does next (rq.executions.prepare_execution)
        Execution.create(job, HEARTBEAT_TTL, pipeline=pipeline)
        pipeline.execute()
    maintain(delivery)
    maintain(delivery, later=STUCK_AFTER + 1)
    assert (taken(delivery), delivery.queue.get_job_ids()) == ([job_id], [])


def test_a_stale_copy_of_a_job_waiting_in_the_queue_does_not_run_it_twice(recording):
    """A worker killed after it started a job leaves the job's id in the intermediate queue too; RQ's
    abandoned-job handling puts the job back in the queue (a retry)."""
    delivery, seen = recording
    [job_id] = delivery.queue.get_job_ids()
    delivery.redis.rpush(delivery.queue.intermediate_queue_key, job_id)
    maintain(delivery)
    maintain(delivery, later=STUCK_AFTER + 1)
    assert delivery.queue.get_job_ids() == [job_id]
    delivery.work(burst=True)
    assert seen == ["first", "second"]
    maintain(delivery)
    assert taken(delivery) == []  # the job has run: its stale copy is dropped, not run again
    delivery.work(burst=True)
    assert seen == ["first", "second"]


def test_a_worker_killed_during_maintenance_holds_its_lock_a_minute(redis_url):
    """Maintenance (abandoned and stuck jobs) is skipped while the lock is held; RQ's lasts 899 s."""
    queue = RedisDelivery(Redis.from_url(redis_url), Dispatcher(Router()), LocalSender()).queue
    assert queue.acquire_maintenance_lock()
    assert not queue.acquire_maintenance_lock()
    assert 0 < queue.connection.ttl(queue.registry_cleaning_key) <= MAINTENANCE_LOCK_TTL
