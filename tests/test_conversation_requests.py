"""Threads, edits, deletes, reactions and read marks, end to end against the fake CometChat API.

The app runs live (``live_settings``) with handlers of this module; every request it makes reaches
pytest-httpserver, whose answers give each created message an id of its own (9100, 9101, ...) so that a later
edit or delete can be checked to go to the right message. Paths are compared as sent on the wire.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from pytest_httpserver import HTTPServer

import config
from bot import Router, Text
from bot.factory import bot_app, build_app
from bot.interactive import Form, TextInput
from bot.testing import make_callback
from tests.conftest import API_KEY, BOT_UID
from tests.fakes import Call, NumberingCometChat

CALLBACK = "/cometchat/callback"
BOT_PATH = f"/v3/bots/{BOT_UID}/messages"
REPLY_KEYS = {"receiver", "receiverType", "category", "type", "data", "muid"}


@pytest.fixture
def cometchat(httpserver: HTTPServer) -> NumberingCometChat:
    return NumberingCometChat(httpserver)


# ------------------------------------------------------------------ the bot under test


def conversation_bot() -> Router:
    bot = Router("conversation")

    @bot.on_text("^answer")
    def answer(msg):
        return "an answer"

    @bot.on_text("^start a thread")
    def start_thread(msg):
        return Text("in a thread", in_thread=True)

    @bot.on_text("^main")
    def main(msg):
        return Text("in the main conversation", in_thread=False)

    @bot.on_text("^interim thread")
    def interim_thread(msg):
        msg.reply("working in the thread", in_thread=True)
        return "done"

    @bot.on_text("^think")
    def think(msg):
        ref = msg.reply("Thinking...")
        msg.edit(ref, "Done")

    @bot.on_text("^two")
    def two(msg):
        first = msg.reply("first")
        second = msg.reply("second")
        msg.edit(second, "second, edited")
        msg.edit(first, "first, edited")

    @bot.on_text("^oops")
    def oops(msg):
        ref = msg.reply("a mistake", "and another")
        msg.delete(ref)
        return "sorry"

    @bot.on_text("^like")
    def like(msg):
        msg.react("👍")

    @bot.on_text("^read")
    def read(msg):
        msg.mark_read()

    @bot.on_text("^everything")
    def everything(msg):
        msg.mark_read()
        msg.react("👀")
        first = msg.reply("Thinking...")
        second = msg.reply("scratch")
        msg.edit(first, "Thought")
        msg.delete(second)
        return "final"

    @bot.on_text("^edit refused")
    def edit_refused(msg):
        ref = msg.reply("refused")
        msg.edit(ref, "refused, edited")
        return "after the refusal"

    return bot


@pytest.fixture
def app(live_settings, cometchat) -> Flask:
    """The app as ``create_app(live_settings)`` builds it, with this module's handlers instead of ``bots/``."""
    return build_app(config.load(live_settings), [conversation_bot()], import_name=__name__)


def say(app: Flask, basic_auth: dict[str, str], text: str, **callback: Any) -> str:
    body = make_callback(text, bot=BOT_UID, **callback)
    response = app.test_client().post(CALLBACK, json=body, headers=basic_auth)
    assert response.status_code == 200 and response.get_json()["status"] == "accepted", response.get_data()
    return body["data"]["id"]


def lines(calls: list[Call]) -> list[str]:
    return [f"{c.method} {c.path}" for c in calls]


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("group", [None, "ops-room"], ids=["one-to-one", "group"])
def test_a_reply_to_a_thread_message_goes_to_that_thread_on_behalf_of_the_bot(group, app, cometchat, basic_auth):
    say(app, basic_auth, "answer me", group=group, parent_id="500")
    [call] = cometchat.calls(app)
    assert (call.method, call.path) == ("POST", "/v3/messages/500/thread")
    assert call.headers["onbehalfof"] == BOT_UID
    assert call.headers["apikey"] == API_KEY and call.headers["content-type"] == "application/json"
    body = call.body
    assert set(body) == REPLY_KEYS  # the same body as the Send Bot Message API's
    receiver = (group, "group") if group else ("alice", "user")
    assert (body["receiver"], body["receiverType"]) == receiver
    assert (body["category"], body["type"], body["data"]) == (
        "message",
        "text",
        {"text": "an answer", "metadata": {"@bot": BOT_UID}},
    )


def test_a_thread_reply_has_the_shape_of_a_main_conversation_reply(app, cometchat, basic_auth):
    say(app, basic_auth, "answer me")
    say(app, basic_auth, "answer me", parent_id="500")
    main, thread = cometchat.calls(app)
    assert (main.path, thread.path) == (BOT_PATH, "/v3/messages/500/thread")
    assert "onbehalfof" not in main.headers  # the bot API sends as the bot by itself
    strip = lambda body: {k: v for k, v in body.items() if k != "muid"}  # noqa: E731
    assert strip(main.body) == strip(thread.body)
    assert main.body["muid"] != thread.body["muid"]


