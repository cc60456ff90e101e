"""The delivery pipeline with its threads: order per conversation, concurrency, retries, dead letters, drain."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest

from bot import Router
from bot import journal as journal_module
from bot.api import SendRequest
from bot.client import RetryPolicy
from bot.dispatch import Dispatcher
from bot.errors import CometChatError, NotFound, RateLimited, ServerError, TransportError
from bot.journal import Journal, RateLimit
from bot.message import ReplyRef
from bot.pipeline import Pipeline, PipelineOptions
from bot.schemas import parse_callback
from bot.state import SqliteStateStore
from bot.testing import make_callback
from tests.helpers import Clock, dead_owner, wait_for


class ScriptedSender:
    """Stands in for CometChat at the HTTP boundary: records every attempt, fails the ones it is told to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: list[SendRequest] = []
        self.delivered: list[SendRequest] = []
        self.failures: dict[str, list[Exception]] = defaultdict(list)  # text -> errors to raise, in order
        self.lookups: list[SendRequest] = []  # List Messages calls (bot.client.find_delivered)
        self.lookup_error: Exception | None = None
        self.answers_lost: set[str] = set()  # texts taken whose answer is lost once (a timeout after sending)
        self.sent_by: list[tuple[float, str]] = []  # (time.time(), thread name) of each delivered request

    def fail(self, text: str, *errors: Exception) -> None:
        self.failures[text].extend(errors)

    def attempt(self, request: SendRequest) -> dict | list:
        if request.method == "GET":  # a lookup: the messages delivered so far, as CometChat lists them
            with self.lock:
                self.lookups.append(request)
                if self.lookup_error is not None:
                    raise self.lookup_error
                return [{**r.body, "id": str(n)} for n, r in enumerate(self.delivered, 1)]
        text = request.body["data"].get("text", "")
        with self.lock:
            self.attempts.append(request)
            if self.failures.get(text):
                raise self.failures[text].pop(0)
            self.delivered.append(request)
            self.sent_by.append((time.time(), threading.current_thread().name))
            if text in self.answers_lost:
                self.answers_lost.discard(text)
                raise TransportError("no answer within 10 s (timed out)", in_doubt=True)
        return {"id": str(len(self.delivered))}

    def texts(self, conversation: str | None = None) -> list[str]:
        with self.lock:
            return [
                r.body["data"]["text"]
                for r in self.delivered
                if conversation is None or r.conversation_id == conversation
            ]


class NonBlockingScriptedSender(ScriptedSender):
    """The same, with the non-blocking ``start(request, done)`` the pipeline prefers (CometChatClient has it):
    attempts run one after the other on a thread of their own, as on the client's transfer thread. ``hold``
    keeps every attempt waiting until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.gate = threading.Event()
        self.gate.set()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="test-transfers", daemon=True).start()

    def start(self, request: SendRequest, done) -> None:
        with self.lock:
            self.started += 1
        self._work.put((request, done))

    def _run(self) -> None:
        while True:
            request, done = self._work.get()
            self.gate.wait(10)
            try:
                data = self.attempt(request)
            except CometChatError as error:
                done(None, error)
            else:
                done(data, None)


def make_pipeline(tmp_path, router: Router, sender: ScriptedSender, **options) -> Pipeline:
    retry = RetryPolicy(max_retries=options.pop("max_retries", 3), base_delay=0.01, max_delay=0.05)
    journal = Journal(tmp_path / "journal.sqlite3", rate_limit=options.pop("rate_limit", None))
    pipeline = Pipeline(
        journal,
        Dispatcher(router, bot_uid="bot", state=SqliteStateStore(journal)),
        sender,
        retry=retry,
        options=PipelineOptions(poll_interval=0.05, **options),
    )
    pipeline.start()
    return pipeline


def submit(pipeline: Pipeline, text: str, sender: str = "alice", **kwargs) -> str:
    body = make_callback(text, sender=sender, **kwargs)
    message = parse_callback(body).message
    return pipeline.submit(message, json.dumps(body).encode())


@pytest.fixture(params=["blocking", "non_blocking"])
def sender(request) -> ScriptedSender:
    """Every pipeline test runs with both kinds of sender: replies posted by the handler threads themselves, and
    replies handed to a sender's start() (posted on its thread, the message finished there)."""
    return ScriptedSender() if request.param == "blocking" else NonBlockingScriptedSender()


