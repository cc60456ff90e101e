"""Forms and cards end to end: the button the bot sends, the submission the UI kit posts back, what is refused.

The app runs live against pytest-httpserver standing in for CometChat's REST API (every created message gets an
id of its own, 9100, 9101, ...), with handlers of this module (``build_app`` over ``config.load``, what
``create_app`` does after discovering ``bots/``). Submissions go through Flask's test client to the interaction
endpoint, with the body CometChat's v4 web UI kit sends (PLATFORM.md 5.4, tests/data/ui_kit_interaction_request.json).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from redis import Redis

import config
from bot import Router
from bot.factory import bot_app, build_app
from bot.interactions import SALT, Claims, ExpiredToken, InvalidToken, Tokens, secret_for
from bot.interactive import Button, Card, Checkbox, Dropdown, Form, SingleSelect, TextInput, UrlButton
from bot.redis_queue import job_for
from bot.testing import BotTestClient, make_callback
from tests.conftest import API_KEY, BOT_UID, PASSWORD
from tests.fakes import Call, NumberingCometChat
from tests.helpers import wait_for

DATA = Path(__file__).parent / "data"
KIT_SAMPLE = json.loads((DATA / "ui_kit_interaction_request.json").read_text())
CALLBACK = "/cometchat/callback"
ENDPOINT = "/cometchat/interactions"
PUBLIC_URL = "https://bots.example.org"
BOT_PATH = f"/v3/bots/{BOT_UID}/messages"
ALICE_CONVERSATION = f"alice_user_{BOT_UID}"
#: The values of the kit sample: the survey form below has these fields.
KIT_VALUES = KIT_SAMPLE["data"]["formData"]


# ------------------------------------------------------------------ the fake CometChat API


@pytest.fixture
def cometchat(httpserver: HTTPServer) -> NumberingCometChat:
    return NumberingCometChat(httpserver)


# ------------------------------------------------------------------ the bot under test


@dataclass
class Seen:
    """What the submission handler saw, one dict per run."""

    runs: list[dict[str, Any]]


def survey_form(**kwargs: Any) -> Form:
    """A form with the fields of the kit sample (name, country, topics, size)."""
    return Form(
        "survey",
        "Book a demo",
        [
            TextInput("name", "Name", placeholder="Your name"),
            Dropdown("country", "Country", [("de", "Germany"), ("in", "India")], default="de"),
            Checkbox("topics", "Topics", {"api": "API", "ui": "UI kits"}, optional=True),
            SingleSelect("size", "Team size", [("s", "1-10"), ("m", "11-50")], default="s"),
        ],
        **kwargs,
    )


def survey_bot(seen: Seen) -> Router:
    bot = Router("survey")

    @bot.on_command("form")
    def form(msg):
        return ["Please fill this in:", survey_form()]

    @bot.on_command("threadform")
    def thread_form(msg):
        return survey_form(in_thread=True)

    @bot.on_command("card")
    def card(msg):
        return Card(
            "plan",
            "Pick a plan",
            buttons=[Button("basic", "Basic"), Button("pro", "Pro"), UrlButton("docs", "Docs", "https://x.org/d")],
        )

    @bot.on_submit("survey", "plan")
    def submitted(msg, values):
        s = msg.submission
        seen.runs.append(
            {
                "user": msg.sender.uid,
                "values": dict(values),
                "interaction": s.interaction_id,
                "element": s.element_id,
                "message_id": s.message_id,
                "muid": s.muid,
                "original": s.original,
                "timezone": s.timezone,
                "category": msg.category,
                "conversation": msg.conversation_id,
                "parent": msg.parent_id,
                "group": msg.is_group,
            }
        )
        return f"Thanks, {msg.sender.uid}!"

    return bot


@pytest.fixture
def seen() -> Seen:
    return Seen([])


@pytest.fixture
def settings(live_settings) -> dict[str, str]:
    return {**live_settings, "PUBLIC_URL": PUBLIC_URL}


def make_app(settings: dict[str, str], *routers: Router) -> Flask:
    """The app as ``create_app(settings)`` builds it, with the given routers instead of ``bots/``."""
    return build_app(config.load(settings), routers, import_name=__name__)


@pytest.fixture
def app(settings, cometchat, seen) -> Flask:
    return make_app(settings, survey_bot(seen))


def say(app: Flask, basic_auth: dict[str, str], text: str, **callback: Any) -> str:
    """Post a callback from a user (default alice, 1:1) through the real callback endpoint; returns its id."""
    body = make_callback(text, bot=BOT_UID, **callback)
    response = app.test_client().post(CALLBACK, json=body, headers=basic_auth)
    assert response.status_code == 200 and response.get_json()["status"] == "accepted", response.get_data()
    return body["data"]["id"]


@dataclass(frozen=True)
class SentInteractive:
    """An interactive message as it reached the fake CometChat, with the id its answer gave."""

    call: Call

    @property
    def body(self) -> dict[str, Any]:
        return self.call.body

    @property
    def message_id(self) -> str:
        assert self.call.answer_id is not None
        return self.call.answer_id

    def action(self, element: str = "submit") -> dict[str, Any]:
        data = self.body["data"]["interactiveData"]
        buttons = [data.get("submitElement"), *data.get("cardActions", []), *data.get("formFields", [])]
        [button] = [b for b in buttons if b and b.get("elementId") == element]
        return button["action"]

    def token(self, element: str = "submit") -> str:
        return self.action(element)["payload"]["token"]


def interactive_messages(cometchat: NumberingCometChat, app: Flask) -> list[SentInteractive]:
    return [SentInteractive(c) for c in cometchat.calls(app) if (c.body or {}).get("category") == "interactive"]


@pytest.fixture
def form(app, cometchat, basic_auth) -> SentInteractive:
    """The survey form, sent to alice 1:1."""
    say(app, basic_auth, "/form")
    [form] = interactive_messages(cometchat, app)
    return form


def kit_body(
    token: str,
    message_id: Any,
    *,
    user: str = "alice",
    element: str = "submit",
    values: dict[str, Any] | None = None,
    receiver: str = "alice",
    receiver_type: str = "user",
    conversation: str = ALICE_CONVERSATION,
    message_type: str = "form",
) -> dict[str, Any]:
    """The v4 web kit's request (the sample), for one click: its token, message id, user and element."""
    body = copy.deepcopy(KIT_SAMPLE)
    del body["_about"]
    body["payload"] = {"token": token}
    body["data"].update(
        conversationId=conversation,
        receiver=receiver,
        receiverType=receiver_type,
        messageId=message_id,
        messageType=message_type,
        interactedBy=user,
        interactedElementId=element,
    )
    if values is not None:
        body["data"]["formData"] = values
    return body


