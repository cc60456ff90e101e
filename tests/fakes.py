"""HTTP fakes of CometChat's REST API (pytest-httpserver) that record exactly what the bot sent.

* :class:`NumberingCometChat` answers every ``/v3/...`` request with success
  and a new message id (so later edits and submissions can refer to it);
  ``refuse`` answers chosen texts with an error instead.
* :class:`GatedCometChat` is a threaded fake for tests whose app runs in other
  processes. Requests wait at a gate while it is closed; only those that
  arrived while it was open count as delivered (a request that waited is
  answered 503 once the gate opens: its client was killed meanwhile, or will
  retry it). ``status_for`` answers chosen texts with an error.
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
    def __init__(self, *, open_gate: bool = True) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.lock = threading.Lock()
        self.delivered: list[dict] = []
        self.attempts = 0
        self.arrived = threading.Event()  # set by the first request
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.status_for: dict[str, tuple[int, str]] = {}  # text -> (status, error code)
        self.server.expect_request(f"/v3/bots/{BOT_UID}/messages", method="POST").respond_with_handler(self.handle)

    def __enter__(self) -> GatedCometChat:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.clear()
        self.server.stop()

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.attempts += 1
        self.arrived.set()
        arrived_open = self.gate.is_set()
        self.gate.wait(30)
        if not arrived_open:
            return Response('{"error": {"code": "ERR_MISSION_FAILED"}}', status=503, content_type="application/json")
        body = request.get_json()
        if body["data"].get("text", "") in self.status_for:
            status, code = self.status_for[body["data"]["text"]]
            return Response(f'{{"error": {{"code": "{code}"}}}}', status=status, content_type="application/json")
        assert request.headers["apikey"] == API_KEY
        with self.lock:
            self.delivered.append(body)
        return Response('{"data": {"id": "1"}}', content_type="application/json")

    def texts(self) -> list[str]:
        with self.lock:
            return [body["data"]["text"] for body in self.delivered]
