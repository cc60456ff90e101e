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
    [root] = discover_routers("bots")  # the package's own router, the parent of every module's
    assert root.name == "bots"
    examples = ["bots.booking", "bots.group", "bots.help", "bots.media", "bots.weather"]
    # In name order (modules of yours may sit between them).
    assert [child.name for child in root.children if child.name in examples] == examples
    assert group.bot.routes and help.bot.fallbacks


# ------------------------------------------------------------------ booking: a dialog with a form


def test_booking_dialog_from_command_to_form_to_confirmation(client):
    assert client.send("/book").texts == ["Let's book a table. In which city? (/cancel stops at any time)"]
    intro, form = client.send("lisbon")
    assert intro.text == "Lisbon, good choice. A few details:"
    assert (form.category, form.type) == ("interactive", "form")
    assert form.interactive_data["title"] == "Table in Lisbon"
    assert [f["elementId"] for f in form.interactive_data["formFields"]] == ["name", "time", "party"]
    assert client.send("what now?").texts == ["Please fill in the form above (or /cancel)."]

    replies = client.submit(form, {"name": "Ana", "time": "19:30", "party": "4"})
    [confirmation] = replies
    assert confirmation.text == "Booked: a table for 3-4 people in Lisbon at 19:30, under Ana. See you!"
    assert confirmation.receiver == "alice"
    # The form is marked interacted for Ana's client, through the REST API, before the confirmation.
    [marked] = replies.actions
    assert replies.requests == [marked, confirmation]
    form_id = client.recorder.message_ids[form.muid]
    assert (marked.method, marked.path) == ("PATCH", f"/messages/{form_id}/interacted")
    assert marked.request.headers == {"onBehalfOf": "alice"} and marked.body == {"interactions": ["submit"]}
    # The dialog is over: the same form again is a stale one (a new token-holder submission would be refused as
    # a replay; another user cannot submit a 1:1 form at all).
    assert client.send("what now?").texts[0].startswith("Sorry, I don't know how to answer")


def test_booking_form_values_are_checked(client):
    client.send("/book")
    _, form = client.send("Porto")
    assert client.submit(form, {"name": "  ", "time": "19:30", "party": "2"}).texts == [
        "The booking needs a name; please fill it in and submit again."
    ]


def test_booking_can_be_cancelled_at_any_step(client):
    client.send("/book")
    assert client.send("/cancel").texts == ["Booking cancelled. Type /book to start again."]
    assert client.send("/cancel").texts[0].startswith("Sorry, I don't know")  # no dialog, no cancel route
    client.send("/book")
    _, form = client.send("Faro")
    client.send("/cancel")
    assert client.submit(form, {"name": "Ana", "time": "19:00", "party": "2"}).texts == [
        "That form belongs to a booking that is finished or cancelled. Type /book to start a new one."
    ]


def test_booking_in_a_group_keeps_each_users_answers_apart(client):
    client.send("/book", group="team", sender="ana")
    client.send("/book", group="team", sender="bob")
    client.send("Paris", group="team", sender="ana")
    _, bobs_form = client.send("Rome", group="team", sender="bob")
    [done] = client.submit(bobs_form, {"name": "Bob", "time": "20:00", "party": "2"}, user="bob")
    assert done.text.endswith("in Rome at 20:00, under Bob. See you!") and done.receiver == "team"


# ------------------------------------------------------------------ group helper: mentions and threads


def test_group_faq_answers_a_mention_in_a_thread_and_follows_the_thread(client):
    [answer] = client.send("how do I reset my password?", group="ops", mentions=["bot"], id="500")
    assert answer.in_thread == "500" and answer.receiver == "ops"
    assert answer.text == group.FAQ[("password", "login")]
    # Follow-ups in that thread need no mention ...
    [follow] = client.send("and when do deploys happen?", group="ops", parent_id="500")
    assert follow.in_thread == "500" and follow.text == group.FAQ[("deploy", "release")]
    [unknown] = client.send("what about lunch?", group="ops", parent_id="500", sender="carol")
    assert unknown.text.startswith("I don't know that one, Carol")
    # ... while other threads and plain chatter stay unanswered.
    assert client.send("deploys?", group="ops", parent_id="999") == []
    assert client.send("password?", group="ops") == []


def test_a_handler_that_fails_gets_the_apps_apology(client, monkeypatch):
    """bots/__init__.py's router is the parent of every module's: its on_error answers for all of them."""

    def broken(city: str, day: str = "today") -> str:
        raise RuntimeError("weather service down")

    monkeypatch.setattr(weather, "forecast", broken)
    assert client.send("/weather Paris").texts == [
        "Sorry, something went wrong on my side. Please try again in a moment."
    ]