@pytest.fixture
def echo() -> Router:
    router = Router()

    @router.fallback
    def echo_handler(msg):
        return f"echo {msg.text}"

    return router


def test_submit_answers_before_the_handler_runs(tmp_path, sender):
    router, release = Router(), threading.Event()

    @router.fallback
    def slow(msg):
        release.wait(5)
        return "done"

    pipeline = make_pipeline(tmp_path, router, sender)
    assert submit(pipeline, "hi") == "accepted"  # returns while the handler is blocked
    assert sender.texts() == []
    release.set()
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["done"]


def test_replies_keep_the_order_of_each_conversation(tmp_path, sender):
    router = Router()

    @router.fallback
    def numbered(msg):
        n = int(msg.text.split()[-1])
        time.sleep(0.001 * (n % 3))  # uneven handler times must not reorder a conversation
        return [f"{msg.text} a", f"{msg.text} b"]

    pipeline = make_pipeline(tmp_path, router, sender, handler_threads=4, sender_threads=4)
    users = ["u1", "u2", "u3"]
    for n in range(20):
        for user in users:
            assert submit(pipeline, f"{user} {n}", sender=user) == "accepted"
    assert pipeline.wait_idle(15)
    for user in users:
        expected = [f"{user} {n} {part}" for n in range(20) for part in "ab"]
        assert sender.texts(f"{user}_user_bot") == expected


def test_conversations_are_handled_concurrently(tmp_path, sender):
    router, both_running = Router(), threading.Barrier(2, timeout=5)

    @router.fallback
    def meet(msg):
        both_running.wait()  # breaks (BrokenBarrierError) unless two handlers run at the same time
        return "met"

    pipeline = make_pipeline(tmp_path, router, sender, handler_threads=2)
    submit(pipeline, "x", sender="alice")
    submit(pipeline, "y", sender="bob")
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["met", "met"]


def test_one_conversation_is_never_handled_twice_at_once(tmp_path, sender):
    router, lock, overlaps = Router(), threading.Lock(), []

    @router.fallback
    def exclusive(msg):
        if not lock.acquire(blocking=False):
            overlaps.append(msg.text)
            return None
        try:
            time.sleep(0.005)
        finally:
            lock.release()
        return msg.text

    pipeline = make_pipeline(tmp_path, router, sender, handler_threads=8)
    for n in range(10):
        submit(pipeline, str(n))
    assert pipeline.wait_idle(10)
    assert overlaps == []
    assert sender.texts() == [str(n) for n in range(10)]


def test_redelivered_callback_is_handled_once(tmp_path, sender, echo):
    pipeline = make_pipeline(tmp_path, echo, sender)
    body = make_callback("hello", id="777")
    message = parse_callback(body).message
    raw = json.dumps(body).encode()
    assert pipeline.submit(message, raw) == "accepted"
    assert pipeline.submit(message, raw) == "duplicate"
    assert pipeline.wait_idle(5)
    assert pipeline.submit(message, raw) == "duplicate"  # also after it was handled
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["echo hello"]


def test_a_retry_does_not_hold_up_other_conversations(tmp_path, sender, echo):
    sender.fail("echo slow", RateLimited("slow down", status=429, code="ERR_TOO_MANY_REQUESTS", retry_after=0.4))
    pipeline = make_pipeline(tmp_path, echo, sender, sender_threads=1, handler_threads=1)
    submit(pipeline, "slow", sender="alice")
    submit(pipeline, "slow 2", sender="alice")  # same conversation: must wait for the retried reply
    submit(pipeline, "fast", sender="bob")
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["echo fast", "echo slow", "echo slow 2"]
    retried = [r for r in sender.attempts if r.body["data"]["text"] == "echo slow"]
    assert len(retried) == 2 and retried[0].muid == retried[1].muid  # same muid on the retry


def test_with_a_rate_limit_replies_are_posted_directly_while_the_bucket_holds_tokens(tmp_path, sender, echo):
    pipeline = make_pipeline(tmp_path, echo, sender, rate_limit=RateLimit(50, 1))  # a full bucket: 50 tokens
    for user in ("u1", "u2", "u3", "u4", "u5"):
        submit(pipeline, "hi", sender=user)
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["echo hi"] * 5
    # Posted by the handler threads (or the sender's start()), none through the outbox's sender threads.
    assert [name for _, name in sender.sent_by if name.startswith("bot-sender")] == []


