"""Helpers to test handlers in a few lines.

.. code-block:: python

    from bot.testing import BotTestClient
    from bots.weather import bot

    def test_weather():
        with BotTestClient.for_routers(bot) as client:
            assert client.send("weather Paris").texts == ["Sunny in Paris"]

:func:`make_callback` builds a callback body like CometChat's; :func:`make_message`
the :class:`Message` a handler receives; :class:`BotTestClient` posts callbacks
through the real path (auth, validation, dispatch) of an app whose sender
records instead of sending, and returns the replies each callback caused.
:func:`redis_server` starts a private ``redis-server`` for tests of Redis mode.
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from redis import Redis, RedisError
from werkzeug.test import TestResponse

from .api import SendRequest
from .client import LocalSender
from .factory import bot_app, build_app
from .message import Message
from .routing import Router
from .schemas import parse_callback
from .settings import Settings
from .state import MemoryStateStore, StateSession, StateStore

_ids = itertools.count(int(time.time()) % 1_000_000 * 1000)

MEDIA_TYPES = {"image": "image/png", "file": "application/pdf", "audio": "audio/mpeg", "video": "video/mp4"}


def make_callback(
    text: str | None = None,
    *,
    type: str | None = None,
    category: str | None = None,
    sender: str = "alice",
    sender_name: str | None = None,
    group: str | None = None,
    bot: str = "bot",
    id: str | int | None = None,
    mentions: Iterable[str] = (),
    url: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
    custom_data: Any = None,
    metadata: Mapping[str, Any] | None = None,
    action: str | None = None,
    parent_id: str | None = None,
    trigger: str = "after_message",
) -> dict[str, Any]:
    """A callback body shaped like CometChat's (PLATFORM.md 2.2).

    ``text`` makes a text message; ``type="image"`` (with ``url``) a media
    message; ``custom_data`` a custom one (``type`` names it); ``group`` sends it
    to a group instead of 1:1 to the bot; ``mentions`` adds ``<@uid:...>``
    mentions in front of the text.
    """
    message_id = str(id if id is not None else next(_ids))
    if category is None:
        category = "custom" if custom_data is not None else ("action" if action else "message")
    if type is None:
        type = {"custom": "custom", "action": "message"}.get(category, "text")
    data: dict[str, Any] = {}
    mentions = list(mentions)
    if text is not None or mentions:
        data["text"] = " ".join([f"<@uid:{uid}>" for uid in mentions] + ([text] if text else []))
    if mentions:
        data["mentions"] = {uid: {"uid": uid, "name": uid.title(), "role": "default"} for uid in mentions}
    if type in MEDIA_TYPES and category == "message":
        if attachments is None:
            link = url or f"https://data-eu.cometchat.io/app/media/{message_id}.{MEDIA_TYPES[type].split('/')[1]}"
            name = link.rsplit("/", 1)[-1]
            attachments = [
                {
                    "url": link,
                    "name": name,
                    "mimeType": MEDIA_TYPES[type],
                    "extension": name.rsplit(".", 1)[-1],
                    "size": 1024,
                }
            ]
        data["url"] = attachments[0]["url"] if attachments else url
    if attachments is not None:
        data["attachments"] = attachments
    if custom_data is not None:
        data["customData"] = custom_data
    if metadata is not None:
        data["metadata"] = dict(metadata)
    if action is not None:
        data["action"] = action
    data["entities"] = {
        "sender": {
            "entityType": "user",
            "entity": {"uid": sender, "name": sender_name or sender.title(), "role": "default"},
        },
        "receiver": (
            {"entityType": "group", "entity": {"guid": group, "name": group}}
            if group
            else {"entityType": "user", "entity": {"uid": bot, "name": bot}}
        ),
    }
    message: dict[str, Any] = {
        "id": message_id,
        "conversationId": f"group_{group}" if group else f"{sender}_user_{bot}",
        "sender": sender,
        "receiverType": "group" if group else "user",
        "receiver": group or bot,
        "category": category,
        "type": type,
        "data": data,
        "sentAt": int(time.time()),
        "updatedAt": int(time.time()),
    }
    if parent_id is not None:
        message["parentId"] = parent_id
    if trigger == "message_sent":
        return {"trigger": trigger, "appId": "app", "region": "eu", "webhook": "test", "data": {"message": message}}
    return {"trigger": trigger, "data": message, "appId": "app", "region": "eu", "chatAPIVersion": "3.0", "bot": bot}


def make_message(
    text: str | None = None,
    *,
    state: Mapping[str, Any] | None = None,
    step: str | None = None,
    store: StateStore | None = None,
    scope: str = "conversation",
    **kwargs: Any,
) -> Message:
    """The :class:`Message` a handler would receive for ``make_callback(text, **kwargs)``.

    Its ``msg.state`` lives in ``store`` (default: a fresh in-memory one), starting with the data ``state``
    and the step ``step`` (``scope="user"``: the per-user state of a ``Router(state_scope="user")``), so a
    handler can be called directly::

        msg = make_message("Paris", step="ask_city")
        ask_city(msg)
        assert msg.state["city"] == "Paris" and msg.state.step == "ask_date"
    """
    callback = parse_callback(make_callback(text, **kwargs))
    assert callback.message is not None
    msg = callback.message.with_(state_scope=scope)
    session = StateSession(store if store is not None else MemoryStateStore(), msg, ttl=3600)
    if state or step:
        seeded = session.get(scope)
        seeded.update(state or {})
        seeded.step = step
        session.save()
    return msg.with_(_states=session)


@dataclass(frozen=True)
class SentReply:
    """One reply the bot sent: the CometChat request body, with shortcuts."""

    request: SendRequest

    @property
    def body(self) -> dict[str, Any]:
        return self.request.body

    @property
    def is_message(self) -> bool:
        """True for a chat message (a reply, a thread reply); False for an edit, a reaction, ..."""
        return self.request.is_message

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def in_thread(self) -> str | None:
        """The parent message id when the reply went into a thread."""
        parts = self.request.path.split("/")
        return parts[2] if self.is_message and parts[-1] == "thread" else None

    @property
    def muid(self) -> str:
        return self.request.muid

    @property
    def text(self) -> str | None:
        return self.body["data"].get("text") if self.is_message else None

    @property
    def type(self) -> str:
        return self.body["type"]

    @property
    def category(self) -> str:
        return self.body["category"]

    @property
    def receiver(self) -> str:
        return self.body["receiver"]

    @property
    def receiver_type(self) -> str:
        return self.body["receiverType"]

    @property
    def attachments(self) -> list[dict[str, Any]]:
        return self.body["data"].get("attachments", [])

    @property
    def custom_data(self) -> Any:
        return self.body["data"].get("customData")

    @property
    def interactive_data(self) -> dict[str, Any]:
        return self.body["data"].get("interactiveData", {})

    def actions(self) -> dict[str, dict[str, Any]]:
        """The buttons of an interactive reply that report back to the bot: element id -> its apiAction."""
        data = self.interactive_data
        elements = [*data.get("formFields", []), *data.get("cardActions", [])]
        elements += [data[key] for key in ("submitElement", "scheduleElement") if isinstance(data.get(key), dict)]
        return {
            element["elementId"]: element["action"]
            for element in elements
            if isinstance(element.get("action"), dict) and element["action"].get("actionType") == "apiAction"
        }


class Replies(list):
    """The chat messages one callback caused, in the order they were sent; ``requests`` has every request
    (also edits, reactions, marks), in order."""

    def __init__(self, requests: Iterable[SentReply] = ()) -> None:
        self.requests = list(requests)
        super().__init__(r for r in self.requests if r.is_message)

    @property
    def texts(self) -> list[str | None]:
        return [reply.text for reply in self]

    @property
    def actions(self) -> list[SentReply]:
        """The requests that are not chat messages (edits, deletes, reactions, marks)."""
        return [r for r in self.requests if not r.is_message]


class BotTestClient:
    """Posts callbacks to an app through its real callback path and returns what the bot sent."""

    def __init__(self, app: Flask, *, timeout: float = 5.0) -> None:
        self.app = app
        self.timeout = timeout
        self.state = bot_app(app)
        if not isinstance(self.state.sender, LocalSender):
            raise TypeError(
                "BotTestClient needs an app in local mode (no CometChat credentials) or built for_routers()"
            )
        self.recorder: LocalSender = self.state.sender
        self._folder: str | None = None  # a temporary directory of for_routers()' making, removed by close()
        self.http = app.test_client()
        settings = self.state.settings
        self.auth_header = (
            "Basic " + base64.b64encode(f"{settings.callback_username}:{settings.callback_password}".encode()).decode()
            if settings.callback_auth_enabled
            else None
        )

    @classmethod
    def for_routers(cls, *routers: Router, settings: Settings | None = None) -> BotTestClient:
        """An app of just ``routers``, in local mode, whose replies are recorded (not printed).

        Without ``settings`` its journal lives in a fresh temporary directory, removed by :meth:`close`.
        """
        folder = None
        if settings is None:
            folder = tempfile.mkdtemp(prefix="bot-test-")
            settings = Settings(journal_path=os.path.join(folder, "journal.sqlite3"))
        client = cls(build_app(settings, routers, sender=LocalSender(echo=False), import_name=__name__))
        client._folder = folder
        return client

    def close(self) -> None:
        """Stop the app's pipeline threads (and remove the journal's directory if :meth:`for_routers` made it)."""
        self.state.close(timeout=2)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> BotTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        return self.state.settings.callback_path

    def post(self, payload: Any, *, auth: bool = True, headers: Mapping[str, str] | None = None) -> TestResponse:
        """POST ``payload`` (a dict, or raw bytes/str sent as is) to the callback."""
        all_headers = {"Content-Type": "application/json"}
        if auth and self.auth_header:
            all_headers["Authorization"] = self.auth_header
        all_headers.update(headers or {})
        if isinstance(payload, (bytes, str)):
            return self.http.post(self.path, data=payload, headers=all_headers)
        return self.http.post(self.path, json=payload, headers=all_headers)

    def send(self, text: str | None = None, **callback: Any) -> Replies:
        """Post ``make_callback(text, **callback)`` and return the replies it caused (asserting a 200)."""
        return self.send_payload(make_callback(text, **callback))

    def send_payload(self, payload: Mapping[str, Any]) -> Replies:
        return self._replies_to(lambda: self.post(dict(payload)))

    def submit(
        self,
        reply: SentReply,
        values: Mapping[str, Any] | None = None,
        *,
        element: str | None = None,
        user: str | None = None,
    ) -> Replies:
        """Submit a form (or click a card button) the bot sent, as the UI kit does, and return the replies.

        ``element``: the button (default: the form's submit button, or the only button); ``user``: who
        submits (default: the user the reply went to; needed in groups).
        """
        actions = reply.actions()
        if element is None:
            if "submitElement" in reply.interactive_data:
                element = reply.interactive_data["submitElement"]["elementId"]
            elif len(actions) == 1:
                [element] = actions
            else:
                raise ValueError(f"which button? this reply has {sorted(actions)}")
        if element not in actions:
            raise ValueError(f"{element!r} is not a button of this reply that reports to the bot ({sorted(actions)})")
        if user is None:
            if reply.receiver_type == "group":
                raise ValueError("who submits? in a group, pass user=")
            user = reply.receiver
        body = interaction_request(
            actions[element],
            values or {},
            user=user,
            element=element,
            message_id=self.recorder.message_ids.get(reply.muid, ""),
            message=reply.body,
        )
        return self._replies_to(lambda: self.post_interaction(actions[element]["url"], body))

    def post_interaction(self, url: str, body: Mapping[str, Any]) -> TestResponse:
        """POST a submission to the interaction endpoint (``url`` as the button has it)."""
        return self.http.post(urlsplit(url).path, json=dict(body))

    def _replies_to(self, post: Callable[[], TestResponse]) -> Replies:
        before = self.recorder.total
        response = post()
        if response.status_code != 200:
            raise AssertionError(f"answered {response.status_code}: {response.get_data(as_text=True)}")
        if not self.state.wait_idle(self.timeout):
            raise AssertionError(f"the bot did not finish within {self.timeout} s")
        new = self.recorder.total - before
        return Replies(SentReply(r) for r in list(self.recorder.sent)[-new:] if new)


def interaction_request(
    action: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    user: str,
    element: str,
    message_id: str = "",
    message: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What CometChat's v4 web UI kit posts to a button's apiAction URL (PLATFORM.md 5.4)."""
    message = message or {}
    return {
        "payload": dict(action.get("payload") or {}),
        "trigger": "ui_message_interacted",
        "appID": "app",
        "region": "eu",
        "data": {
            "conversationId": "",
            "sender": "",
            "receiver": message.get("receiver", ""),
            "receiverType": message.get("receiverType", "user"),
            "messageCategory": "interactive",
            "messageType": message.get("type", "form"),
            "messageId": message_id,
            "interactedBy": user,
            "interactionTimezoneCode": "Europe/Paris",
            "interactedElementId": element,
            "formData": dict(values),
        },
    }


@contextmanager
def redis_server(folder: str | os.PathLike[str], *, timeout: float = 10.0) -> Iterator[str]:
    """A private ``redis-server`` (from the PATH) on a unix socket in ``folder``: no TCP port, nothing saved.

    Yields its URL once it answers PING (its socket file appears before it
    listens: a client connecting then is refused), and stops it afterwards.
    For tests of Redis mode and for the benchmarks.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (`make test` installs it; or apt-get install redis-server)")
    sock = os.path.join(folder, "redis.sock")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + timeout
        while not (os.path.exists(sock) and _pings(url)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start within {timeout} s (exit code {proc.poll()})")
            time.sleep(0.02)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _pings(url: str) -> bool:
    try:
        with Redis.from_url(url) as client:
            return bool(client.ping())
    except RedisError:
        return False
