"""Work sharing between processes: who offers help, who leaves messages to a helper, and the pipeline doing it.

The rules run against a real journal with injected clocks; "another process" is a second Journal on the same
file with an owner id of its own (as in tests/test_journal.py).
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

from bot import Router
from bot.client import RetryPolicy
from bot.dispatch import Dispatcher
from bot.journal import Journal
from bot.pipeline import Pipeline, PipelineOptions
from bot.schemas import parse_callback
from bot.sharing import RATE_WINDOW, Sharing, SharingOptions
from bot.state import SqliteStateStore
from bot.testing import make_callback
from tests.helpers import Clock, wait_for
from tests.test_pipeline import ScriptedSender

OPTIONS = SharingOptions(min_rate=100.0, idle_after=0.5, offer_ttl=1.0)


@pytest.fixture
def wall() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def journal(tmp_path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def other_process(journal: Journal, owner: str = "elsewhere:1:1") -> Journal:
    other = Journal(journal.path)
    other.owner = owner
    return other


def take_callbacks(sharing: Sharing, clock: Clock, rate: float, seconds: float) -> list[bool]:
    """Callbacks arriving at ``rate`` per second for ``seconds``: what ``accepted()`` said for each."""
    said = []
    for _ in range(round(rate * seconds)):
        clock.advance(1 / rate)
        said.append(sharing.accepted())
    return said


def accept_one(journal: Journal, message_id: str, wall: Clock) -> None:
    journal.accept("bot", "c1", message_id, b"{}", claim=True)
    with journal.write() as con:  # accepted "now" on the test's wall clock
        con.execute("UPDATE inbox SET accepted_at = ? WHERE message_id = ?", (wall(), message_id))


# ------------------------------------------------------------------ leaving messages to a helper


@pytest.mark.parametrize(
    ("rate", "offered", "left"),
    [
        (500.0, True, True),  # busy, and help is there
        (50.0, True, False),  # under min_rate: a helper's poll would only delay the reply
        (500.0, False, False),  # busy, but nobody offers
    ],
)
def test_a_busy_process_leaves_messages_only_when_help_is_offered(rate, offered, left, journal, clock, wall):
    if offered:
        other_process(journal).offer_help(until=wall() + 5, now=wall())
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)

    said = take_callbacks(sharing, clock, rate, seconds=0.5)

    assert said[-1] is left and sharing.leaving is left
    assert not any(said[: int(rate * RATE_WINDOW) - 1])  # the first window decides nothing yet


def test_a_process_stops_leaving_messages_when_the_offer_runs_out(journal, clock, wall):
    other_process(journal).offer_help(until=wall() + 1, now=wall())
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    assert take_callbacks(sharing, clock, 500, seconds=0.3)[-1]

    wall.advance(1.5)  # the helper died or stopped renewing
    assert not take_callbacks(sharing, clock, 500, seconds=0.3)[-1]


def test_its_own_offer_does_not_count(journal, clock, wall):
    journal.offer_help(until=wall() + 5, now=wall())
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    assert not any(take_callbacks(sharing, clock, 500, seconds=0.5))


def test_leaving_ends_when_the_callbacks_stop(journal, clock, wall):
    other_process(journal).offer_help(until=wall() + 5, now=wall())
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    take_callbacks(sharing, clock, 500, seconds=0.5)
    assert sharing.leaving
    clock.advance(OPTIONS.idle_after)
    assert not sharing.leaving  # its claimer claims again whatever was left


def test_a_journal_that_cannot_say_keeps_the_messages_here(journal, clock, wall):
    other_process(journal).offer_help(until=wall() + 5, now=wall())
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    assert take_callbacks(sharing, clock, 500, seconds=0.3)[-1]
    with journal.write() as con:
        con.execute("DROP TABLE helpers")  # every read of it fails from now on
    assert not take_callbacks(sharing, clock, 500, seconds=0.3)[-1]  # no exception: the callback goes on


# ------------------------------------------------------------------ offering help


def test_an_idle_process_offers_help_while_others_accept_messages(journal, clock, wall):
    busy = other_process(journal)
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    assert not sharing.tick()  # nothing happens anywhere: no offer (and no fast polling)
    assert not busy.help_offered(wall())

    accept_one(busy, "m1", wall)
    clock.advance(1)
    assert sharing.tick()
    assert busy.help_offered(wall())


def test_the_offer_is_renewed_while_the_load_lasts_and_withdrawn_after(journal, clock, wall):
    busy = other_process(journal)
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    for n in range(6):  # 3 s of load: the offer, good for 1 s, is renewed all along
        accept_one(busy, f"m{n}", wall)
        clock.advance(0.5)
        wall.advance(0.5)
        assert sharing.tick()
        assert busy.help_offered(wall() + 0.5)

    clock.advance(2)  # no new message for 2 s (the last one's handler may still run): not busy any more
    wall.advance(2)
    assert not sharing.tick()
    assert not busy.help_offered(wall() - 5)  # withdrawn, not just run out


def test_offers_that_ran_out_are_dropped_by_the_next_offer(journal, wall):
    other_process(journal, "killed:1:1").offer_help(until=wall() - 1, now=wall() - 2)  # killed while offering
    other_process(journal, "alive:1:1").offer_help(until=wall() + 5, now=wall())
    assert sorted(journal.read("SELECT owner FROM helpers")) == [("alive:1:1",)]


def test_a_process_that_gets_callbacks_again_withdraws_its_offer(journal, clock, wall):
    busy = other_process(journal)
    sharing = Sharing(journal, OPTIONS, clock=clock, wall_clock=wall)
    accept_one(busy, "m1", wall)
    assert sharing.tick()

    sharing.accepted()
    assert not sharing.tick()
    assert not busy.help_offered(wall())


def test_sharing_off_neither_offers_nor_leaves(journal, clock, wall):
    busy = other_process(journal)
    busy.offer_help(until=wall() + 5, now=wall())
    accept_one(busy, "m1", wall)
    sharing = Sharing(journal, SharingOptions(enabled=False, min_rate=100), clock=clock, wall_clock=wall)
    assert not any(take_callbacks(sharing, clock, 500, seconds=0.5))
    clock.advance(5)
    assert not sharing.tick()
    assert journal.read("SELECT owner FROM helpers") == [(busy.owner,)]  # no offer of its own


# ------------------------------------------------------------------ two pipelines on one journal


def pipeline_as(journal: Journal, name: str, sender: ScriptedSender) -> Pipeline:
    """A pipeline whose handler says which process ran it."""
    router = Router()
    router.fallback(lambda msg: f"{name}: {msg.text}")
    pipeline = Pipeline(
        journal,
        Dispatcher(router, bot_uid="bot", state=SqliteStateStore(journal)),
        sender,
        retry=RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05),
        options=PipelineOptions(poll_interval=0.05, sharing=SharingOptions(min_rate=50, idle_after=0.2)),
    )
    pipeline.start()
    return pipeline


def test_an_idle_process_handles_the_messages_a_busy_one_accepts(tmp_path, caplog):
    """The busy process takes every callback; the idle one ends up handling some of them. Every message is
    handled once, and each conversation's replies keep its order across the two."""
    sender = ScriptedSender()  # both processes' replies, in the order they were delivered
    busy = pipeline_as(Journal(tmp_path / "journal.sqlite3"), "busy", sender)
    idle = pipeline_as(other_process(busy.journal), "idle", sender)
    users = [f"u{n}" for n in range(8)]
    sent: dict[str, list[str]] = {user: [] for user in users}
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            user = users[n % len(users)]
            body = make_callback(f"{user} {n}", sender=user)
            assert busy.submit(parse_callback(body).message, json.dumps(body).encode()) == "accepted"
            sent[user].append(f"{user} {n}")
            n += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        # (The idle one may also take a message the busy one journaled unclaimed because its handler threads
        # were all busy: that is not sharing, hence the count of messages left.)
        assert wait_for(
            lambda: busy.stats.counts.get("left", 0) > 0 and any(t.startswith("idle: ") for t in sender.texts()),
            timeout=20,
        )
    finally:
        stop.set()
        loader.join(10)
    assert busy.wait_idle(20) and idle.wait_idle(5)
    busy.stop(2)
    idle.stop(2)

    for user in users:
        texts = sender.texts(f"{user}_user_bot")
        assert [text.split(": ", 1)[1] for text in texts] == sent[user]  # all, once each, in order
    left = busy.stats.counts["left"]
    with caplog.at_level(logging.INFO, logger="bot.pipeline"):
        busy._log_stats()  # what the periodic stats line tells the operator
    assert f"{left} accepted messages left to another process" in caplog.text
