"""The dispatcher without HTTP or threads: what is screened out, handling outcomes, errors, msg.reply()."""

from __future__ import annotations

import logging

import pytest

from bot import Image, Router
from bot.api import SendRequest
from bot.dispatch import Dispatcher
from bot.errors import Forbidden, ServerError
from bot.loop_guard import LoopGuard
from bot.schemas import parse_callback
from bot.state import MemoryStateStore
from bot.testing import make_callback, make_message

BOT = "bot"  # make_callback's default bot uid


@pytest.fixture
def sent() -> list[SendRequest]:
    """What the dispatcher delivered, in order."""
    return []


@pytest.fixture
def dispatch(sent):
    """dispatch(router, bot_uid="bot") -> a Dispatcher delivering into ``sent``."""
    return lambda router, bot_uid=BOT: Dispatcher(router, sent.append, bot_uid=bot_uid)


def texts(requests: list[SendRequest]) -> list[str]:
    return [request.body["data"]["text"] for request in requests]


def error_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


# ------------------------------------------------------------------ screen


@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        (make_callback("hi", sender=BOT), "the bot's own message"),
        (make_callback("hi", sender=BOT.upper()), "the bot's own message"),
        (make_callback("hi", sender=BOT, group="ops"), "the bot's own message"),
        (make_callback("hi", bot="other-bot"), "callback for bot 'other-bot', this app is 'bot'"),
        (make_callback("hi", trigger="before_message"), "trigger 'before_message' carries no message"),
        (make_callback("hi", category="reaction"), "unknown category 'reaction'"),
        (make_callback("hi", bot="carol", trigger="message_sent"), "1:1 message not addressed to the bot"),
    ],
    ids=["own", "own-upper-case", "own-in-group", "other-bot", "other-trigger", "unknown-category", "v2-not-for-bot"],
)
def test_screen_says_why_a_callback_is_not_handled(callback, reason, dispatch):
    assert dispatch(Router()).screen(parse_callback(callback, bot_uid=BOT)) == reason


@pytest.mark.parametrize(
    "callback",
    [
        make_callback("hi"),
        make_callback("hi", group="ops"),
        make_callback(action="edited"),  # actions pass the screen; routing decides (no handler asks: unmatched)
        make_callback(custom_data={"a": 1}, type="poll"),
        make_callback("hi", trigger="message_sent"),  # webhooks v2, addressed to the bot
        make_callback("hi", group="ops", trigger="message_sent"),
    ],
    ids=["text", "group", "action", "custom", "v2", "v2-group"],
)
def test_screen_lets_messages_for_the_bot_through(callback, dispatch):
    assert dispatch(Router()).screen(parse_callback(callback, bot_uid=BOT)) == ""


def test_screen_without_a_configured_uid_uses_the_callbacks_bot(dispatch):
    screen = dispatch(Router(), bot_uid="").screen
    assert screen(parse_callback(make_callback("hi", sender="helper", bot="helper"))) == "the bot's own message"
    assert screen(parse_callback(make_callback("hi", bot="helper"))) == ""


# ------------------------------------------------------------------ handle: outcomes


def test_a_reply_goes_to_the_sender_through_the_bots_send_path(sent, dispatch):
    router = Router()

    @router.on_text("^hi")
    def hi(msg):
        return f"hello {msg.sender.name}"

    outcome = dispatch(router, bot_uid="helpdesk-bot").handle(make_message("hi", id="m-1", sender="bob"))
    assert (outcome.status, outcome.sent, outcome.message_id, outcome.error_code) == ("replied", 1, "m-1", "")
    assert outcome.handler == f"{__name__}.test_a_reply_goes_to_the_sender_through_the_bots_send_path.<locals>.hi"
    assert outcome.conversation_id == "bob_user_bot" and outcome.seconds >= 0
    [request] = sent
    assert request.path == "/bots/helpdesk-bot/messages"
    assert (request.message_id, request.conversation_id, request.interim) == ("m-1", "bob_user_bot", False)
    assert request.body["receiver"] == "bob" and request.body["receiverType"] == "user"
    assert request.body["data"] == {"text": "hello Bob", "metadata": {"@bot": "helpdesk-bot"}}


def test_replies_to_a_group_message_go_to_the_group(sent, dispatch):
    router = Router()
    router.add_fallback(lambda msg: ["one", Image(url="https://x/c.png")])
    dispatch(router).handle(make_message("hi", group="ops", sender="bob"))
    assert [(r.body["receiver"], r.body["receiverType"], r.body["type"]) for r in sent] == [
        ("ops", "group", "text"),
        ("ops", "group", "image"),
    ]


@pytest.mark.parametrize(
    ("returned", "status", "count"),
    [(None, "no_reply", 0), ([], "no_reply", 0), ("   ", "no_reply", 0), (["a", None, ["b"]], "replied", 2)],
    ids=["none", "empty-list", "blank-text", "nested"],
)
def test_what_a_handler_returns_decides_the_outcome(returned, status, count, sent, dispatch):
    router = Router()
    router.add_fallback(lambda msg: returned)
    outcome = dispatch(router).handle(make_message("x"))
    assert (outcome.status, outcome.sent, len(sent)) == (status, count, count)


