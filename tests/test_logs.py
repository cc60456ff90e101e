"""Logging: the line of each handled message, LOG_MESSAGES, and the JSON format's fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

import app as app_module
from bot import Router
from bot.dispatch import Dispatcher
from bot.factory import bot_app
from bot.logs import JsonFormatter
from bot.testing import make_message

DISPATCH_LOGGER = "bot.dispatch"


def message_lines(caplog) -> list[logging.LogRecord]:
    """The per-message outcome lines (the ones that carry the message's fields)."""
    return [r for r in caplog.records if r.name == DISPATCH_LOGGER and hasattr(r, "outcome")]


@pytest.fixture
def router() -> Router:
    router = Router()

    @router.on_command("boom")
    def boom(msg):
        raise KeyError("missing")

    @router.on_command("quiet")
    def quiet(msg):
        return None

    @router.fallback
    def echo(msg):
        return "Echo: " + msg.text

    return router


@pytest.mark.parametrize(
    ("text", "level", "outcome", "handler", "replies"),
    [
        ("hello", logging.INFO, "replied", "echo", 1),
        ("/quiet", logging.INFO, "no_reply", "quiet", 0),
        ("/boom", logging.WARNING, "handler_error", "boom", 0),
    ],
    ids=["replied", "no-reply", "handler-error"],
)
def test_each_handled_message_gets_one_line_with_its_fields(router, caplog, text, level, outcome, handler, replies):
    dispatcher = Dispatcher(router, lambda request: None, bot_uid="bot")
    with caplog.at_level(logging.INFO, logger="bot"):
        dispatcher.handle(make_message(text, id="m-42", sender="alice"))
    [line] = message_lines(caplog)
    assert line.levelno == level
    assert (line.message_id, line.conversation, line.outcome, line.replies) == (
        "m-42",
        "alice_user_bot",
        outcome,
        replies,
    )
    assert line.handler.endswith(handler)
    assert line.getMessage().startswith(f"message m-42 in alice_user_bot: {outcome} by ")
    assert f"{replies} replies, handled in" in line.getMessage()


def test_log_messages_false_leaves_out_the_info_lines_but_not_the_warnings(router, caplog):
    dispatcher = Dispatcher(router, lambda request: None, bot_uid="bot", log_messages=False)
    with caplog.at_level(logging.INFO, logger="bot"):
        for text in ("hello", "/quiet", "/boom"):
            dispatcher.handle(make_message(text, id=f"m-{text}"))
    assert [(r.message_id, r.outcome, r.levelno) for r in message_lines(caplog)] == [
        ("m-/boom", "handler_error", logging.WARNING)
    ]
    assert any(r.levelno == logging.ERROR and "m-/boom" in r.getMessage() for r in caplog.records)  # the traceback


@pytest.mark.parametrize(("log_messages", "lines"), [(True, 2), (False, 0)])
def test_a_message_dropped_by_a_hook_is_logged_unless_log_messages_is_off(caplog, log_messages, lines):
    router = Router()
    router.add_before_hook(lambda msg: False)
    router.add_fallback(lambda msg: "never")
    dispatcher = Dispatcher(router, lambda request: None, bot_uid="bot", log_messages=log_messages)
    with caplog.at_level(logging.INFO, logger="bot"):
        assert dispatcher.handle(make_message("hi", id="m-7")).status == "dropped"
    records = [r for r in caplog.records if r.name == DISPATCH_LOGGER]
    assert len(records) == lines
    if lines:
        assert "m-7: dropped by" in records[0].getMessage() and records[1].outcome == "dropped"


@pytest.mark.parametrize(("environ", "enabled"), [({}, True), ({"LOG_MESSAGES": "false"}, False)])
def test_log_messages_reaches_the_dispatcher(tmp_path, environ, enabled):
    app = app_module.create_app({**environ, "JOURNAL_PATH": str(tmp_path / "journal.sqlite3")})
    assert bot_app(app).dispatcher.log_messages is enabled


def test_the_json_format_has_the_lines_fields_as_keys():
    record = logging.LogRecord(DISPATCH_LOGGER, logging.INFO, __file__, 1, "message %s: %s", ("m-1", "replied"), None)
    record.__dict__.update(message_id="m-1", outcome="replied", ms=0.5)
    record.created, record.msecs = 1764758400.25, 250.0  # 2025-12-03 10:40:00.250 UTC
    entry = json.loads(JsonFormatter().format(record))
    assert entry == {
        "time": "2025-12-03T10:40:00.250Z",
        "level": "info",
        "logger": DISPATCH_LOGGER,
        "message": "message m-1: replied",
        "message_id": "m-1",
        "outcome": "replied",
        "ms": 0.5,
    }


def test_the_json_format_carries_the_traceback():
    try:
        raise KeyError("missing")
    except KeyError:
        record = logging.getLogger(DISPATCH_LOGGER).makeRecord(
            DISPATCH_LOGGER, logging.ERROR, __file__, 1, "handler raised", (), exc_info=sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and entry["message"] == "handler raised"
    assert "raise KeyError" in entry["traceback"]
