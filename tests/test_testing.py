"""The helpers users test their handlers with (bot.testing): make_callback, make_message and BotTestClient."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
from redis import Redis, RedisError

from bot import Custom, Image, Router
from bot.pipeline import Pipeline
from bot.schemas import parse_callback
from bot.settings import Settings
from bot.testing import BotTestClient, make_callback, make_message, redis_server


@pytest.fixture
def router() -> Router:
    router = Router()

    @router.on_text(r"^weather (?P<city>.+)")
    def weather(msg, city):
        return f"Sunny in {city}"

    @router.on_text("^slow")
    def slow(msg):
        msg.reply("working on it")
        return "done"

    @router.on_type("image")
    def image(msg):
        return [f"Nice picture, {msg.sender.name}!", Image(url=msg.attachments[0].url)]

    @router.on_custom("location")
    def location(msg):
        return Custom("location", {**msg.custom_data, "label": "here"})

    @router.on_action("edited")
    def edited(msg):
        return f"edit seen ({msg.action})"

    return router


@pytest.fixture
def client(router):
    with BotTestClient.for_routers(router) as client:
        yield client


# ------------------------------------------------------------------ make_callback / make_message

#: make_callback options -> what the parsed Message must show (dotted paths into the message).
CALLBACK_OPTIONS = {
    "text": ({"text": "hi"}, {"category": "message", "type": "text", "text": "hi", "is_group": False}),
    "sender": (
        {"text": "hi", "sender": "bob", "sender_name": "Bobby"},
        {"sender.uid": "bob", "sender.name": "Bobby", "reply_target.receiver": "bob"},
    ),
    "default-sender-name": ({"text": "hi", "sender": "bob"}, {"sender.name": "Bob"}),
    "one-to-one": ({"text": "hi"}, {"receiver": "bot", "conversation_id": "alice_user_bot", "is_group": False}),
    "group": (
        {"text": "hi", "group": "ops"},
        {"is_group": True, "receiver": "ops", "conversation_id": "group_ops", "reply_target.receiver_type": "group"},
    ),
    "image": (
        {"type": "image", "url": "https://x/c.png"},
        {"type": "image", "attachments.0.url": "https://x/c.png", "attachments.0.mime_type": "image/png"},
    ),
    "default-media-url": (
        {"type": "video", "id": "77"},
        {"attachments.0.url": "https://data-eu.cometchat.io/app/media/77.mp4", "attachments.0.size": 1024},
    ),
    "attachments": (
        {"type": "file", "attachments": [{"url": "https://x/r.pdf", "name": "r.pdf", "size": "2048"}]},
        {"attachments.0.name": "r.pdf", "attachments.0.size": 2048},
    ),
    "mentions": (
        {"text": "hi", "mentions": ["bot", "carol"], "group": "ops"},
        {"mentions.0.uid": "bot", "mentions.1.name": "Carol", "bot_mentioned": True, "text": "@Carol hi"},
    ),
    "bare-mention": (
        {"mentions": ["bot"], "group": "ops"},
        {"bot_mentioned": True, "text": "", "raw_text": "<@uid:bot>"},
    ),
    "custom": (
        {"type": "poll", "custom_data": {"q": 1}},
        {"category": "custom", "type": "poll", "custom_data": {"q": 1}, "text": ""},
    ),
    "metadata": ({"text": "hi", "metadata": {"intent": "x"}}, {"metadata": {"intent": "x"}}),
    "action": ({"action": "edited"}, {"category": "action", "type": "message", "action": "edited", "is_action": True}),
    "category": (
        {"text": "hi", "category": "interactive", "type": "form"},
        {"category": "interactive", "type": "form"},
    ),
    "thread": ({"text": "hi", "id": 42, "parent_id": "7"}, {"id": "42", "parent_id": "7"}),
    "bot": ({"text": "hi", "bot": "helper"}, {"bot_uid": "helper", "receiver": "helper"}),
    "webhook-v2": ({"text": "hi", "trigger": "message_sent"}, {"trigger": "message_sent", "text": "hi"}),
}


def pick(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@pytest.mark.parametrize(("kwargs", "expected"), CALLBACK_OPTIONS.values(), ids=list(CALLBACK_OPTIONS))
def test_make_callback_options_build_what_the_real_schema_accepts(kwargs, expected):
    kwargs = dict(kwargs)
    msg = parse_callback(make_callback(kwargs.pop("text", None), **kwargs)).message
    assert msg is not None
    assert {path: pick(msg, path) for path in expected} == expected


@pytest.mark.parametrize("kwargs", [kwargs for kwargs, _ in CALLBACK_OPTIONS.values()], ids=list(CALLBACK_OPTIONS))
def test_make_callback_options_are_accepted_by_the_callback_endpoint(kwargs, router):
    with BotTestClient.for_routers(router) as client:
        response = client.post(make_callback(**kwargs))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "accepted"


def test_make_callback_gives_each_message_its_own_id():
    ids = {make_callback("hi")["data"]["id"] for _ in range(50)}
    assert len(ids) == 50


def test_make_callback_shapes_match_the_two_callback_kinds():
    bot_callback = make_callback("hi")
    assert (bot_callback["trigger"], bot_callback["bot"], bot_callback["data"]["data"]["text"]) == (
        "after_message",
        "bot",
        "hi",
    )
    v2 = make_callback("hi", trigger="message_sent")
    assert v2["trigger"] == "message_sent" and "bot" not in v2 and v2["data"]["message"]["data"]["text"] == "hi"


def test_make_message_is_the_message_a_handler_gets():
    msg = make_message("weather Paris", sender="bob", id="5", group="ops")
    assert (msg.id, msg.text, msg.sender.uid, msg.receiver, msg.bot_uid) == ("5", "weather Paris", "bob", "ops", "bot")
    assert msg.raw["data"]["text"] == "weather Paris"  # the message object as a callback would carry it
    with pytest.raises(RuntimeError):
        msg.reply("not being handled")


# ------------------------------------------------------------------ BotTestClient


def test_send_returns_the_replies_that_callback_caused(client):
    replies = client.send("weather Paris")
    assert replies.texts == ["Sunny in Paris"]
    assert (replies[0].receiver, replies[0].receiver_type, replies[0].type, replies[0].category) == (
        "alice",
        "user",
        "text",
        "message",
    )
    assert client.send("weather Rome").texts == ["Sunny in Rome"]  # only this callback's replies
    assert client.send("nothing matches") == []


def test_send_returns_media_custom_and_interim_replies_in_order(client):
    image = client.send(type="image", url="https://x/c.png", sender_name="Ann")
    assert image.texts == ["Nice picture, Ann!", None]
    assert (image[1].type, image[1].attachments[0]["url"]) == ("image", "https://x/c.png")
    location = client.send(type="location", custom_data={"lat": 1})
    assert (location[0].category, location[0].type, location[0].custom_data) == (
        "custom",
        "location",
        {"lat": 1, "label": "here"},
    )
    assert client.send("slow").texts == ["working on it", "done"]  # msg.reply() first


def test_send_passes_make_callback_options_through(client):
    replies = client.send("weather Oslo", group="ops", sender="bob")
    assert [(r.receiver, r.receiver_type) for r in replies] == [("ops", "group")]
    assert client.send(action="edited").texts == ["edit seen (edited)"]
    assert client.send("weather Oslo", sender="bot") == []  # the bot's own message: never answered


def test_send_payload_takes_a_sample_callback(client, payload):
    callback = payload("custom_location")
    replies = client.send_payload(callback)
    assert replies[0].custom_data["label"] == "here"
    assert replies[0].receiver == callback["data"]["sender"]


def test_send_payload_reports_a_rejected_callback(client):
    with pytest.raises(AssertionError, match="400"):
        client.send_payload({"trigger": "after_message"})
    assert client.post({"trigger": "after_message"}).get_json()["error"]["fields"]["data"]


def test_routers_are_tried_in_the_order_given():
    first, second = Router(), Router()
    first.on_text("^x$")(lambda msg: "first")
    second.on_text("^(x|y)$")(lambda msg: "second")
    with BotTestClient.for_routers(first, second) as client:
        assert client.send("x").texts == ["first"]
        assert client.send("y").texts == ["second"]


def test_the_client_sends_the_apps_basic_auth(router, tmp_path):
    settings = Settings(callback_username="u", callback_password="p", journal_path=str(tmp_path / "j.sqlite3"))
    with BotTestClient.for_routers(router, settings=settings) as client:
        assert client.send("weather Paris").texts == ["Sunny in Paris"]
        assert client.post(make_callback("weather Paris"), auth=False).status_code == 401


def test_raw_bodies_are_posted_as_they_are(client):
    assert client.post(b"{broken").get_json()["error"]["code"] == "invalid_json"
    assert client.post("{}", headers={"Content-Type": "text/plain"}).status_code == 415


def test_a_handler_that_does_not_finish_in_time_fails_the_send(router):
    release = threading.Event()
    router.add_fallback(lambda msg: release.wait(5) and "late")
    with BotTestClient.for_routers(router) as client:
        client.timeout = 0.2
        try:
            with pytest.raises(AssertionError, match=re.escape("did not finish within 0.2 s")):
                client.send("hang")
        finally:
            release.set()
        client.timeout = 5
        assert client.state.wait_idle(5)


def test_the_client_needs_an_app_in_local_mode(live_app):
    with pytest.raises(TypeError, match="local mode"):
        BotTestClient(live_app)


def test_leaving_the_with_block_stops_the_apps_threads(router):
    before = set(threading.enumerate())
    with BotTestClient.for_routers(router) as client:
        assert client.send("weather Paris").texts == ["Sunny in Paris"]
        pipeline = client.state.delivery
        assert pipeline in Pipeline.instances
        started = set(threading.enumerate()) - before
        assert started, "the app runs background threads"
    assert pipeline not in Pipeline.instances
    deadline = time.monotonic() + 5
    while any(thread.is_alive() for thread in started) and time.monotonic() < deadline:
        for thread in started:
            thread.join(0.05)
    assert [thread.name for thread in started if thread.is_alive()] == []


def test_the_with_block_cleans_up_after_a_failing_test(router):
    with pytest.raises(ZeroDivisionError), BotTestClient.for_routers(router) as client:
        pipeline = client.state.delivery
        raise ZeroDivisionError
    assert pipeline not in Pipeline.instances


def test_redis_server_answers_while_open_and_is_stopped_after(tmp_path):
    with redis_server(tmp_path) as url:
        client = Redis.from_url(url)
        assert client.set("k", "v") and client.get("k") == b"v"
    with pytest.raises(RedisError):
        client.ping()
    client.close()


def test_redis_server_that_cannot_start_is_a_clear_error(tmp_path):
    # A unix socket path longer than the kernel allows (108 bytes): redis-server exits at once.
    folder = tmp_path / ("x" * 120)
    folder.mkdir()
    with pytest.raises(RuntimeError, match="redis-server did not start"), redis_server(folder, timeout=5):
        pass


def test_the_journal_directory_of_for_routers_goes_with_the_client(router):
    with BotTestClient.for_routers(router) as client:
        folder = os.path.dirname(client.state.settings.journal_path)
        assert client.send("weather Paris").texts == ["Sunny in Paris"]
        assert os.path.exists(os.path.join(folder, "journal.sqlite3"))
    assert not os.path.exists(folder)