def test_with_an_empty_bucket_replies_wait_in_the_outbox_in_order_and_paced(tmp_path, sender):
    router = Router()

    @router.fallback
    def two(msg):
        return ["first", "second"]

    limit = RateLimit(2, 1)  # 2/s, burst 2
    pipeline = make_pipeline(tmp_path, router, sender, rate_limit=limit)
    emptied_at = time.time()  # the bucket is full until now, and emptied right after
    assert pipeline.journal.take_token() and pipeline.journal.take_token()
    submit(pipeline, "go")
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["first", "second"]
    # The 3rd and 4th sends since the bucket was full: not before 0.5 s and 1 s later (2 tokens a second).
    for n, (sent_at, _) in enumerate(sender.sent_by, start=1):
        assert sent_at >= emptied_at + n / limit.per_second - 0.01


def test_replies_held_back_when_the_bucket_runs_dry_give_their_tokens_back(tmp_path, sender):
    router = Router()

    @router.fallback
    def two(msg):
        return ["first", "second"]

    pipeline = make_pipeline(tmp_path, router, sender, rate_limit=RateLimit(1, 60))  # a token a minute
    submit(pipeline, "go")
    # "first" took the bucket's token, "second" found it empty: both went to the outbox. Had "first" not given
    # its token back, the outbox would wait a minute for one.
    assert wait_for(lambda: sender.texts() == ["first"], 10)
    assert pipeline.depth().outbox == 1


def test_replies_queued_behind_a_failed_attempt_give_their_tokens_back(tmp_path, sender, monkeypatch):
    # The journal's clock stands still (an hour ahead, so that retries are due at once): its bucket never refills,
    # and only tokens given back can send more than the three it holds.
    clock = Clock(time.time() + 3600)
    monkeypatch.setattr(journal_module, "time", SimpleNamespace(time=clock, monotonic=clock, sleep=time.sleep))
    router = Router()

    @router.fallback
    def three(msg):
        return ["first", "second", "third"]

    sender.fail("first", ServerError("boom", status=500))
    pipeline = make_pipeline(tmp_path, router, sender, rate_limit=RateLimit(3, 1))  # 3 tokens
    submit(pipeline, "go")
    # "first" failed and waits for its retry; the replies queued behind it had taken the other two tokens (or,
    # posted by the handler thread, none): the retry and "second" get them, "third" none.
    assert wait_for(lambda: sender.texts() == ["first", "second"] and pipeline.depth().outbox == 1, 10)


def test_server_errors_are_retried_then_delivered_once(tmp_path, sender, echo):
    sender.fail("echo hi", ServerError("boom", status=500), ServerError("boom", status=503))
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "hi")
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["echo hi"]
    assert len(sender.attempts) == 3


def test_final_failures_become_dead_letters(tmp_path, sender, echo, caplog):
    sender.fail("echo gone", NotFound("The UID alice does not exist", status=404, code="ERR_UID_NOT_FOUND"))
    sender.fail("echo flaky", *[ServerError("boom", status=500, code="ERR_MISSION_FAILED")] * 3)
    pipeline = make_pipeline(tmp_path, echo, sender, max_retries=2)
    submit(pipeline, "gone", sender="alice")
    submit(pipeline, "flaky", sender="bob")
    submit(pipeline, "after", sender="alice")  # the lane goes on after a dead letter
    assert pipeline.wait_idle(10)
    letters = {letter["error_code"]: letter for letter in pipeline.journal.dead_letters()}
    assert set(letters) == {"ERR_UID_NOT_FOUND", "ERR_MISSION_FAILED"}
    assert letters["ERR_UID_NOT_FOUND"]["attempts"] == 1  # a 404 is not retried
    assert letters["ERR_MISSION_FAILED"]["attempts"] == 3
    assert sender.texts() == ["echo after"]
    assert "ERR_UID_NOT_FOUND" in caplog.text and "dead letter" in caplog.text


