"""A threaded fake of CometChat's Send Bot Message API for tests whose app runs in other processes.

Requests wait at a gate while it is closed; only those that arrived while it
was open count as delivered (a request that waited is answered 503 once the
gate opens: its client was killed meanwhile, or will retry it). ``status_for``
answers chosen texts with an error.
"""

from __future__ import annotations

import threading

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import API_KEY, BOT_UID


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
