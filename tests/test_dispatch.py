"""The dispatcher without HTTP: handler errors, msg.reply(), screening what is not for the bot."""

from __future__ import annotations

import logging

import pytest

from bot import Router
from bot.dispatch import Dispatcher
from bot.schemas import parse_callback
from bot.testing import make_callback, make_message


@pytest.fixture
def sent() -> list:
    return []


def texts(sent) -> list[str]:
    return [request.body["data"]["text"] for request in sent]


def test_a_raising_handler_is_logged_with_its_message_and_others_go_on(sent, caplog):
    router = Router()

    @router.on_text("^boom")
    def boom(msg):
        raise KeyError("missing")

    @router.fallback
    def echo(msg):
        return msg.text

    dispatcher = Dispatcher(router, sent.append)
    with caplog.at_level(logging.ERROR):
        outcome = dispatcher.handle(make_message("boom", id="m-1"))
    assert outcome.status == "handler_error"
    [record] = [r for r in caplog.records if r.exc_info]
    assert "m-1" in record.getMessage() and "boom" in record.getMessage()
    assert record.exc_info[0] is KeyError  # the traceback is in the log
    assert dispatcher.handle(make_message("still here")).status == "replied"
    assert texts(sent) == ["still here"]


def test_msg_reply_sends_in_order_before_the_returned_replies(sent):
    router = Router()

    @router.on_text("go")
    def go(msg):
        msg.reply("one")
        msg.reply("two", "three")
        return "four"

    outcome = Dispatcher(router, sent.append).handle(make_message("go"))
    assert texts(sent) == ["one", "two", "three", "four"]
    assert [r.interim for r in sent] == [True, True, True, False]
    assert len({r.muid for r in sent}) == 4 and outcome.sent == 4


def test_unmatched_and_no_reply_outcomes(sent):
    router = Router()

    @router.on_text("quiet")
    def quiet(msg):
        return None

    dispatcher = Dispatcher(router, sent.append)
    assert dispatcher.handle(make_message("quiet")).status == "no_reply"
    assert dispatcher.handle(make_message("other")).status == "unmatched"
    assert sent == []


@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        (make_callback("hi", sender="bot", bot="bot"), "own message"),
        (make_callback("hi", bot="other-bot"), "other-bot"),
        (make_callback("hi", trigger="before_message"), "no message"),
    ],
    ids=["own", "other-bot", "unknown-trigger"],
)
def test_screen_says_why_a_callback_is_ignored(callback, reason):
    dispatcher = Dispatcher(Router(), lambda request: None, bot_uid="bot")
    assert reason in dispatcher.screen(parse_callback(callback))


def test_screen_lets_a_normal_message_through():
    dispatcher = Dispatcher(Router(), lambda request: None, bot_uid="bot")
    assert dispatcher.screen(parse_callback(make_callback("hi", bot="bot"), bot_uid="bot")) == ""
