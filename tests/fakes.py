"""HTTP fakes of CometChat's REST API (pytest-httpserver) that record exactly what the bot sent.

* :class:`NumberingCometChat` answers every ``/v3/...`` request with success
  and a new message id (so later edits and submissions can refer to it);
  ``refuse`` answers chosen texts with an error instead.
* :class:`GatedCometChat` is a threaded fake for tests whose app runs in other
  processes. Requests wait at a gate while it is closed; only those that
  arrived while it was open count as delivered (a request that waited is
  answered 503 once the gate opens: its client was killed meanwhile, or will
  retry it), unless ``keep_held``: then CometChat took what arrived and only
  its answer waits (the case of a reply sent again after a crash).
  ``status_for`` answers chosen texts with an error, ``answer_lost_for``
  takes them and answers 504 once. It lists what it took as CometChat's List
  Messages does, for the lookup of replies that may have gone out already.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bot.factory import bot_app
from bot.message import conversation_id
from tests.conftest import API_KEY, BOT_UID


@dataclass(frozen=True)
class Call:
    """One request that reached the fake, and the id its answer gave (None if it created no message)."""

    method: str
    path: str  # as sent on the wire (percent-encoding kept)
    headers: dict[str, str]  # by lower-case name
    raw: bytes
    status: int
    answer_id: str | None

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    @property
    def text(self) -> str | None:
        body = self.body
        return body["data"].get("text") if isinstance(body, dict) and "data" in body else None


class NumberingCometChat:
    """Answers every ``/v3/...`` request with success and a new message id (9100, 9101, ...); ``refuse`` answers
    chosen texts with an error instead (as CometChat refuses a reply to a group the bot is not in)."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self._ids = itertools.count(9100)
        self._lock = threading.Lock()
        self.refuse: dict[str, tuple[int, dict]] = {}  # text -> (status, error body)
        server.expect_request(re.compile(r"^/v3/")).respond_with_handler(self._answer)

    def _answer(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        text = body.get("data", {}).get("text") if isinstance(body, dict) else None
        if text in self.refuse:
            status, error = self.refuse[text]
            return Response(json.dumps(error), status=status, content_type="application/json")
        with self._lock:
            message_id = str(next(self._ids))
        data = {**body, "id": message_id} if isinstance(body, dict) else {"id": message_id}
        return Response(json.dumps({"data": data}), content_type="application/json")

    def calls(self, app: Flask) -> list[Call]:
        """Every request so far, in the order they arrived, once the app has nothing left to do."""
        assert bot_app(app).wait_idle(5), "the bot did not finish in time"
        calls = []
        for request, response in self.server.log:
            answer = json.loads(response.get_data() or b"null")
            data = answer.get("data") if isinstance(answer, dict) else None
            calls.append(
                Call(
                    request.method,
                    request.environ.get("RAW_URI", request.path).split("?")[0],
                    {name.lower(): value for name, value in request.headers.items()},
                    request.get_data(),
                    response.status_code,
                    data.get("id") if isinstance(data, dict) else None,
                )
            )
        return calls


class GatedCometChat:
    def __init__(self, *, open_gate: bool = True, keep_held: bool = False) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.lock = threading.Lock()
        self.delivered: list[dict] = []  # the bodies of the replies taken
        self.messages: list[dict] = []  # the messages they created
        self.attempts = 0
        self.held = 0  # with keep_held: replies taken while the gate was closed
        self.lookups: list[dict[str, str]] = []  # the query of each List Messages call
        self.arrived = threading.Event()  # set by the first request
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.keep_held = keep_held
        self.status_for: dict[str, tuple[int, str]] = {}  # text -> (status, error code)
        self.answer_lost_for: set[str] = set()  # texts taken, then answered 504 once (a gateway gave up waiting)
        self.server.expect_request(f"/v3/bots/{BOT_UID}/messages", method="POST").respond_with_handler(self.handle)
        self.server.expect_request("/v3/messages", method="GET").respond_with_handler(self.list_messages)

    def __enter__(self) -> GatedCometChat:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.clear()
        self.server.stop()

    def handle(self, request: Request) -> Response:
        assert request.headers["apikey"] == API_KEY
        body = request.get_json()
        with self.lock:
            self.attempts += 1
        self.arrived.set()
        arrived_open = self.gate.is_set()
        if not arrived_open and self.keep_held:
            message = self._deliver(body)
            with self.lock:
                self.held += 1
        self.gate.wait(30)
        if not arrived_open:
            if self.keep_held:
                return Response(json.dumps({"data": message}), content_type="application/json")
            return Response('{"error": {"code": "ERR_MISSION_FAILED"}}', status=503, content_type="application/json")
        text = body["data"].get("text", "")
        if text in self.status_for:
            status, code = self.status_for[text]
            return Response(f'{{"error": {{"code": "{code}"}}}}', status=status, content_type="application/json")
        message = self._deliver(body)
        if text in self.answer_lost_for:
            self.answer_lost_for.discard(text)
            return Response("<html>504 Gateway Time-out</html>", status=504)
        return Response(json.dumps({"data": message}), content_type="application/json")

    def _deliver(self, body: dict) -> dict:
        """Take a reply: the message CometChat would create and list."""
        with self.lock:
            self.delivered.append(body)
            conversation = conversation_id(BOT_UID, body["receiver"], body["receiverType"])
            message = {**body, "id": str(len(self.delivered)), "sender": BOT_UID, "conversationId": conversation}
            self.messages.append(message)
            return message

    def list_messages(self, request: Request) -> Response:
        """List Messages, filtered by ``conversationId`` (the only filter the lookup's answer depends on here)."""
        assert request.headers["apikey"] == API_KEY
        query = dict(request.args)
        with self.lock:
            self.lookups.append(query)
            listed = [m for m in self.messages if m["conversationId"] == query.get("conversationId")]
        return Response(json.dumps({"data": listed}), content_type="application/json")

    def texts(self) -> list[str]:
        with self.lock:
            return [body["data"]["text"] for body in self.delivered]