def submit(app: Flask, body: Any, *, path: str = ENDPOINT, headers: dict[str, str] | None = None):
    """POST a submission as the browser's fetch() does (JSON, no credentials)."""
    if isinstance(body, (bytes, str)):
        return app.test_client().post(path, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    return app.test_client().post(path, json=body, headers=headers or {})


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error


def tokens_of(app: Flask) -> Tokens:
    """A Tokens with the app's own secret and lifetime (mints what the app would accept)."""
    settings = bot_app(app).settings
    return Tokens(secret_for(settings), max_age=settings.interaction_ttl)


def claims_of(app: Flask, token: str) -> Claims:
    return tokens_of(app).verify(token)


def scrape(app: Flask) -> dict[tuple[str, tuple], float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def counted(app: Flask, name: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: value for (metric, labels), value in scrape(app).items() if metric == name}


# ------------------------------------------------------------------ what the bot sends


def test_a_form_reaches_cometchat_with_a_button_that_calls_this_app_back(app, cometchat, basic_auth):
    say(app, basic_auth, "/form")
    intro, form = cometchat.calls(app)
    assert (intro.method, intro.path, intro.body["data"]["text"]) == ("POST", BOT_PATH, "Please fill this in:")
    assert (form.method, form.path) == ("POST", BOT_PATH)
    assert form.headers["apikey"] == API_KEY  # the key travels in the header of the REST call only
    body = form.body
    assert (body["category"], body["type"], body["receiver"], body["receiverType"]) == (
        "interactive",
        "form",
        "alice",
        "user",
    )
    assert body["muid"] and body["data"]["metadata"] == {"@bot": BOT_UID}
    submit_element = body["data"]["interactiveData"]["submitElement"]
    action = submit_element["action"]
    token = action["payload"]["token"]
    assert action == {
        "actionType": "apiAction",
        "url": PUBLIC_URL + ENDPOINT,
        "method": "POST",
        "payload": {"token": token},
        "headers": {"Content-Type": "application/json"},
        "dataKey": "CometChatData",
    }
    assert isinstance(token, str) and len(token) > 40
    # The token signs this very reply: its muid, the conversation and the only user who may submit.
    claims = claims_of(app, token)
    assert claims == Claims(
        bot=BOT_UID,
        interaction_id="survey",
        element_id="submit",
        muid=body["muid"],
        conversation=ALICE_CONVERSATION,
        receiver="alice",
        receiver_type="user",
        user="alice",
        parent_id="",
    )


def test_no_secret_of_the_app_is_in_the_message_every_client_reads(app, cometchat, basic_auth):
    say(app, basic_auth, "/form")
    say(app, basic_auth, "/card")
    sent = interactive_messages(cometchat, app)
    assert [s.body["type"] for s in sent] == ["form", "card"]
    secret = secret_for(bot_app(app).settings)
    for message in sent:
        raw = message.call.raw.decode()
        for value in (API_KEY, PASSWORD, secret.hex(), base64.urlsafe_b64encode(secret).decode().rstrip("=")):
            assert value not in raw
        data = message.body["data"]["interactiveData"]
        buttons = [data.get("submitElement"), *data.get("cardActions", [])]
        actions = [b["action"] for b in buttons if b and b["action"]["actionType"] == "apiAction"]
        assert actions
        for action in actions:  # nothing but the token and a content type goes along with a click
            assert set(action["payload"]) == {"token"}
            assert action["headers"] == {"Content-Type": "application/json"}
            # The token's payload is readable (only signed): it holds no secret either.
            _, claims = URLSafeTimedSerializer(b"any", salt=SALT).loads_unsafe(action["payload"]["token"])
            assert API_KEY not in json.dumps(claims) and PASSWORD not in json.dumps(claims)


def test_each_card_button_gets_a_token_of_its_own(app, cometchat, basic_auth):
    say(app, basic_auth, "/card")
    [card] = interactive_messages(cometchat, app)
    assert (card.body["category"], card.body["type"]) == ("interactive", "card")
    basic, pro = card.token("basic"), card.token("pro")
    assert basic != pro
    assert (claims_of(app, basic).element_id, claims_of(app, pro).element_id) == ("basic", "pro")
    assert card.action("docs") == {"actionType": "urlNavigation", "url": "https://x.org/d"}


@pytest.mark.parametrize(
    ("public_url", "path", "expected"),
    [
        ("https://bots.example.org/", "/cometchat/interactions", "https://bots.example.org/cometchat/interactions"),
        ("https://example.org/chat", "/hooks/forms", "https://example.org/chat/hooks/forms"),
    ],
    ids=["trailing-slash", "own-path"],
)
def test_the_button_url_is_public_url_plus_the_interactions_path(
    public_url, path, expected, live_settings, cometchat, basic_auth, seen
):
    app = make_app({**live_settings, "PUBLIC_URL": public_url, "INTERACTIONS_PATH": path}, survey_bot(seen))
    say(app, basic_auth, "/form")
    [form] = interactive_messages(cometchat, app)
    assert form.action()["url"] == expected
    # ... and the app answers submissions there.
    assert submit(app, kit_body(form.token(), form.message_id), path=path).status_code == 200
    assert bot_app(app).wait_idle(5) and len(seen.runs) == 1


def test_without_public_url_a_live_bot_cannot_send_a_form_and_says_why(
    live_settings, cometchat, basic_auth, seen, caplog
):
    app = make_app(live_settings, survey_bot(seen))  # live, but no PUBLIC_URL
    caplog.set_level(logging.INFO)
    say(app, basic_auth, "/form")
    assert cometchat.calls(app) == []  # not even the text that came before the form
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "set PUBLIC_URL" in caplog.text  # the traceback names the setting
    assert scrape(app)[("cometchat_bot_handler_seconds_count", (("outcome", "handler_error"),))] == 1


# ------------------------------------------------------------------ submissions (the v4 web kit's body)


@pytest.mark.parametrize("as_number", [True, False], ids=["id-number", "id-string"])
def test_a_submission_runs_on_submit_with_the_values_user_element_and_message_id(as_number, app, form, cometchat, seen):
    message_id = int(form.message_id) if as_number else form.message_id
    response = submit(app, kit_body(form.token(), message_id))
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["status"] == "accepted" and answer["submission"]
    calls = cometchat.calls(app)
    [run] = seen.runs
    assert run == {
        "user": "alice",
        "values": KIT_VALUES,
        "interaction": "survey",
        "element": "submit",
        "message_id": form.message_id,  # the id CometChat gave the form, recorded for its muid
        "muid": form.body["muid"],
        "original": form.body,  # the form as the bot sent it
        "timezone": "Europe/Paris",
        "category": "interaction",
        "conversation": ALICE_CONVERSATION,
        "parent": None,
        "group": False,
    }
    reply = calls[-1]
    assert (reply.method, reply.path) == ("POST", BOT_PATH)
    assert (reply.body["receiver"], reply.body["receiverType"], reply.body["data"]["text"]) == (
        "alice",
        "user",
        "Thanks, alice!",
    )
    assert len(calls) == 3  # the intro, the form, the answer


def test_a_kit_that_leaves_out_the_message_id_gets_the_recorded_one(app, form, seen):
    body = kit_body(form.token(), form.message_id)
    del body["data"]["messageId"]
    assert submit(app, body).status_code == 200
    assert bot_app(app).wait_idle(5)
    assert [run["message_id"] for run in seen.runs] == [form.message_id]


def test_a_message_id_that_is_not_the_forms_is_refused(app, form, cometchat, seen):
    before = len(cometchat.calls(app))
    error = assert_error(submit(app, kit_body(form.token(), int(form.message_id) + 1)), 403, "invalid_token")
    assert form.message_id in error["message"]
    assert seen.runs == [] and len(cometchat.calls(app)) == before


def test_a_group_form_is_answered_in_the_group_and_each_member_submits_once(app, cometchat, basic_auth, seen):
    say(app, basic_auth, "/form", group="ops-room", sender="bob")
    [form] = interactive_messages(cometchat, app)
    assert (form.body["receiver"], form.body["receiverType"]) == ("ops-room", "group")
    assert claims_of(app, form.token()).user == ""  # anyone in the group may submit

    def body(user):
        return kit_body(
            form.token(), form.message_id, user=user, receiver="ops-room", receiver_type="group",
            conversation="group_ops-room", values={"name": user},
        )  # fmt: skip

    assert submit(app, body("bob")).status_code == 200
    assert submit(app, body("carol")).status_code == 200
    assert_error(submit(app, body("bob")), 409, "already_submitted")
    calls = cometchat.calls(app)
    assert [(run["user"], run["values"], run["group"]) for run in seen.runs] == [
        ("bob", {"name": "bob"}, True),
        ("carol", {"name": "carol"}, True),
    ]
    answers = [c.body for c in calls if c.body.get("category") == "message" and "Thanks" in c.body["data"]["text"]]
    assert [(b["receiver"], b["receiverType"], b["data"]["text"]) for b in answers] == [
        ("ops-room", "group", "Thanks, bob!"),
        ("ops-room", "group", "Thanks, carol!"),
    ]
    assert all(c.path == BOT_PATH for c in calls)


def test_a_group_submission_that_does_not_say_who_clicked_is_a_400(app, cometchat, basic_auth, seen):
    say(app, basic_auth, "/form", group="ops-room", sender="bob")
    [form] = interactive_messages(cometchat, app)
    body = kit_body(form.token(), form.message_id, receiver="ops-room", receiver_type="group")
    del body["data"]["interactedBy"]
    error = assert_error(submit(app, body), 400, "invalid_callback")
    assert "data.interactedBy" in error["fields"]
    assert bot_app(app).wait_idle(5) and seen.runs == []


def test_a_form_answering_a_thread_message_is_posted_and_answered_in_that_thread(app, cometchat, basic_auth, seen):
    say(app, basic_auth, "/form", group="ops-room", sender="bob", parent_id="500")
    [form] = interactive_messages(cometchat, app)
    assert (form.call.method, form.call.path, form.call.headers["onbehalfof"]) == (
        "POST",
        "/v3/messages/500/thread",
        BOT_UID,
    )
    body = kit_body(
        form.token(), form.message_id, user="carol", receiver="ops-room", receiver_type="group",
        conversation="group_ops-room",
    )  # fmt: skip
    assert submit(app, body).status_code == 200
    answer = cometchat.calls(app)[-1]
    assert [run["parent"] for run in seen.runs] == ["500"]
    assert (answer.method, answer.path, answer.headers["onbehalfof"]) == ("POST", "/v3/messages/500/thread", BOT_UID)
    assert (answer.body["receiver"], answer.body["receiverType"], answer.body["data"]["text"]) == (
        "ops-room",
        "group",
        "Thanks, carol!",
    )


def test_a_form_that_opened_a_thread_is_answered_in_that_thread(app, cometchat, basic_auth, seen):
    """``Form(..., in_thread=True)`` answering a top-level message goes into a new thread under that message; the
    answer to its submission belongs in the same thread, next to the form."""
    message_id = say(app, basic_auth, "/threadform", group="ops-room", sender="bob")
    [form] = interactive_messages(cometchat, app)
    assert form.call.path == f"/v3/messages/{message_id}/thread"
    body = kit_body(
        form.token(), form.message_id, user="bob", receiver="ops-room", receiver_type="group",
        conversation="group_ops-room",
    )  # fmt: skip
    assert submit(app, body).status_code == 200
    answer = cometchat.calls(app)[-1]
    assert answer.body["data"]["text"] == "Thanks, bob!"
    assert answer.path == f"/v3/messages/{message_id}/thread"


# ------------------------------------------------------------------ other kits: values under the dataKey


@pytest.mark.parametrize("data_key", ["CometChatData", "cometchatData"])
@pytest.mark.parametrize("token_at", ["top-level", "payload"])
def test_values_under_the_data_key_and_the_token_at_the_top_or_in_payload(
    data_key, token_at, app, form, cometchat, seen
):
    values = {"name": "Alice Martin", "topics": ["api"]}
    body: dict[str, Any] = {data_key: values, "interactedBy": "alice"}
    if token_at == "top-level":
        body["token"] = form.token()
    else:
        body["payload"] = {"token": form.token()}
    assert submit(app, body).status_code == 200
    assert bot_app(app).wait_idle(5)
    [run] = seen.runs
    assert (run["user"], run["values"], run["element"], run["message_id"]) == (
        "alice",
        values,
        "submit",
        form.message_id,  # not in the body: taken from the record of the form
    )
    assert cometchat.calls(app)[-1].body["data"]["text"] == "Thanks, alice!"


def test_a_1to1_submission_without_interacted_by_is_the_forms_user(app, form, seen):
    assert submit(app, {"token": form.token(), "CometChatData": {"name": "A"}}).status_code == 200
    assert bot_app(app).wait_idle(5)
    assert [(run["user"], run["values"]) for run in seen.runs] == [("alice", {"name": "A"})]


# ------------------------------------------------------------------ rejections


def tampered_signature(app, form, mp=None) -> dict:
    """One character of the signature changed (its first: all six bits of it count, unlike the last one's)."""
    rest, signature = form.token().rsplit(".", 1)
    changed = ("A" if signature[0] != "A" else "B") + signature[1:]
    return kit_body(f"{rest}.{changed}", form.message_id)


def tampered_claims(app, form, mp=None) -> dict:
    """The claims changed (another user) with the old signature kept."""
    _, timestamp, signature = form.token().rsplit(".", 2)
    other = Tokens(b"whatever", max_age=60).mint(Claims(**{**claims_of(app, form.token()).__dict__, "user": "mallory"}))
    return kit_body(".".join([other.rsplit(".", 2)[0], timestamp, signature]), form.message_id, user="mallory")


def other_secret(app, form, mp=None) -> dict:
    claims = claims_of(app, form.token())
    return kit_body(Tokens(b"not the app's secret", max_age=3600).mint(claims), form.message_id)


def other_bot(app, form, mp=None) -> dict:
    claims = Claims(**{**claims_of(app, form.token()).__dict__, "bot": "another-bot"})
    return kit_body(tokens_of(app).mint(claims), form.message_id)


def expired(app, form, mp) -> dict:
    ttl = bot_app(app).settings.interaction_ttl
    claims = claims_of(app, form.token())
    with mp.context() as m:  # itsdangerous's own clock, set back beyond the token's lifetime
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time() - ttl - 60))
        token = tokens_of(app).mint(claims)
    return kit_body(token, form.message_id)