def test_msg_reply_is_sent_before_the_handler_returns(tmp_path, sender):
    router, sent_first = Router(), threading.Event()

    @router.fallback
    def thinking(msg):
        msg.reply("working on it")
        deadline = time.monotonic() + 5
        while not sender.texts() and time.monotonic() < deadline:
            time.sleep(0.005)
        sent_first.set() if sender.texts() == ["working on it"] else None
        return "done"

    pipeline = make_pipeline(tmp_path, router, sender)
    submit(pipeline, "question")
    assert pipeline.wait_idle(10)
    assert sent_first.is_set()
    assert sender.texts() == ["working on it", "done"]


def test_handler_rerun_after_a_crash_does_not_send_an_interim_reply_twice(tmp_path, sender):
    """msg.reply() replies are journaled with their muid first: re-running the handler (what recovery does after a
    crash mid-handler) skips them. Returned replies are posted inline and may go again if the crash came before the
    message was finished (at-least-once in that window; the stable muid lets CometChat recognise them)."""
    router = Router()

    @router.on_text("step")
    def steps(msg):
        msg.reply("working on it")
        return "done"

    pipeline = make_pipeline(tmp_path, router, sender)
    body = make_callback("step", id="4242")
    message = parse_callback(body).message
    pipeline.submit(message, json.dumps(body).encode())
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["working on it", "done"]
    pipeline.dispatcher.handle(message, pipeline.deliver)
    assert pipeline.wait_idle(5)
    assert sender.texts().count("working on it") == 1


def test_returned_replies_are_posted_without_an_outbox_row(tmp_path, sender, echo):
    """The common case costs no journal write per reply: the handler thread posts what the handler returned."""
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "fast path")
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["echo fast path"]
    assert pipeline.journal._read("SELECT count(*) FROM seen WHERE key LIKE 'r%'") == [(0,)]


def test_stop_drains_running_work(tmp_path, sender):
    router, started = Router(), threading.Event()

    @router.fallback
    def slowish(msg):
        started.set()
        time.sleep(0.2)
        return "finished"

    pipeline = make_pipeline(tmp_path, router, sender)
    submit(pipeline, "go")
    assert started.wait(5)
    assert pipeline.stop(timeout=5) is True
    assert sender.texts() == ["finished"]
    assert pipeline.journal.depth().inbox == 0


def test_stop_leaves_unfinished_work_in_the_journal(tmp_path, sender):
    router, started, release = Router(), threading.Event(), threading.Event()

    @router.fallback
    def stuck(msg):
        started.set()
        release.wait(10)
        return "late"

    pipeline = make_pipeline(tmp_path, router, sender, handler_threads=1)
    submit(pipeline, "first", sender="alice")
    assert started.wait(5)
    submit(pipeline, "second", sender="bob")  # queued behind the busy handler thread
    assert pipeline.stop(timeout=0.1) is False
    depth = pipeline.journal.depth()
    assert (depth.inbox, depth.inbox_running) == (2, 1)  # bob's message was given back, alice's still running
    release.set()


def test_accepted_messages_survive_a_restart(tmp_path, sender, echo):
    """Messages in the journal when a pipeline starts are handled (the crash case is in test_crash.py)."""
    journal = Journal(tmp_path / "journal.sqlite3")
    for n in range(3):
        body = make_callback(f"m{n}", sender="alice")
        journal.accept("bot", "alice_user_bot", body["data"]["id"], json.dumps(body).encode(), claim=False)
    pipeline = make_pipeline(tmp_path, echo, sender)
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["echo m0", "echo m1", "echo m2"]


def test_a_message_that_keeps_killing_its_process_is_dead_lettered(tmp_path, sender, echo):
    journal = Journal(tmp_path / "journal.sqlite3")
    body = make_callback("poison", sender="alice")
    journal.accept("bot", "alice_user_bot", body["data"]["id"], json.dumps(body).encode(), claim=False)
    journal.owner = "elsewhere:1:1"
    for _ in range(3):  # three processes claimed it and died
        assert journal.claim_inbox(1)
        journal.release(journal.claim_inbox(0))
        with journal._write() as con:
            con.execute("UPDATE inbox SET owner = NULL")
    pipeline = make_pipeline(tmp_path, echo, sender)
    assert pipeline.wait_idle(5)
    assert sender.texts() == []
    [letter] = pipeline.journal.dead_letters()
    assert (letter["kind"], letter["error_code"]) == ("message", "HANDLER_CRASHED")


