"""The helpers users test their handlers with: payload builder and BotTestClient."""

from __future__ import annotations

import pytest

from bot import Image, Router
from bot.schemas import parse_callback
from bot.testing import BotTestClient, make_callback


@pytest.fixture
def router() -> Router:
    router = Router()

    @router.on_text(r"^weather (?P<city>.+)")
    def weather(msg, city):
        return f"Sunny in {city}"

    @router.on_type("image")
    def image(msg):
        return [f"Nice picture, {msg.sender.name}!", Image(url=msg.attachments[0].url)]

    return router


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"text": "hi"}, lambda m: (m.type, m.text, m.is_group) == ("text", "hi", False)),
        ({"text": "hi", "group": "ops"}, lambda m: (m.is_group, m.receiver) == (True, "ops")),
        (
            {"text": "hi", "sender": "bob", "sender_name": "Bob"},
            lambda m: (m.sender.uid, m.sender.name) == ("bob", "Bob"),
        ),
        ({"type": "image", "url": "https://x/c.png"}, lambda m: m.attachments[0].url == "https://x/c.png"),
        ({"text": "hi", "mentions": ["bot"]}, lambda m: [u.uid for u in m.mentions] == ["bot"]),
        ({"type": "poll", "custom_data": {"q": 1}}, lambda m: (m.category, m.custom_data) == ("custom", {"q": 1})),
        ({"action": "edited"}, lambda m: m.category == "action"),
        ({"text": "hi", "id": "42", "parent_id": "7"}, lambda m: (m.id, m.parent_id) == ("42", "7")),
    ],
    ids=["text", "group", "sender", "image", "mentions", "custom", "action", "thread"],
)
def test_make_callback_builds_what_the_real_schema_accepts(kwargs, check):
    text = kwargs.pop("text", None)
    msg = parse_callback(make_callback(text, **kwargs)).message
    assert check(msg)


def test_client_returns_the_replies_a_callback_caused(router):
    with BotTestClient.for_routers(router) as client:
        replies = client.send("weather Paris")
        assert replies.texts == ["Sunny in Paris"]
        assert (replies[0].receiver, replies[0].receiver_type) == ("alice", "user")
        image = client.send(type="image", url="https://x/c.png", sender_name="Ann")
        assert image.texts[0] == "Nice picture, Ann!" and image[1].attachments[0]["url"] == "https://x/c.png"
        assert client.send("nothing matches") == []


def test_client_posts_through_validation(router):
    with BotTestClient.for_routers(router) as client:
        assert client.post({"trigger": "after_message"}).status_code == 400
        assert client.send_payload(make_callback("weather Rome", group="g")).texts == ["Sunny in Rome"]