def wrong_user(app, form, mp=None) -> dict:
    return kit_body(form.token(), form.message_id, user="mallory")


def wrong_element(app, form, mp=None) -> dict:
    return kit_body(form.token(), form.message_id, element="approve")


def wrong_message(app, form, mp=None) -> dict:
    return kit_body(form.token(), "1")


def no_token(app, form, mp=None) -> dict:
    body = kit_body(form.token(), form.message_id)
    body["payload"] = {"kind": "demo_form"}
    return body


def empty_token(app, form, mp=None) -> dict:
    return kit_body("", form.message_id)


def data_not_an_object(app, form, mp=None) -> dict:
    body = kit_body(form.token(), form.message_id)
    body["data"] = ["alice"]
    return body


def array_body(app, form, mp=None) -> list:
    return [kit_body(form.token(), form.message_id)]


REJECTIONS = {
    "tampered-signature": (tampered_signature, 403, "invalid_token"),
    "tampered-claims": (tampered_claims, 403, "invalid_token"),
    "other-secret": (other_secret, 403, "invalid_token"),
    "other-bot": (other_bot, 403, "invalid_token"),
    "expired": (expired, 410, "token_expired"),
    "wrong-user": (wrong_user, 403, "wrong_submitter"),
    "wrong-element": (wrong_element, 403, "invalid_token"),
    "wrong-message-id": (wrong_message, 403, "invalid_token"),
    "no-token": (no_token, 400, "invalid_callback"),
    "empty-token": (empty_token, 400, "invalid_callback"),
    "data-not-object": (data_not_an_object, 400, "invalid_callback"),
    "array": (array_body, 400, "invalid_callback"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_a_bad_submission_is_refused_with_its_status_and_code_and_runs_nothing(
    case, app, form, cometchat, seen, monkeypatch
):
    make, status, code = REJECTIONS[case]
    body = make(app, form, monkeypatch)
    before = len(cometchat.calls(app))
    response = submit(app, body)
    assert_error(response, status, code)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert len(cometchat.calls(app)) == before and seen.runs == []
    # The refusal does not use the token up: the real submission still goes through.
    assert submit(app, kit_body(form.token(), form.message_id)).status_code == 200
    assert bot_app(app).wait_idle(5) and len(seen.runs) == 1


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_json"),
        (b"", {}, 400, "invalid_json"),
        (b'{"token": "x"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"token=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b'{"token": "' + b"x" * (256 * 1024) + b'"}', {}, 413, "request_entity_too_large"),
    ],
    ids=["not-json", "empty", "text-plain", "form-encoded", "oversize"],
)
def test_a_body_that_is_no_usable_json_is_refused(raw, headers, status, code, app, cometchat, seen):
    response = submit(app, raw, headers=headers)
    assert_error(response, status, code)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert cometchat.calls(app) == [] and seen.runs == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405(method, app):
    response = app.test_client().open(ENDPOINT, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_the_same_submission_twice_is_refused_and_handled_once(app, form, cometchat, seen):
    body = kit_body(form.token(), form.message_id)
    assert submit(app, body).status_code == 200
    assert bot_app(app).wait_idle(5)
    error = assert_error(submit(app, body), 409, "already_submitted")
    assert error["message"]
    # Other values do not make it a new submission either.
    assert_error(submit(app, kit_body(form.token(), form.message_id, values={"name": "B"})), 409, "already_submitted")
    texts = [c.body["data"].get("text") for c in cometchat.calls(app)]
    assert len(seen.runs) == 1 and texts.count("Thanks, alice!") == 1


@pytest.mark.parametrize("group", [None, "ops-room"], ids=["one-to-one", "group"])
def test_a_replay_in_other_letter_case_is_still_a_replay(group, app, cometchat, basic_auth, seen):
    """CometChat uids are lower case (PLATFORM.md, "Things a framework must handle" 3): ``ALICE`` is alice (the
    1:1 check already compares them so), so her second submission must not pass as someone else's first."""
    say(app, basic_auth, "/form", group=group)
    [form] = interactive_messages(cometchat, app)
    where = {"receiver": group, "receiver_type": "group", "conversation": f"group_{group}"} if group else {}
    assert submit(app, kit_body(form.token(), form.message_id, user="alice", **where)).status_code == 200
    assert bot_app(app).wait_idle(5)
    assert_error(submit(app, kit_body(form.token(), form.message_id, user="ALICE", **where)), 409, "already_submitted")
    assert bot_app(app).wait_idle(5)
    assert len(seen.runs) == 1


def test_card_buttons_are_separate_submissions(app, cometchat, basic_auth, seen):
    say(app, basic_auth, "/card")
    [card] = interactive_messages(cometchat, app)
    for element in ("basic", "pro"):
        body = kit_body(card.token(element), card.message_id, element=element, values={}, message_type="card")
        del body["data"]["formData"]  # cards send no values
        assert submit(app, body).status_code == 200
    assert bot_app(app).wait_idle(5)
    assert [(run["interaction"], run["element"], run["values"]) for run in seen.runs] == [
        ("plan", "basic", {}),
        ("plan", "pro", {}),
    ]
    # One token per button: the basic button's token does not work for the pro button.
    body = kit_body(card.token("basic"), card.message_id, element="pro", message_type="card")
    assert_error(submit(app, body), 403, "invalid_token")


def test_tokens_expire_after_max_age_by_itsdangerous_clock(monkeypatch):
    tokens = Tokens(b"secret", max_age=5)
    claims = Claims("bot", "survey", "submit", "m-1", "c", "alice", "user", "alice")
    assert tokens.verify(tokens.mint(claims)) == claims
    with monkeypatch.context() as m:
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 10)
        old = tokens.mint(claims)
    with pytest.raises(ExpiredToken):
        tokens.verify(old)
    assert Tokens(b"secret", max_age=60).verify(old) == claims  # the same token, a longer lifetime
    with pytest.raises(InvalidToken):
        Tokens(b"other", max_age=60).verify(old)
    # The signature is HMAC-SHA256 (not itsdangerous's SHA-1 default).
    sha1 = URLSafeTimedSerializer(b"secret", salt=SALT, signer_kwargs={"digest_method": hashlib.sha1})
    with pytest.raises(InvalidToken):
        tokens.verify(sha1.dumps(claims.to_token()))


# ------------------------------------------------------------------ CORS (the kit calls from a browser)


def test_a_preflight_is_answered_204_for_any_origin(app):
    response = app.test_client().options(
        ENDPOINT,
        headers={
            "Origin": "https://chat.customer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in [m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")]
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers  # no cookies: the token authenticates


def test_answers_to_posts_carry_the_allow_origin_header(app, form):
    accepted = submit(app, kit_body(form.token(), form.message_id), headers={"Origin": "https://a.example"})
    again = submit(app, kit_body(form.token(), form.message_id), headers={"Origin": "https://a.example"})
    assert (accepted.status_code, again.status_code) == (200, 409)
    for response in (accepted, again):
        assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_callback_endpoint_is_not_opened_to_browsers(app, basic_auth):
    response = app.test_client().post(CALLBACK, json=make_callback("hi", bot=BOT_UID), headers=basic_auth)
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


# ------------------------------------------------------------------ metrics


def test_submissions_are_counted_by_outcome(app, form, monkeypatch):
    good = kit_body(form.token(), form.message_id)
    assert submit(app, good).status_code == 200
    assert submit(app, good).status_code == 409
    assert submit(app, wrong_user(app, form)).status_code == 403
    assert submit(app, other_secret(app, form)).status_code == 403
    assert submit(app, expired(app, form, monkeypatch)).status_code == 410
    assert submit(app, no_token(app, form)).status_code == 400
    assert submit(app, b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert app.test_client().options(ENDPOINT).status_code == 204  # preflights are not submissions
    assert bot_app(app).wait_idle(5)
    assert counted(app, "cometchat_bot_interactions_total") == {
        "accepted": 1,
        "rejected_409": 1,
        "rejected_403": 2,
        "rejected_410": 1,
        "rejected_400": 1,
        "rejected_415": 1,
    }
    # Submissions are not callbacks: only the /form callback is counted there.
    assert counted(app, "cometchat_bot_callbacks_total") == {"accepted": 1}


# ------------------------------------------------------------------ order: the lane of the conversation


def test_a_submission_waits_for_an_earlier_slow_message_of_its_conversation(settings, cometchat, basic_auth, seen):
    started, release = threading.Event(), threading.Event()
    order: list[str] = []
    slow = Router("slow")

    @slow.on_command("slow")
    def slow_handler(msg):
        started.set()
        assert release.wait(5), "the test did not release the slow handler"
        order.append("slow")
        return "slow done"

    app = make_app(settings, slow, survey_bot(seen))
    journal = bot_app(app).delivery.journal
    say(app, basic_auth, "/form")
    [form] = interactive_messages(cometchat, app)
    slow_id = say(app, basic_auth, "/slow")
    assert started.wait(5)
    try:
        response = submit(app, kit_body(form.token(), form.message_id))
        assert response.status_code == 200  # answered at once, handled later
        lane = journal.read("SELECT message_id, owner IS NOT NULL FROM inbox WHERE conversation = ? ORDER BY seq",
                            (ALICE_CONVERSATION,))  # fmt: skip
        assert lane == [(slow_id, 1), (response.get_json()["submission"], 0)]  # waiting behind /slow, unclaimed
        # Another conversation is not held up by alice's slow message: a group gets its form meanwhile.
        say(app, basic_auth, "/form", group="ops-room", sender="bob")
        assert wait_for(lambda: len(cometchat.server.log) == 4, 5)
        assert seen.runs == [] and order == []
    finally:
        release.set()
    calls = cometchat.calls(app)
    assert order == ["slow"]
    assert [run["user"] for run in seen.runs] == ["alice"]
    texts = [c.body["data"].get("text") for c in calls]
    assert texts == ["Please fill this in:", None, "Please fill this in:", None, "slow done", "Thanks, alice!"]
    assert [c.body["receiver"] for c in calls] == ["alice", "alice", "ops-room", "ops-room", "alice", "alice"]


# ------------------------------------------------------------------ local mode and the testing helpers


def test_local_mode_buttons_point_at_the_bare_path_and_bot_test_client_submits(seen):
    with BotTestClient.for_routers(survey_bot(seen)) as client:
        _, form = client.send("/form")
        assert form.actions()["submit"]["url"] == ENDPOINT  # the playground is served by the app itself
        [answer] = client.submit(form, {"name": "Ana"})
        assert answer.text == "Thanks, alice!" and answer.receiver == "alice"
        assert [(run["user"], run["values"]) for run in seen.runs] == [("alice", {"name": "Ana"})]
        body = {"payload": form.actions()["submit"]["payload"], "data": {"interactedBy": "alice"}}
        assert_error(client.post_interaction(ENDPOINT, body), 409, "already_submitted")
        _, group_form = client.send("/form", group="team")
        with pytest.raises(ValueError, match="in a group"):
            client.submit(group_form, {"name": "x"})


# ------------------------------------------------------------------ Redis + RQ mode


@pytest.mark.redis
def test_in_redis_mode_a_submission_is_checked_against_redis_and_queued_in_its_lane(
    redis_server, settings, cometchat, basic_auth, seen
):
    Redis.from_url(redis_server).flushall()
    app = make_app({**settings, "REDIS_URL": redis_server}, survey_bot(seen))
    delivery = bot_app(app).delivery
    say(app, basic_auth, "/form")
    delivery.work(burst=True)  # an RQ worker, in this process, until the queue is empty
    [form] = interactive_messages(cometchat, app)
    assert delivery.sent(form.body["muid"]).message_id == form.message_id  # recorded in Redis for the web side

    later = say(app, basic_auth, "/card")  # queued, not run yet
    assert_error(submit(app, kit_body(form.token(), "1")), 403, "invalid_token")  # the id is checked
    response = submit(app, kit_body(form.token(), form.message_id))
    assert response.status_code == 200
    submission_id = response.get_json()["submission"]
    job = job_for(submission_id, BOT_UID, delivery.redis)
    assert job.dependency_ids == [job_for(later, BOT_UID, delivery.redis).id]  # behind /card, in alice's lane
    assert_error(submit(app, kit_body(form.token(), form.message_id)), 409, "already_submitted")

    delivery.work(burst=True)
    calls = cometchat.calls(app)
    assert [c.body["type"] for c in calls] == ["text", "form", "card", "text"]
    assert calls[-1].body["data"]["text"] == "Thanks, alice!"
    assert [(run["user"], run["message_id"], run["original"]) for run in seen.runs] == [
        ("alice", form.message_id, form.body)
    ]


def test_in_redis_mode_redis_down_is_a_503_not_a_500(settings, tmp_path, cometchat, seen):
    """As the callback does (tests/test_redis_queue.py): the kit may try again later; a 500 says the app is broken."""
    app = make_app({**settings, "REDIS_URL": f"unix://{tmp_path}/no-such.sock"}, survey_bot(seen))
    token = tokens_of(app).mint(
        Claims(BOT_UID, "survey", "submit", "muid-1", ALICE_CONVERSATION, "alice", "user", "alice")
    )
    response = submit(app, kit_body(token, "9100"))
    assert_error(response, 503, "unavailable")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