@pytest.mark.parametrize(
    ("delivered_before", "lookup_error", "posts"),
    [
        (True, None, 0),  # CometChat took it before the process died: not sent again
        (False, None, 1),  # the process died before sending it
        (True, ServerError("down", status=500), 1),  # no way to know: sent (twice rather than never)
    ],
    ids=["delivered", "not delivered", "lookup failed"],
)
def test_a_message_handled_again_after_a_crash_looks_its_replies_up_first(
    tmp_path, sender, echo, delivered_before, lookup_error, posts
):
    body = make_callback("hello", sender="alice", id="7001")
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.owner = dead_owner()  # a process claimed it, ran its handler, and was killed
    assert journal.accept("bot", "alice_user_bot", "7001", json.dumps(body).encode(), claim=True)
    if delivered_before:  # ... after its inline reply reached CometChat
        Dispatcher(echo, bot_uid="bot").handle(parse_callback(body).message, sender.attempt)
    sender.lookup_error = lookup_error
    before = len(sender.delivered)

    pipeline = make_pipeline(tmp_path, echo, sender)
    assert wait_for(lambda: pipeline.journal.depth().inbox == 0, 5) and pipeline.wait_idle(5)
    assert len(sender.delivered) - before == posts
    assert sender.texts() == ["echo hello"] * (before + posts)
    [lookup] = sender.lookups
    assert lookup.method == "GET" and lookup.path.startswith("/messages?conversationId=alice_user_bot&")
    found = pipeline.metrics.registry.get_sample_value("cometchat_bot_replies_found_delivered_total")
    assert found == (1 if posts == 0 else 0)


@pytest.mark.parametrize("taken", [True, False], ids=["taken, answer lost", "refused before sending"])
def test_a_reply_whose_attempt_may_have_been_carried_out_is_looked_up_before_its_retry(tmp_path, sender, echo, taken):
    if taken:
        sender.answers_lost.add("echo hi")
    else:
        sender.fail("echo hi", TransportError("connection to api refused"))
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "hi")
    assert wait_for(lambda: pipeline.journal.depth().outbox == 0 and sender.texts(), 5) and pipeline.wait_idle(5)
    assert sender.texts() == ["echo hi"]  # once, either way
    assert len(sender.lookups) == (1 if taken else 0)


@pytest.mark.parametrize("taken", [True, False], ids=["taken, answer lost", "refused"])
def test_a_dead_letter_sent_again_is_looked_up_if_an_attempt_may_have_been_carried_out(tmp_path, sender, echo, taken):
    down = ServerError("down", status=500, code="ERR_MISSION_FAILED")
    sender.fail("echo hi", down, down)
    if taken:  # the third and last attempt: CometChat took it, and its answer was lost
        sender.answers_lost.add("echo hi")
    else:
        sender.fail("echo hi", down)
    pipeline = make_pipeline(tmp_path, echo, sender, max_retries=2)
    submit(pipeline, "hi")
    assert wait_for(lambda: pipeline.journal.depth().dead_letters == 1, 5) and pipeline.wait_idle(5)
    assert len(sender.delivered) == (1 if taken else 0) and sender.lookups == []

    [letter] = pipeline.dead_letters()
    assert pipeline.requeue_dead_letter(str(letter["id"]))
    pipeline._wake.set()  # as the claimer's next poll would (the CLI that requeues is another process)
    assert wait_for(lambda: pipeline.journal.depth().outbox == 0, 5) and pipeline.wait_idle(5)
    assert sender.texts() == ["echo hi"]  # once, either way
    assert len(sender.lookups) == (1 if taken else 0)
    assert pipeline.journal.dead_letters() == []


def test_a_message_handled_the_first_time_looks_nothing_up(tmp_path, sender, echo):
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "first time")
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["echo first time"] and sender.lookups == []


def test_pipeline_restarts_after_fork_on_first_use(tmp_path, sender, echo):
    pipeline = make_pipeline(tmp_path, echo, sender)
    pipeline._pid = -1  # what a forked child sees: the threads belong to the parent
    submit(pipeline, "after fork")
    assert pipeline.wait_idle(5)
    assert sender.texts() == ["echo after fork"]


