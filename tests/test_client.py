"""CometChatClient against an HTTP fake (pytest-httpserver): the exact request, typed errors, retries, no secret leaks.

Retries that would wait (backoff, ``Retry-After``) go through an injected ``sleep`` that records the waits, so
the tests can assert the exact wait without spending it; one test spends a short real ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from email.utils import formatdate

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from bot import Text
from bot.api import SendRequest
from bot.client import CometChatClient, LocalSender, RetryPolicy, already_delivered, find_delivered
from bot.errors import (
    AuthenticationError,
    BadRequest,
    CometChatError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from bot.message import Target
from bot.replies import build_requests
from bot.settings import Settings
from bot.testing import make_message
from tests.conftest import API_KEY, BOT_UID, DATA

SEND_PATH = f"/v3/bots/{BOT_UID}/messages"
BODY = {"receiver": "alice", "receiverType": "user", "category": "message", "type": "text", "data": {"text": "hé"}}

#: Every sample answer of the send API: (HTTP status, exception class, CometChat error code, retried?).
ERROR_SAMPLES = {
    "bad_apikey_401": (401, AuthenticationError, "AUTH_ERR_APIKEY_NOT_FOUND", False),
    "empty_text_400": (400, BadRequest, "ERR_EMPTY_MESSAGE_TEXT", False),
    "not_a_member_403": (403, Forbidden, "ERR_NOT_A_MEMBER", False),
    "uid_not_found_404": (404, NotFound, "ERR_UID_NOT_FOUND", False),
    "bot_not_found_404": (404, NotFound, "ERR_BOT_NOT_FOUND", False),
    "rate_limited_429": (429, RateLimited, "ERR_TOO_MANY_REQUESTS", True),
    "server_error_500": (500, ServerError, "ERR_MISSION_FAILED", True),
}
NOT_RETRIED = [name for name, (*_, retried) in ERROR_SAMPLES.items() if not retried]


# ------------------------------------------------------------------ fixtures and helpers


def send_request(body: dict | None = None) -> SendRequest:
    return SendRequest(
        f"/bots/{BOT_UID}/messages", {**(body or BODY), "muid": "m-1"}, "9031", "alice_user_helpdesk-bot"
    )


def respond_with_sample(server: HTTPServer, api_answer, name: str, *, ordered: bool = False) -> None:
    status, headers, body = api_answer(name)
    expect = server.expect_ordered_request if ordered else server.expect_request
    expect(SEND_PATH, method="POST").respond_with_json(body, status=status, headers=headers)


def closed_port() -> int:
    """A local port nobody listens on (bound to port 0, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the request


def test_posts_exactly_the_documented_request(client, httpserver, api_answer):
    status, _, answer = api_answer("send_ok_200")
    httpserver.expect_request(SEND_PATH, method="POST").respond_with_json(answer, status=status)
    [request] = build_requests(make_message("hi", bot=BOT_UID), [Text("hé ✓ <b>")], bot_uid=BOT_UID)

    created = client.send(request)

    assert created == answer["data"]  # the created message, unwrapped from "data"
    [(sent, _)] = httpserver.log
    assert sent.method == "POST"
    assert sent.url == httpserver.url_for(SEND_PATH)
    assert sent.headers["apikey"] == API_KEY
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Accept"] == "application/json"
    assert "Expect" not in sent.headers  # no "100 Continue" round trip before the body
    body = json.loads(sent.get_data())
    assert body == {
        "receiver": "alice",
        "receiverType": "user",
        "category": "message",
        "type": "text",
        "data": {"text": "hé ✓ <b>", "metadata": {"@bot": BOT_UID}},
        "muid": request.muid,
    }
    assert sent.get_data().decode("utf-8") == json.dumps(body, ensure_ascii=False, separators=(",", ":"))  # UTF-8


def test_attempt_is_one_try(client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500")
    with pytest.raises(ServerError):
        client.attempt(send_request())
    assert len(httpserver.log) == 1 and sleeps == []


def test_from_settings_uses_the_api_url_key_and_retry_settings(httpserver, api_answer):
    settings = Settings(
        api_key=API_KEY,
        bot_uid=BOT_UID,
        api_url=httpserver.url_for("/v3") + "/",
        callback_username="u",
        callback_password="p",
        max_retries=1,
        max_retry_wait=0.5,
    )
    waits: list[float] = []
    client = CometChatClient.from_settings(settings, sleep=waits.append)
    respond_with_sample(httpserver, api_answer, "rate_limited_429")  # Retry-After: 15, capped at 0.5
    try:
        with pytest.raises(RateLimited):
            client.send(send_request())
    finally:
        client.close()
    assert httpserver.log[0][0].path == SEND_PATH and httpserver.log[0][0].headers["apikey"] == API_KEY
    assert len(httpserver.log) == 2  # one retry
    assert len(waits) == 1 and 0.5 <= waits[0] <= 0.6


def test_success_without_a_data_envelope_is_returned_as_is(client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_json({"id": "1"})
    assert client.attempt(send_request()) == {"id": "1"}


# ------------------------------------------------------------------ errors


def test_the_error_table_covers_every_sample_answer():
    samples = {path.stem for path in (DATA / "api").glob("*.json")}
    assert samples == set(ERROR_SAMPLES) | {"send_ok_200"}


@pytest.mark.parametrize(("sample", "expected"), ERROR_SAMPLES.items(), ids=list(ERROR_SAMPLES))
def test_each_error_answer_is_a_typed_error_with_cometchats_code(sample, expected, client, httpserver, api_answer):
    status, error_class, code, retryable = expected
    respond_with_sample(httpserver, api_answer, sample)
    with pytest.raises(CometChatError) as caught:
        client.attempt(send_request())
    error = caught.value
    assert type(error) is error_class
    assert (error.status, error.code, error.retryable) == (status, code, retryable)
    assert error.message == api_answer(sample)[2]["error"]["message"]
    assert code in str(error) and str(status) in str(error)


@pytest.mark.parametrize("sample", NOT_RETRIED)
def test_client_errors_are_never_retried(sample, client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, sample)
    with pytest.raises(CometChatError) as caught:
        client.send(send_request())
    assert caught.value.code == ERROR_SAMPLES[sample][2]
    assert len(httpserver.log) == 1  # one attempt only
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [(502, ServerError, True), (503, ServerError, True), (409, CometChatError, False), (422, CometChatError, False)],
)
def test_an_error_page_that_is_not_json_still_gives_a_typed_error(status, error_class, retryable, client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_response(Response("<html>oops</html>", status=status))
    with pytest.raises(CometChatError) as caught:
        client.attempt(send_request())
    assert type(caught.value) is error_class
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (status, f"HTTP_{status}", retryable)


# ------------------------------------------------------------------ retries


def test_429_waits_for_retry_after_then_succeeds(client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "rate_limited_429", ordered=True)
    respond_with_sample(httpserver, api_answer, "send_ok_200", ordered=True)
    assert client.send(send_request()) == api_answer("send_ok_200")[2]["data"]
    assert len(httpserver.log) == 2
    [wait] = sleeps
    assert 15 <= wait <= 15 + 0.1 * client.retry.base_delay  # the sample says Retry-After: 15 (plus a little jitter)


def test_429_really_waits_a_short_retry_after(make_client, httpserver):
    """Without an injected sleep: the second attempt comes no sooner than Retry-After."""
    arrivals: list[float] = []
    answers = iter(
        [
            Response(json.dumps({"error": {"code": "ERR_TOO_MANY_REQUESTS"}}), 429, {"Retry-After": "0.2"}),
            Response(json.dumps({"data": {"id": "1"}}), 200, content_type="application/json"),
        ]
    )

    def handler(request: Request) -> Response:
        arrivals.append(time.monotonic())
        return next(answers)

    httpserver.expect_request(SEND_PATH).respond_with_handler(handler)
    client = CometChatClient(httpserver.url_for("/v3"), API_KEY, retry=RetryPolicy(max_retries=2, base_delay=0.01))
    try:
        assert client.send(send_request()) == {"id": "1"}
    finally:
        client.close()
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (lambda now: {"Retry-After": "3"}, 3.0),
        (lambda now: {"Retry-After": formatdate(now + 8, usegmt=True)}, 7.5),  # an HTTP date
        (lambda now: {"X-Rate-Limit-Reset": str(int(now) + 8)}, 7.5),  # PLATFORM.md 4.5 spelling ...
        (lambda now: {"X-RateLimit-Reset": str(int(now) + 8)}, 7.5),  # ... and the newer one
        (lambda now: {"Retry-After": "-5"}, 0.0),
        (lambda now: {}, None),
    ],
    ids=["seconds", "http-date", "x-rate-limit-reset", "x-ratelimit-reset", "negative", "none"],
)
def test_429_wait_is_read_from_the_headers(headers, expected, client, httpserver):
    answer = {"error": {"code": "ERR_TOO_MANY_REQUESTS", "message": "slow down"}}
    httpserver.expect_request(SEND_PATH).respond_with_json(answer, 429, headers(time.time()))
    with pytest.raises(RateLimited) as caught:
        client.attempt(send_request())
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert expected - 1.5 <= caught.value.retry_after <= expected + 0.5


def test_a_huge_retry_after_is_capped(make_client, httpserver, sleeps):
    httpserver.expect_request(SEND_PATH).respond_with_json(
        {"error": {"code": "ERR_TOO_MANY_REQUESTS"}}, 429, {"Retry-After": "86400"}
    )
    client = make_client(max_retries=1, max_retry_after=2.0)
    with pytest.raises(RateLimited):
        client.send(send_request())
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 2.0 + 0.1 * client.retry.base_delay


def test_a_503_with_retry_after_waits_that_long(client, httpserver, sleeps):
    httpserver.expect_ordered_request(SEND_PATH).respond_with_json({"error": {}}, 503, {"Retry-After": "4"})
    httpserver.expect_ordered_request(SEND_PATH).respond_with_json({"data": {"id": "2"}})
    assert client.send(send_request()) == {"id": "2"}
    assert len(sleeps) == 1 and 4 <= sleeps[0] < 4.1


def test_server_errors_are_retried_with_jittered_backoff_until_the_limit(client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500")
    with pytest.raises(ServerError) as caught:
        client.send(send_request())
    assert caught.value.code == "ERR_MISSION_FAILED"
    assert len(httpserver.log) == 4  # the first attempt and max_retries=3 retries
    assert len(sleeps) == 3
    assert all(0 <= wait <= client.retry.base_delay * 2**n for n, wait in enumerate(sleeps))  # "full jitter"


def test_a_retry_that_succeeds_returns_the_created_message(client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500", ordered=True)
    respond_with_sample(httpserver, api_answer, "server_error_500", ordered=True)
    respond_with_sample(httpserver, api_answer, "send_ok_200", ordered=True)
    assert client.send(send_request())["id"] == "9100"
    assert len(httpserver.log) == 3 and len(sleeps) == 2
    bodies = {request.get_data() for request, _ in httpserver.log}
    assert len(bodies) == 1  # every attempt carries the same body (and muid)


def test_giving_up_raises_the_last_error(make_client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500", ordered=True)
    respond_with_sample(httpserver, api_answer, "rate_limited_429", ordered=True)
    httpserver.expect_ordered_request(SEND_PATH).respond_with_json({"error": {"code": "ERR_EXCEPTION"}}, 502)
    with pytest.raises(ServerError) as caught:
        make_client(max_retries=2).send(send_request())
    assert (caught.value.status, caught.value.code) == (502, "ERR_EXCEPTION")
    assert len(httpserver.log) == 3 and len(sleeps) == 2
    assert 15 <= sleeps[1] < 16  # the wait after the 429 was its Retry-After


def test_a_retryable_error_then_a_permanent_one_stops_at_once(client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500", ordered=True)
    respond_with_sample(httpserver, api_answer, "not_a_member_403", ordered=True)
    with pytest.raises(Forbidden):
        client.send(send_request())
    assert len(httpserver.log) == 2 and len(sleeps) == 1


def test_no_retries_when_max_retries_is_zero(make_client, httpserver, api_answer, sleeps):
    respond_with_sample(httpserver, api_answer, "server_error_500")
    with pytest.raises(ServerError):
        make_client(max_retries=0).send(send_request())
    assert len(httpserver.log) == 1 and sleeps == []


def test_connection_refused_is_a_transport_error_and_retried(make_client, sleeps, caplog):
    client = make_client(max_retries=2, base_url=f"http://127.0.0.1:{closed_port()}/v3")
    with caplog.at_level(logging.WARNING, logger="bot.client"), pytest.raises(TransportError) as caught:
        client.send(send_request())
    error = caught.value
    assert (error.status, error.code, error.retryable) == (0, "ERR_TRANSPORT", True)
    assert len(sleeps) == 2  # 3 attempts: the first and 2 retries
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["send failed with ERR_TRANSPORT"] * 2


def test_a_connection_error_does_not_break_the_next_request(make_client, httpserver, api_answer):
    """A failed exchange leaves nothing behind: the next request (to another origin) goes through."""
    client = make_client(max_retries=0, base_url=f"http://127.0.0.1:{closed_port()}/v3")
    with pytest.raises(TransportError):
        client.attempt(send_request())
    client.base_url = httpserver.url_for("/v3")
    respond_with_sample(httpserver, api_answer, "send_ok_200")
    assert client.attempt(send_request())["id"] == "9100"


def test_a_timeout_is_a_transport_error(make_client, httpserver, sleeps):
    release = threading.Event()

    def stall(request: Request) -> Response:
        release.wait(5)
        return Response("{}", 200)

    httpserver.expect_request(SEND_PATH).respond_with_handler(stall)
    client = make_client(max_retries=0, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as caught:
            client.send(send_request())
    finally:
        release.set()
    assert caught.value.retryable
    assert time.monotonic() - started < 4  # gave up at its timeout, not when the server answered


# ------------------------------------------------------------------ the API key stays secret


@pytest.mark.parametrize("sample", list(ERROR_SAMPLES))
def test_the_api_key_is_in_no_log_and_no_error(sample, make_client, httpserver, api_answer, caplog):
    respond_with_sample(httpserver, api_answer, sample)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CometChatError) as caught:
        make_client(max_retries=2).send(send_request())
    if ERROR_SAMPLES[sample][3]:
        assert caplog.records, "retries are logged"
    assert API_KEY not in caplog.text
    error = caught.value
    assert all(API_KEY not in text for text in (str(error), repr(error), error.message, repr(error.args)))


def test_the_api_key_is_not_in_transport_errors_nor_their_logs(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransportError) as caught:
        make_client(max_retries=1, base_url=f"http://127.0.0.1:{closed_port()}/v3").send(send_request())
    assert caplog.records
    assert API_KEY not in caplog.text and API_KEY not in str(caught.value) and API_KEY not in repr(caught.value)


def test_the_api_key_is_not_in_the_reprs_of_client_and_settings(client):
    settings = Settings(api_key=API_KEY, bot_uid=BOT_UID, api_url="http://x", allow_unauthenticated_callbacks=True)
    assert API_KEY not in repr(client) and API_KEY not in repr(settings)


# ------------------------------------------------------------------ other requests


def test_a_get_after_a_post_sends_no_body(client, httpserver):
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_json({"data": {"id": "1"}})
    httpserver.expect_ordered_request(f"/v3/bots/{BOT_UID}", method="GET").respond_with_json({"data": {"uid": BOT_UID}})
    client.attempt(send_request())
    assert client.request("GET", f"/bots/{BOT_UID}") == {"uid": BOT_UID}
    get = httpserver.log[1][0]
    assert get.method == "GET" and get.get_data() == b""  # the handle forgot the previous POST body
    assert get.headers["apikey"] == API_KEY


def test_one_client_can_be_shared_by_threads(client, httpserver):
    httpserver.expect_request(SEND_PATH).respond_with_json({"data": {"id": "1"}})
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                client.attempt(send_request())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert len(httpserver.log) == 20


# ------------------------------------------------------------------ local mode


def test_local_sender_records_and_prints_each_reply(capsys):
    sender = LocalSender()
    text = send_request()
    custom = send_request({**BODY, "category": "custom", "type": "location", "data": {"customData": {"lat": 1}}})
    first, second = sender.attempt(text), sender.send(custom)
    assert (first["id"], second["id"]) == ("local-1", "local-2")
    assert first["receiver"] == "alice" and first["data"] == {"text": "hé"}
    assert list(sender.sent) == [text, custom] and sender.total == 2
    out = capsys.readouterr().out.splitlines()
    assert out == ["[bot -> user alice] hé", '[bot -> user alice] {"customData": {"lat": 1}}']


def test_local_sender_keeps_only_its_history_but_counts_everything(capsys):
    sender = LocalSender(history=2, echo=False)
    requests = [send_request({**BODY, "data": {"text": str(n)}}) for n in range(5)]
    for request in requests:
        sender.attempt(request)
    assert list(sender.sent) == requests[-2:]
    assert sender.total == 5
    assert capsys.readouterr().out == ""  # echo=False prints nothing


def test_local_sender_is_safe_from_several_threads():
    sender = LocalSender(echo=False)
    threads = [threading.Thread(target=lambda: [sender.attempt(send_request()) for _ in range(50)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sender.total == 200 and len(sender.sent) == 200


# ------------------------------------------------------------------ one method per REST call of bot/api.py

BOT_SETTINGS = {
    "webhook_url": "https://bots.example.org/cometchat/callback",
    "group_chat_setting": "mentionedMessages",
    "username": "cometchat",
    "password": "pw",
    "enabled": True,
}
BOT_FIELDS = {
    "webhookURL": "https://bots.example.org/cometchat/callback",
    "groupChatSetting": "mentionedMessages",
    "useBasicAuth": True,
    "username": "cometchat",
    "password": "pw",
    "enabled": True,
}

#: (call, request line as sent, onBehalfOf header or None, JSON body or None for an empty body).
CLIENT_CALLS = {
    "send_message": (
        lambda c: c.send_message(BODY), f"POST /v3/bots/{BOT_UID}/messages", None, BODY,
    ),
    "send_thread_message": (
        lambda c: c.send_thread_message("9031", BODY), "POST /v3/messages/9031/thread", BOT_UID, BODY,
    ),
    "edit_message": (
        lambda c: c.edit_message("9031", text="new", metadata={"k": 1}, tags=["t"]), "PUT /v3/messages/9031",
        BOT_UID, {"data": {"text": "new", "metadata": {"k": 1}}, "tags": ["t"]},
    ),
    "edit_message_text_only": (
        lambda c: c.edit_message("9031", text="new"), "PUT /v3/messages/9031", BOT_UID, {"data": {"text": "new"}},
    ),
    "delete_message": (
        lambda c: c.delete_message("9031"), "DELETE /v3/messages/9031", BOT_UID, {"permanent": False},
    ),
    "delete_message_permanent": (
        lambda c: c.delete_message("9031", permanent=True), "DELETE /v3/messages/9031", BOT_UID, {"permanent": True},
    ),
    "add_reaction": (
        lambda c: c.add_reaction("9031", "👍"), "POST /v3/messages/9031/reactions/%F0%9F%91%8D", BOT_UID, None,
    ),
    "remove_reaction": (
        lambda c: c.remove_reaction("9031", "👍"), "DELETE /v3/messages/9031/reactions/%F0%9F%91%8D", BOT_UID, None,
    ),
    "mark_read_user": (
        lambda c: c.mark_read(Target("alice", "user")), "POST /v3/users/alice/conversation/read", BOT_UID, None,
    ),
    "mark_read_group": (
        lambda c: c.mark_read(Target("ops room", "group")), "POST /v3/groups/ops%20room/conversation/read",
        BOT_UID, None,
    ),
    "mark_interacted": (  # on behalf of the user who used the form, not the bot
        lambda c: c.mark_interacted("alice", "9031", ["submit", "name"]), "PATCH /v3/messages/9031/interacted",
        "alice", {"interactions": ["submit", "name"]},
    ),
    "create_bot": (
        lambda c: c.create_bot(BOT_UID, **BOT_SETTINGS), "POST /v3/bots", None, {"uid": BOT_UID, **BOT_FIELDS},
    ),
    "update_bot": (
        lambda c: c.update_bot(BOT_UID, enabled=False), f"PUT /v3/bots/{BOT_UID}", None, {"enabled": False},
    ),
    "get_bot": (lambda c: c.get_bot(BOT_UID), f"GET /v3/bots/{BOT_UID}", None, None),
    "delete_bot": (lambda c: c.delete_bot(BOT_UID), f"DELETE /v3/bots/{BOT_UID}", None, None),
    "get_user": (lambda c: c.get_user("a/b"), "GET /v3/users/a%2Fb", None, None),  # a uid cannot change the path
}  # fmt: skip


@pytest.fixture
def bot_client(httpserver, sleeps):
    client = CometChatClient(
        httpserver.url_for("/v3"), API_KEY, bot_uid=BOT_UID, retry=RetryPolicy(max_retries=3), sleep=sleeps.append
    )
    yield client
    client.close()


@pytest.mark.parametrize(("call", "line", "on_behalf_of", "body"), CLIENT_CALLS.values(), ids=list(CLIENT_CALLS))
def test_each_rest_call_has_a_method_sending_exactly_that_request(
    call, line, on_behalf_of, body, bot_client, httpserver
):
    httpserver.expect_request(re.compile(".*"), method=line.split(" ")[0]).respond_with_json({"data": {"id": "42"}})

    assert call(bot_client) == {"id": "42"}  # the answer's data

    [(sent, _)] = httpserver.log
    assert f"{sent.method} {sent.environ['RAW_URI']}" == line
    assert sent.headers["apikey"] == API_KEY
    assert sent.headers.get("onBehalfOf") == on_behalf_of
    assert (json.loads(sent.get_data()) if sent.get_data() else None) == body


def test_the_methods_retry_like_send(bot_client, httpserver, api_answer, sleeps):
    status, _, error = api_answer("server_error_500")
    httpserver.expect_ordered_request(f"/v3/bots/{BOT_UID}", method="GET").respond_with_json(error, status=status)
    httpserver.expect_ordered_request(f"/v3/bots/{BOT_UID}", method="GET").respond_with_json({"data": {"uid": BOT_UID}})
    assert bot_client.get_bot(BOT_UID) == {"uid": BOT_UID}
    assert len(httpserver.log) == 2 and len(sleeps) == 1


def test_the_methods_raise_cometchats_typed_errors(bot_client, httpserver, api_answer):
    status, _, error = api_answer("uid_not_found_404")
    httpserver.expect_request("/v3/bots", method="POST").respond_with_json(error, status=status)
    with pytest.raises(NotFound) as raised:
        bot_client.create_bot(BOT_UID, **BOT_SETTINGS)
    assert (raised.value.code, raised.value.status) == ("ERR_UID_NOT_FOUND", 404)


@pytest.mark.parametrize("call", [CLIENT_CALLS["send_message"][0], CLIENT_CALLS["add_reaction"][0]])
def test_calls_on_the_bots_behalf_need_its_uid(call, client, httpserver):
    with pytest.raises(ValueError, match="no bot_uid"):
        call(client)  # the client of the other tests has none
    assert httpserver.log == []


def test_from_settings_gives_the_client_the_bot_uid(httpserver):
    settings = Settings(
        api_key=API_KEY,
        bot_uid="Helpdesk-Bot",
        api_url=httpserver.url_for("/v3"),
        callback_username="u",
        callback_password="p",
    )
    assert CometChatClient.from_settings(settings).bot_uid == "helpdesk-bot"
    assert CometChatClient.from_settings(settings, bot_uid="other").bot_uid == "other"


# ------------------------------------------------------------------ a reply that may have gone out before a crash

ACCEPTED_AT = 1_796_280_834.7  # when the callback the reply answers was accepted


def thread_request() -> SendRequest:
    body = {**BODY, "muid": "t-1"}
    return SendRequest("/messages/77/thread", body, "9031", "alice_user_helpdesk-bot", headers={"onBehalfOf": BOT_UID})


@pytest.mark.parametrize(
    ("request_", "line", "on_behalf_of"),
    [
        (send_request(), "GET /v3/messages?conversationId=alice_user_helpdesk-bot&fromTimestamp=1796280774"
                         "&affix=append&limit=1000", None),
        (send_request({**BODY, "receiver": "team", "receiverType": "group"}),
         "GET /v3/messages?conversationId=group_team&fromTimestamp=1796280774&affix=append&limit=1000", None),
        (thread_request(), "GET /v3/messages/77/thread?fromTimestamp=1796280774&affix=append&limit=1000", BOT_UID),
    ],
    ids=["to a user", "to a group", "in a thread"],
)  # fmt: skip
def test_a_reply_is_looked_up_in_its_conversation_by_muid(request_, line, on_behalf_of, bot_client, httpserver):
    listed = [{"id": "500", "muid": "other"}, {"id": "501", "muid": request_.muid, "sender": BOT_UID}]
    httpserver.expect_request(re.compile("/v3/messages.*"), method="GET").respond_with_json({"data": listed})

    assert find_delivered(bot_client, request_, bot_uid=BOT_UID, since=ACCEPTED_AT) == listed[1]

    [(sent, _)] = httpserver.log  # a lookup only: nothing posted
    assert f"{sent.method} {sent.environ['RAW_URI']}" == line  # from a minute before the callback, for clock skew
    assert sent.headers["apikey"] == API_KEY and sent.headers.get("onBehalfOf") == on_behalf_of
    assert sent.get_data() == b""


def test_a_reply_not_in_the_list_is_not_found(bot_client, httpserver):
    httpserver.expect_request("/v3/messages", method="GET").respond_with_json({"data": [{"id": "500", "muid": "x"}]})
    assert find_delivered(bot_client, send_request(), bot_uid=BOT_UID, since=ACCEPTED_AT) is None


@pytest.mark.parametrize(
    "request_",
    [
        SendRequest("/messages/77", {"data": {"text": "edited"}}, method="PUT"),  # an edit creates no message
        SendRequest(f"/bots/{BOT_UID}/messages", BODY),  # no muid to look for
    ],
    ids=["edit", "no muid"],
)
def test_nothing_is_looked_up_for_requests_that_cannot_be_found(request_, bot_client, httpserver):
    assert find_delivered(bot_client, request_, bot_uid=BOT_UID, since=ACCEPTED_AT) is None
    assert httpserver.log == []


def test_a_failed_lookup_means_send_it(bot_client, httpserver, api_answer, caplog):
    status, _, error = api_answer("server_error_500")
    httpserver.expect_request("/v3/messages", method="GET").respond_with_json(error, status=status)
    sent_log = RecordingSentLog()
    with caplog.at_level(logging.WARNING, logger="bot.client"):
        assert already_delivered(bot_client, send_request(), sent_log, bot_uid=BOT_UID, since=ACCEPTED_AT) is False
    assert len(httpserver.log) == 1  # one lookup; its failure is not retried here (the reply is sent instead)
    assert "could not look up whether reply m-1 was delivered" in caplog.text and "ERR_MISSION_FAILED" in caplog.text
    assert sent_log.records == []


def test_a_reply_found_is_recorded_like_a_sent_one(bot_client, httpserver):
    request_ = SendRequest(f"/bots/{BOT_UID}/messages", {**BODY, "muid": "m-1"}, "9031", "c-1", remember=True)
    httpserver.expect_request("/v3/messages", method="GET").respond_with_json({"data": [{"id": "501", "muid": "m-1"}]})
    sent_log = RecordingSentLog()
    assert already_delivered(bot_client, request_, sent_log, bot_uid=BOT_UID, since=ACCEPTED_AT) is True
    assert sent_log.records == [("m-1", "501", "c-1")]  # a later edit of it finds its id


class RecordingSentLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str]] = []

    def remember_sent(self, muid: str, message_id: str, conversation: str, body: object = None) -> None:
        self.records.append((muid, message_id, conversation))

    def sent(self, muid: str) -> None:
        return None


def test_local_sender_lists_what_it_delivered_without_showing_the_lookup(capsys):
    sender = LocalSender()
    sender.attempt(send_request())
    capsys.readouterr()
    found = find_delivered(sender, send_request(), bot_uid=BOT_UID, since=ACCEPTED_AT)
    assert found is not None and found["id"] == sender.message_ids["m-1"]
    assert capsys.readouterr().out == "" and sender.total == 1  # a lookup is not a reply


@pytest.mark.parametrize("listed", [True, False], ids=["CometChat has it", "it does not"])
def test_send_looks_a_reply_up_before_retrying_an_attempt_in_doubt(listed, bot_client, httpserver, sleeps):
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_response(Response("late", status=504))
    messages = [{"id": "601", "muid": "m-1"}] if listed else []
    httpserver.expect_ordered_request("/v3/messages", method="GET").respond_with_json({"data": messages})
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_json({"data": {"id": "602"}})

    result = bot_client.send(send_request())

    assert result == (messages[0] if listed else {"id": "602"})
    assert [r.method for r, _ in httpserver.log] == (["POST", "GET"] if listed else ["POST", "GET", "POST"])
    assert len(sleeps) == 1


def test_send_retries_a_refused_attempt_without_a_lookup(bot_client, httpserver, api_answer, sleeps):
    status, _, error = api_answer("rate_limited_429")
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_json(error, status=status)
    httpserver.expect_ordered_request(SEND_PATH, method="POST").respond_with_json({"data": {"id": "603"}})
    assert bot_client.send(send_request()) == {"id": "603"}
    assert [r.method for r, _ in httpserver.log] == ["POST", "POST"]
