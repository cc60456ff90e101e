"""The loop guard: two bots must not answer each other forever.

At the dispatcher level (a memory store with an injectable clock) and through the real callback path of apps
built by create_app() and BotTestClient; two framework bots play ping-pong, each fed the other's replies as
CometChat would relay them, and the exchange stops after BOT_LOOP_LIMIT.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import app as app_module
from bot import Custom, Image, Router, Text
from bot.api import SendRequest
from bot.dispatch import Dispatcher, Outcome
from bot.errors import ConfigError
from bot.factory import bot_app
from bot.loop_guard import LOOP_WINDOW, LoopGuard
from bot.message import Message
from bot.replies import MARKER
from bot.schemas import parse_callback
from bot.settings import Settings
from bot.state import MemoryStateStore
from bot.testing import BotTestClient, SentReply, make_callback, make_message
from tests.helpers import Clock

A, B = "bot-a", "bot-b"
GROUP = "lounge"


def echo(name: str) -> Router:
    """A bot that answers every text message, also in groups."""
    router = Router(name)
    router.add_fallback(lambda msg: f"{name} heard {msg.sender.uid}: {msg.text[:40]}")
    return router


@dataclass
class Bot:
    """A dispatcher of one bot, recording what it sent and the outcome of each message."""

    uid: str
    dispatcher: Dispatcher
    sent: list[SendRequest] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def handle(self, msg: Message) -> str:
        outcome = self.dispatcher.handle(msg, self.sent.append)
        self.outcomes.append(outcome)
        return outcome.status

    def statuses(self) -> list[str]:
        return [outcome.status for outcome in self.outcomes]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock) -> MemoryStateStore:
    return MemoryStateStore(clock=clock)


@pytest.fixture
def make_bot(store):
    """make_bot(uid, limit=3, known_bots=(), router=None) -> a Bot whose guard counts in ``store``."""

    def make(uid: str = A, limit: int = 3, known_bots=(), router: Router | None = None) -> Bot:
        guard = LoopGuard(store, limit=limit, known_bots=known_bots)
        return Bot(uid, Dispatcher(router or echo(uid), bot_uid=uid, state=store, loop_guard=guard))

    return make


def from_bot(sender: str = B, to: str = A, text: str = "ping", *, group: str | None = GROUP) -> Message:
    """A message of a bot built with this framework (its replies carry the marker)."""
    return make_message(text, sender=sender, bot=to, group=group, metadata={MARKER: sender})


def from_person(sender: str = "carol", to: str = A, text: str = "hello all", *, group: str | None = GROUP) -> Message:
    return make_message(text, sender=sender, bot=to, group=group)


def relay(request: SendRequest, sender: str, to: str) -> Message:
    """A bot's reply as CometChat relays it to another bot (its data and metadata as sent)."""
    msg = parse_callback(relay_callback(request.body, sender, to)).message
    assert msg is not None
    return msg


def relay_callback(body: dict, sender: str, to: str) -> dict:
    """The callback bot ``to`` gets for a message ``sender`` sent (the request ``body``)."""
    group = body["receiver"] if body["receiverType"] == "group" else None
    return make_callback(body["data"]["text"], sender=sender, bot=to, group=group, metadata=body["data"]["metadata"])


# ------------------------------------------------------------------ the marker


def test_every_reply_carries_the_marker_with_the_bots_uid(make_bot):
    router = Router()
    long_text = "word " * 4000  # split into several messages
    router.add_fallback(
        lambda msg: [
            "short",
            Text(long_text, metadata={"mine": 1}),
            Image(url="https://x/cat.png"),
            Custom("location", {"lat": 1}),
        ]
    )
    bot = make_bot(A, router=router)
    assert bot.handle(from_person()) == "replied"
    metadata = [request.body["data"]["metadata"] for request in bot.sent]
    assert [request.body["type"] for request in bot.sent][-2:] == ["image", "location"]
    assert metadata[0] == metadata[-1] == metadata[-2] == {MARKER: A}
    long_parts = metadata[1:-2]
    assert len(long_parts) >= 2  # the long text went out in parts, each marked, its own metadata kept
    assert all(part == {"mine": 1, MARKER: A} for part in long_parts)