def test_a_handler_that_runs_long_is_named_in_a_warning(tmp_path, sender, monkeypatch, caplog):
    """Handlers have no time limit; the periodic stats name one that holds its conversation too long."""
    router, started, release = Router(), threading.Event(), threading.Event()

    @router.fallback
    def stuck(msg):
        started.set()
        release.wait(5)

    pipeline = make_pipeline(tmp_path, router, sender)
    submit(pipeline, "hang", id="777")
    assert started.wait(5)
    monkeypatch.setattr("bot.pipeline.SLOW_HANDLER", 0.0)
    with caplog.at_level("WARNING", logger="bot.pipeline"):
        pipeline._log_stats()
    release.set()
    assert pipeline.wait_idle(5)
    assert any("message 777 in alice_user_bot: its handler has been running for" in r.message for r in caplog.records)
    caplog.clear()
    pipeline._log_stats()  # finished: no longer named
    assert not any("running for" in r.message for r in caplog.records)


def test_a_reply_that_fails_in_the_middle_keeps_the_order_of_the_rest(tmp_path, sender):
    router = Router()

    @router.fallback
    def three(msg):
        return [f"{msg.text} a", f"{msg.text} b", f"{msg.text} c"]

    sender.fail("one b", ServerError("boom", status=500))
    pipeline = make_pipeline(tmp_path, router, sender)
    submit(pipeline, "one")
    submit(pipeline, "two")  # the same conversation: its replies come after all of "one"'s
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["one a", "one b", "one c", "two a", "two b", "two c"]
    assert [r.body["data"]["text"] for r in sender.attempts].count("one b") == 2


def test_an_edit_returned_after_the_handler_is_resolved_to_the_message_id(tmp_path, sender):
    """An after hook may edit an earlier reply: the request names it by muid until CometChat's id is looked up."""
    router = Router()

    @router.fallback
    def nothing(msg):
        return "done"

    @router.after
    def edit_earlier(msg, replies):
        msg.edit(ReplyRef(("muid-earlier",)), text="changed")

    pipeline = make_pipeline(tmp_path, router, sender)
    pipeline.journal.remember_sent("muid-earlier", "9100", "alice_user_bot")
    submit(pipeline, "hi")
    assert pipeline.wait_idle(10)
    # After hooks run before the handler's replies are sent: the edit goes first.
    assert [(r.method, r.path) for r in sender.delivered] == [("PUT", "/messages/9100"), ("POST", "/bots/bot/messages")]
    assert pipeline.journal.dead_letters() == []


def test_an_edit_of_a_reply_never_delivered_is_a_dead_letter(tmp_path, sender):
    router = Router()

    @router.fallback
    def nothing(msg):
        return None

    @router.after
    def edit_unknown(msg, replies):
        msg.edit(ReplyRef(("muid-never-sent",)), text="changed")

    pipeline = make_pipeline(tmp_path, router, sender)
    submit(pipeline, "hi")
    submit(pipeline, "again")  # the conversation goes on
    assert pipeline.wait_idle(10)
    assert [letter["error_code"] for letter in pipeline.journal.dead_letters()] == ["ERR_REFERENCE_NOT_SENT"] * 2
    assert pipeline.journal.depth().inbox == 0


@pytest.fixture
def non_blocking() -> NonBlockingScriptedSender:
    return NonBlockingScriptedSender()


def test_replies_beyond_max_in_flight_are_posted_by_the_handler_thread(tmp_path, non_blocking, echo):
    non_blocking.gate.clear()  # the first message's reply stays in flight
    pipeline = make_pipeline(tmp_path, echo, non_blocking, max_in_flight=1)
    submit(pipeline, "one", sender="alice")
    assert wait_for(lambda: non_blocking.started == 1)
    submit(pipeline, "two", sender="bob")  # over the limit: the handler thread posts it itself, at once
    assert wait_for(lambda: non_blocking.texts() == ["echo two"])
    assert non_blocking.started == 1
    non_blocking.gate.set()
    assert pipeline.wait_idle(10)
    assert non_blocking.texts() == ["echo two", "echo one"]


def test_stop_waits_for_replies_in_flight(tmp_path, non_blocking, echo):
    non_blocking.gate.clear()
    pipeline = make_pipeline(tmp_path, echo, non_blocking)
    submit(pipeline, "go")
    assert wait_for(lambda: non_blocking.started == 1)
    threading.Timer(0.2, non_blocking.gate.set).start()
    assert pipeline.stop(timeout=5) is True
    assert non_blocking.texts() == ["echo go"]
    assert pipeline.journal.depth().inbox == 0


