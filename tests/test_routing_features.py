"""Router features beyond routes: router filters, group policies, before/after hooks, on_mention, on_thread,
describe().

Most tests run the dispatcher directly (no HTTP, no threads) and look at the requests it hands on; a few go
through the real callback path with :class:`BotTestClient`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from bot import Image, Router, Text
from bot.api import SendRequest
from bot.dispatch import Dispatcher, Outcome
from bot.filters import TypeFilter
from bot.interactions import Claims
from bot.interactive import Form, TextInput
from bot.message import Message
from bot.schemas import INTERACTION_TRIGGER, submission_message
from bot.testing import BotTestClient, make_message

BOT = "bot"  # make_callback's default bot uid


def run(router: Router, msg: Message) -> tuple[Outcome, list[SendRequest]]:
    """Handle ``msg`` with ``router``; the outcome and the requests handed on, in order."""
    sent: list[SendRequest] = []
    outcome = Dispatcher(router, sent.append, bot_uid=BOT).handle(msg)
    return outcome, sent


def texts(requests: list[SendRequest]) -> list[str]:
    return [request.body["data"]["text"] for request in requests]


def resolved(router: Router, msg: Message) -> str | None:
    resolution = router.resolve(msg)
    return resolution.route.handler.__name__ if resolution else None


def submission(
    *, group: str | None = None, user: str = "bob", interaction: str = "survey", thread: str = ""
) -> Message:
    """The message of a verified submission (what the interaction endpoint journals), 1:1 or in a group."""
    claims = Claims(
        bot=BOT,
        interaction_id=interaction,
        element_id="submit",
        muid="muid-1",
        conversation=f"group_{group}" if group else f"{user}_user_{BOT}",
        receiver=group or user,
        receiver_type="group" if group else "user",
        user="" if group else user,
        parent_id=thread,
    )
    event = {
        "trigger": INTERACTION_TRIGGER, "claims": claims.to_token(), "user": user, "element_id": "submit",
        "values": {"name": "Bob"}, "message_id": "9100", "message_type": "form", "timezone": "", "original": None,
        "received_at": time.time(),
    }  # fmt: skip
    return submission_message(event, bot_uid=BOT)


# ------------------------------------------------------------------ router filters


def language(msg: Message) -> dict[str, str] | None:
    """A router filter: messages starting with a language code, captured as ``lang``."""
    m = re.match(r"^(fr|de) ", msg.text)
    return {"lang": m.group(1)} if m else None


def test_a_router_filter_limits_its_routes_and_its_captures_join_the_routes():
    seen: list[tuple[Any, ...]] = []
    root, localised = Router("root"), Router("localised", filters=[language])

    @localised.on_text(r"weather (?P<city>\w+)")
    def weather(msg, lang, city):
        seen.append((lang, city, dict(msg.match)))
        return f"{lang}: {city}"

    @root.fallback
    def fallback(msg):
        return "fallback"

    root.include_router(localised)
    _, sent = run(root, make_message("fr weather Paris"))
    assert texts(sent) == ["fr: Paris"]
    assert seen == [("fr", "Paris", {"lang": "fr", "city": "Paris"})]
    # Without the prefix the router's routes are not tried at all.
    _, sent = run(root, make_message("weather Paris"))
    assert texts(sent) == ["fallback"] and len(seen) == 1


def test_several_router_filters_must_all_accept_and_their_captures_add_up():
    router = Router(filters=[language, lambda msg: {"vip": True} if msg.sender.uid == "vip" else None])
    seen = []

    @router.on_message()
    def everything(msg, **captures):
        seen.append(captures)

    assert resolved(router, make_message("fr hello", sender="vip")) == "everything"
    assert resolved(router, make_message("fr hello", sender="bob")) is None
    assert resolved(router, make_message("hello", sender="vip")) is None
    run(router, make_message("de hallo", sender="vip"))
    assert seen == [{"lang": "de", "vip": True}]


@pytest.mark.parametrize(
    ("result", "accepted"),
    [
        (None, False),
        (False, False),
        (0, False),
        ("", False),
        ([], False),
        ({}, True),  # a Filter's "matched, nothing captured"
        (True, True),
        (1, True),
        ("yes", True),
        (["x"], True),
        ({"k": "v"}, True),
    ],
    ids=repr,
)
def test_a_falsy_router_filter_result_rejects(result, accepted):
    router = Router(filters=[lambda msg: result])

    @router.on_message()
    def everything(msg): ...

    @router.fallback
    def fallback(msg): ...

    assert (resolved(router, make_message("hi")) == "everything") is accepted


def test_a_filter_object_works_as_a_router_filter():
    images = Router("images", filters=[TypeFilter(["image"])])

    @images.on_message()
    def anything(msg): ...

    assert resolved(images, make_message(type="image", url="https://x/a.png")) == "anything"
    assert resolved(images, make_message("hello")) is None


def test_router_filters_apply_to_its_fallbacks_too():
    root, french = Router("root"), Router("french", filters=[language])

    @french.fallback
    def french_fallback(msg): ...

    @root.fallback
    def root_fallback(msg): ...

    root.include_router(french)
    # The root's fallback is registered first: it answers everything ...
    assert resolved(root, make_message("fr bonjour")) == "root_fallback"
    other_root = Router("other")
    other_root.include_router(french)
    # ... but alone, the french fallback only takes french text.
    assert resolved(other_root, make_message("fr bonjour")) == "french_fallback"
    assert resolved(other_root, make_message("hello")) is None


def test_filters_given_to_include_router_limit_only_that_inclusion():
    root, admin = Router("root"), Router("admin")
    seen = []

    @admin.on_command("purge")
    def purge(msg, role, args):
        seen.append((role, args))
        return "purged"

    @root.on_command("help")
    def help_(msg):
        return "help"

    def admins(msg):
        return {"role": "admin"} if msg.sender.uid in ("root-user", "ops") else None

    root.include_router(admin, admins)
    assert resolved(root, make_message("/purge all", sender="root-user")) == "purge"
    assert resolved(root, make_message("/purge all", sender="mallory")) is None
    assert resolved(root, make_message("/help", sender="mallory")) == "help_"  # the root's own routes are free
    _, sent = run(root, make_message("/purge all", sender="ops"))
    assert texts(sent) == ["purged"] and seen == [("admin", ("all",))]
    # The router itself carries no filter: included elsewhere without one, it takes everyone.
    assert admin.filters == ()
    assert resolved(admin, make_message("/purge all", sender="mallory")) == "purge"


def test_captures_of_nested_inclusion_filters_add_up():
    root, middle, leaf = Router("root"), Router("middle", filters=[language]), Router("leaf")
    seen = []

    @leaf.on_text(r"(?P<word>\w+)$")
    def last_word(msg, **captures):
        seen.append(captures)

    middle.include_router(leaf, lambda msg: {"team": "ops"} if msg.is_group else None)
    root.include_router(middle)
    run(root, make_message("de guten tag", group="ops"))
    assert seen == [{"lang": "de", "team": "ops", "word": "tag"}]
    assert resolved(root, make_message("de guten tag")) is None  # not in a group: the inclusion filter refuses


# ------------------------------------------------------------------ group policies


def group_media() -> Message:
    return make_message(type="image", url="https://x/a.png", group="ops")


KINDS = {
    "1:1-text": lambda: make_message("hello"),
    "1:1-custom": lambda: make_message(custom_data={"q": 1}, type="poll"),
    "1:1-media": lambda: make_message(type="image", url="https://x/a.png"),
    "group-text": lambda: make_message("hello", group="ops"),
    "group-mention": lambda: make_message("hello", group="ops", mentions=[BOT]),
    "group-other-mention": lambda: make_message("hello", group="ops", mentions=["carol"]),
    "group-command": lambda: make_message("/help", group="ops"),
    "group-custom": lambda: make_message(custom_data={"q": 1}, type="poll", group="ops"),
    "group-media": group_media,
    "group-action": lambda: make_message(action="joined", group="ops"),
    "group-submission": lambda: submission(group="ops"),
}

#: kind -> the policies under which a router answers it (1:1 always; actions and submissions are not affected).
ANSWERED = {
    "1:1-text": {"all", "mentioned", "commands", "none"},
    "1:1-custom": {"all", "mentioned", "commands", "none"},
    "1:1-media": {"all", "mentioned", "commands", "none"},
    "group-text": {"all"},
    "group-mention": {"all", "mentioned"},
    "group-other-mention": {"all"},
    "group-command": {"all", "commands"},
    "group-custom": {"all"},
    "group-media": {"all"},
    "group-action": {"all", "mentioned", "commands", "none"},
    "group-submission": {"all", "mentioned", "commands", "none"},
}

POLICY_NAMES = {
    "all": "all",
    "allMessages": "all",
    "mentioned": "mentioned",
    "mentionedMessages": "mentioned",
    "commands": "commands",
    "slashedMessages": "commands",
    "none": "none",
}


def catch_all(**router_options: Any) -> Router:
    """A router whose handlers take every message, actions and submissions included."""
    router = Router(**router_options)

    @router.on_message(actions=True, submissions=True)
    def handler(msg):
        return "answered"

    return router


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("policy", list(POLICY_NAMES))
def test_group_policy_table(policy, kind):
    router = catch_all(group_policy=policy)
    expected = POLICY_NAMES[policy] in ANSWERED[kind]
    assert (resolved(router, KINDS[kind]()) == "handler") is expected
    outcome, sent = run(router, KINDS[kind]())
    assert outcome.status == ("replied" if expected else "unmatched")
    assert len(sent) == int(expected)


def test_a_router_without_a_policy_answers_every_group_message():
    router = catch_all()
    assert all(resolved(router, make()) == "handler" for make in KINDS.values())


@pytest.mark.parametrize("name", ["everything", "mentions", "ALL", "slashed", "Mentioned"])
def test_unknown_group_policies_are_refused_naming_the_choices(name):
    with pytest.raises(ValueError, match="group_policy must be one of") as error:
        Router(group_policy=name)
    for choice in ("all", "mentioned", "commands", "none", "mentionedMessages"):
        assert choice in str(error.value)


def test_included_routers_inherit_the_policy_at_any_depth():
    root, child, grandchild = Router("root", group_policy="mentioned"), Router("child"), Router("grandchild")

    @grandchild.on_message()
    def deep(msg): ...

    child.include_router(grandchild)
    root.include_router(child)
    assert resolved(root, make_message("hello", group="ops")) is None
    assert resolved(root, make_message("hello", group="ops", mentions=[BOT])) == "deep"
    assert resolved(root, make_message("hello")) == "deep"  # 1:1


def test_an_included_router_may_narrow_the_policy():
    root, quiet, chatty = Router("root"), Router("quiet", group_policy="commands"), Router("chatty")

    @quiet.on_message()
    def quiet_handler(msg): ...

    @chatty.on_message()
    def chatty_handler(msg): ...

    root.include_router(quiet)
    root.include_router(chatty)
    assert resolved(root, make_message("/deploy", group="ops")) == "quiet_handler"
    assert resolved(root, make_message("hello", group="ops")) == "chatty_handler"  # quiet passes it on


def test_an_included_router_with_its_own_policy_overrides_the_inherited_one():
    """``group_policy=None`` inherits; a policy of its own is the router's (README, Router docstring). A package
    router that answers only mentions may include a moderation router that sees every group message."""
    root = Router("root", group_policy="mentioned")
    moderation = Router("moderation", group_policy="all")

    @root.on_message()
    def root_handler(msg): ...

    @moderation.on_message()
    def moderate(msg): ...

    root.include_router(moderation)
    assert resolved(root, make_message("hello", group="ops", mentions=[BOT])) == "root_handler"
    assert resolved(root, make_message("hello", group="ops")) == "moderate"


def test_submissions_of_a_form_reach_a_router_that_answers_only_mentions():
    seen = []
    bot = Router("mentions", group_policy="mentioned")

    @bot.on_command("survey")
    def survey(msg):
        return Form("survey", "Survey", [TextInput("name", "Name")])

    @bot.on_submit("survey")
    def submitted(msg, values):
        seen.append((msg.sender.uid, dict(values)))
        return f"Thanks {msg.sender.uid}"

    with BotTestClient.for_routers(bot) as client:
        assert client.send("/survey", group="ops") == []  # not mentioned
        [form] = client.send("/survey", group="ops", mentions=[BOT], sender="ana")
        [thanks] = client.submit(form, {"name": "Bob"}, user="bob")  # a click mentions no one
    assert seen == [("bob", {"name": "Bob"})]
    assert (thanks.text, thanks.receiver, thanks.receiver_type) == ("Thanks bob", "ops", "group")


# ------------------------------------------------------------------ before hooks


def three_levels(calls: list[str]) -> tuple[Router, Router, Router]:
    """root > middle > leaf, each with a before hook recording its name; the leaf has the route."""
    root, middle, leaf, sibling = Router("root"), Router("middle"), Router("leaf"), Router("sibling")
    for router in (root, middle, leaf, sibling):
        router.add_before_hook(lambda msg, name=router.name: calls.append(name))

    @leaf.on_text("^hi")
    def hi(msg):
        calls.append(f"handler:{msg.text}")
        return "hello"

    middle.include_router(sibling)  # tried before the leaf, but has no route: its hook must not run
    middle.include_router(leaf)
    root.include_router(middle)
    return root, middle, leaf


def test_before_hooks_run_outermost_first_only_for_the_routers_of_the_matching_route():
    calls: list[str] = []
    root, _, _ = three_levels(calls)
    outcome, sent = run(root, make_message("hi there"))
    assert calls == ["root", "middle", "leaf", "handler:hi there"]
    assert outcome.status == "replied" and texts(sent) == ["hello"]
    calls.clear()
    assert run(root, make_message("nothing matches"))[0].status == "unmatched"
    assert calls == []  # no route, no hooks


def test_a_before_hook_returning_false_drops_the_message():
    calls: list[str] = []
    root, middle, _ = three_levels(calls)

    @middle.before
    def gate(msg):
        calls.append("gate")
        return False if msg.sender.uid == "spammer" else None

    outcome, sent = run(root, make_message("hi", sender="spammer"))
    assert (outcome.status, outcome.sent, sent) == ("dropped", 0, [])
    assert calls == ["root", "middle", "gate"]  # neither the leaf's hook nor the handler ran
    calls.clear()
    assert run(root, make_message("hi", sender="alice"))[0].status == "replied"
    assert calls == ["root", "middle", "gate", "leaf", "handler:hi"]


def test_a_dropped_message_sends_nothing_through_the_callback_path():
    router = Router()
    router.add_before_hook(lambda msg: False)

    @router.on_text("hi")
    def hi(msg):
        return "hello"

    with BotTestClient.for_routers(router) as client:
        assert client.send("hi") == []
        assert client.recorder.total == 0


def test_a_before_hook_may_replace_the_message_the_handler_sees():
    seen = []
    root, leaf = Router("root"), Router("leaf")

    @root.before
    def translate(msg):
        return msg.with_(text=msg.text.replace("salut", "hi"), metadata={"translated": True})

    @leaf.before
    def check(msg):
        seen.append(("leaf hook", msg.text))  # later hooks see the replacement

    @leaf.on_text("salut")
    def greet(msg):
        seen.append(("handler", msg.text, dict(msg.metadata)))
        ref = msg.reply("one moment")  # the replacement still acts for the turn
        return f"answer to {msg.text!r} ({len(ref.muids)})"

    root.include_router(leaf)
    outcome, sent = run(root, make_message("salut bot", group="ops"))
    assert seen == [("leaf hook", "hi bot"), ("handler", "hi bot", {"translated": True})]
    assert outcome.status == "replied" and texts(sent) == ["one moment", "answer to 'hi bot' (1)"]
    assert all(r.body["receiver"] == "ops" for r in sent)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Not now, please.", [("text", "Not now, please.")]),
        (Text("Busy"), [("text", "Busy")]),
        (["Busy", Image(url="https://x/busy.png")], [("text", "Busy"), ("image", "https://x/busy.png")]),
    ],
    ids=["str", "reply", "list"],
)
def test_a_before_hook_may_answer_instead_of_the_handler(answer, expected):
    calls: list[str] = []
    root, middle, _ = three_levels(calls)
    middle.add_before_hook(lambda msg: answer)

    outcome, sent = run(root, make_message("hi", group="ops"))
    assert calls == ["root", "middle"]  # the leaf's hook and the handler did not run
    assert outcome.status == "replied" and outcome.sent == len(expected)
    shown = [
        (
            r.body["type"],
            r.body["data"]["text"] if r.body["type"] == "text" else r.body["data"]["attachments"][0]["url"],
        )
        for r in sent
    ]
    assert shown == expected
    assert all((r.body["receiver"], r.body["receiverType"]) == ("ops", "group") for r in sent)


def test_a_before_hook_returning_none_goes_on():
    calls: list[str] = []
    root, _, _ = three_levels(calls)
    root.add_before_hook(lambda msg: None)
    outcome, sent = run(root, make_message("hi"))
    assert calls == ["root", "middle", "leaf", "handler:hi"] and texts(sent) == ["hello"]
    assert outcome.status == "replied"


# ------------------------------------------------------------------ after hooks


def test_after_hooks_run_innermost_first_and_may_replace_the_replies():
    calls: list[str] = []
    root, child = Router("root"), Router("child")

    @child.on_text("^hi")
    def hi(msg):
        return ["hello", "there"]

    @child.after
    def shout(msg, replies):
        calls.append(("child", [r.text for r in replies]))
        return [r.text.upper() for r in replies]

    @root.after
    def sign(msg, replies):
        calls.append(("root", [r.text for r in replies]))
        return [*replies, Text("-- the bot")]

    @root.after
    def keep(msg, replies):
        calls.append(("root-keep", [r.text for r in replies]))
        return None  # keeps them

    root.include_router(child)
    outcome, sent = run(root, make_message("hi"))
    assert calls == [
        ("child", ["hello", "there"]),
        ("root", ["HELLO", "THERE"]),
        ("root-keep", ["HELLO", "THERE", "-- the bot"]),
    ]
    assert texts(sent) == ["HELLO", "THERE", "-- the bot"] and outcome.sent == 3


def test_an_after_hook_may_silence_a_handler():
    router = Router()

    @router.on_text("^hi")
    def hi(msg):
        return "hello"

    router.add_after_hook(lambda msg, replies: [])
    outcome, sent = run(router, make_message("hi"))
    assert (outcome.status, sent) == ("no_reply", [])


def test_after_hooks_of_routers_outside_the_route_do_not_run():
    calls = []
    root, left, right = Router("root"), Router("left"), Router("right")

    @right.on_text("^hi")
    def hi(msg):
        return "hello"

    left.add_after_hook(lambda msg, replies: calls.append("left") or ["wrong"])
    right.add_after_hook(lambda msg, replies: calls.append("right"))
    root.include_router(left)
    root.include_router(right)
    _, sent = run(root, make_message("hi"))
    assert calls == ["right"] and texts(sent) == ["hello"]


# ------------------------------------------------------------------ on_mention, on_thread


@pytest.mark.parametrize(
    ("make", "matches"),
    [
        (lambda: make_message("hello", group="ops", mentions=[BOT]), True),
        (lambda: make_message(group="ops", mentions=[BOT]), True),  # a bare mention
        (lambda: make_message("hello", mentions=[BOT]), True),  # 1:1 too
        (lambda: make_message("hello <@uid:bot>", group="ops"), True),  # a token without a mentions entry
        (lambda: make_message("hello", group="ops"), False),
        (lambda: make_message("hello", group="ops", mentions=["carol"]), False),
        (lambda: make_message("hello <@uid:robot>", group="ops"), False),
    ],
    ids=["group", "bare", "one-to-one", "token-only", "no-mention", "other-user", "similar-uid"],
)
def test_on_mention(make, matches):
    router = Router()

    @router.on_mention()
    def mentioned(msg): ...

    assert (resolved(router, make()) == "mentioned") is matches


def test_on_mention_strips_the_bots_mention_from_the_text():
    router = Router()
    seen = []

    @router.on_mention()
    def mentioned(msg):
        seen.append((msg.text, msg.raw_text))

    run(router, make_message("what's up <@uid:carol>?", group="ops", mentions=[BOT]))
    assert seen == [("what's up @carol?", "<@uid:bot> what's up <@uid:carol>?")]  # carol: no mentions entry


@pytest.mark.parametrize(
    ("parent", "any_thread", "that_thread"),
    [("500", True, True), ("501", True, False), (None, False, False)],
    ids=["under-500", "under-501", "top-level"],
)
def test_on_thread(parent, any_thread, that_thread):
    one, anywhere = Router(), Router()

    @one.on_thread(parent_id="500")
    def in_500(msg): ...

    @anywhere.on_thread()
    def in_any(msg): ...

    msg = make_message("hi", group="ops", parent_id=parent)
    assert (resolved(one, msg) == "in_500") is that_thread
    assert (resolved(anywhere, msg) == "in_any") is any_thread


def test_on_thread_and_on_mention_do_not_take_actions():
    router = Router()

    @router.on_thread()
    def threaded(msg): ...

    @router.on_mention()
    def mentioned(msg): ...

    assert resolved(router, make_message(action="edited", group="ops", parent_id="500", mentions=[BOT])) is None


def test_describe_and_what_the_filters_say():
    router = Router()
    router.on_mention()(lambda msg: None)
    router.on_thread("500")(lambda msg: None)
    router.on_thread()(lambda msg: None)
    assert [route.filter.describe() for route in router.routes] == [
        "mentions the bot",
        "thread reply under 500",
        "thread reply",
    ]


# ------------------------------------------------------------------ describe()


def in_bot_thread(msg):
    return msg.parent_id is not None


@pytest.mark.parametrize(
    ("router", "expected"),
    [
        (Router("plain"), "plain"),
        (Router("quiet", group_policy="slashedMessages"), "quiet; groups: commands"),
        (Router("users", state_scope="user"), "users; state per user"),
        (
            Router(
                "support",
                filters=[in_bot_thread, TypeFilter(["text"])],
                group_policy="mentionedMessages",
                state_scope="user",
            ),
            "support; groups: mentioned; only in_bot_thread, message type in {text}; state per user",
        ),
    ],
    ids=["plain", "policy", "scope", "everything"],
)
def test_describe_names_what_limits_a_router(router, expected):
    assert router.describe() == expected


def test_describe_of_an_unnamed_router_uses_its_id():
    router = Router(filters=[lambda msg: True], group_policy="none")
    assert router.describe() == f"{hex(id(router))}; groups: none; only <lambda>"


def test_flask_bot_routes_shows_each_routes_router_and_its_limits(tmp_path):
    mentions = Router("group.mentions", group_policy="mentioned", filters=[in_bot_thread])

    @mentions.on_thread("500")
    def follow(msg): ...

    root = Router("root")
    root.include_router(mentions)
    with BotTestClient.for_routers(root) as client:
        result = client.app.test_cli_runner().invoke(args=["bot", "routes"])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert "thread reply under 500" in line and "follow" in line
    assert line.endswith("[group.mentions; groups: mentioned; only in_bot_thread]")


def test_limits_show_what_included_routers_inherit():
    """``flask bot routes`` lists each route's router with every limit that applies, inherited ones included."""

    def staff(msg):
        return msg.sender.uid.startswith("staff-")

    root = Router("root", group_policy="mentioned")
    team = Router("team", filters=[staff])
    loud = Router("loud", group_policy="all", state_scope="user")
    team.include_router(loud, lambda msg: True)
    root.include_router(team)
    limits = {router.name: text for router, text in root.limits()}
    assert limits == {
        "root": "root; groups: mentioned",
        "team": "team; groups: mentioned (inherited); only staff",
        "loud": "loud; only staff, <lambda>; state per user",
    }


def test_catch_alls_and_thread_routes_do_not_swallow_form_submissions():
    """A submission of a form posted in a thread has a parent id; only on_submit (or a route asking for
    submissions) takes it, wherever it is registered."""
    router = Router()

    @router.on_thread()
    def thread(msg): ...

    @router.on_message()
    def anything(msg): ...

    @router.on_submit("survey")
    def survey(msg): ...

    in_thread = submission(thread="77")
    assert in_thread.parent_id == "77"
    assert resolved(router, in_thread) == "survey"
    assert resolved(router, make_message("in thread", parent_id="77")) == "thread"
