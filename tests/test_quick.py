"""Quick routes (bot/quick.py): learned from their runs, handled by the thread that answered, after the answer.

The pipeline tests hand ``submit`` a ``defer`` as the blueprint does under a
threaded server, and run what it was given on a thread of their own (the
"request thread"), as the server does when it closes the answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from bot import Router
from bot.errors import RateLimited
from bot.quick import Answering, QuickRoutes
from bot.schemas import parse_callback
from bot.testing import make_callback
from tests.helpers import Clock, wait_for
from tests.test_pipeline import NonBlockingScriptedSender, ScriptedSender, make_pipeline

ROUTE = "bots.demo.handler"

# ------------------------------------------------------------------ QuickRoutes


@pytest.mark.parametrize(
    ("runs", "admitted"),
    [
        ([], False),  # a route is not quick until it has shown it
        ([0.001] * 3, False),
        ([0.001] * 4, True),
        ([0.001] * 4 + [0.05], False),  # one slow run: back on handler threads...
        ([0.001] * 4 + [0.05] + [0.001] * 3, False),
        ([0.001] * 4 + [0.05] + [0.001] * 4, True),  # ... until it is quick that many times again
        ([0.05] * 10, False),
        ([0.0099] * 4, True),
        ([0.01] * 4, False),  # the limit itself is not quick
    ],
)
def test_a_route_is_quick_after_its_last_runs_each_took_less_than_the_limit(runs, admitted):
    quick = QuickRoutes(limit=0.01, runs=4)
    for seconds in runs:
        quick.ran(ROUTE, seconds)
    assert quick.admits(ROUTE) is admitted


def test_routes_are_told_apart_and_a_zero_limit_admits_none():
    quick, off = QuickRoutes(limit=0.01, runs=2), QuickRoutes(limit=0.0, runs=2)
    for _ in range(5):
        quick.ran(ROUTE, 0.001)
        off.ran(ROUTE, 0.0)
    quick.ran("bots.demo.other", 0.001)
    assert (quick.admits(ROUTE), quick.admits("bots.demo.other"), off.admits(ROUTE)) == (True, False, False)


def test_the_first_switch_each_way_is_logged_at_info_later_ones_at_debug(caplog):
    quick = QuickRoutes(limit=0.01, runs=2)
    with caplog.at_level(logging.DEBUG, logger="bot.quick"):
        for seconds in (0.001, 0.001, 0.5, 0.001, 0.001, 0.5):
            quick.ran(ROUTE, seconds)
    assert [(r.levelname, "now runs" in r.message, "500 ms" in r.message) for r in caplog.records] == [
        ("INFO", True, False),
        ("INFO", False, True),
        ("DEBUG", True, False),
        ("DEBUG", False, True),
    ]


# ------------------------------------------------------------------ Answering


def test_an_entry_is_taken_once():
    answering: Answering[str] = Answering()
    answering.add(1, "one")
    assert (answering.take(1), answering.take(1), len(answering)) == ("one", None, 0)


def test_entries_waiting_longer_than_the_grace_are_taken_as_overdue():
    clock = Clock()
    answering: Answering[str] = Answering(clock)
    answering.add(1, "old")
    clock.advance(0.6)
    answering.add(2, "new")
    assert answering.take_overdue(1.0) == []
    clock.advance(0.5)
    assert answering.take_overdue(1.0) == ["old"]
    assert (answering.take(1), answering.take_all(), len(answering)) == (None, ["new"], 0)


# ------------------------------------------------------------------ the pipeline


def routed_by_thread() -> tuple[Router, list[tuple[str, str]]]:
    """A bot answering "echo <text>" that records (text, the name of the thread that ran its handler)."""
    router, ran_on = Router(), []

    @router.fallback
    def echo(msg):
        ran_on.append((msg.text, threading.current_thread().name))
        return f"echo {msg.text}"

    return router, ran_on


def submit_deferred(pipeline, text: str, sender: str = "alice") -> list:
    """Submit as the blueprint does under a threaded server: the work for after the answer comes back."""
    body = make_callback(text, sender=sender)
    after_answer: list = []
    assert pipeline.submit(parse_callback(body).message, json.dumps(body).encode(), defer=after_answer.append) == (
        "accepted"
    )
    return after_answer


def answer(after_answer: list, name: str = "request-thread") -> None:
    """Run the deferred work on a thread of its own, as the server does once the answer is out."""
    thread = threading.Thread(target=lambda: [work() for work in after_answer], name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


def learn(pipeline, n: int = 4) -> None:
    """Give the route ``n`` quick runs on handler threads (callbacks from a server without threads)."""
    for i in range(n):
        body = make_callback(f"warm {i}", sender=f"warm{i}")
        pipeline.submit(parse_callback(body).message, json.dumps(body).encode())
    assert pipeline.wait_idle(5)


@pytest.fixture(params=["blocking", "non_blocking"])
def sender(request) -> ScriptedSender:
    return ScriptedSender() if request.param == "blocking" else NonBlockingScriptedSender()


def make_quick_pipeline(tmp_path, router, sender, runs: int, limit: float = 5.0, **options):
    """A pipeline whose routes are quick after ``runs`` runs under ``limit`` seconds (instead of 32 under 10 ms).

    The work these tests defer runs at once, so the claimer's safety net (a handler thread after
    ``answer_grace``) is kept out of them even on a busy machine.
    """
    pipeline = make_pipeline(tmp_path, router, sender, answer_grace=60.0, **options)
    pipeline.quick = QuickRoutes(limit, runs=runs)
    return pipeline


@pytest.fixture
def quick_pipeline(tmp_path, sender):
    """A pipeline whose routes are quick after 4 runs."""
    router, ran_on = routed_by_thread()
    pipeline = make_quick_pipeline(tmp_path, router, sender, 4)
    pipeline.ran_on = ran_on
    yield pipeline
    pipeline.stop(timeout=5)


def test_a_quick_route_runs_on_the_answering_thread_once_the_answer_is_out(quick_pipeline, sender):
    learn(quick_pipeline)
    after_answer = submit_deferred(quick_pipeline, "hi")
    assert len(after_answer) == 1 and sorted(sender.texts()) == [f"echo warm {i}" for i in range(4)]  # not before
    answer(after_answer)
    assert quick_pipeline.wait_idle(5)
    assert quick_pipeline.ran_on[-1] == ("hi", "request-thread")
    assert sender.texts()[-1] == "echo hi"
    assert {thread.split("-")[1] for _, thread in quick_pipeline.ran_on[:4]} == {"handler"}  # learned on those


def test_a_route_not_yet_known_as_quick_goes_to_a_handler_thread(quick_pipeline, sender):
    answer(submit_deferred(quick_pipeline, "first"))
    assert quick_pipeline.wait_idle(5)
    [(text, thread)] = quick_pipeline.ran_on
    assert text == "first" and thread.startswith("bot-handler")
    assert sender.texts() == ["echo first"]


def test_a_slow_route_stays_on_handler_threads(tmp_path, sender):
    router, ran_on = Router(), []

    @router.fallback
    def slow(msg):
        ran_on.append(threading.current_thread().name)
        time.sleep(0.02)
        return "done"

    pipeline = make_quick_pipeline(tmp_path, router, sender, 2, limit=0.01)
    for n in range(4):
        answer(submit_deferred(pipeline, f"m{n}", sender=f"user{n}"))
        assert pipeline.wait_idle(5)
    assert len(ran_on) == 4 and all(name.startswith("bot-handler") for name in ran_on)
    pipeline.stop(timeout=5)


def test_the_conversations_next_message_goes_to_a_handler_thread(quick_pipeline, sender):
    """Finishing a message claims its lane's next one for this process; its route may be slow, so the request
    thread does not run it."""
    learn(quick_pipeline)
    first = submit_deferred(quick_pipeline, "one")
    second = submit_deferred(quick_pipeline, "two")  # the lane is busy: journaled, not for this request thread
    assert second == []
    answer(first)
    assert quick_pipeline.wait_idle(5)
    assert sender.texts("alice_user_bot") == ["echo one", "echo two"]
    assert quick_pipeline.ran_on[-2][1] == "request-thread"
    assert quick_pipeline.ran_on[-1][0] == "two" and quick_pipeline.ran_on[-1][1].startswith("bot-handler")


def test_with_max_in_flight_reached_a_quick_route_goes_to_a_handler_thread(tmp_path):
    """A message over ``max_in_flight`` posts its replies blocking: never on a request thread."""
    sender = NonBlockingScriptedSender()
    router, ran_on = routed_by_thread()
    pipeline = make_quick_pipeline(tmp_path, router, sender, 2, max_in_flight=1)
    learn(pipeline, 2)
    started = sender.started
    sender.gate.clear()  # replies wait at CometChat's door: the first message stays in flight
    answer(submit_deferred(pipeline, "held", sender="alice"))
    assert wait_for(lambda: sender.started == started + 1)
    answer(submit_deferred(pipeline, "next", sender="bob"), name="second-request-thread")
    assert wait_for(lambda: len(ran_on) == 4)
    sender.gate.set()
    assert pipeline.wait_idle(5)
    assert [(text, thread.startswith("bot-handler")) for text, thread in ran_on[2:]] == [
        ("held", False),
        ("next", True),
    ]
    assert sorted(sender.texts()) == ["echo held", "echo next", "echo warm 0", "echo warm 1"]
    pipeline.stop(timeout=5)


def test_only_quick_at_once_request_threads_run_handlers_at_the_same_moment(tmp_path, sender):
    router, ran_on, release = Router(), [], threading.Event()

    @router.fallback
    def hold(msg):
        ran_on.append((msg.text, threading.current_thread().name))
        if msg.text == "hold":
            release.wait(10)
        return f"echo {msg.text}"

    pipeline = make_quick_pipeline(tmp_path, router, sender, 2, quick_at_once=1)
    learn(pipeline, 2)
    first = threading.Thread(target=answer, args=(submit_deferred(pipeline, "hold", sender="alice"),))
    first.start()
    assert wait_for(lambda: len(ran_on) == 3)  # the first request thread is inside the handler
    answer(submit_deferred(pipeline, "meanwhile", sender="bob"), name="second-request-thread")
    assert wait_for(lambda: len(ran_on) == 4)
    release.set()
    first.join(10)
    assert pipeline.wait_idle(5)
    assert [(text, thread.startswith("bot-handler")) for text, thread in ran_on[2:]] == [
        ("hold", False),
        ("meanwhile", True),
    ]
    pipeline.stop(timeout=5)


def test_an_answer_the_server_never_closes_is_handled_by_a_handler_thread(tmp_path, sender, caplog):
    router, ran_on = routed_by_thread()
    pipeline = make_pipeline(tmp_path, router, sender, answer_grace=0.1)
    with caplog.at_level(logging.WARNING, logger="bot.pipeline"):
        for n in range(2):
            submit_deferred(pipeline, f"lost {n}", sender=f"user{n}")  # the server drops the work
        assert pipeline.wait_idle(5)
    assert sorted(sender.texts()) == ["echo lost 0", "echo lost 1"]
    assert all(thread.startswith("bot-handler") for _, thread in ran_on)
    warnings = [r.message for r in caplog.records if "did not close" in r.message]
    assert len(warnings) == 1 and "close()" in warnings[0]  # said once, not per message
    pipeline.stop(timeout=5)


def test_stop_gives_an_unstarted_message_back_to_the_journal(tmp_path, sender):
    router, ran_on = routed_by_thread()
    pipeline = make_pipeline(tmp_path, router, sender)
    after_answer = submit_deferred(pipeline, "late")
    assert pipeline.stop(timeout=1) is True
    answer(after_answer)  # the server closes the answer after the pipeline stopped: nothing runs
    assert ran_on == [] and sender.texts() == []
    depth = pipeline.journal.depth()
    assert (depth.inbox, depth.inbox_running) == (1, 0)  # waiting for the next start
    restarted = make_pipeline(tmp_path, router, sender)
    assert restarted.wait_idle(5)
    assert sender.texts() == ["echo late"]
    restarted.stop(timeout=5)


def test_a_quick_route_whose_reply_is_retried_keeps_the_conversations_order(quick_pipeline, sender):
    learn(quick_pipeline)
    sender.fail("echo one", RateLimited("slow down", status=429, code="ERR_TOO_MANY_REQUESTS", retry_after=0.05))
    answer(submit_deferred(quick_pipeline, "one"))
    answer(submit_deferred(quick_pipeline, "two"))
    assert quick_pipeline.wait_idle(5)
    assert sender.texts("alice_user_bot") == ["echo one", "echo two"]
