"""Shared fixtures: CometChat samples, settings, apps in local and live mode, the fake CometChat API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pytest_httpserver import HTTPServer
from redis import Redis

import app as app_module
import config
from bot import testing
from bot.client import CometChatClient, RetryPolicy
from bot.factory import bot_app
from bot.pipeline import Pipeline

if TYPE_CHECKING:
    from tests.fakes import GatedCometChat

DATA = Path(__file__).parent / "data"
PAYLOADS = sorted((DATA / "payloads").glob("*.json"))
INVALID_PAYLOADS = sorted((DATA / "payloads" / "invalid").glob("*.json"))

BOT_UID = "helpdesk-bot"
API_KEY = "test-api-key"
USERNAME, PASSWORD = "cometchat", "s3cret-callback-pass"


def load_json(relative: str) -> Any:
    return json.loads((DATA / relative).read_text())


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Tests start from an empty configuration (whatever the shell exports) and a journal of their own."""
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOURNAL_PATH", str(tmp_path / "journal.sqlite3"))
    yield
    for pipeline in list(Pipeline.instances):  # stop the background threads of every app the test built
        pipeline.stop(timeout=2)


@pytest.fixture
def payload():
    """payload("text_user") -> the sample callback as a dict."""
    return lambda name: load_json(f"payloads/{name}.json")


@pytest.fixture
def api_answer():
    """api_answer("rate_limited_429") -> (status, headers, body) of a sample API answer."""

    def load(name: str) -> tuple[int, dict[str, str], dict]:
        sample = load_json(f"api/{name}.json")
        return sample["status"], sample.get("headers", {}), sample["body"]

    return load


@pytest.fixture
def live_settings(httpserver: HTTPServer) -> dict[str, str]:
    """Settings for an app that sends to the fake CometChat API (pytest-httpserver) with callback auth."""
    return {
        "COMETCHAT_APP_ID": "25a8c0ffee",
        "COMETCHAT_REGION": "eu",
        "COMETCHAT_API_KEY": API_KEY,
        "COMETCHAT_BOT_UID": BOT_UID,
        "COMETCHAT_API_URL": httpserver.url_for("/v3"),
        "CALLBACK_USERNAME": USERNAME,
        "CALLBACK_PASSWORD": PASSWORD,
        "COMETCHAT_MAX_RETRIES": "3",
    }


@pytest.fixture
def live_app(live_settings):
    """The real app (bots/ examples) sending to the fake CometChat API."""
    app = app_module.create_app(live_settings)
    yield app
    bot_app(app).wait_idle(5)


@pytest.fixture
def basic_auth() -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def fake_api(httpserver: HTTPServer, api_answer) -> HTTPServer:
    """The fake CometChat API answering every Send Bot Message like the sample success answer."""
    status, headers, body = api_answer("send_ok_200")
    httpserver.expect_request(f"/v3/bots/{BOT_UID}/messages", method="POST").respond_with_json(
        body, status=status, headers=headers
    )
    return httpserver


# ------------------------------------------------------------------ a real redis-server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A private redis-server on a unix socket (no TCP port), for the whole test run."""
    with testing.redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server) -> str:
    """The test redis-server, emptied for this test."""
    Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def fake() -> Iterator[GatedCometChat]:
    """The gated fake of CometChat's API (tests/fakes.py: the gate open), on a port of its own."""
    from tests.fakes import GatedCometChat  # here: tests.fakes imports this module's constants

    with GatedCometChat() as fake:
        yield fake


@pytest.fixture
def redis_settings(redis_url, live_settings, fake) -> dict[str, str]:
    """Settings for Redis mode: the test redis-server, replies to the gated fake."""
    return {**live_settings, "REDIS_URL": redis_url, "COMETCHAT_API_URL": fake.server.url_for("/v3")}


# ------------------------------------------------------------------ CometChatClient against the HTTP fake


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the client asked for (instead of sleeping)."""
    return []


@pytest.fixture
def make_client(httpserver: HTTPServer, sleeps):
    """make_client(max_retries=3, base_url=..., timeout=5, **policy) -> a client whose sleeps are recorded."""
    clients: list[CometChatClient] = []

    def make(max_retries: int = 3, *, base_url: str | None = None, timeout: float = 5.0, **policy) -> CometChatClient:
        retry = RetryPolicy(max_retries=max_retries, **policy)
        client = CometChatClient(
            base_url or httpserver.url_for("/v3"), API_KEY, timeout=timeout, retry=retry, sleep=sleeps.append
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client) -> CometChatClient:
    return make_client()
