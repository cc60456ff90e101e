"""The CometChat client against an HTTP fake: exact requests, typed errors, retries, no secret in logs."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from bot.client import CometChatClient, LocalSender, RetryPolicy
from bot.errors import (
    AuthenticationError,
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from bot.replies import SendRequest
from tests.conftest import API_KEY, BOT_UID

PATH = f"/bots/{BOT_UID}/messages"
BODY = {"receiver": "alice", "receiverType": "user", "category": "message", "type": "text", "data": {"text": "hé"}}


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(httpserver: HTTPServer, sleeps) -> CometChatClient:
    client = CometChatClient(
        httpserver.url_for("/v3"), API_KEY, timeout=5, retry=RetryPolicy(max_retries=3), sleep=sleeps.append
    )
    yield client
    client.close()


def request(body: dict | None = None) -> SendRequest:
    return SendRequest(PATH, {**(body or BODY), "muid": "m-1"}, "9031", "alice_user_helpdesk-bot")


def test_sends_exactly_the_request_cometchat_documents(client, httpserver, api_answer):
    status, _, answer = api_answer("send_ok_200")
    httpserver.expect_ordered_request(
        f"/v3{PATH}", method="POST", headers={"apikey": API_KEY, "Accept": "application/json"}
    ).respond_with_json(answer, status=status)
    created = client.send(request())
    assert created == answer["data"]
    [(sent, _)] = httpserver.log
    assert sent.headers["Content-Type"] == "application/json"
    assert "Expect" not in sent.headers  # no "100 Continue" round trip
    assert json.loads(sent.get_data()) == {**BODY, "muid": "m-1"}
    assert sent.get_data().decode() == json.dumps({**BODY, "muid": "m-1"}, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    ("sample", "error_class", "code"),
    [
        ("bad_apikey_401", AuthenticationError, "AUTH_ERR_APIKEY_NOT_FOUND"),
        ("empty_text_400", BadRequest, "ERR_EMPTY_MESSAGE_TEXT"),
        ("not_a_member_403", Forbidden, "ERR_NOT_A_MEMBER"),
        ("uid_not_found_404", NotFound, "ERR_UID_NOT_FOUND"),
        ("bot_not_found_404", NotFound, "ERR_BOT_NOT_FOUND"),
    ],
)
def test_client_errors_are_typed_and_never_retried(sample, error_class, code, client, httpserver, api_answer, sleeps):
    status, headers, answer = api_answer(sample)
    httpserver.expect_request(f"/v3{PATH}").respond_with_json(answer, status=status, headers=headers)
    with pytest.raises(error_class) as caught:
        client.send(request())
    assert (caught.value.code, caught.value.status) == (code, status)
    assert not caught.value.retryable
    assert len(httpserver.log) == 1 and sleeps == []


def test_429_honours_retry_after_then_succeeds(client, httpserver, api_answer, sleeps):
    status, headers, answer = api_answer("rate_limited_429")
    ok_status, _, ok = api_answer("send_ok_200")
    httpserver.expect_ordered_request(f"/v3{PATH}").respond_with_json(answer, status=status, headers=headers)
    httpserver.expect_ordered_request(f"/v3{PATH}").respond_with_json(ok, status=ok_status)
    assert client.send(request()) == ok["data"]
    assert len(httpserver.log) == 2
    [wait] = sleeps
    assert 15 <= wait <= 15 + 0.1 * client.retry.base_delay  # the sample says Retry-After: 15


def test_429_error_carries_code_and_retry_after(client, httpserver, api_answer):
    status, headers, answer = api_answer("rate_limited_429")
    httpserver.expect_request(f"/v3{PATH}").respond_with_json(answer, status=status, headers=headers)
    with pytest.raises(RateLimited) as caught:
        client.attempt(request())
    assert (caught.value.code, caught.value.retry_after, caught.value.retryable) == ("ERR_TOO_MANY_REQUESTS", 15, True)


def test_server_errors_are_retried_with_backoff_until_the_limit(client, httpserver, api_answer, sleeps):
    status, _, answer = api_answer("server_error_500")
    httpserver.expect_request(f"/v3{PATH}").respond_with_json(answer, status=status)
    with pytest.raises(ServerError) as caught:
        client.send(request())
    assert caught.value.code == "ERR_MISSION_FAILED"
    assert len(httpserver.log) == 4  # the first attempt and max_retries=3 retries
    assert len(sleeps) == 3
    assert all(0 <= wait <= client.retry.base_delay * 2**n for n, wait in enumerate(sleeps))  # full jitter


def test_a_non_json_error_page_still_gives_a_typed_error(client, httpserver):
    httpserver.expect_request(f"/v3{PATH}").respond_with_response(Response("<html>bad gateway</html>", status=502))
    with pytest.raises(ServerError) as caught:
        client.attempt(request())
    assert caught.value.status == 502 and caught.value.retryable


def test_network_errors_are_transport_errors_and_retried(sleeps):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    retry = RetryPolicy(max_retries=2)
    client = CometChatClient(f"http://127.0.0.1:{port}/v3", API_KEY, retry=retry, sleep=sleeps.append)
    with pytest.raises(TransportError) as caught:
        client.send(request())
    assert caught.value.retryable
    assert len(sleeps) == 2
    client.close()


def test_the_api_key_is_never_logged_nor_in_errors(client, httpserver, api_answer, caplog):
    status, _, answer = api_answer("server_error_500")
    httpserver.expect_request(f"/v3{PATH}").respond_with_json(answer, status=status)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServerError) as caught:
        client.send(request())
    assert caplog.records, "retries are logged"
    assert API_KEY not in caplog.text
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (lambda now: {"Retry-After": "3"}, 3.0),
        (lambda now: {"X-RateLimit-Reset": str(int(now) + 8)}, 7.5),  # CometChat's other spelling (PLATFORM.md 4.5)
        (lambda now: {}, None),
    ],
    ids=["retry-after", "reset-header", "none"],
)
def test_rate_limit_wait_from_headers(headers, expected, client, httpserver):
    answer = {"error": {"code": "ERR_TOO_MANY_REQUESTS"}}
    httpserver.expect_request(f"/v3{PATH}").respond_with_json(answer, 429, headers(time.time()))
    with pytest.raises(RateLimited) as caught:
        client.attempt(request())
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert expected - 1 <= caught.value.retry_after <= expected + 0.5


def test_other_methods_and_a_body_free_request_after_a_post(client, httpserver):
    httpserver.expect_ordered_request(f"/v3{PATH}", method="POST").respond_with_json({"data": {"id": "1"}})
    httpserver.expect_ordered_request(f"/v3/bots/{BOT_UID}", method="GET").respond_with_json({"data": {"uid": BOT_UID}})
    client.attempt(request())
    assert client.request("GET", f"/bots/{BOT_UID}") == {"uid": BOT_UID}
    get = httpserver.log[1][0]
    assert get.method == "GET" and get.get_data() == b""  # the handle forgot the previous POST body


def test_local_sender_records_and_prints(capsys):
    sender = LocalSender()
    created = sender.attempt(request())
    assert created["id"].startswith("local-")
    assert list(sender.sent) == [request()] and sender.total == 1
    assert "[bot -> user alice] hé" in capsys.readouterr().out