def test_stop_leaves_a_message_whose_replies_are_in_flight_in_the_journal(tmp_path, non_blocking, echo):
    non_blocking.gate.clear()
    pipeline = make_pipeline(tmp_path, echo, non_blocking)
    submit(pipeline, "go")
    assert wait_for(lambda: non_blocking.started == 1)
    assert pipeline.stop(timeout=0.1) is False
    depth = pipeline.journal.depth()
    assert (depth.inbox, depth.inbox_running) == (1, 1)  # claimed by this process: recovered once it is gone
    non_blocking.gate.set()


def test_stop_tries_a_retry_due_after_the_deadline_once_more(tmp_path, sender, echo):
    """Rather than leave the reply in the journal of a process that is going away (the next start may be on another
    host), the drain tries it now."""
    sender.fail("echo hi", ServerError("busy", status=503, retry_after=30))
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "hi")
    assert wait_for(lambda: pipeline.journal.next_due() is not None)  # waiting ~30 s for its retry
    assert pipeline.stop(timeout=5) is True
    assert sender.texts() == ["echo hi"]
    assert pipeline.journal.depth().outbox == 0


def test_stop_leaves_a_retry_that_fails_again_in_the_journal(tmp_path, sender, echo):
    sender.fail("echo hi", *[ServerError("busy", status=503, retry_after=30)] * 2)
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "hi")
    assert wait_for(lambda: pipeline.journal.next_due() is not None)
    assert pipeline.stop(timeout=2) is True  # tried once more; what is left waits past the deadline
    assert sender.texts() == []
    assert len(sender.attempts) == 2
    assert pipeline.journal.depth().outbox == 1


def test_state_is_saved_after_the_replies_went_out(tmp_path, sender):
    """A crash between the two then re-runs the handler from the state its replies answered, not from the next."""
    router = Router()

    @router.fallback
    def count(msg):
        msg.state["n"] = msg.state.get("n", 0) + 1
        return f"n={msg.state['n']}"

    pipeline = make_pipeline(tmp_path, router, sender)
    stored_at_send = []
    attempt = sender.attempt

    def attempt_and_look(request):
        stored_at_send.append([json.loads(data) for (data,) in pipeline.journal.read("SELECT data FROM state")])
        return attempt(request)

    sender.attempt = attempt_and_look
    submit(pipeline, "one")
    submit(pipeline, "two")
    assert pipeline.wait_idle(10)
    assert sender.texts() == ["n=1", "n=2"]
    assert stored_at_send == [[], [{"n": 1}]]


def test_the_next_message_waits_for_a_free_handler_thread_when_a_reply_finishes(tmp_path, non_blocking):
    """The transfer thread finishes a message and claims the conversation's next one; with every handler thread
    busy it gives that back to the journal, and the claimer hands it on once a thread is free."""
    router, release = Router(), threading.Event()

    @router.fallback
    def handler(msg):
        if msg.text == "slow":
            release.wait(10)
        return f"echo {msg.text}"

    non_blocking.gate.clear()  # alice's first reply stays in flight
    pipeline = make_pipeline(tmp_path, router, non_blocking, handler_threads=1)
    submit(pipeline, "one", sender="alice")
    assert wait_for(lambda: non_blocking.started == 1)
    submit(pipeline, "two", sender="alice")  # waits in alice's lane
    submit(pipeline, "slow", sender="bob")  # takes the only handler thread
    assert wait_for(lambda: pipeline._busy_handlers == 1)
    non_blocking.gate.set()  # "one" is delivered: "two" is claimed, but no handler thread is free
    # "two" is given back to the journal (no owner) while "slow" runs.
    lanes = "SELECT conversation, owner IS NULL FROM inbox ORDER BY seq"
    assert wait_for(lambda: pipeline.journal.read(lanes) == [("alice_user_bot", 1), ("bob_user_bot", 0)])
    assert non_blocking.texts() == ["echo one"]
    release.set()
    assert pipeline.wait_idle(10)
    assert non_blocking.texts("alice_user_bot") == ["echo one", "echo two"]
    assert non_blocking.texts("bob_user_bot") == ["echo slow"]