@pytest.mark.parametrize(
    ("sender", "metadata", "known", "is_bot"),
    [
        ("helper", {MARKER: "helper"}, (), True),
        ("helper", {MARKER: "", "x": 1}, (), False),
        ("helper", {}, (), False),
        ("helper", {}, ("Helper",), True),
        ("HELPER", {}, (" helper ",), True),
        ("Helper", {}, ("HELPER", "other"), True),
        ("helper2", {}, ("helper",), False),
        ("carol", {"@bots": "x"}, ("", " "), False),
    ],
    ids=["marker", "empty-marker", "person", "known", "known-upper-sender", "known-upper-setting", "prefix", "blank"],
)
def test_which_messages_are_from_bots(store, sender, metadata, known, is_bot):
    guard = LoopGuard(store, limit=3, known_bots=known)
    assert guard.is_bot(make_message("hi", sender=sender, metadata=metadata)) is is_bot


# ------------------------------------------------------------------ the guard in the dispatcher


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_a_bot_answers_at_most_limit_bot_messages_in_a_row(make_bot, limit):
    bot = make_bot(A, limit=limit)
    for n in range(limit + 3):
        bot.handle(from_bot(text=f"ping {n}"))
    assert bot.statuses() == ["replied"] * limit + ["loop_guard"] * 3
    assert len(bot.sent) == limit
    assert all((o.handler, o.sent) == ("", 0) for o in bot.outcomes[limit:])


def test_a_person_in_the_group_resets_the_count(make_bot):
    bot = make_bot(A, limit=2)
    for _ in range(3):
        bot.handle(from_bot())
    assert bot.handle(from_person()) == "replied"
    for _ in range(3):
        bot.handle(from_bot())
    assert bot.statuses() == ["replied", "replied", "loop_guard", "replied", "replied", "replied", "loop_guard"]


def test_people_talking_after_a_reset_write_nothing(make_bot, store):
    """Only a count worth clearing is written: after the reset, people's messages cost no write."""
    bot = make_bot(A, limit=2)
    bot.handle(from_bot())
    bot.handle(from_person())  # resets the count: one write
    key = f"loop\x1f{A}\x1f{from_person().conversation_id}"
    version = store.load(key).version
    for sender in ("carol", "dave", "erin"):
        assert bot.handle(from_person(sender=sender)) == "replied"
    assert store.load(key).version == version


def test_people_are_always_answered(make_bot):
    bot = make_bot(A, limit=1)
    bot.handle(from_bot())
    bot.handle(from_bot())
    assert [bot.handle(from_person(sender=p)) for p in ("carol", "dave", "carol")] == ["replied"] * 3


def test_the_count_is_per_conversation(make_bot):
    bot = make_bot(A, limit=1)
    assert [bot.handle(from_bot(group="g1")), bot.handle(from_bot(group="g1"))] == ["replied", "loop_guard"]
    assert bot.handle(from_bot(group="g2")) == "replied"  # another group: its own count
    bot.handle(from_person(group="g2"))  # a person writing elsewhere does not reset g1
    assert bot.handle(from_bot(group="g1")) == "loop_guard"


def test_the_count_is_per_bot_in_a_shared_store(make_bot):
    """Two bots whose states share one store (as with Redis) keep their own counts."""
    first, second = make_bot(A, limit=1), make_bot("bot-c", limit=1)
    assert first.handle(from_bot(to=A)) == "replied"
    assert first.handle(from_bot(to=A)) == "loop_guard"
    assert second.handle(from_bot(to="bot-c")) == "replied"


def test_the_count_expires_after_a_quiet_window(make_bot, clock):
    bot = make_bot(A, limit=2)
    assert [bot.handle(from_bot()) for _ in range(3)] == ["replied", "replied", "loop_guard"]
    clock.advance(LOOP_WINDOW - 1)
    assert bot.handle(from_bot()) == "loop_guard"
    clock.advance(LOOP_WINDOW)  # a whole window without a bot message
    assert [bot.handle(from_bot()) for _ in range(3)] == ["replied", "replied", "loop_guard"]


def test_the_window_only_restarts_after_quiet_not_while_bot_messages_keep_coming(make_bot, clock):
    """LOOP_WINDOW: seconds *without a bot message* after which the count starts again."""
    bot = make_bot(A, limit=2)
    bot.handle(from_bot())
    bot.handle(from_bot())
    for _ in range(4):  # a bot message every 5 minutes: never 10 minutes of quiet
        clock.advance(LOOP_WINDOW / 2)
        bot.handle(from_bot())
    assert bot.statuses() == ["replied", "replied"] + ["loop_guard"] * 4


def test_in_one_to_one_nothing_resets_the_count(make_bot):
    bot = make_bot(A, limit=2)
    dm = [from_bot(group=None) for _ in range(3)]
    assert [bot.handle(msg) for msg in dm] == ["replied", "replied", "loop_guard"]
    # The other bot writes without the marker (so, as far as we can tell, as a person): answered, but in a 1:1
    # chat with a bot that does not start the count again.
    assert bot.handle(from_person(sender=B, group=None)) == "replied"
    assert bot.handle(from_bot(group=None)) == "loop_guard"
    # People in their own 1:1 chats are not affected.
    assert bot.handle(from_person(sender="carol", group=None)) == "replied"


