"""The router: registration order is match order, filters, captures, fallbacks, included routers, errors."""

from __future__ import annotations

import pytest

from bot import Router
from bot.dispatch import Dispatcher
from bot.testing import make_message


def resolved(router: Router, msg) -> str | None:
    resolution = router.resolve(msg)
    return resolution.route.handler.__name__ if resolution else None


def test_decorators_return_the_function_unchanged():
    router = Router()

    def handler(msg):
        return "x"

    for decorator in (router.on_text("a"), router.on_command("a"), router.on_type("image"), router.on_custom("poll")):
        assert decorator(handler) is handler
    assert router.fallback(handler) is handler and router.on_error(handler) is handler


def test_first_registered_match_wins():
    router = Router()

    @router.on_text("weather")
    def first(msg): ...

    @router.on_text(r"weather in (?P<city>\w+)")
    def second(msg): ...

    assert resolved(router, make_message("weather in Paris")) == "first"


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^hello", "Hello there", True),  # case-insensitive by default
        ("^hello", "oh hello", False),
        ("help", "can you help me?", True),  # searched, not matched from the start
        ("^ping$", "<@uid:bot> ping", True),  # mention tokens normalised away before matching
        (r"\bhelp\b", "helpful", False),
    ],
)
def test_text_patterns(pattern, text, matches):
    router = Router()

    @router.on_text(pattern)
    def handler(msg): ...

    assert (resolved(router, make_message(text)) == "handler") is matches


def test_case_sensitive_when_asked():
    router = Router()

    @router.on_text("^Hello", ignore_case=False)
    def handler(msg): ...

    assert resolved(router, make_message("hello")) is None
    assert resolved(router, make_message("Hello")) == "handler"


def test_named_groups_reach_msg_match_and_keyword_arguments():
    router = Router()
    seen = {}

    @router.on_text(r"^weather (?P<city>\w+)(?: (?P<day>\w+))?")
    def weather(msg, city, day=None):
        seen.update(city=city, day=day, match=dict(msg.match))
        return f"{city} {day}"

    replies = []
    Dispatcher(router, replies.append).handle(make_message("weather Paris tomorrow"))
    assert seen == {"city": "Paris", "day": "tomorrow", "match": {"city": "Paris", "day": "tomorrow"}}
    assert replies[0].body["data"]["text"] == "Paris tomorrow"


def test_commands_with_arguments():
    router = Router()
    got = []

    @router.on_command("weather", "w")
    def weather(msg):
        got.append((msg.command.name, msg.command.args, msg.command.arg_text))

    dispatcher = Dispatcher(router, lambda request: None)
    dispatcher.handle(make_message('/weather Paris "New York"'))
    dispatcher.handle(make_message("/w Lyon"))
    dispatcher.handle(make_message("/other Lyon"))
    assert got == [("weather", ("Paris", "New York"), 'Paris "New York"'), ("w", ("Lyon",), "Lyon")]


def test_types_custom_and_predicates():
    router = Router()

    @router.on_type("image", "video")
    def media(msg): ...

    @router.on_custom("location")
    def location(msg): ...

    @router.on_message(lambda msg: msg.sender.uid == "vip")
    def vip(msg): ...

    assert resolved(router, make_message(type="image", url="https://x/a.png")) == "media"
    assert resolved(router, make_message(type="audio", url="https://x/a.mp3")) is None
    assert resolved(router, make_message(type="location", custom_data={"lat": 1})) == "location"
    assert resolved(router, make_message("anything", sender="vip")) == "vip"


def test_actions_are_ignored_unless_a_handler_asks_for_them():
    router, actions = Router(), Router()

    @router.on_message()
    def everything(msg): ...

    @actions.on_action("edited")
    def edited(msg): ...

    action = make_message(action="edited")
    assert resolved(router, action) is None
    assert resolved(actions, action) == "edited"


def test_fallback_only_for_unmatched_text_and_after_every_included_router():
    root, child = Router("root"), Router("child")

    @root.fallback
    def fallback(msg): ...

    @child.on_text("^hi")
    def hi(msg): ...

    root.include_router(child)
    assert resolved(root, make_message("hi there")) == "hi"  # the child's route beats the parent's fallback
    assert resolved(root, make_message("something else")) == "fallback"
    assert resolved(root, make_message(type="image", url="https://x/a.png")) is None  # fallbacks are for text


def test_included_routers_keep_their_order_and_listing():
    root, first, second = Router("root"), Router("first"), Router("second")

    @first.on_text("x")
    def one(msg): ...

    @second.on_text("x")
    def two(msg): ...

    @root.fallback
    def last(msg): ...

    root.include_router(first)
    root.include_router(second)
    assert resolved(root, make_message("x")) == "one"
    assert [(router.name, route.handler.__name__, fb) for router, route, fb in root.iter_routes()] == [
        ("first", "one", False),
        ("second", "two", False),
        ("root", "last", True),
    ]
    with pytest.raises(ValueError):
        first.include_router(root)


def test_on_error_hook_of_the_router_replies():
    router = Router()

    @router.on_text("boom")
    def boom(msg):
        raise RuntimeError("kaput")

    @router.on_error
    def oops(msg, error):
        return f"sorry: {error}"

    replies = []
    outcome = Dispatcher(router, replies.append).handle(make_message("boom"))
    assert outcome.status == "handler_error" and outcome.error_code == "RuntimeError"
    assert [r.body["data"]["text"] for r in replies] == ["sorry: kaput"]
