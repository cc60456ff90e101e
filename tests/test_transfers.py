"""CometChatClient.start and bot/transfers.py: requests in flight together, answered on the transfer thread.

``start(request, done)`` is the non-blocking twin of ``attempt(request)``: the same HTTP request, and ``done``
gets what ``attempt`` would return (``done(data, None)``) or raise (``done(None, error)``). Every wait here is
bounded (``Outcomes.wait``, ``wait_for``); nothing sleeps in the hope that another thread got somewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bot import Text, api, http, transfers
from bot.api import SendRequest
from bot.client import CometChatClient
from bot.errors import CometChatError, NotFound, RateLimited, ServerError, TransportError
from bot.http import Origin, request_bytes
from bot.replies import build_requests
from bot.testing import make_message
from bot.transfers import Exchange, Transfers
from tests.conftest import API_KEY, BOT_UID
from tests.helpers import wait_for
from tests.test_client import BODY, ERROR_SAMPLES, SEND_PATH, closed_port, send_request

# ------------------------------------------------------------------ fixtures and helpers


class Outcomes:
    """A ``done`` that records each call (data, error, thread); ``wait(n)`` waits, bounded, for ``n`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, CometChatError | None, threading.Thread]] = []
        self._changed = threading.Condition()

    def __call__(self, data: Any, error: CometChatError | None) -> None:
        with self._changed:
            self.calls.append((data, error, threading.current_thread()))
            self._changed.notify_all()

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[tuple[Any, CometChatError | None, threading.Thread]]:
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.calls) >= count, timeout)
            assert arrived, f"done was called {len(self.calls)} times in {timeout}s, expected {count}"
            return list(self.calls)


@pytest.fixture(scope="module")
def threaded_server():
    """A threaded fake API (the default ``httpserver`` answers one request at a time), for the whole module:
    stopping a werkzeug server takes up to half a second."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def threaded(threaded_server: HTTPServer) -> HTTPServer:
    threaded_server.clear()
    return threaded_server


@pytest.fixture
def stalled(threaded: HTTPServer) -> Iterator[threading.Event]:
    """The threaded fake holds every message post until the test ends (``GET /bots/{uid}``, which
    :func:`the_transfer_thread` uses, is answered at once); yields the event set when a post arrived."""
    arrived, release = threading.Event(), threading.Event()

    def stall(request: Request) -> Response:
        arrived.set()
        release.wait(5)
        return Response('{"data": {"id": "1"}}', content_type="application/json")

    threaded.expect_request(f"/v3/bots/{BOT_UID}").respond_with_json({"data": {"uid": BOT_UID}})
    threaded.expect_request(SEND_PATH).respond_with_handler(stall)
    yield arrived
    release.set()


def outcome(client: CometChatClient, request: SendRequest) -> tuple[Any, CometChatError | None]:
    """start(request) and wait for its single done call: (data, error)."""
    outcomes = Outcomes()
    client.start(request, outcomes)
    [(data, error, _)] = outcomes.wait()
    return data, error


def the_transfer_thread(client: CometChatClient) -> threading.Thread:
    """The thread that calls this client's ``done`` callbacks (found by running one request)."""
    outcomes = Outcomes()
    client.start(api.get_bot(BOT_UID), outcomes)
    [(*_, thread)] = outcomes.wait()
    return thread


class RawServer:
    """A small HTTP/1.1 server on a free port: answers the requests in turn with ``answers``, byte for byte, and
    keeps each connection open for more; ``connections`` counts the connections it accepted. An answer of
    ``None`` closes the connection instead (after reading the request); ``close_after`` closes each
    connection after that many answers; ``tls`` serves HTTPS with that context."""

    def __init__(self, *answers: bytes | None, close_after: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests = 0
        self._close_after = close_after
        self._tls = tls
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(5)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with self._listener:
            while self.answers:
                try:
                    connection, _ = self._listener.accept()
                except OSError:  # nobody came in 5 s
                    return
                with self._lock:
                    self.connections += 1
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        if self._tls is not None:
            connection.settimeout(5)
            try:
                connection = self._tls.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate
                connection.close()
                return
        with connection:
            connection.settimeout(5)
            received = b""
            answered = 0
            while True:
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return  # the client closed the connection
                    received += chunk
                head, _, received = received.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                while len(received) < length:
                    received += connection.recv(65536)
                received = received[length:]
                with self._lock:
                    self.requests += 1
                    answer = self.answers.pop(0)
                if answer is None:
                    return
                connection.sendall(answer)
                answered += 1
                if answered == self._close_after:
                    return


def same_error(left: CometChatError, right: CometChatError) -> bool:
    fields = ("status", "code", "message", "retryable", "retry_after")
    return type(left) is type(right) and all(getattr(left, f) == getattr(right, f) for f in fields)


# ------------------------------------------------------------------ the request and its answer


@pytest.mark.parametrize("kind", ["reply", "edit"])
def test_start_sends_the_same_request_as_attempt(kind, client, httpserver, api_answer):
    status, _, answer = api_answer("send_ok_200")
    if kind == "reply":
        [request] = build_requests(make_message("hi", bot=BOT_UID), [Text("hé ✓ <b>")], bot_uid=BOT_UID)
    else:
        request = api.edit_message(BOT_UID, "9031", text="fixed ✓")
    httpserver.expect_request(f"/v3{request.path}", method=request.method).respond_with_json(answer, status=status)

    attempted = client.attempt(request)
    data, error = outcome(client, request)

    assert error is None
    assert data == attempted == answer["data"]  # the created message, unwrapped from "data"
    [(blocking, _), (started, _)] = httpserver.log
    assert (
        (started.method, started.url)
        == (blocking.method, blocking.url)
        == (request.method, f"{httpserver.url_for('/v3')}{request.path}")
    )
    for name in ("apikey", "Content-Type", "Accept", "User-Agent", "onBehalfOf", "Content-Length"):
        assert started.headers.get(name) == blocking.headers.get(name), name
    assert started.headers["apikey"] == API_KEY
    assert "Expect" not in started.headers
    assert started.get_data() == blocking.get_data()
    assert json.loads(started.get_data()) == request.body


def test_a_get_after_a_post_on_a_reused_handle_sends_no_body(client, httpserver):
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_json({"data": {"id": "1"}})
    httpserver.expect_ordered_request(f"/v3/bots/{BOT_UID}", method="GET").respond_with_json({"data": {"uid": BOT_UID}})

    assert outcome(client, send_request()) == ({"id": "1"}, None)
    assert outcome(client, api.get_bot(BOT_UID)) == ({"uid": BOT_UID}, None)

    get = httpserver.log[1][0]
    assert get.method == "GET" and get.get_data() == b""  # the handle forgot the previous POST body
    assert get.headers["apikey"] == API_KEY


def test_a_request_with_an_unresolved_ref_is_refused_at_once(client, httpserver):
    outcomes = Outcomes()
    request = api.edit_message(BOT_UID, text="done", ref="m-1")  # {ref}: the id of reply m-1, not known yet
    with pytest.raises(ValueError, match="m-1"):
        client.start(request, outcomes)
    assert client.in_flight == 0
    assert httpserver.log == [] and outcomes.calls == []


# ------------------------------------------------------------------ concurrency


def test_many_requests_are_in_flight_at_once(make_client, threaded):
    """The fake answers none of the 40 requests before all 40 have arrived: they must be in flight together."""
    count = 40
    everyone_arrived = threading.Barrier(count, timeout=5)

    def handler(request: Request) -> Response:
        everyone_arrived.wait()  # BrokenBarrierError (a 500) unless all 40 are in flight together
        text = request.get_json()["data"]["text"]
        return Response(json.dumps({"data": {"id": f"id-{text}"}}), content_type="application/json")

    threaded.expect_request(SEND_PATH, method="POST").respond_with_handler(handler)
    client = make_client(base_url=threaded.url_for("/v3"))
    outcomes = Outcomes()
    caller = threading.current_thread()

    for n in range(count):
        client.start(send_request({**BODY, "data": {"text": str(n)}}), outcomes)
    assert client.in_flight == count  # none can have been answered yet

    calls = outcomes.wait(count)
    assert [error for _, error, _ in calls] == [None] * count
    assert sorted(data["id"] for data, _, _ in calls) == sorted(f"id-{n}" for n in range(count))
    assert client.in_flight == 0
    assert len(threaded.log) == count
    assert caller not in {thread for *_, thread in calls}


def test_done_is_called_on_one_transfer_thread_not_the_callers(client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    outcomes = Outcomes()
    for _ in range(5):
        client.start(send_request(), outcomes)

    threads = {thread for *_, thread in outcomes.wait(5)}

    assert len(threads) == 1
    [thread] = threads
    assert thread is not threading.current_thread()
    assert thread.name == "bot-transfers" and thread.daemon
    if hasattr(os, "SCHED_BATCH"):  # bot/threads.py: waking it must not preempt a request thread
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH


def test_in_flight_counts_the_requests_started_and_not_answered(make_client, threaded):
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def stall(request: Request) -> Response:
        arrived.release()
        release.wait(5)
        return Response('{"data": {"id": "1"}}', content_type="application/json")

    threaded.expect_request(SEND_PATH).respond_with_handler(stall)
    client = make_client(base_url=threaded.url_for("/v3"))
    outcomes = Outcomes()
    try:
        for _ in range(3):
            client.start(send_request(), outcomes)
        assert all(arrived.acquire(timeout=5) for _ in range(3))  # all three are at the server, unanswered
        assert client.in_flight == 3 and outcomes.calls == []
    finally:
        release.set()
    outcomes.wait(3)
    assert client.in_flight == 0


OK_ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{"data": {"id": "1"}}'


def test_sequential_requests_reuse_one_keep_alive_connection(client):
    server = RawServer(OK_ANSWER, OK_ANSWER, OK_ANSWER)  # werkzeug (pytest-httpserver) closes every connection
    client.base_url = f"http://127.0.0.1:{server.port}/v3"

    for _ in range(3):
        assert outcome(client, send_request()) == ({"id": "1"}, None)

    assert server.connections == 1  # each exchange's connection went back to the pool and was reused


def test_an_idle_connection_the_server_closed_is_not_reused(client):
    server = RawServer(OK_ANSWER, OK_ANSWER, close_after=1)  # closes each connection after its answer
    client.base_url = f"http://127.0.0.1:{server.port}/v3"
    assert outcome(client, send_request()) == ({"id": "1"}, None)
    assert outcome(client, send_request()) == ({"id": "1"}, None)
    assert (server.connections, server.requests) == (2, 2)


def test_a_request_on_a_kept_connection_that_dies_unanswered_is_sent_once_more(client):
    """The server closed a kept connection as the next request went out on it: that one goes again, on a new
    connection (it never reached a handler)."""
    server = RawServer(OK_ANSWER, None, OK_ANSWER)
    client.base_url = f"http://127.0.0.1:{server.port}/v3"
    assert outcome(client, send_request()) == ({"id": "1"}, None)
    assert outcome(client, send_request()) == ({"id": "1"}, None)
    assert (server.connections, server.requests) == (2, 3)


def test_a_request_that_dies_unanswered_twice_is_a_transport_error(client):
    server = RawServer(OK_ANSWER, None, None)
    client.base_url = f"http://127.0.0.1:{server.port}/v3"
    assert outcome(client, send_request()) == ({"id": "1"}, None)
    data, error = outcome(client, send_request())
    assert data is None and type(error) is TransportError and "closed the connection" in str(error)
    assert error.in_doubt  # it had gone out in full: the server may have carried it out
    assert client.in_flight == 0


def test_a_chunked_answer_reaches_done_whole():
    server = RawServer(
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'9\r\n{"data": \r\nb\r\n{"id": "9"}\r\n1\r\n}\r\n0\r\n\r\n'
    )
    client = CometChatClient(f"http://127.0.0.1:{server.port}/v3", API_KEY)
    try:
        assert outcome(client, send_request()) == ({"id": "9"}, None)
    finally:
        client.close()


def test_exchanges_beyond_the_connection_limit_wait_for_a_free_one():
    server = RawServer(*[OK_ANSWER] * 6)
    origin = Origin("http", "127.0.0.1", server.port)
    transfers = Transfers(max_connections=2)
    outcomes = Outcomes()
    try:
        for _ in range(6):
            transfers.start(Exchange(origin, request_bytes("GET", "/v3/x", origin, b"", None)), outcomes)
        calls = outcomes.wait(6)
    finally:
        transfers.close()
    assert [(response.status, error) for response, error, _ in calls] == [(200, None)] * 6
    assert server.connections == 2 and transfers.in_flight == 0


def test_a_name_that_does_not_resolve_is_a_transport_error(make_client):
    client = make_client(base_url="http://nonexistent.invalid/v3")
    data, error = outcome(client, send_request())
    assert data is None and type(error) is TransportError and "nonexistent.invalid" in str(error)
    assert client.in_flight == 0


def test_a_blocking_request_from_the_transfer_thread_itself_is_refused(client, httpserver):
    """It would wait for the very thread that is waiting."""
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    refused: list[Exception] = []

    def done(data: Any, error: CometChatError | None) -> None:
        try:
            client.attempt(send_request())
        except RuntimeError as exc:
            refused.append(exc)

    client.start(send_request(), done)
    assert wait_for(lambda: refused, 5)
    assert "transfer thread" in str(refused[0])


# ------------------------------------------------------------------ HTTPS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, name: str, *answers: bytes) -> RawServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return RawServer(*answers, tls=context)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_is_verified_and_its_connection_kept(ca):
    server = tls_server(ca, "localhost", OK_ANSWER, OK_ANSWER, OK_ANSWER)
    client = CometChatClient(f"https://localhost:{server.port}/v3", API_KEY, ssl_context=trusting(ca))
    try:
        assert [outcome(client, send_request()) for _ in range(2)] == [({"id": "1"}, None)] * 2
        assert client.attempt(send_request()) == {"id": "1"}  # blocking calls go the same way
    finally:
        client.close()
    assert (server.connections, server.requests) == (1, 3)


@pytest.mark.parametrize("problem", ["another-name", "unknown-ca"])
def test_a_certificate_that_does_not_check_out_is_a_transport_error(problem, ca):
    server = tls_server(ca, "elsewhere.example" if problem == "another-name" else "localhost", OK_ANSWER)
    trust = trusting(ca) if problem == "another-name" else trusting(trustme.CA())
    client = CometChatClient(f"https://localhost:{server.port}/v3", API_KEY, ssl_context=trust)
    try:
        data, error = outcome(client, send_request())
    finally:
        client.close()
    assert data is None and type(error) is TransportError and "TLS" in str(error)
    assert server.requests == 0


# ------------------------------------------------------------------ errors, as attempt() raises them


@pytest.mark.parametrize("sample", list(ERROR_SAMPLES))
def test_each_error_answer_reaches_done_as_attempt_raises_it(sample, client, httpserver, api_answer):
    status, headers, body = api_answer(sample)
    httpserver.expect_request(SEND_PATH, method="POST").respond_with_json(body, status=status, headers=headers)
    with pytest.raises(CometChatError) as raised:
        client.attempt(send_request())

    data, error = outcome(client, send_request())

    assert data is None
    assert same_error(error, raised.value), (error, raised.value)
    expected_status, error_class, code, retryable = ERROR_SAMPLES[sample]
    assert type(error) is error_class
    assert (error.status, error.code, error.retryable) == (expected_status, code, retryable)


def test_a_429_is_rate_limited_with_its_retry_after(client, httpserver, api_answer):
    _, _, body = api_answer("rate_limited_429")
    httpserver.expect_request(SEND_PATH).respond_with_json(body, 429, {"Retry-After": "7"})
    data, error = outcome(client, send_request())
    assert data is None
    assert type(error) is RateLimited
    assert (error.status, error.code, error.retry_after, error.retryable) == (429, "ERR_TOO_MANY_REQUESTS", 7.0, True)


def test_a_500_is_a_server_error(client, httpserver, api_answer):
    status, _, body = api_answer("server_error_500")
    httpserver.expect_request(SEND_PATH).respond_with_json(body, status)
    _, error = outcome(client, send_request())
    assert type(error) is ServerError
    assert (error.status, error.code, error.retryable, error.retry_after) == (500, "ERR_MISSION_FAILED", True, None)


def test_a_404_is_not_found_with_cometchats_code(client, httpserver, api_answer):
    status, _, body = api_answer("uid_not_found_404")
    httpserver.expect_request(SEND_PATH).respond_with_json(body, status)
    _, error = outcome(client, send_request())
    assert type(error) is NotFound
    assert (error.status, error.code, error.retryable) == (404, "ERR_UID_NOT_FOUND", False)
    assert error.message == body["error"]["message"]


def test_an_error_page_that_is_not_json_is_still_typed(client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_response(Response("<html>oops</html>", status=502))
    _, error = outcome(client, send_request())
    assert type(error) is ServerError and (error.status, error.code, error.in_doubt) == (502, "HTTP_502", False)


def test_a_gateway_timeout_leaves_the_request_in_doubt(client, httpserver):
    """A gateway that stopped waiting says nothing of what CometChat did: the reply is looked up before a retry."""
    httpserver.expect_request(SEND_PATH).respond_with_response(Response("<html>timeout</html>", status=504))
    _, error = outcome(client, send_request())
    assert type(error) is ServerError and (error.status, error.retryable, error.in_doubt) == (504, True, True)


def test_connection_refused_is_a_transport_error_and_the_next_request_works(make_client, httpserver):
    client = make_client(base_url=f"http://127.0.0.1:{closed_port()}/v3")
    data, error = outcome(client, send_request())
    assert data is None and type(error) is TransportError
    assert (error.status, error.code, error.retryable, error.in_doubt) == (0, "ERR_TRANSPORT", True, False)
    assert client.in_flight == 0

    client.base_url = httpserver.url_for("/v3")
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "2"}})
    assert outcome(client, send_request()) == ({"id": "2"}, None)
    assert client.in_flight == 0


def test_a_timeout_is_a_transport_error(make_client, threaded):
    release = threading.Event()

    def stall(request: Request) -> Response:
        release.wait(5)
        return Response("{}", 200)

    threaded.expect_request(SEND_PATH).respond_with_handler(stall)
    client = make_client(base_url=threaded.url_for("/v3"), timeout=0.2)
    try:
        data, error = outcome(client, send_request())  # bounded: answered when the client gives up, not the server
    finally:
        release.set()
    assert data is None and type(error) is TransportError and error.retryable and error.in_doubt
    assert "within 0.2 s (timed out)" in str(error)
    assert client.in_flight == 0


def test_a_failing_done_is_logged_and_the_loop_goes_on(client, httpserver, caplog):
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    called = threading.Event()

    def broken(data: Any, error: CometChatError | None) -> None:
        called.set()
        raise RuntimeError("bug in a completion")

    with caplog.at_level(logging.ERROR, logger="bot.transfers"):
        client.start(send_request(), broken)
        assert called.wait(5)
        assert outcome(client, send_request()) == ({"id": "1"}, None)  # the loop survived
    # Only the transfer's records: a fake server's thread may log an error meanwhile (the stalled request of the
    # test above, answered to a client that gave up), seen once in CI-like runs.
    assert [r.getMessage() for r in caplog.records if r.name == "bot.transfers"] == ["transfer: its completion raised"]
    assert client.in_flight == 0


# ------------------------------------------------------------------ response headers: read only for errors


def test_a_success_with_odd_headers_still_works(client, monkeypatch):
    parsed: list[dict[str, str]] = []
    parse = http._parse_headers

    def spy(head: bytes) -> dict[str, str]:
        parsed.append(parse(head))
        return parsed[-1]

    monkeypatch.setattr(http, "_parse_headers", spy)
    body = b'{"data": {"id": "7"}}'
    server = RawServer(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Binary: \xff\xfe\xe9\r\n"
        b"Retry-After: whenever\r\n: nameless\r\nX-Empty:\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    client.base_url = f"http://127.0.0.1:{server.port}/v3"
    assert outcome(client, send_request()) == ({"id": "7"}, None)
    assert len(parsed) == 1  # read once, for the framing (Content-Length); not again for the client
    assert parsed[0]["content-length"] == str(len(body)) and parsed[0]["x-empty"] == ""


def test_a_503_with_retry_after_carries_it(client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_json(
        {"error": {"code": "ERR_MISSION_FAILED"}}, 503, {"Retry-After": "4", "X-Odd": "é"}
    )
    _, error = outcome(client, send_request())
    assert type(error) is ServerError
    assert (error.status, error.code, error.retry_after) == (503, "ERR_MISSION_FAILED", 4.0)


@pytest.mark.parametrize(("final_headers", "expected"), [(b"Retry-After: 3\r\n", 3.0), (b"", None)])
def test_only_the_final_responses_headers_count(final_headers, expected, client):
    """An interim "100 Continue" has headers of its own: they are not the error's."""
    body = b'{"error": {"code": "ERR_MISSION_FAILED"}}'
    server = RawServer(
        b"HTTP/1.1 100 Continue\r\nRetry-After: 99\r\n\r\n"
        b"HTTP/1.1 503 Service Unavailable\r\n%sContent-Length: %d\r\n\r\n%s" % (final_headers, len(body), body)
    )
    client.base_url = f"http://127.0.0.1:{server.port}/v3"
    _, error = outcome(client, send_request())
    assert type(error) is ServerError and error.code == "ERR_MISSION_FAILED"
    assert error.retry_after == expected


# ------------------------------------------------------------------ closing


def test_close_ends_the_transfer_thread(make_client, httpserver):
    httpserver.expect_request(f"/v3/bots/{BOT_UID}").respond_with_json({"data": {"uid": BOT_UID}})
    client = make_client()
    thread = the_transfer_thread(client)
    assert thread.name == "bot-transfers" and thread in threading.enumerate()

    client.close()

    assert wait_for(lambda: thread not in threading.enumerate(), 5), "the transfer thread outlived close()"


def test_close_abandons_the_exchanges_in_flight(make_client, threaded, stalled):
    """Documented: closing does not wait for, nor answer, what is in flight."""
    client = make_client(base_url=threaded.url_for("/v3"))
    thread = the_transfer_thread(client)
    outcomes = Outcomes()
    client.start(send_request(), outcomes)
    assert stalled.wait(5)
    client.close()
    assert wait_for(lambda: not thread.is_alive(), 5)
    assert outcomes.calls == []  # its thread is gone: done can no longer be called


# ------------------------------------------------------------------ a process with many open files


@contextlib.contextmanager
def many_open_files() -> Iterator[None]:
    """Occupy the file descriptors below 1100, as a busy worker does (its clients' sockets, logs, Redis...):
    what is opened next gets a number above select()'s FD_SETSIZE (1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        if hard != resource.RLIM_INFINITY and hard < 1400:
            pytest.skip(f"the file descriptor limit ({hard}) is too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1400, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_process_with_many_open_files_still_gets_its_answers(make_client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    client = make_client()
    outcomes = Outcomes()
    with many_open_files():
        before = set(threading.enumerate())
        client.start(send_request(), outcomes)  # the transfer thread and its wake pipe start now, above 1024
        [thread] = [t for t in threading.enumerate() if t not in before and t.name == "bot-transfers"]
        # Bounded, and quick either way: the answer comes in milliseconds, or the loop thread dies at once.
        wait_for(lambda: outcomes.calls or not thread.is_alive(), 5)
        client.close()
    assert [(data, error) for data, error, _ in outcomes.calls] == [({"id": "1"}, None)]


def test_connections_above_descriptor_1024_are_answered(make_client, threaded):
    threaded.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    client = make_client(base_url=threaded.url_for("/v3"), timeout=0.25)  # a working loop answers in milliseconds
    assert outcome(client, send_request()) == ({"id": "1"}, None)  # the loop and its wake pipe start below 1024
    with many_open_files():
        # The fake closes every connection: each of these gets a new socket, numbered above 1024.
        outcomes = [outcome(client, send_request()) for _ in range(2)]
    assert outcomes == [({"id": "1"}, None)] * 2


def test_a_failed_loop_fails_its_exchanges_and_the_next_request_gets_a_new_loop(
    make_client, threaded, stalled, monkeypatch, caplog
):
    """A bug in the loop must not leave requests waiting forever: theirs fail as transport errors (the pipeline
    retries those), and the client starts a new loop for what comes next."""
    client = make_client(base_url=threaded.url_for("/v3"))
    first = the_transfer_thread(client)
    outcomes = Outcomes()
    client.start(send_request(), outcomes)
    assert stalled.wait(5)
    wait_and_act = transfers._Loop._wait_and_act

    def fail_once(loop):
        monkeypatch.setattr(transfers._Loop, "_wait_and_act", wait_and_act)
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(transfers._Loop, "_wait_and_act", fail_once)
    client.start(api.get_bot(BOT_UID), Outcomes())  # wakes the loop, which then fails
    [(data, error, _)] = outcomes.wait()
    assert data is None and isinstance(error, TransportError) and "a bug in the loop" in str(error)
    assert "transfer loop failed" in caplog.text
    assert wait_for(lambda: not first.is_alive())
    assert the_transfer_thread(client) is not first  # a new loop, and it works
    assert client.in_flight == 0