@pytest.mark.parametrize("sender", ["ci-bot", "CI-Bot", "CI-BOT"])
def test_known_bots_are_counted_without_the_marker(make_bot, sender):
    bot = make_bot(A, limit=1, known_bots=[" ci-BOT ", "other"])
    plain = [make_message("build passed", sender=sender, bot=A, group=GROUP) for _ in range(2)]
    assert [bot.handle(msg) for msg in plain] == ["replied", "loop_guard"]
    assert bot.handle(make_message("build passed", sender="ci-bot-2", bot=A, group=GROUP)) == "replied"


def test_only_bot_messages_the_bot_answered_count(make_bot):
    """The guard counts the bot messages this bot *answered* (loop_guard.py): chatter it ignores is no loop."""
    router = Router()
    router.on_command("status")(lambda msg: "all good")
    bot = make_bot(A, limit=2, router=router)
    for n in range(3):
        bot.handle(from_bot(text=f"deploy {n} finished"))
    bot.handle(from_bot(text="/status"))
    assert bot.statuses() == ["unmatched", "unmatched", "unmatched", "replied"]


# ------------------------------------------------------------------ ping-pong of two framework bots


def play(bots: dict[str, Bot], kickoff: list[tuple[str, Message]], max_rounds: int = 200) -> int:
    """Deliver messages until nobody answers any more; each reply is relayed to the other bot. Returns rounds."""
    queue = deque(kickoff)
    rounds = 0
    while queue:
        rounds += 1
        assert rounds <= max_rounds, "the bots kept answering each other"
        to, msg = queue.popleft()
        bot = bots[to]
        before = len(bot.sent)
        bot.handle(msg)
        for request in bot.sent[before:]:
            for other in bots:
                if other != to:
                    queue.append((other, relay(request, to, other)))
    return rounds


@pytest.mark.parametrize("limit", [1, 3])
def test_two_framework_bots_in_a_group_stop_after_the_limit(make_bot, limit):
    bots = {A: make_bot(A, limit=limit), B: make_bot(B, limit=limit)}
    play(bots, [(A, from_person(to=A)), (B, from_person(to=B))])
    for bot in bots.values():
        assert len(bot.sent) == 1 + limit  # the person's message, then `limit` of the other bot's
        assert bot.statuses() == ["replied"] * (1 + limit) + ["loop_guard"]
    # A person writes again: the bots may talk again, as far as the limit.
    play(bots, [(A, from_person(to=A, text="again")), (B, from_person(to=B, text="again"))])
    assert [len(bot.sent) for bot in bots.values()] == [2 * (1 + limit)] * 2


def test_two_framework_bots_in_a_direct_chat_stop_after_the_limit(make_bot):
    bots = {A: make_bot(A, limit=2), B: make_bot(B, limit=2)}
    play(bots, [(A, from_bot(sender=B, to=A, text="hi", group=None))])
    assert bots[A].statuses() == ["replied", "replied", "loop_guard"]
    assert bots[B].statuses() == ["replied", "replied"]
    assert {r.body["receiver"] for r in bots[A].sent} == {B} and {r.body["receiver"] for r in bots[B].sent} == {A}


def test_without_a_guard_the_bots_would_not_stop(store):
    bots = {uid: Bot(uid, Dispatcher(echo(uid), bot_uid=uid, state=store)) for uid in (A, B)}
    with pytest.raises(AssertionError, match="kept answering"):
        play(bots, [(A, from_person(to=A))], max_rounds=50)


# ------------------------------------------------------------------ through the callback path (create_app)


def loop_guard_count(app) -> float:
    value = bot_app(app).metrics.registry.get_sample_value(
        "cometchat_bot_handler_seconds_count", {"outcome": "loop_guard"}
    )
    return value or 0.0


@pytest.fixture
def open_client():
    """open_client(app) -> a BotTestClient on ``app``, closed after the test."""
    clients: list[BotTestClient] = []

    def open_(app) -> BotTestClient:
        clients.append(BotTestClient(app))
        return clients[-1]

    yield open_
    for client in clients:
        client.close()


def helper_says(client: BotTestClient, text: str = "hello", *, sender: str = "helper", marker: bool = True):
    return client.send(text, sender=sender, group="ops", metadata={MARKER: sender} if marker else None)


