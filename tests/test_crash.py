"""Crash and shutdown of real gunicorn processes: nothing acknowledged is lost, nothing is sent twice.

gunicorn runs the real app (the example bots) with two workers; a threaded
fake of CometChat's API holds replies back until the test opens its gate,
so the processes can be killed with replies still in flight.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from conftest import API_KEY, BOT_UID, PASSWORD, USERNAME

from bot.testing import make_callback
from bots.weather import forecast
from tests.fakes import GatedCometChat
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[GatedCometChat]:
    with GatedCometChat(open_gate=False) as fake:
        yield fake


class Gunicorn:
    def __init__(self, env: dict[str, str], log: Path, worker_args: tuple[str, ...] = ("-w", "2")) -> None:
        self.log = log
        self.workers = int(worker_args[worker_args.index("-w") + 1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *worker_args, "-b", "127.0.0.1:0", "--graceful-timeout", "10",
             "--log-level", "info", "app:create_app()"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"), start_new_session=True,
        )  # fmt: skip
        self.url = self._wait_listening()
        self.http = urllib3.PoolManager()

    def _wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.findall(r"Listening at: (http://127\.0\.0\.1:\d+)", text)
            booted = len(re.findall(r"Booting worker", text))
            if found and booted >= self.workers * len(found):  # this start's workers are up
                return found[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited: {text[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not start: {self.log.read_text()[-2000:]}")

    def post(self, body: dict) -> int:
        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        response = self.http.request(
            "POST", self.url + "/cometchat/callback", json=body, headers={"Authorization": f"Basic {token}"}, timeout=10
        )
        return response.status

    def kill_all(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)


@pytest.fixture
def env(fake, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "COMETCHAT_APP_ID": "25a8c0ffee",
        "COMETCHAT_REGION": "eu",
        "COMETCHAT_API_KEY": API_KEY,
        "COMETCHAT_BOT_UID": BOT_UID,
        "COMETCHAT_API_URL": fake.server.url_for("/v3"),
        "CALLBACK_USERNAME": USERNAME,
        "CALLBACK_PASSWORD": PASSWORD,
        "JOURNAL_PATH": str(tmp_path / "journal.sqlite3"),
        "COMETCHAT_TIMEOUT": "30",
        "DRAIN_TIMEOUT": "8",
        "PYTHONPATH": str(ROOT),
    }


def conversation_messages(n_users: int, per_user: int) -> list[tuple[str, dict, str]]:
    """(user, callback, expected reply): each user asks for the weather in numbered cities, in order."""
    out = []
    for i in range(per_user):
        for u in range(n_users):
            city = f"City{u}x{i}"
            out.append((f"user{u}", make_callback(f"/weather {city}", sender=f"user{u}", bot=BOT_UID), forecast(city)))
    return out


def kill_9_mid_delivery_then_restart(fake: GatedCometChat, env: dict[str, str], log: Path, messages: list) -> list[str]:
    """Post ``messages``, kill master and workers with replies held at the fake's gate, open it, start gunicorn
    again on the same journal: the texts the fake took, once every message has its reply."""
    first = Gunicorn(env, log)
    try:
        assert [first.post(body) for _, body, _ in messages] == [200] * len(messages)
        assert wait_for(lambda: fake.attempts >= 4, 20), "replies should be in flight when the processes die"
    finally:
        first.kill_all()  # master and both workers, mid-delivery
    fake.gate.set()
    second = Gunicorn(env, log)
    try:
        assert wait_for(lambda: len(fake.texts()) >= len(messages), 60), log.read_text()[-3000:]
    finally:
        second.terminate()
    return fake.texts()


def assert_each_reply_once_in_order(texts: list[str], messages: list, users: int) -> None:
    assert sorted(texts) == sorted(expected for _, _, expected in messages)  # every one, once
    for u in range(users):  # and each conversation in its order
        assert [t for t in texts if f"City{u}x" in t] == [e for user, _, e in messages if user == f"user{u}"]


def test_kill_9_loses_nothing_and_keeps_each_conversations_order(fake, env, tmp_path):
    """Every accepted message is answered after a kill -9 of master and workers and a restart, in order.

    (The gated fake refuses what was in flight when the processes died, so the replies it counts are those
    sent after the restart; in the next test it takes them.)
    """
    messages = conversation_messages(n_users=4, per_user=5)
    log = tmp_path / "gunicorn.log"
    assert_each_reply_once_in_order(kill_9_mid_delivery_then_restart(fake, env, log, messages), messages, 4)
    assert "recovered" in log.read_text()


def test_kill_9_with_gthread_workers_running_quick_routes_loses_nothing(fake, env, tmp_path):
    """gthread workers (the Procfile's) run a quick route's handler on the request thread once the answer is sent
    (bot/quick.py): a kill -9 then loses nothing either, and sends nothing twice. (One worker, so that the
    warm-up makes the route quick in the process that then takes the messages.)"""
    log = tmp_path / "gunicorn.log"
    gthread = ("-w", "1", "-k", "gthread", "--threads", "8")
    server = Gunicorn(env, log, gthread)
    fake.gate.set()
    warm_up = [make_callback(f"/weather Warm{n}", sender=f"warm{n}", bot=BOT_UID) for n in range(40)]
    assert [server.post(body) for body in warm_up] == [200] * len(warm_up)
    assert wait_for(lambda: len(fake.texts()) == len(warm_up), 20)
    assert "now runs on the thread that answered the callback" in log.read_text()  # the route is quick
    fake.gate.clear()
    messages = conversation_messages(n_users=4, per_user=5)
    try:
        assert [server.post(body) for _, body, _ in messages] == [200] * len(messages)
        assert wait_for(lambda: fake.attempts >= len(warm_up) + 4, 20), "replies should be in flight"
    finally:
        server.kill_all()
    fake.gate.set()
    second = Gunicorn(env, log, gthread)
    try:
        assert wait_for(lambda: len(fake.texts()) >= len(warm_up) + len(messages), 60), log.read_text()[-3000:]
    finally:
        second.terminate()
    assert_each_reply_once_in_order(fake.texts()[len(warm_up) :], messages, 4)


def test_a_reply_cometchat_took_before_a_kill_9_is_not_sent_again(env, tmp_path):
    """CometChat took the replies in flight, but the processes died before its answers came: after the restart
    each is looked up by its muid and found, so every reply is delivered exactly once, in order."""
    with GatedCometChat(open_gate=False, keep_held=True) as fake:
        env = {**env, "COMETCHAT_API_URL": fake.server.url_for("/v3")}
        messages = conversation_messages(n_users=4, per_user=3)
        log = tmp_path / "gunicorn.log"
        texts = kill_9_mid_delivery_then_restart(fake, env, log, messages)
        assert_each_reply_once_in_order(texts, messages, 4)
        assert fake.held >= 4 and log.read_text().count("not sent again") == fake.held
        looked_up = {lookup["conversationId"] for lookup in fake.lookups}
        assert looked_up and looked_up <= {f"{BOT_UID}_user_user{u}" for u in range(4)}


def test_sigterm_drains_in_flight_replies(fake, env, tmp_path):
    messages = conversation_messages(n_users=3, per_user=2)
    log = tmp_path / "gunicorn.log"
    server = Gunicorn(env, log)
    assert [server.post(body) for _, body, _ in messages] == [200] * len(messages)
    assert wait_for(lambda: fake.attempts >= 3, 20)
    # Their first attempts arrived while the gate was closed, so they fail (503) and are retried during the drain.
    threading.Timer(0.3, fake.gate.set).start()
    server.terminate(timeout=30)
    first_replies = [expected for _, _, expected in messages[:3]]
    assert all(t in fake.texts() for t in first_replies), log.read_text()[-3000:]  # the in-flight ones, drained
    # Messages no handler had started stay in the journal; the next start delivers them, each once and in order.
    second = Gunicorn(env, log)
    try:
        assert wait_for(lambda: len(fake.texts()) >= len(messages), 30), log.read_text()[-3000:]
    finally:
        second.terminate()
    texts = fake.texts()
    assert sorted(texts) == sorted(expected for _, _, expected in messages)
    for u in range(3):
        assert [t for t in texts if f"City{u}x" in t] == [e for user, _, e in messages if user == f"user{u}"]


def test_metrics_sum_over_gunicorn_workers(fake, env, tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, /metrics counts the callbacks of every worker process, whichever answers."""
    (tmp_path / "prom").mkdir()
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    fake.gate.set()
    messages = conversation_messages(n_users=5, per_user=4)
    server = Gunicorn(env, tmp_path / "gunicorn.log")
    try:
        assert [server.post(body) for _, body, _ in messages] == [200] * len(messages)
        assert wait_for(lambda: len(fake.texts()) >= len(messages), 20)
        text = server.http.request("GET", server.url + "/metrics", timeout=10).data.decode()
    finally:
        server.terminate()
    accepted = [
        line for line in text.splitlines() if line.startswith('cometchat_bot_callbacks_total{outcome="accepted"}')
    ]
    assert [float(line.split()[-1]) for line in accepted] == [len(messages)]