def test_a_message_no_handler_takes_is_unmatched(sent, dispatch):
    router = Router()

    @router.on_command("weather")
    def weather(msg):
        return "sunny"

    outcome = dispatch(router).handle(make_message("what now?"))
    assert (outcome.status, outcome.handler, outcome.sent) == ("unmatched", "", 0)
    assert dispatch(router).handle(make_message(action="edited")).status == "unmatched"  # actions unless asked
    assert sent == []


def test_a_refused_reply_is_a_send_error_with_cometchats_code(caplog):
    router = Router()
    router.add_fallback(lambda msg: ["first", "second"])
    delivered: list[SendRequest] = []

    def deliver(request: SendRequest) -> None:
        if request.body["data"]["text"] == "second":
            raise Forbidden("not a member", status=403, code="ERR_NOT_A_MEMBER")
        delivered.append(request)

    with caplog.at_level(logging.ERROR):
        outcome = Dispatcher(router, deliver, bot_uid=BOT).handle(make_message("hi", id="m-7", group="ops"))
    assert (outcome.status, outcome.error_code, outcome.sent) == ("send_error", "ERR_NOT_A_MEMBER", 1)
    assert texts(delivered) == ["first"]
    [record] = error_records(caplog)
    assert "m-7" in record.getMessage() and "ERR_NOT_A_MEMBER" in record.getMessage()


# ------------------------------------------------------------------ handle: errors


def test_a_raising_handler_is_logged_with_traceback_and_message_id(sent, dispatch, caplog):
    router = Router()

    @router.on_text("^boom")
    def boom(msg):
        raise KeyError("missing")

    @router.fallback
    def echo(msg):
        return msg.text

    dispatcher = dispatch(router)
    with caplog.at_level(logging.ERROR):
        outcome = dispatcher.handle(make_message("boom", id="m-1"))
    assert (outcome.status, outcome.error_code, outcome.sent) == ("handler_error", "KeyError", 0)
    [record] = error_records(caplog)
    assert "m-1" in record.getMessage() and "boom" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError  # the traceback is in the log
    assert "raise KeyError" in caplog.text

    # Other messages are unaffected.
    assert dispatcher.handle(make_message("still here", id="m-2")).status == "replied"
    assert texts(sent) == ["still here"]


def test_a_handler_returning_something_unsendable_is_a_handler_error(sent, dispatch, caplog):
    router = Router()
    router.add_fallback(lambda msg: {"text": "a dict is not a reply"})
    with caplog.at_level(logging.ERROR):
        outcome = dispatch(router).handle(make_message("x", id="m-3"))
    assert (outcome.status, outcome.error_code) == ("handler_error", "TypeError")
    assert sent == [] and "m-3" in error_records(caplog)[0].getMessage()


def test_on_error_can_reply_instead(sent, dispatch):
    router = Router()
    seen: list[tuple[str, Exception]] = []

    @router.on_text("^boom")
    def boom(msg):
        raise ValueError("bad input")

    @router.on_error
    def apologise(msg, error):
        seen.append((msg.id, error))
        return f"Sorry {msg.sender.name}, that failed: {error}"

    outcome = dispatch(router).handle(make_message("boom", id="m-4"))
    assert (outcome.status, outcome.sent) == ("handler_error", 1)
    assert texts(sent) == ["Sorry Alice, that failed: bad input"]
    assert [(mid, type(err)) for mid, err in seen] == [("m-4", ValueError)]


def test_the_nearest_on_error_hook_answers_and_only_hooks_of_enclosing_routers(sent, dispatch):
    root, sibling, inner = Router("root"), Router("sibling"), Router("inner")
    root.on_error(lambda msg, error: "from root")
    sibling.on_error(lambda msg, error: "from sibling")
    inner.on_error(lambda msg, error: "from inner")

    @inner.on_text("^inner")
    def fails_inside(msg):
        raise RuntimeError

    @root.on_text("^outer")
    def fails_outside(msg):
        raise RuntimeError

    root.include_router(sibling)
    root.include_router(inner)
    dispatcher = dispatch(root)
    dispatcher.handle(make_message("inner"))
    dispatcher.handle(make_message("outer"))
    assert texts(sent) == ["from inner", "from root"]  # one hook each; never the sibling's


def test_an_on_error_hook_that_raises_is_logged_too(sent, dispatch, caplog):
    router = Router()
    router.add_fallback(lambda msg: 1 / 0)
    router.on_error(lambda msg, error: [][0])
    with caplog.at_level(logging.ERROR):
        outcome = dispatch(router).handle(make_message("x", id="m-5"))
    assert outcome.status == "handler_error" and sent == []
    assert [r.exc_info[0] for r in error_records(caplog)] == [ZeroDivisionError, IndexError]
    assert all("m-5" in r.getMessage() for r in error_records(caplog))


