"""The callback endpoint through the real app: auth, validation, acknowledgement, and what reaches CometChat."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer

from bot.factory import bot_app
from bots.help import HELP
from tests.conftest import API_KEY, BOT_UID, INVALID_PAYLOADS, PAYLOADS

CALLBACK = "/cometchat/callback"
SEND_PATH = f"/v3/bots/{BOT_UID}/messages"


@pytest.fixture
def fake_api(httpserver: HTTPServer, api_answer) -> HTTPServer:
    """The CometChat send API answering every reply like the sample success answer."""
    status, headers, body = api_answer("send_ok_200")
    httpserver.expect_request(SEND_PATH, method="POST").respond_with_json(body, status=status, headers=headers)
    return httpserver


@pytest.fixture
def post(live_app, basic_auth):
    client = live_app.test_client()

    def post(body, *, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body)
        headers = {"Content-Type": "application/json", **basic_auth, **(headers or {})}
        return client.post(CALLBACK, data=data, headers=headers)

    return post


def sent_bodies(server: HTTPServer, app) -> list[dict]:
    assert bot_app(app).wait_idle(10)
    return [json.loads(request.get_data()) for request, _ in server.log]


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_every_sample_callback_is_acknowledged(path, post, fake_api, live_app):
    response = post(json.loads(path.read_text()))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] in {"accepted", "ignored"}
    for body in sent_bodies(fake_api, live_app):  # whatever was answered went to CometChat's send API, well formed
        assert body["receiverType"] in {"user", "group"} and body["category"] in {"message", "custom"}


@pytest.mark.parametrize("path", INVALID_PAYLOADS, ids=lambda p: p.stem)
def test_every_invalid_sample_gets_a_clear_4xx(path, post, fake_api, live_app):
    response = post(None, raw=path.read_bytes())
    assert 400 <= response.status_code < 500
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    assert sent_bodies(fake_api, live_app) == []


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("data_missing", "data"),
        ("sender_missing", "sender"),
        ("text_not_string", "text"),
        ("receiver_type_unknown", "receiverType"),
        ("not_json", "JSON"),
    ],
)
def test_schema_errors_name_the_field(name, named, post):
    response = post(None, raw=(INVALID_PAYLOADS[0].parent / f"{name}.json").read_bytes())
    assert response.status_code == 400
    assert named in json.dumps(response.get_json())


def test_text_reply_is_exactly_what_cometchat_expects(post, payload, fake_api, live_app):
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "hello"
    assert post(callback).status_code == 200
    assert bot_app(live_app).wait_idle(10)
    [(request, response)] = fake_api.log
    assert request.path == SEND_PATH and request.method == "POST"
    assert request.headers["apikey"] == API_KEY
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.get_data())
    assert set(body) == {"receiver", "receiverType", "category", "type", "data", "muid"}
    assert {k: body[k] for k in ("receiver", "receiverType", "category", "type")} == {
        "receiver": "alice",
        "receiverType": "user",
        "category": "message",
        "type": "text",
    }
    assert body["data"] == {"text": "Hello Alice! Type /help to see what I can do."}
    assert response.status_code == 200


def test_replies_of_one_message_arrive_in_order(post, payload, fake_api, live_app):
    assert post(payload("text_user")).status_code == 200  # "I need help with my account": two replies
    texts = [body["data"]["text"] for body in sent_bodies(fake_api, live_app)]
    assert texts == ["Sure, Alice, here is what I can do.", HELP]


def test_group_message_is_answered_to_the_group(post, payload, fake_api, live_app):
    callback = payload("text_group_mention")
    assert post(callback).status_code == 200
    bodies = sent_bodies(fake_api, live_app)
    assert bodies, "a mention in a group gets an answer"
    assert {(b["receiver"], b["receiverType"]) for b in bodies} == {(callback["data"]["receiver"], "group")}


@pytest.mark.parametrize("name", ["from_bot_itself", "edited_action"])
def test_own_and_action_messages_are_acknowledged_but_not_answered(name, post, payload, fake_api, live_app):
    response = post(payload(name))
    assert response.status_code == 200
    assert sent_bodies(fake_api, live_app) == []


def test_redelivered_callback_is_handled_once(post, payload, fake_api, live_app):
    first, again = post(payload("text_user")), post(payload("text_user"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.get_json()["status"], again.get_json()["status"]) == ("accepted", "duplicate")
    texts = [body["data"]["text"] for body in sent_bodies(fake_api, live_app)]
    assert len(texts) == 2 and texts[0] == "Sure, Alice, here is what I can do."  # one message's two replies


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, {"Authorization": "Bearer abc"}],
    ids=["missing", "wrong", "not-basic"],
)
def test_wrong_or_missing_credentials_get_401(headers, live_app, payload, fake_api):
    response = live_app.test_client().post(
        CALLBACK, data=json.dumps(payload("text_user")), headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == 401
    assert response.get_json()["error"]["code"]
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert sent_bodies(fake_api, live_app) == []


def test_wrong_content_type_gets_415(post, payload):
    response = post(payload("text_user"), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe"], ids=["empty", "broken", "not-utf8"])
def test_non_json_gets_400(raw, post):
    response = post(None, raw=raw)
    assert response.status_code == 400
    assert "JSON" in response.get_json()["error"]["message"] or "UTF-8" in response.get_json()["error"]["message"]


def test_oversized_body_gets_413(post, payload, live_app):
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "x" * (bot_app(live_app).settings.callback_max_bytes + 1)
    response = post(callback)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_gets_405_json(method, live_app):
    response = live_app.test_client().open(CALLBACK, method=method)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_unknown_path_is_a_json_404(live_app):
    response = live_app.test_client().get("/nowhere")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