def test_in_thread_true_opens_a_thread_under_a_top_level_message(app, cometchat, basic_auth):
    message_id = say(app, basic_auth, "start a thread", group="ops-room")
    [call] = cometchat.calls(app)
    assert (call.method, call.path, call.headers["onbehalfof"]) == (
        "POST",
        f"/v3/messages/{message_id}/thread",
        BOT_UID,
    )
    assert (call.body["receiver"], call.body["receiverType"], call.text) == ("ops-room", "group", "in a thread")


def test_in_thread_true_inside_a_thread_stays_in_it_threads_do_not_nest(app, cometchat, basic_auth):
    say(app, basic_auth, "start a thread", group="ops-room", parent_id="500")
    [call] = cometchat.calls(app)
    assert call.path == "/v3/messages/500/thread"


def test_in_thread_false_answers_a_thread_message_in_the_main_conversation(app, cometchat, basic_auth):
    say(app, basic_auth, "main please", group="ops-room", parent_id="500")
    [call] = cometchat.calls(app)
    assert (call.method, call.path) == ("POST", BOT_PATH)
    assert "onbehalfof" not in call.headers
    assert (call.body["receiver"], call.text) == ("ops-room", "in the main conversation")


def test_msg_reply_in_thread_then_the_returned_reply(app, cometchat, basic_auth):
    message_id = say(app, basic_auth, "interim thread", group="ops-room")
    interim, final = cometchat.calls(app)
    assert (interim.path, interim.text) == (f"/v3/messages/{message_id}/thread", "working in the thread")
    assert (final.path, final.text) == (BOT_PATH, "done")  # the returned reply was not asked into the thread


# ------------------------------------------------------------------ edits, deletes, reactions, read marks


def test_reply_then_edit_is_a_post_then_a_put_to_the_id_cometchat_gave(app, cometchat, basic_auth):
    say(app, basic_auth, "think hard")
    post, put = cometchat.calls(app)
    assert (post.method, post.path, post.text) == ("POST", BOT_PATH, "Thinking...")
    assert post.answer_id == "9100"
    assert (put.method, put.path) == ("PUT", f"/v3/messages/{post.answer_id}")
    assert put.headers["onbehalfof"] == BOT_UID and put.headers["apikey"] == API_KEY
    assert put.body == {"data": {"text": "Done"}}


def test_each_edit_goes_to_its_own_reply(app, cometchat, basic_auth):
    say(app, basic_auth, "two replies")
    first, second, edit_second, edit_first = cometchat.calls(app)
    assert (first.text, second.text) == ("first", "second")
    assert first.answer_id != second.answer_id
    assert (edit_second.method, edit_second.path, edit_second.body) == (
        "PUT",
        f"/v3/messages/{second.answer_id}",
        {"data": {"text": "second, edited"}},
    )
    assert (edit_first.path, edit_first.body) == (
        f"/v3/messages/{first.answer_id}",
        {"data": {"text": "first, edited"}},
    )


def test_delete_is_a_soft_delete_of_every_message_of_the_reply(app, cometchat, basic_auth):
    say(app, basic_auth, "oops")
    a, b, delete_a, delete_b, sorry = cometchat.calls(app)
    assert (a.text, b.text, sorry.text) == ("a mistake", "and another", "sorry")
    for delete, reply in ((delete_a, a), (delete_b, b)):
        assert (delete.method, delete.path) == ("DELETE", f"/v3/messages/{reply.answer_id}")
        assert delete.headers["onbehalfof"] == BOT_UID
        assert delete.body == {"permanent": False}


def test_react_posts_the_url_encoded_emoji_to_the_users_message(app, cometchat, basic_auth):
    message_id = say(app, basic_auth, "like this")
    [call] = cometchat.calls(app)
    assert (call.method, call.path) == ("POST", f"/v3/messages/{message_id}/reactions/%F0%9F%91%8D")
    assert call.headers["onbehalfof"] == BOT_UID and call.headers["apikey"] == API_KEY
    assert call.raw == b""


@pytest.mark.parametrize(
    ("group", "path"),
    [(None, "/v3/users/alice/conversation/read"), ("ops-room", "/v3/groups/ops-room/conversation/read")],
    ids=["one-to-one", "group"],
)
def test_mark_read_marks_the_conversation_read_for_the_bot(group, path, app, cometchat, basic_auth):
    say(app, basic_auth, "read this", group=group)
    [call] = cometchat.calls(app)
    assert (call.method, call.path, call.headers["onbehalfof"]) == ("POST", path, BOT_UID)
    assert call.raw == b""


