"""The example handlers in bots/, through the real callback path (local mode, replies recorded)."""

from __future__ import annotations

import pytest

from bot.discovery import discover_routers
from bot.testing import BotTestClient
from bots import group, help, media, weather


@pytest.fixture
def client():
    with BotTestClient.for_routers(*discover_routers("bots")) as client:
        yield client


def test_readme_example_weather_command():
    with BotTestClient.for_routers(weather.bot) as client:
        replies = client.send("/weather Paris")
        assert replies.texts == ["Sunny in Paris today, 19°C."]
        assert replies[0].receiver == "alice"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/weather Paris tomorrow", weather.forecast("Paris", "tomorrow")),
        ("/w New York", weather.forecast("New York")),
        ("/weather", "Which city? Try /weather Paris or /weather Paris tomorrow."),
        ("what is the weather in Lyon?", weather.forecast("Lyon")),
        ("hello there", "Hello Alice! Type /help to see what I can do."),
        ("/help", help.HELP),
    ],
)
def test_text_examples(client, text, expected):
    assert client.send(text).texts == [expected]


def test_fallback_answers_one_to_one_but_not_group_chatter(client):
    assert client.send("tell me a joke").texts[0].startswith("Sorry, I don't know how to answer “tell me a joke”")
    assert client.send("deploy status?", group="ops") == []
    mentioned = client.send("tell me a joke", group="ops", mentions=["bot"])
    assert [(r.receiver, r.receiver_type) for r in mentioned] == [("ops", "group")]


def test_bare_mention_in_group(client):
    replies = client.send(None, group="ops", mentions=["bot"], sender="bob")
    assert replies.texts == ["Yes, Bob? Ask me about the weather (/weather Paris) or type /help."]
    assert replies[0].receiver_type == "group"


def test_image_is_praised_and_sent_back(client):
    replies = client.send(type="image", url="https://cdn.example.org/cat.jpg", sender_name="Alice")
    assert replies.texts[0] == "Nice picture, Alice!"
    assert (replies[1].type, replies[1].attachments[0]["url"]) == ("image", "https://cdn.example.org/cat.jpg")


def test_file_size_is_human_readable(client):
    attachment = {"url": "https://x/report.pdf", "name": "report.pdf", "mimeType": "application/pdf", "size": "120044"}
    replies = client.send(type="file", attachments=[attachment])
    assert replies.texts == ["Thanks for the file report.pdf (117.2 KB)."]


def test_location_and_vote(client):
    replies = client.send(custom_data={"latitude": 48.8566, "longitude": 2.3522}, type="location")
    assert replies.texts[0] == "You are at 48.8566, 2.3522."
    assert replies[1].category == "custom" and replies[1].custom_data["label"] == "You are here"
    vote = client.send(custom_data={"poll": "lunch", "option": "pizza"}, type="poll_vote")
    assert vote.texts == ["Thanks Alice, your vote for pizza in the lunch poll counts."]


def test_welcome_on_member_joined(client, payload):
    assert client.send_payload(payload("group_member_joined")).texts == ["Welcome to the group, Dave!"]


@pytest.mark.parametrize(
    ("size", "shown"), [(None, "unknown size"), (10, "10 bytes"), (2048, "2.0 KB"), (5 << 20, "5.0 MB")]
)
def test_human_size(size, shown):
    assert media.human_size(size) == shown


def test_every_example_module_is_discovered():
    names = [router.name for router in discover_routers("bots")]
    assert names == ["bots.group", "bots.help", "bots.media", "bots.weather"]
    assert group.bot.routes and help.bot.fallbacks