def test_an_on_error_reply_cometchat_refuses_is_logged(dispatch, caplog):
    router = Router()
    router.add_fallback(lambda msg: 1 / 0)
    router.on_error(lambda msg, error: "sorry")

    def deliver(request: SendRequest) -> None:
        raise ServerError("down", status=500, code="ERR_MISSION_FAILED")

    with caplog.at_level(logging.ERROR):
        outcome = Dispatcher(router, deliver, bot_uid=BOT).handle(make_message("x", id="m-6"))
    assert outcome.status == "handler_error"
    assert any("ERR_MISSION_FAILED" in r.getMessage() and "m-6" in r.getMessage() for r in error_records(caplog))


# ------------------------------------------------------------------ msg.reply()


def test_msg_reply_sends_at_once_in_order_before_the_returned_replies(sent, dispatch):
    router = Router()
    delivered_when_replying: list[int] = []

    @router.on_text("go")
    def go(msg):
        msg.reply("one")
        delivered_when_replying.append(len(sent))
        msg.reply("two", ["three"])
        delivered_when_replying.append(len(sent))
        return ["four", "five"]

    outcome = dispatch(router).handle(make_message("go"))
    assert texts(sent) == ["one", "two", "three", "four", "five"]
    assert delivered_when_replying == [1, 3]  # sent when called, not when the handler returned
    assert [r.interim for r in sent] == [True, True, True, False, False]
    assert len({r.muid for r in sent}) == 5 and outcome.sent == 5 and outcome.status == "replied"


def test_msg_reply_alone_counts_as_replied(sent, dispatch):
    router = Router()

    @router.fallback
    def only_interim(msg):
        msg.reply("working on it")

    assert dispatch(router).handle(make_message("x")).status == "replied"
    assert texts(sent) == ["working on it"]


def test_replies_sent_before_a_handler_raises_stay_sent_and_the_hook_follows(sent, dispatch):
    router = Router()

    @router.fallback
    def half_way(msg):
        msg.reply("working on it")
        raise TimeoutError

    router.on_error(lambda msg, error: "that took too long")
    outcome = dispatch(router).handle(make_message("x"))
    assert texts(sent) == ["working on it", "that took too long"]
    assert (outcome.status, outcome.sent) == ("handler_error", 2)
    assert len({r.muid for r in sent}) == 2


def test_muids_are_the_same_when_a_message_is_handled_again(sent, dispatch):
    router = Router()

    @router.fallback
    def twice(msg):
        msg.reply("a")
        return ["b", "c"]

    dispatcher = dispatch(router)
    message = make_message("x", id="m-8")
    dispatcher.handle(message)
    dispatcher.handle(message)
    first, second = sent[:3], sent[3:]
    assert [r.muid for r in first] == [r.muid for r in second]  # a redelivery re-sends the same muids
    assert len({r.muid for r in first}) == 3
    dispatcher.handle(make_message("x", id="m-9"))
    assert not {r.muid for r in sent[6:]} & {r.muid for r in first}  # another message, other muids


def test_msg_reply_outside_a_handler_is_an_error():
    with pytest.raises(RuntimeError, match="inside a handler"):
        make_message("x").reply("nobody sends this")


# ------------------------------------------------------------------ route, then handle


def test_a_routed_message_is_handled_as_the_message_itself_would_be(dispatch, sent):
    router = Router()

    @router.fallback
    def echo(msg):
        return f"echo {msg.text}"

    dispatcher = dispatch(router)
    msg = make_message("hi")
    routed = dispatcher.route(msg)
    assert (routed.handler, routed.status, sent) == (f"{__name__}.{echo.__qualname__}", "", [])
    routed_outcome, direct_outcome = dispatcher.handle(routed), dispatcher.handle(msg)
    assert texts(sent) == ["echo hi", "echo hi"]
    assert (routed_outcome.handler, routed_outcome.status) == (direct_outcome.handler, direct_outcome.status)
    assert routed_outcome.seconds >= routed.seconds > 0  # the routing's time counts


def never(msg):
    raise AssertionError("no handler should run")


@pytest.mark.parametrize(
    ("router", "status", "code"),
    [
        (Router, "unmatched", ""),
        (lambda: Router(filters=[lambda msg: 1 / 0]), "handler_error", "ZeroDivisionError"),
    ],
    ids=["no-route-takes-it", "a-filter-raises"],
)
def test_a_message_no_route_takes_is_routed_to_nothing(router, status, code, dispatch, sent):
    router = router()
    router.on_command("help")(never)
    routed = dispatch(router).route(make_message("hi"))
    outcome = dispatch(router).handle(routed)
    assert (routed.resolution, routed.handler, routed.status, routed.code) == (None, "", status, code)
    assert (outcome.status, outcome.error_code, sent) == (status, code, [])


def test_the_loop_guard_counts_a_routed_message_once(sent):
    state = MemoryStateStore()
    guard = LoopGuard(state, limit=2, known_bots=("otherbot",))
    router = Router()
    router.fallback(lambda msg: "answer")
    dispatcher = Dispatcher(router, sent.append, bot_uid=BOT, state=state, loop_guard=guard)
    statuses = []
    for n in range(3):
        routed = dispatcher.route(make_message(f"ping {n}", sender="otherbot"))
        statuses.append(dispatcher.handle(routed).status)
    assert statuses == ["replied", "replied", "loop_guard"]  # counted once per message, not per call