def test_the_requests_of_one_message_keep_their_order(app, cometchat, basic_auth):
    message_id = say(app, basic_auth, "everything at once")
    calls = cometchat.calls(app)
    thinking, scratch = calls[2], calls[3]
    assert lines(calls) == [
        "POST /v3/users/alice/conversation/read",
        f"POST /v3/messages/{message_id}/reactions/%F0%9F%91%80",
        f"POST {BOT_PATH}",
        f"POST {BOT_PATH}",
        f"PUT /v3/messages/{thinking.answer_id}",
        f"DELETE /v3/messages/{scratch.answer_id}",
        f"POST {BOT_PATH}",
    ]
    assert [thinking.text, scratch.text, calls[4].body, calls[5].body, calls[6].text] == [
        "Thinking...",
        "scratch",
        {"data": {"text": "Thought"}},
        {"permanent": False},
        "final",
    ]


def test_requests_of_consecutive_messages_of_a_conversation_do_not_interleave(app, cometchat, basic_auth):
    say(app, basic_auth, "everything at once")
    say(app, basic_auth, "think again")
    say(app, basic_auth, "oops")
    texts = [c.text for c in cometchat.calls(app) if c.method == "POST" and c.path == BOT_PATH]
    assert texts == ["Thinking...", "scratch", "final", "Thinking...", "a mistake", "and another", "sorry"]
    methods = [c.method for c in cometchat.calls(app)]
    everything = ["POST", "POST", "POST", "POST", "PUT", "DELETE", "POST"]
    think = ["POST", "PUT"]
    oops = ["POST", "POST", "DELETE", "DELETE", "POST"]
    assert methods == [*everything, *think, *oops]


# ------------------------------------------------------------------ an edit of a reply that was never delivered


def test_an_edit_of_a_reply_refused_for_good_becomes_a_dead_letter_not_a_crash(app, cometchat, basic_auth, api_answer):
    status, _, error = api_answer("not_a_member_403")
    cometchat.refuse["refused"] = (status, error)
    message_id = say(app, basic_auth, "edit refused", group="ops-room")
    calls = cometchat.calls(app)
    # The refused reply was tried once (403 is final); the edit never reached CometChat; the handler's own
    # reply still went out after them.
    assert lines(calls) == [f"POST {BOT_PATH}", f"POST {BOT_PATH}"]
    assert (calls[0].status, calls[0].text) == (403, "refused")
    assert (calls[1].status, calls[1].text) == (200, "after the refusal")

    letters = bot_app(app).delivery.dead_letters()
    by_code = {letter["error_code"]: letter for letter in letters}
    assert set(by_code) == {"ERR_NOT_A_MEMBER", "ERR_REFERENCE_NOT_SENT"}
    edit = by_code["ERR_REFERENCE_NOT_SENT"]
    assert (edit["kind"], edit["message_id"], edit["conversation"]) == ("reply", message_id, "group_ops-room")
    assert json.loads(edit["body"]) == {"data": {"text": "refused, edited"}}
    assert json.loads(edit["meta"])["method"] == "PUT"
    assert by_code["ERR_NOT_A_MEMBER"]["path"] == f"/bots/{BOT_UID}/messages"

    result = app.test_cli_runner().invoke(args=["bot", "dead-letters"])
    assert result.exit_code == 0, result.output
    assert "ERR_REFERENCE_NOT_SENT" in result.output and "ERR_NOT_A_MEMBER" in result.output
    assert API_KEY not in result.output

    # The conversation goes on.
    say(app, basic_auth, "answer me", group="ops-room")
    assert cometchat.calls(app)[-1].text == "an answer"


# ------------------------------------------------------------------ a submission's mark_interacted


def test_mark_interacted_without_the_forms_id_resolves_it_from_the_forms_muid(live_settings, cometchat, basic_auth):
    bot = Router("forms")

    @bot.on_command("form")
    def form(msg):
        return Form("survey", "Survey", [TextInput("name", "Name")])

    @bot.on_submit("survey")
    def submitted(msg, values):
        msg.mark_interacted()
        return "thanks"

    app = build_app(config.load({**live_settings, "PUBLIC_URL": "https://bots.example.org"}), [bot])
    say(app, basic_auth, "/form")
    [form_call] = cometchat.calls(app)
    token = form_call.body["data"]["interactiveData"]["submitElement"]["action"]["payload"]["token"]
    # A kit that does not send the message id: the form's id is looked up by its muid when the PATCH is sent.
    response = app.test_client().post("/cometchat/interactions", json={"token": token, "CometChatData": {"name": "A"}})
    assert response.status_code == 200, response.get_data(as_text=True)
    _, patch, thanks = cometchat.calls(app)
    assert (patch.method, patch.path) == ("PATCH", f"/v3/messages/{form_call.answer_id}/interacted")
    assert patch.headers["onbehalfof"] == "alice"  # the user's client state, so on the user's behalf
    assert patch.body == {"interactions": ["submit"]}
    assert thanks.text == "thanks"