def test_a_journal_error_after_the_replies_leaves_the_message_in_the_journal(tmp_path, non_blocking, echo, caplog):
    pipeline = make_pipeline(tmp_path, echo, non_blocking)
    finish = pipeline.journal.finish_many
    failures = [sqlite3.OperationalError("disk I/O error")]

    def finish_or_fail(items):
        if failures:
            raise failures.pop()
        return finish(items)

    pipeline.journal.finish_many = finish_or_fail
    submit(pipeline, "hi")
    assert wait_for(lambda: non_blocking.texts() == ["echo hi"] and pipeline._in_flight == 0)
    assert "journal error; they stay in the journal" in caplog.text
    assert pipeline.stop(timeout=2) is True  # nothing counts as running any more
    assert pipeline.journal.depth().inbox_running == 1  # claimed: handled again after a restart


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_the_pipeline_threads_do_not_preempt_the_request_thread(tmp_path, sender, echo):
    # bot/threads.py: claimer, finisher and handler threads run as batch threads, the caller of submit() does not.
    before = set(threading.enumerate())
    pipeline = make_pipeline(tmp_path, echo, sender)
    submit(pipeline, "hi")
    assert pipeline.wait_idle(5)
    started = {t.name: t for t in set(threading.enumerate()) - before if t.name.startswith("bot-")}
    assert {"bot-claimer", "bot-finisher", "bot-handler-0"} <= set(started)
    policies = {name: os.sched_getscheduler(t.native_id) for name, t in started.items()}
    assert policies == dict.fromkeys(started, os.SCHED_BATCH)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def count_finishing_transactions(pipeline: Pipeline) -> list[int]:
    """The size of each batch the finisher takes out of the inbox (a spy on the real journal method)."""
    sizes: list[int] = []
    finish = pipeline.journal.finish_many

    def counted(items):
        sizes.append(len(items))
        return finish(items)

    pipeline.journal.finish_many = counted
    return sizes


def test_a_message_after_a_quiet_spell_leaves_the_inbox_at_once(tmp_path, non_blocking, echo):
    pipeline = make_pipeline(tmp_path, echo, non_blocking, finish_interval=30)
    sizes = count_finishing_transactions(pipeline)
    submit(pipeline, "hi")
    assert pipeline.wait_idle(10)  # not 30 s: nothing was finished before it
    assert sizes == [1] and pipeline.journal.depth().inbox == 0


def test_messages_delivered_close_together_leave_the_inbox_together(tmp_path, non_blocking, echo):
    pipeline = make_pipeline(tmp_path, echo, non_blocking, finish_interval=1.0)
    sizes = count_finishing_transactions(pipeline)
    submit(pipeline, "first", sender="alice")
    assert pipeline.wait_idle(10)
    for n in range(10):  # delivered within the second after the first one left: gathered
        submit(pipeline, f"m{n}", sender=f"user{n}")
    assert pipeline.wait_idle(10)
    assert sum(sizes) == 11 and len(sizes) <= 3, sizes
    assert pipeline.journal.depth().inbox == 0
    assert sorted(non_blocking.texts()) == sorted(["echo first"] + [f"echo m{n}" for n in range(10)])


def test_a_conversation_keeps_its_order_across_finishing_transactions(tmp_path, non_blocking, echo):
    # Its second message starts once the first left the inbox, which under load waits for the finish interval.
    pipeline = make_pipeline(tmp_path, echo, non_blocking, finish_interval=0.3)
    for text in ("one", "two", "three"):
        submit(pipeline, text)
    assert pipeline.wait_idle(10)
    assert non_blocking.texts() == ["echo one", "echo two", "echo three"]


def test_stop_does_not_wait_for_the_finish_interval(tmp_path, non_blocking, echo):
    pipeline = make_pipeline(tmp_path, echo, non_blocking, finish_interval=30)
    submit(pipeline, "one", sender="alice")
    assert pipeline.wait_idle(10)  # finished at once; the next finish would wait up to 30 s
    submit(pipeline, "two", sender="bob")
    assert wait_for(lambda: non_blocking.texts() == ["echo one", "echo two"])
    assert pipeline.stop(timeout=10) is True  # drained: the finisher did not wait out the 30 s
    assert pipeline.journal.depth().inbox == 0