def test_create_app_stops_answering_after_bot_loop_limit(open_client, capsys):
    app = app_module.create_app({"BOT_LOOP_LIMIT": "2"})
    client = open_client(app)
    answered = [len(helper_says(client)) for _ in range(4)]
    assert answered == [1, 1, 0, 0]
    assert loop_guard_count(app) == 2
    assert client.send("hello", sender="dave", group="ops").texts == ["Hello Dave! Type /help to see what I can do."]
    assert [len(helper_says(client)) for _ in range(3)] == [1, 1, 0]
    assert loop_guard_count(app) == 3


def test_the_guard_is_on_by_default_with_a_limit_of_3(open_client, capsys):
    app = app_module.create_app()
    guard = bot_app(app).dispatcher.loop_guard
    assert guard is not None and guard.limit == 3
    client = open_client(app)
    assert [len(helper_says(client)) for _ in range(4)] == [1, 1, 1, 0]


@pytest.mark.parametrize("source", ["environment", "settings"])
def test_known_bots_from_the_configuration(open_client, monkeypatch, source, capsys):
    config = {"KNOWN_BOTS": " CI-Bot , deploy-bot,", "BOT_LOOP_LIMIT": "1"}
    if source == "environment":
        for name, value in config.items():
            monkeypatch.setenv(name, value)
        app = app_module.create_app()
    else:
        app = app_module.create_app(config)
    assert bot_app(app).dispatcher.loop_guard.known_bots == {"ci-bot", "deploy-bot"}
    client = open_client(app)
    assert [len(helper_says(client, sender="ci-bot", marker=False)) for _ in range(2)] == [1, 0]
    assert len(helper_says(client, sender="DEPLOY-BOT", marker=False)) == 0  # same conversation, same count
    assert len(helper_says(client, sender="someone", marker=False)) == 1  # a person: answered, count reset
    assert len(helper_says(client, sender="Deploy-Bot", marker=False)) == 1


def test_bot_loop_limit_0_turns_the_guard_off(open_client, capsys):
    app = app_module.create_app({"BOT_LOOP_LIMIT": "0"})
    assert bot_app(app).dispatcher.loop_guard is None
    client = open_client(app)
    assert [len(helper_says(client)) for _ in range(8)] == [1] * 8
    assert loop_guard_count(app) == 0


def test_a_negative_bot_loop_limit_is_a_configuration_error():
    with pytest.raises(ConfigError, match="BOT_LOOP_LIMIT"):
        app_module.create_app({"BOT_LOOP_LIMIT": "-1"})


# ------------------------------------------------------------------ ping-pong through the callback path


@pytest.fixture
def two_apps(tmp_path) -> Iterator[dict[str, BotTestClient]]:
    """Bots A and B, each an app of its own (own journal) with BOT_LOOP_LIMIT=2."""
    clients = {
        uid: BotTestClient.for_routers(
            echo(uid), settings=Settings(journal_path=str(tmp_path / uid / "journal.sqlite3"), bot_loop_limit=2)
        )
        for uid in (A, B)
    }
    yield clients
    for client in clients.values():
        client.close()


def relay_all(clients: dict[str, BotTestClient], kickoff: list[tuple[str, dict]]) -> dict[str, list[SentReply]]:
    """Post callbacks until nobody answers; every reply is relayed to every bot (its author ignores its own)."""
    sent: dict[str, list[SentReply]] = {uid: [] for uid in clients}
    queue = deque(kickoff)
    posted = 0
    while queue:
        posted += 1
        assert posted <= 100, "the bots kept answering each other"
        to, callback = queue.popleft()
        replies = clients[to].send_payload(callback)
        sent[to] += replies
        for reply in replies:
            for uid in clients:
                queue.append((uid, relay_callback(reply.body, to, uid)))
    return sent


@pytest.mark.parametrize("group", [GROUP, None], ids=["group", "direct"])
def test_two_framework_apps_stop_answering_each_other(two_apps, group):
    if group:  # a person writes in the group: both bots get it
        kickoff = [(uid, make_callback("hello bots", sender="carol", bot=uid, group=group)) for uid in two_apps]
        expected = 1 + 2
    else:  # bot B writes to bot A directly
        kickoff = [(A, make_callback("hi", sender=B, bot=A, metadata={MARKER: B}))]
        expected = 2
    sent = relay_all(two_apps, kickoff)
    assert [len(sent[uid]) for uid in (A, B)] == [expected, expected]
    assert all(reply.body["data"]["metadata"][MARKER] == uid for uid in sent for reply in sent[uid])
    assert loop_guard_count(two_apps[A].app) == 1
    assert loop_guard_count(two_apps[B].app) == (1 if group else 0)  # in the direct chat A stopped first
