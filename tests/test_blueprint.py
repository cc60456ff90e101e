"""The callback endpoint through Flask's test client on the real app, and what reaches the fake CometChat API.

Delivery is asynchronous (the callback is answered first), so every look at the fake API's log waits with
``bot_app(app).wait_idle(...)`` before it asserts.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading

import pytest
from pytest_httpserver import HTTPServer

import app as app_module
from bot.factory import bot_app
from bot.quick import QuickRoutes
from bot.testing import make_callback
from bots.help import HELP
from bots.weather import forecast
from tests.conftest import API_KEY, BOT_UID, INVALID_PAYLOADS, PASSWORD, PAYLOADS, USERNAME

CALLBACK = "/cometchat/callback"
SEND_PATH = f"/v3/bots/{BOT_UID}/messages"

#: Valid samples the bot acknowledges without handling them; every other sample is "accepted".
IGNORED = {"from_bot_itself": "the bot's own message"}

#: Every invalid sample: (error code, where the problem is named: a key of "fields", or words of the message).
INVALID = {
    "array_top_level": ("invalid_callback", None, "must be a JSON object, not an array"),
    "data_missing": ("invalid_callback", "data", "data"),
    "data_not_object": ("invalid_callback", "data", "data must be the message object"),
    "not_json": ("invalid_json", None, "not valid JSON"),
    "receiver_type_unknown": ("invalid_callback", "data.receiverType", "data.receiverType"),
    "sender_missing": ("invalid_callback", "data.sender", "data.sender"),
    "text_not_string": ("invalid_callback", "data.data.text", "data.data.text"),
}


# ------------------------------------------------------------------ helpers


def auth_header(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def post(live_app, basic_auth):
    """post(body_dict | None, raw=b"...", headers={...}) -> the response of an authenticated JSON POST."""
    client = live_app.test_client()

    def post(body=None, *, raw: bytes | None = None, headers: dict[str, str] | None = None, app=None):
        data = raw if raw is not None else json.dumps(body)
        all_headers = {"Content-Type": "application/json", **basic_auth, **(headers or {})}
        return (app.test_client() if app else client).post(CALLBACK, data=data, headers=all_headers)

    return post


def sent(server: HTTPServer, app) -> list:
    """The requests the fake API received, once the app has finished its work."""
    assert bot_app(app).wait_idle(10), "the bot did not finish in time"
    return [request for request, _ in server.log]


def sent_bodies(server: HTTPServer, app) -> list[dict]:
    return [json.loads(request.get_data()) for request in sent(server, app)]


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# ------------------------------------------------------------------ CometChat's samples


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_every_sample_callback_gets_200(path, post, fake_api, live_app):
    response = post(raw=path.read_bytes())
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    if path.stem in IGNORED:
        assert answer == {"status": "ignored", "reason": IGNORED[path.stem]}
    else:
        callback = json.loads(path.read_text())
        message = callback["data"]["message"] if callback["trigger"] == "message_sent" else callback["data"]
        assert answer == {"status": "accepted", "message_id": message["id"]}
    for body in sent_bodies(fake_api, live_app):  # whatever the bot answered is a well-formed send request
        assert body["receiverType"] in {"user", "group"} and body["category"] in {"message", "custom"}
        assert body["muid"] and body["data"]


def test_the_invalid_table_covers_every_invalid_sample():
    assert {path.stem for path in INVALID_PAYLOADS} == set(INVALID)


@pytest.mark.parametrize("path", INVALID_PAYLOADS, ids=lambda p: p.stem)
def test_every_invalid_sample_gets_a_400_naming_the_problem(path, post, fake_api, live_app):
    code, field, words = INVALID[path.stem]
    error = assert_json_error(post(raw=path.read_bytes()), 400, code)
    assert words in error["message"]
    if field is not None:
        assert field in error["fields"] and error["fields"][field]
    assert sent(fake_api, live_app) == []


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth_header(USERNAME, "wrong"),
        auth_header("someone", PASSWORD),
        auth_header(USERNAME, PASSWORD + "x"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer " + PASSWORD},
    ],
    ids=["missing", "wrong-password", "wrong-user", "longer-password", "malformed", "not-basic"],
)
def test_missing_or_wrong_basic_auth_gets_401_json(headers, live_app, payload, fake_api):
    response = live_app.test_client().post(
        CALLBACK, data=json.dumps(payload("text_user")), headers={"Content-Type": "application/json", **headers}
    )
    assert_json_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert sent(fake_api, live_app) == []


@pytest.mark.parametrize(
    "spelling",
    ["basic {}", "BASIC {}", "Basic  {}", "Basic {} "],
    ids=["lower-case", "upper-case", "two-spaces", "trailing-space"],
)
def test_other_spellings_of_the_right_credentials_are_accepted(spelling, post, payload, fake_api):
    """The header as CometChat writes it is compared whole; any other spelling is parsed and compared."""
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert post(payload("text_user"), headers={"Authorization": spelling.format(token)}).status_code == 200


def test_auth_is_checked_before_anything_is_read(live_app):
    response = live_app.test_client().post(CALLBACK, data="not json", headers={"Content-Type": "text/plain"})
    assert_json_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json", None], ids=str
)
def test_a_body_that_is_not_declared_json_gets_415(content_type, live_app, basic_auth, payload):
    headers = {**basic_auth, **({"Content-Type": content_type} if content_type else {})}
    response = live_app.test_client().post(CALLBACK, data=json.dumps(payload("text_user")), headers=headers)
    error = assert_json_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON"])
def test_json_content_types_are_accepted(content_type, post, payload, fake_api, live_app):
    assert post(payload("text_user"), headers={"Content-Type": content_type}).status_code == 200


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # was a 500 (RecursionError)
        (b'{"trigger": "after_message", "n": 1' + b"0" * 5000 + b"}", "too many digits"),  # was a 500 (ValueError)
    ],
    ids=["empty", "broken", "not-utf8", "deeply-nested", "huge-integer"],
)
def test_a_body_that_is_not_json_gets_400(raw, words, post, live_app):
    error = assert_json_error(post(raw=raw), 400, "invalid_json")
    assert words in error["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda cb: cb.update(trigger=5), "trigger"),
        (lambda cb: cb.update(bot=None), "bot"),
        (lambda cb: cb["data"].update(id=True), "data.id"),
        (lambda cb: cb["data"].update(id=" "), "data.id"),
        (lambda cb: cb["data"].update(sender={"uid": 5}), "data.sender"),
        (lambda cb: cb["data"].update(category=""), "data.category"),
        (lambda cb: cb["data"].update(sentAt=1e300), "data.sentAt"),
        (lambda cb: cb["data"].update(parentId={}), "data.parentId"),
        (lambda cb: cb["data"].update(data=None), "data.data"),
        (lambda cb: cb["data"]["data"].update(attachments=[None]), "data.data.attachments.0"),
        (lambda cb: cb["data"]["data"].update(attachments=[{"url": 5}]), "data.data.attachments.0.url"),
        (lambda cb: cb["data"]["data"].update(mentions=["bob"]), "data.data.mentions"),
        (lambda cb: cb["data"]["data"].update(metadata=[1]), "data.data.metadata"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_hostile_fields_get_a_400_naming_the_field_never_a_500(change, field, post, payload, fake_api, live_app):
    callback = payload("text_user")
    change(callback)
    error = assert_json_error(post(callback), 400, "invalid_callback")
    assert field in error["fields"]
    assert sent(fake_api, live_app) == []


@pytest.mark.parametrize("raw", [b"null", b'"text"', b"12", b"true", b"{}"], ids=lambda b: b.decode() or "empty")
def test_json_that_is_no_callback_gets_400(raw, post):
    assert_json_error(post(raw=raw), 400, "invalid_callback")


@pytest.fixture
def small_app(live_settings):
    """The app with a 2,000-byte callback limit."""
    app = app_module.create_app({**live_settings, "CALLBACK_MAX_BYTES": "2000"})
    yield app
    bot_app(app).wait_idle(5)


def padded(callback: dict, size: int) -> bytes:
    """``callback`` as JSON, padded with trailing spaces to exactly ``size`` bytes (still valid JSON)."""
    raw = json.dumps(callback).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_a_body_over_the_limit_gets_413(post, payload, small_app, fake_api):
    error = assert_json_error(post(raw=padded(payload("text_user"), 2001), app=small_app), 413)
    assert error["code"] == "request_entity_too_large"
    assert post(raw=padded(payload("text_user"), 50_000), app=small_app).status_code == 413
    assert sent(fake_api, small_app) == []


def test_a_body_of_exactly_the_limit_is_accepted(post, payload, small_app, fake_api):
    response = post(raw=padded(payload("text_user"), 2000), app=small_app)
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"


def test_a_chunked_body_over_the_limit_gets_413_not_a_cut_body(payload, small_app, basic_auth, fake_api):
    """Without Content-Length (chunked; the server terminates the stream) the limit still holds.

    This used to read the first 2,000 bytes and answer 400 "not valid JSON".
    """
    body = padded(payload("text_user"), 3000)
    response = small_app.test_client().post(
        CALLBACK,
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", **basic_auth},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_json_error(response, 413, "request_entity_too_large")
    assert sent(fake_api, small_app) == []


def test_a_body_shorter_than_its_content_length_gets_400(payload, live_app, basic_auth, fake_api):
    """The client went away mid-body: a 400, and nothing handled (not a 500, not half a callback)."""
    body = json.dumps(payload("text_user")).encode()
    response = live_app.test_client().post(
        CALLBACK,
        input_stream=io.BytesIO(body[:100]),
        headers={"Content-Type": "application/json", "Content-Length": str(len(body)), **basic_auth},
    )
    assert_json_error(response, 400)
    assert sent(fake_api, live_app) == []


def test_the_default_limit_is_256_kb(post, payload, live_app):
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "x" * (256 * 1024)
    assert_json_error(post(callback), 413, "request_entity_too_large")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_on_the_callback_get_405_json(method, live_app, basic_auth):
    response = live_app.test_client().open(CALLBACK, method=method, headers=basic_auth)
    assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_an_unknown_path_gets_a_json_404(live_app):
    assert_json_error(live_app.test_client().post("/cometchat/callbacks", json={}), 404, "not_found")


def test_a_post_to_an_unknown_path_is_logged_with_the_callback_path(live_app, caplog):
    client = live_app.test_client()
    with caplog.at_level(logging.INFO, logger="bot"):
        client.post("/webhook%0Aforged", json={})  # a newline in the path stays escaped in the log
        client.get("/wp-login.php")  # a scanner's GET: answered 404, not logged
    [record] = [r for r in caplog.records if "no such endpoint" in r.getMessage()]
    assert record.getMessage() == (
        "POST '/webhook\\nforged': no such endpoint (404); callbacks go to POST /cometchat/callback,"
        " form submissions to POST /cometchat/interactions"
    )


# ------------------------------------------------------------------ what is never answered


@pytest.mark.parametrize(
    ("name", "change", "status"),
    [
        ("from_bot_itself", None, "ignored"),
        ("from_bot_itself", lambda cb: cb["data"].update(sender=BOT_UID.upper()), "ignored"),  # uids in any case
        ("from_bot_itself", lambda cb: cb["data"].update(receiverType="user", receiver="alice"), "ignored"),
        ("text_user", lambda cb: cb.update(bot="another-bot"), "ignored"),
        ("edited_action", None, "accepted"),  # acknowledged, but no handler asks for edits
        ("edited_action", lambda cb: cb["data"]["data"].update(action="deleted"), "accepted"),
        ("text_group", None, "accepted"),  # group chatter not meant for the bot
    ],
    ids=["own", "own-upper-case", "own-one-to-one", "other-bot", "edited", "deleted", "group-chatter"],
)
def test_the_bot_never_answers_itself_nor_actions(name, change, status, post, payload, fake_api, live_app):
    callback = payload(name)
    if change:
        change(callback)
    response = post(callback)
    assert response.status_code == 200
    assert response.get_json()["status"] == status
    assert sent(fake_api, live_app) == []


def test_a_redelivered_callback_is_acknowledged_and_handled_once(post, payload, fake_api, live_app):
    first, again = post(payload("text_user")), post(payload("text_user"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.get_json()["status"], again.get_json()["status"]) == ("accepted", "duplicate")
    assert again.get_json()["message_id"] == "9031"
    texts = [body["data"]["text"] for body in sent_bodies(fake_api, live_app)]
    assert texts == ["Sure, Alice, here is what I can do.", HELP]  # one message's two replies, once

    late = post(payload("text_user"))  # again, after the first was handled and answered
    assert late.get_json()["status"] == "duplicate"
    assert len(sent(fake_api, live_app)) == 2


def test_the_same_text_under_a_new_message_id_is_handled_again(post, payload, fake_api, live_app):
    first, second = payload("text_user"), payload("text_user")
    second["data"]["id"] = "9999"
    assert [post(cb).get_json()["status"] for cb in (first, second)] == ["accepted", "accepted"]
    assert len(sent(fake_api, live_app)) == 4


# ------------------------------------------------------------------ end to end


def test_text_user_reaches_cometchat_as_exactly_these_requests(post, payload, fake_api, live_app):
    response = post(payload("text_user"))  # "I need help with my account"
    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted", "message_id": "9031"}
    requests = sent(fake_api, live_app)
    assert len(requests) == 2
    bodies = []
    for request in requests:
        assert (request.method, request.path, request.query_string) == ("POST", SEND_PATH, b"")
        assert request.headers["apikey"] == API_KEY
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Accept"] == "application/json"
        body = json.loads(request.get_data())
        assert set(body) == {"receiver", "receiverType", "category", "type", "data", "muid"}
        bodies.append(body)
    assert [{k: b[k] for k in ("receiver", "receiverType", "category", "type", "data")} for b in bodies] == [
        {
            "receiver": "alice",
            "receiverType": "user",
            "category": "message",
            "type": "text",
            "data": {"text": "Sure, Alice, here is what I can do.", "metadata": {"@bot": BOT_UID}},
        },
        {
            "receiver": "alice",
            "receiverType": "user",
            "category": "message",
            "type": "text",
            "data": {"text": HELP, "metadata": {"@bot": BOT_UID}},
        },
    ]
    assert len({b["muid"] for b in bodies}) == 2


def test_a_group_message_is_answered_in_the_group(post, payload, fake_api, live_app):
    callback = payload("text_group_mention")  # "<@uid:helpdesk-bot> what is the weather in Paris?"
    assert post(callback).status_code == 200
    [body] = sent_bodies(fake_api, live_app)
    assert (body["receiver"], body["receiverType"]) == ("ops-room", "group")
    assert body["data"]["text"] == forecast("Paris")


@pytest.mark.parametrize(
    ("name", "receiver", "text"),
    [
        ("slash_command", "alice", forecast("Paris", "tomorrow")),
        ("webhook_v2_message_sent", "alice", "Hello Alice! Type /help to see what I can do."),
    ],
)
def test_other_callback_shapes_are_answered_to_the_sender(name, receiver, text, post, payload, fake_api, live_app):
    assert post(payload(name)).status_code == 200
    [body] = sent_bodies(fake_api, live_app)
    assert (body["receiver"], body["receiverType"], body["data"]["text"]) == (receiver, "user", text)


def test_a_reply_cometchat_refuses_for_good_is_tried_once_and_logged(
    post, payload, httpserver, api_answer, live_app, caplog
):
    status, _, answer = api_answer("not_a_member_403")
    httpserver.expect_request(SEND_PATH).respond_with_json(answer, status=status)
    caplog.set_level(logging.INFO)
    assert post(payload("text_group_mention")).status_code == 200  # the answer never waits for CometChat
    assert len(sent(httpserver, live_app)) == 1  # a 403 is not retried
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("ERR_NOT_A_MEMBER" in m and "9033" in m for m in errors), errors
    assert API_KEY not in caplog.text


def test_a_rate_limited_reply_is_sent_again_after_retry_after(post, payload, httpserver, api_answer, live_app):
    _, _, limited = api_answer("rate_limited_429")
    httpserver.expect_oneshot_request(SEND_PATH).respond_with_json(limited, 429, {"Retry-After": "0.2"})
    status, _, ok = api_answer("send_ok_200")
    httpserver.expect_request(SEND_PATH).respond_with_json(ok, status=status)
    assert post(payload("slash_command")).status_code == 200
    first, second = sent(httpserver, live_app)
    assert first.get_data() == second.get_data()  # the same reply, same muid
    assert json.loads(second.get_data())["data"]["text"] == forecast("Paris", "tomorrow")


# ------------------------------------------------------------------ threaded servers


def test_under_a_threaded_server_the_message_waits_for_the_answer_to_be_closed(live_app, basic_auth, fake_api):
    """A threaded server's request thread routes the message, and runs a quick route's handler, inside the
    server's close() of the answer (bot/quick.py): not before."""
    bot, ran_on = bot_app(live_app), []
    bot.router.on_command("where")(lambda msg: ran_on.append(threading.current_thread().name) or "here")
    bot.delivery.quick = QuickRoutes(limit=1.0, runs=0)  # every route counts as quick
    body = json.dumps(make_callback("/where", sender="alice", bot=BOT_UID))
    headers = {"Content-Type": "application/json", **basic_auth}
    response = live_app.test_client().post(
        CALLBACK, data=body, headers=headers, environ_overrides={"wsgi.multithread": True}
    )
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"
    depth = bot.delivery.depth()
    assert (ran_on, depth.inbox, depth.inbox_running) == ([], 1, 1)  # claimed, waiting for its request thread
    response.close()  # what the server does once the answer is sent
    assert ran_on == [threading.current_thread().name]  # run inside close()
    assert [body["data"]["text"] for body in sent_bodies(fake_api, live_app)] == ["here"]


def test_without_a_threaded_server_the_answer_need_not_be_closed(post, fake_api, live_app):
    response = post(make_callback("/help", sender="alice", bot=BOT_UID))
    assert response.status_code == 200
    assert [body["data"]["text"] for body in sent_bodies(fake_api, live_app)] == [HELP]  # response never closed
