"""The embedded delivery pipeline: acknowledge at once, handle and send in the background.

The request thread records the callback in the :class:`~bot.journal.Journal`
and returns; nothing slow happens before the 200. (Under a threaded server
the request thread then routes the message once the answer is out, and does
a handler thread's work itself if the route has been quick: bot/quick.py.)
Then, per process:

* handler threads run the dispatcher for a message. The replies its handler
  returned are handed, in order, to the sender's transfer thread
  (bot/transfers.py: one thread drives every request in flight), which
  posts them one after the other; then a finisher thread
  takes the message out of the inbox (with the others that are done, in
  one transaction) and gives the conversation's next message to a handler
  thread. That needs no journal write per reply and no thread blocked per
  request. Senders without ``start()`` (local mode) are posted
  to by the handler thread itself, as is a message over ``max_in_flight``.
  Replies sent with ``msg.reply()`` while the handler goes on are journaled
  first, so that a re-run after a crash skips them. A reply whose attempt
  fails with something that may pass (429, 5xx, network) is journaled in
  the outbox with a due time, and so are the message's later replies. With
  a rate limit, each reply first takes a token from the journal's bucket;
  one that finds it empty waits in the outbox (with the later replies),
  paced by the claimer;
* sender threads post what is in the outbox, one attempt each; a failure
  that may pass puts the reply back with a due time while its
  conversation's lane waits; a final failure becomes a dead letter. A
  reply a dead process may have sent (the replies of a message handled
  again after a crash, rows it held) is looked up in CometChat by its muid
  first (bot.client.find_delivered) and not sent again if it is there.

Work is handed to the pools directly when a lane is free (the common case,
no extra round trip); a claimer thread picks up everything else: messages
whose lane was busy, retries coming due, rows of processes that died, rows
of other processes on the host. Per-conversation order holds across
processes because every claim goes through the journal's lane rule, and a
message holds its lane until its replies are in.

A process taking callbacks fast while another idles leaves new messages to
that one (bot/sharing.py: gunicorn's gthread workers can end up with all the
connections in one process).
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import queue
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from .api import SendRequest
from .client import RetryPolicy, Sender, already_delivered, perform, remember_sent, resolve_ref
from .dispatch import Dispatcher, Routed
from .errors import CometChatError, DeliveryUnavailable, UnknownReference
from .journal import Depth, InboxItem, Journal, OutboxItem
from .message import Message
from .metrics import Metrics
from .quick import ANSWER_GRACE, Answering, QuickRoutes
from .schemas import parse_stored
from .sharing import Sharing, SharingOptions
from .threads import current_pid, start_background

log = logging.getLogger(__name__)

#: A message whose handler was claimed this often without finishing (its process died each time) is dead-lettered.
MAX_HANDLER_ATTEMPTS = 3
#: A handler running longer than this (seconds) is named in a warning with the periodic stats.
SLOW_HANDLER = 60.0


@dataclass(frozen=True)
class PipelineOptions:
    handler_threads: int = 64
    sender_threads: int = 16
    max_in_flight: int = 256  # replies posted at once without a thread each (over the sender's start())
    poll_interval: float = 0.2  # how often the claimer looks for work it was not told about
    recover_interval: float = 2.0
    purge_interval: float = 60.0
    stats_interval: float = 30.0
    drain_timeout: float = 8.0
    # At most one transaction per this many seconds takes delivered messages out of the inbox: under load each
    # takes many (Pipeline._finish_loop says what that buys); a message arriving after a quiet spell goes at once.
    finish_interval: float = 0.02
    sharing: SharingOptions = field(default_factory=SharingOptions)  # a busy process's messages, handled elsewhere
    # Seconds: a route whose recent runs each took less runs on the thread that answered (bot/quick.py); 0: never.
    quick_handler: float = 0.01
    answer_grace: float = ANSWER_GRACE  # a message its answering thread did not take by then goes to a handler thread
    # Request threads of a process running quick routes at once; more go to handler threads (bot/quick.py).
    quick_at_once: int = 2


class Pipeline:
    #: Every pipeline started in this process (tests stop them between tests).
    instances: ClassVar[weakref.WeakSet[Pipeline]] = weakref.WeakSet()

    def __init__(
        self,
        journal: Journal,
        dispatcher: Dispatcher,
        sender: Sender,
        *,
        retry: RetryPolicy | None = None,
        options: PipelineOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.journal = journal
        self.metrics = metrics or Metrics()
        self.dispatcher = dispatcher
        self.sender = sender
        # The sender's non-blocking start(request, done), if it has one (CometChat's client does; local mode's not).
        self._start: Callable[..., None] | None = getattr(sender, "start", None)
        self.retry = retry or RetryPolicy()
        self.options = options or PipelineOptions()
        self.bot_uid = dispatcher.bot_uid
        self.stats = _Stats()
        self.sharing = Sharing(journal, self.options.sharing)
        self.quick = QuickRoutes(self.options.quick_handler)
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = False  # no new messages are taken; replies still are (the drain)
        self._closed = False  # the claimer has stopped
        self._busy_handlers = 0
        self._busy_senders = 0
        # The claimer is woken only when it has something to do: rows left in the journal for want of a free
        # thread (starved), or a retry coming due. Everything else is handed from thread to thread directly.
        self._starved_handlers = False
        self._starved_senders = False
        self._retry_at = math.inf
        self._claimed_at = -math.inf  # when the claimer last claimed messages (time.monotonic())
        self._handlers: _Pool[_HandlerWork] = _Pool("bot-handler", 0, self._handler_work)
        # Accepted messages whose request thread takes them once its answer is out (bot/quick.py).
        self._answering: Answering[tuple[InboxItem, Message]] = Answering()
        self._quick_slots = threading.BoundedSemaphore(self.options.quick_at_once)
        self._warned_unclosed = False
        self._senders: _Pool[OutboxItem] = _Pool("bot-sender", 0, self._sender_work)
        self._in_flight = 0  # messages whose replies are being posted after their handler returned
        # Messages whose replies are in, for the finisher thread to take out of the inbox (several per transaction).
        self._finished: deque[InboxItem] = deque()
        self._finish_wake = threading.Event()
        self._drain_now = threading.Event()  # set by stop(): the finisher stops waiting for more to batch
        self._current = threading.local()  # the _Handling of the message a handler thread is working on
        self._running: set[_Handling] = set()  # every message a handler runs now (for the slow-handler warning)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start this process's claimer (again after a fork: threads do not survive one)."""
        with self._lock:
            if self._pid == current_pid() and not self._stopping:
                return
            self._pid = current_pid()
            self._stopping = self._closed = False
            self._busy_handlers = self._busy_senders = self._in_flight = 0
            self._finished.clear()  # after a fork: the parent's, not this process's
            self._answering = Answering()
            self._quick_slots = threading.BoundedSemaphore(self.options.quick_at_once)
            self.sharing = Sharing(self.journal, self.options.sharing)  # after a fork: not the parent's rates
            self._drain_now.clear()
            self._handlers = _Pool("bot-handler", self.options.handler_threads, self._handler_work)
            self._senders = _Pool("bot-sender", self.options.sender_threads, self._sender_work)
            start_background(self._claim_loop, "bot-claimer")
            start_background(self._finish_loop, "bot-finisher")
        Pipeline.instances.add(self)
        self.journal.recover()
        self._wake.set()
        atexit.register(self.stop)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking work, let running work finish for up to ``timeout`` s, give the rest back to the journal.

        Returns True when nothing was left running. Rows still running at the
        deadline stay claimed by this process; they are recovered once it exits.
        """
        timeout = self.options.drain_timeout if timeout is None else timeout
        with self._lock:
            if self._pid != current_pid() or self._stopping:
                return True
            self._stopping = True
        self._drain_now.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        wall_deadline = time.time() + timeout
        # A reply whose retry would come due after the deadline is tried once more now instead (leaving it in the
        # journal hands it to the next start, which may be on another host).
        try:
            hastened = self.journal.hasten_retries(later_than=wall_deadline - min(1.0, timeout / 2), to=time.time())
        except sqlite3.Error as exc:
            log.error("stopping: the journal cannot be written (%s); retries keep their times", exc)
            hastened = 0
        if hastened:
            log.info("stopping: %d replies waiting for a retry are tried once more now", hastened)
            self._note_retry(time.time())
        while True:
            # Messages no handler has started go back to the journal at once; replies keep being sent.
            self._give_back_unstarted(replies=False)
            # The due time first: a reply claimed meanwhile holds a sender slot from before its claim until after
            # it left the outbox, so it is then seen as busy (read the other way round, it could be neither).
            due = self.journal.next_due()
            with self._lock:
                busy = self._busy_handlers + self._busy_senders + self._in_flight
            drained = busy == 0 and (due is None or due > wall_deadline)
            if drained or time.monotonic() >= deadline:
                break
            with self._lock:
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._closed = True
        self._finish_wake.set()
        self._give_back_unstarted(replies=True)
        self._handlers.close()
        self._senders.close()
        self._wake.set()
        atexit.unregister(self.stop)
        Pipeline.instances.discard(self)
        if not drained:
            log.warning("stopped with work still running; the journal keeps it for the next start")
        return drained

    def _give_back_unstarted(self, *, replies: bool) -> None:
        waiting = self._handlers.take_queued() + self._answering.take_all()
        inbox = [item for item, _ in waiting]
        outbox = self._senders.take_queued() if replies else []
        if inbox or outbox:
            self.journal.release(inbox, outbox)
            self._release_handler_slot(len(inbox))
            self._release_sender_slot(len(outbox))

    # ------------------------------------------------------------ intake (request thread)

    def submit(
        self,
        msg: Message,
        body: bytes,
        *,
        dedup_ttl: float | None = None,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> str:
        """Journal an accepted callback (or submission); returns "accepted" or "duplicate". Handling happens later.

        ``dedup_ttl`` overrides how long the message id is remembered against a redelivery. ``defer`` (a
        threaded server's request thread: the blueprint) takes work to run on this thread once the answer is
        out: there the message is routed, and handled if its route is quick (bot/quick.py).
        """
        if self._pid != current_pid():
            self.start()
        leave = self.sharing.accepted()  # busy, and another process offers help: journal it for that one
        claim = not leave and self._reserve("handler")
        try:
            result = self.journal.accept(
                msg.bot_uid, msg.conversation_id, msg.id, body, claim=claim, dedup_ttl=dedup_ttl
            )
        except sqlite3.Error as exc:
            self._release_handler_slot(int(claim))
            log.error("message %s in %s: journal unavailable: %s", msg.id, msg.conversation_id, exc)
            raise DeliveryUnavailable("the bot cannot record messages right now (journal); try again") from exc
        except BaseException:
            self._release_handler_slot(int(claim))
            raise
        if isinstance(result, InboxItem):
            if defer is not None and self.quick.enabled:
                self._answering.add(result.seq, (result, msg))
                defer(functools.partial(self._after_answer, result.seq))
            else:
                self._handlers.put((result, msg))
            return "accepted"
        if leave:
            if result is True:  # journaled, unclaimed (False: a duplicate)
                self.stats.count("left")
        elif not claim:
            self._starved_handlers = True  # every handler thread is busy: the claimer takes it when one frees
        self._release_handler_slot(int(claim))
        if result is False:
            self.stats.count("duplicate")
            return "duplicate"
        return "accepted"

    def _reserve(self, kind: str) -> bool:
        """Take a free handler or sender slot, if there is one (before the journal says whether the lane is free).

        While stopping, no new message is taken, but the replies of handlers
        still running are: draining means finishing what was started.
        """
        with self._lock:
            if self._closed or (kind == "handler" and self._stopping):
                return False
            if kind == "handler" and self._busy_handlers < self.options.handler_threads:
                self._busy_handlers += 1
                return True
            if kind == "sender" and self._busy_senders < self.options.sender_threads:
                self._busy_senders += 1
                return True
            return False

    # ------------------------------------------------------------ handlers

    def _after_answer(self, seq: int) -> None:
        """On the thread that answered the callback, once the answer is out: the message is routed, and handled
        here if its route has been quick; else a handler thread takes it."""
        entry = self._answering.take(seq)
        if entry is None:
            return  # stop() gave it back, or the claimer handed it on (the server did not close the answer in time)
        item, msg = entry
        try:
            routed = self.dispatcher.route(msg)
        except Exception:  # the loop guard's state could not be read: a handler thread routes it again
            log.exception("message %s in %s: routing failed; a handler thread tries again", msg.id, item.conversation)
            self._handlers.put((item, msg))
            return
        # With max_in_flight reached, replies are posted by the handling thread, blocking: not a request thread. And
        # only a few request threads at once do a handler's work, whatever the routes' speed.
        if (
            self.quick.admits(routed.handler)
            and self._in_flight < self.options.max_in_flight
            and self._quick_slots.acquire(blocking=False)
        ):
            try:
                self._handler_work((item, routed), answering=True)
            finally:
                self._quick_slots.release()
        else:
            self._handlers.put((item, routed))

    def _handler_work(self, entry: _HandlerWork, *, answering: bool = False) -> None:
        """Handle a message, then the next ones of its lane that finishing it claimed for this process.

        ``answering``: this is the request thread that answered the message's callback (a quick route); the
        lane's next message, whose route may be slow, goes to a handler thread with the slot.
        """
        item: InboxItem | None
        item, msg = entry
        slot_handed_on = False
        try:
            while item is not None:  # a finished message hands its lane's next one to this thread
                item = self._handle(item, msg)
                msg = None
                if item is not None and self._stopping:
                    self.journal.release([item])  # not started: the next start (or another process) takes it
                    item = None
                elif item is not None and answering:
                    self._handlers.put((item, None))  # a handler thread takes it, with this slot
                    slot_handed_on, item = True, None
        except Exception:
            log.exception("handling: journal error; the message stays in the journal")
        finally:
            if not slot_handed_on:
                self._release_handler_slot()

    def _handle(self, item: InboxItem, msg: Message | Routed | None) -> InboxItem | None:
        if item.attempts > MAX_HANDLER_ATTEMPTS:
            log.error(
                "message %s in %s: its handler stopped the process %d times; dead-lettered",
                item.message_id, item.conversation, item.attempts - 1,
            )  # fmt: skip
            return self.journal.dead_letter_message(item, f"claimed {item.attempts} times without finishing")
        if msg is None:
            msg = parse_stored(item.body, bot_uid=self.bot_uid)
        if msg is not None:
            # A re-run (after a crash) sends nothing inline: its replies go through the outbox, whose muid
            # check skips those the first run had queued.
            handling = _Handling(item, inline=None if item.attempts == 1 else False, started=time.monotonic())
            self._current.handling = handling
            self._running.add(handling)
            try:
                outcome = self.dispatcher.handle(msg, self.deliver, flush=self._flush_chain)
            finally:
                self._current.handling = None
                self._running.discard(handling)
            self.quick.ran(outcome.handler, outcome.seconds)
            self.stats.count(outcome.status)
            self.metrics.handled(outcome)
            if handling.chain:
                return self._post_chain(item, handling.chain)
        return self.journal.finish_inbox(item)

    def deliver(self, request: SendRequest) -> None:
        """The dispatcher's ``deliver``: post a reply from the handler thread, or journal it for a sender."""
        handling: _Handling | None = getattr(self._current, "handling", None)
        if handling is not None and request.interim:
            # The handler goes on after msg.reply(): journal the reply (its muid is remembered), so a re-run
            # after a crash does not send it again. The message's later replies queue behind it.
            handling.inline = False
        if handling is not None and self._may_send_inline(handling):
            if self.journal.take_token():
                if self._start is not None:
                    handling.chain.append(request)  # posted in order once the handler returned (_post_chain)
                else:
                    self._send_inline(handling, request)
                return
            # The rate limit's bucket is empty: this reply and the message's later ones wait in the outbox, where
            # the claimer paces them (those held back go there too).
            handling.inline = False
        if handling is not None and handling.chain:
            # Not inline any more (an interim reply, an empty bucket): what was held back goes first, through the
            # journal too; the tokens it took go back, as claiming it from the outbox takes them again.
            held, handling.chain = handling.chain, []
            self.journal.give_back_tokens(len(held))
            for earlier in held:
                self.deliver(earlier)
        accepted_at = handling.item.accepted_at if handling else time.time()
        # A re-run after a crash: the first run may have posted this reply inline, which leaves no trace here.
        verify = handling is not None and handling.item.attempts > 1
        claim = self._reserve("sender")
        try:
            result = self.journal.add_reply(request, accepted_at=accepted_at, claim=claim, verify=verify)
        except BaseException:
            self._release_sender_slot(int(claim))
            raise
        if isinstance(result, OutboxItem):
            self._senders.put(result)
            return
        if not claim or self.journal.rate_limit is not None:
            # No free sender, or the rate limit says wait: the claimer takes the reply later. (A busy lane
            # needs nothing: the reply ahead of it hands it on.)
            self._starved_senders = True
        self._release_sender_slot(int(claim))

    def _may_send_inline(self, handling: _Handling) -> bool:
        if handling.inline is None:
            # This thread holds the conversation's inbox lane, so no other reply of it can be queued meanwhile:
            # whether replies waited when the message was claimed decides.
            handling.inline = not handling.item.replies_waiting
        return handling.inline

    def _send_inline(self, handling: _Handling, request: SendRequest) -> None:
        item = handling.item
        try:
            perform(self.sender, request, self.journal)
        except CometChatError as error:
            if self._first_attempt_failed(item, request, error):
                handling.inline = False  # this reply now heads the lane; the message's next replies queue behind it
            return
        self.stats.sent(time.time() - item.accepted_at)
        self.metrics.delivered(item.accepted_at)

    def _first_attempt_failed(self, item: InboxItem, request: SendRequest, error: CometChatError) -> bool:
        """A reply posted without the outbox failed: it becomes a dead letter (False), or it waits in the outbox
        for its retry, heading its conversation's lane (True: the message's later replies must queue behind)."""
        wait = self.retry.delay(0, error)
        if wait is None:
            self.stats.count("dead_letter")
            log.error(
                "message %s in %s: reply %s failed for good: %s; kept as a dead letter",
                item.message_id, item.conversation, request.muid, error,
            )  # fmt: skip
            self.journal.dead_letter_request(
                request, error.code, str(error), accepted_at=item.accepted_at, in_doubt=error.in_doubt
            )
            return False
        self.stats.count("retry")
        log.warning(
            "message %s in %s: reply attempt 1 failed (%s); retrying in %.2f s",
            item.message_id, item.conversation, error.code, wait,
        )  # fmt: skip
        due = time.time() + wait
        self.journal.add_reply(
            request, accepted_at=item.accepted_at, claim=False, attempts=1, not_before=due, verify=error.in_doubt
        )
        self._note_retry(due)
        return True

    def _note_retry(self, due: float) -> None:
        if due < self._retry_at:
            self._retry_at = due
            self._wake.set()  # the claimer sleeps until then

    # ------------------------------------------------------------ replies posted without a thread each

    def _post_chain(self, item: InboxItem, requests: list[SendRequest]) -> InboxItem | None:
        """Post a handled message's replies one after the other on the transfer thread; the finisher ends it.

        When ``max_in_flight`` messages are being posted already, this
        handler thread posts them itself (blocking): the back-pressure that
        keeps a burst from opening unbounded connections. Returns the
        conversation's next message when this thread finished the message.
        """
        with self._lock:
            inline = self._in_flight >= self.options.max_in_flight
            if not inline:
                self._in_flight += 1
        if inline:
            self._post_inline(_Handling(item, inline=True), requests)
            return self.journal.finish_inbox(item)
        _Chain(self, item, requests).next()
        return None

    def _flush_chain(self) -> None:
        """The dispatcher is about to save the state the handler changed: its replies go out first, from this
        thread (bot.dispatch.Dispatcher.handle says why)."""
        handling: _Handling | None = getattr(self._current, "handling", None)
        if handling is not None and handling.chain:
            requests, handling.chain = handling.chain, []
            self._post_inline(handling, requests)

    def _post_inline(self, handling: _Handling, requests: list[SendRequest]) -> None:
        for at, request in enumerate(requests):
            if not handling.inline:  # an attempt failed: the rest queue behind it in the journal
                self._queue_unsent(handling.item, requests[at:])
                return
            self._send_inline(handling, request)

    def _queue_unsent(self, item: InboxItem, requests: list[SendRequest] | deque[SendRequest]) -> None:
        """Replies of a message held back for posting, queued behind its reply that failed: in the outbox, their
        tokens given back (claiming them takes them again)."""
        self.journal.give_back_tokens(len(requests))
        for request in requests:
            self.journal.add_reply(request, accepted_at=item.accepted_at, claim=False)

    def _chain_done(self, item: InboxItem | None) -> None:
        """A message's replies are all posted (or queued for a retry): the finisher thread takes it out of the
        inbox. The transfer thread does no journal write itself: each would let other threads take the GIL
        from it, and it is the one thread that drives every request in flight.

        ``None``: its chain broke on a journal error; the message stays claimed in the journal (recovered at
        the next start) and only stops counting as in flight.
        """
        if item is None:
            self._no_longer_in_flight(1)
            return
        self._finished.append(item)
        if not self._finish_wake.is_set():  # under load it mostly is: set() is a Condition round for nothing
            self._finish_wake.set()

    def _finish_loop(self) -> None:
        """The finisher thread: messages whose replies are in leave the inbox, all that are ready in one go.

        After a transaction it waits until ``finish_interval`` has passed
        before the next one, gathering what finishes meanwhile: under load a
        message leaves the inbox (and its conversation's next message starts)
        up to that much later, and there are fewer write transactions, each
        a lock round between processes, and fewer wake-ups of this thread.
        Measured with benchmarks/cpu_per_callback.sh (sync, 0 ms, alternating
        runs): 20 ms gave 1,562-1,576 callbacks/s, 10 ms 1,535-1,553, none
        1,456-1,461; context switches per callback 7.0 vs 9.3.
        """
        last = -math.inf  # when the last transaction started (monotonic)
        while True:
            self._finish_wake.wait(self.options.poll_interval)
            self._drain_now.wait(last + self.options.finish_interval - time.monotonic())
            self._finish_wake.clear()
            batch = []
            while self._finished:
                batch.append(self._finished.popleft())
            if batch:
                last = time.monotonic()
                self._finish(batch)
            elif self._closed:
                return

    def _finish(self, batch: list[InboxItem]) -> None:
        try:
            following = self.journal.finish_many(batch)
        except Exception:
            log.exception("%d messages whose replies were delivered: journal error; they stay in the journal "
                          "(handled again after a restart)", len(batch))  # fmt: skip
            following = []
        finally:
            self._no_longer_in_flight(len(batch))
        for item in following:
            try:
                self._hand_on(item)
            except Exception:
                log.exception("message %s in %s: journal error; it stays in the journal", item.message_id,
                              item.conversation)  # fmt: skip

    def _no_longer_in_flight(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count
            self._idle.notify_all()

    def _hand_on(self, item: InboxItem | None) -> None:
        """Give the conversation's next message (claimed by finishing the last one) to a handler thread."""
        if item is None:
            return
        if self._reserve("handler"):
            self._handlers.put((item, None))
            return
        self.journal.release([item])  # no free handler thread (or stopping): the claimer takes it later
        self._starved_handlers = True
        self._wake.set()

    # ------------------------------------------------------------ senders

    def _sender_work(self, item: OutboxItem | None) -> None:
        try:
            while item is not None:  # a delivered reply hands its lane's next one to this thread
                item = self._send(item)
        except Exception:
            log.exception("sender thread: journal error; the reply stays in the journal")
        finally:
            self._release_sender_slot()

    def _send(self, item: OutboxItem) -> OutboxItem | None:
        if item.verify and self._delivered_before(item):
            return self.journal.finish_reply(item)
        try:
            perform(self.sender, item.request, self.journal)
        except CometChatError as error:
            wait = self.retry.delay(item.attempts, error)
            if wait is None:
                self.stats.count("dead_letter")
                log.error(
                    "message %s in %s: reply %s failed for good after %d attempts: %s; kept as a dead letter",
                    item.message_id, item.conversation, item.request.muid, item.attempts + 1, error,
                )  # fmt: skip
                return self.journal.dead_letter_reply(item, error.code, str(error), in_doubt=error.in_doubt)
            self.stats.count("retry")
            log.warning(
                "message %s in %s: reply attempt %d failed (%s); retrying in %.2f s",
                item.message_id, item.conversation, item.attempts + 1, error.code, wait,
            )  # fmt: skip
            due = time.time() + wait
            self.journal.retry_reply(item, due, verify=error.in_doubt)
            self._note_retry(due)
            return None
        self.stats.sent(time.time() - item.accepted_at)
        self.metrics.delivered(item.accepted_at)
        return self.journal.finish_reply(item)

    def _delivered_before(self, item: OutboxItem) -> bool:
        """Whether CometChat already has this reply (an earlier attempt, cut off by a crash or a timeout)."""
        found = already_delivered(self.sender, item.request, self.journal, bot_uid=self.bot_uid, since=item.accepted_at)
        if found:
            self.metrics.found_delivered()
        return found

    # ------------------------------------------------------------ claimer

    def _claim_loop(self) -> None:
        last_recover = last_purge = last_stats = last_checkpoint = time.monotonic()
        while not self._closed:
            self._wake.wait(self._sleep_time())
            self._wake.clear()
            if self._closed:
                return
            try:
                if self._stopping:
                    self.sharing.withdraw()
                else:
                    self.sharing.tick()
                self._claim()
                self._take_unclosed()
                now = time.monotonic()
                if now - last_checkpoint >= 1.0:
                    last_checkpoint = now
                    self.journal.checkpoint()
                if now - last_recover >= self.options.recover_interval:
                    last_recover = now
                    if any(self.journal.recover()):
                        self._wake.set()
                if now - last_purge >= self.options.purge_interval:
                    last_purge = now
                    self.journal.purge_seen()
                if now - last_stats >= self.options.stats_interval:
                    last_stats = now
                    self._log_stats()
            except Exception:
                log.exception("claimer: journal error")

    def _take_unclosed(self) -> None:
        """Messages whose request thread never came back for them after the answer go to handler threads."""
        for item, msg in self._answering.take_overdue(self.options.answer_grace):
            if not self._warned_unclosed:
                self._warned_unclosed = True
                log.warning(
                    "message %s in %s: the server did not close the callback's answer within %g s (a WSGI server "
                    "or middleware that does not call close()?); handler threads take such messages",
                    item.message_id, item.conversation, self.options.answer_grace,
                )  # fmt: skip
            self._handlers.put((item, msg))

    def _sleep_time(self) -> float:
        """Until the next retry we know of comes due (or a rate-limit token), at most ``poll_interval``.

        The poll picks up what this process was not told about: other
        processes' rows and rows of processes that died.
        """
        now = time.time()
        if self._retry_at <= now:  # that retry is due now; look up the next one
            due = self.journal.next_due()
            self._retry_at = due if due is not None and due > now else math.inf
        # A helper polls fast only while its polls find work: an offer nobody takes costs no scans of the inbox.
        sharing = self.sharing.options
        helping = self.sharing.offering and time.monotonic() - self._claimed_at < sharing.poll_for
        poll = sharing.poll if helping else self.options.poll_interval
        wait = min(poll, self._retry_at - now)
        if self._starved_senders and self.journal.rate_limit is not None:
            wait = min(wait, self.journal.next_token_in())
        return max(wait, 0.005)

    def _claim(self) -> None:
        # While messages are left to a helper, they are its to claim (those of lanes this process holds still
        # come here, as the lane's previous message finishes: trigger inbox_next). Look before taking every free
        # slot: a callback accepted while the claimer holds them is journaled unclaimed and waits for the next
        # pass (and misses the quick route).
        if self.sharing.leaving:
            free = 0
        elif self.journal.has_waiting_messages():
            free = self._reserve_all("handler")
        else:
            free, self._starved_handlers = 0, False  # nothing waits
        items = self.journal.claim_inbox(free) if free else []
        if items:
            self._claimed_at = time.monotonic()
        if len(items) < free:
            self._starved_handlers = False  # took all there was
        self._release_handler_slot(free - len(items), wake=False)
        for item in items:
            self._handlers.put((item, None))
        free = self._reserve_all("sender")
        replies = self.journal.claim_replies(free) if free else []
        if len(replies) < free:
            self._starved_senders = False
        self._release_sender_slot(free - len(replies), wake=False)
        for reply in replies:
            self._senders.put(reply)

    def _reserve_all(self, kind: str) -> int:
        with self._lock:
            if self._closed or (kind == "handler" and self._stopping):
                return 0
            if kind == "handler":
                free = self.options.handler_threads - self._busy_handlers
                self._busy_handlers += free
            else:
                free = self.options.sender_threads - self._busy_senders
                self._busy_senders += free
            return free

    def _release_handler_slot(self, n: int = 1, *, wake: bool = True) -> None:
        if n > 0:
            with self._lock:
                self._busy_handlers -= n
                self._idle.notify_all()
            if wake and self._starved_handlers:
                self._wake.set()

    def _release_sender_slot(self, n: int = 1, *, wake: bool = True) -> None:
        if n > 0:
            with self._lock:
                self._busy_senders -= n
                self._idle.notify_all()
            if wake and self._starved_senders:
                self._wake.set()

    # ------------------------------------------------------------ observing

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the journal holds no message or reply (True), or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            depth = self.journal.depth()
            if depth.inbox == 0 and depth.outbox == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            with self._lock:
                self._idle.wait(0.02)

    @property
    def sent_log(self) -> Journal:
        """Where the ids of delivered replies others refer to are kept."""
        return self.journal

    def depth(self) -> Depth:
        """What the journal holds: messages and replies waiting or running, dead letters."""
        return self.journal.depth()

    def dead_letters(self, limit: int = 100) -> list[dict]:
        """Replies (and messages) that failed for good, newest first: what ``flask bot dead-letters`` lists."""
        return self.journal.dead_letters(limit)

    def requeue_dead_letter(self, letter_id: str) -> bool:
        """Put a dead reply back in the outbox (after fixing its cause); True if it existed."""
        try:
            return self.journal.requeue_dead_letter(int(letter_id))
        except ValueError:
            return False

    def _log_stats(self) -> None:
        now = time.monotonic()
        for handling in list(self._running):
            if now - handling.started > SLOW_HANDLER:
                # Handlers have no time limit (a thread cannot be stopped): say which one holds its conversation.
                log.warning(
                    "message %s in %s: its handler has been running for %.0f s; the conversation waits for it",
                    handling.item.message_id, handling.item.conversation, now - handling.started,
                )  # fmt: skip
        depth = self.journal.depth()
        stats = self.stats.snapshot()
        if not (depth.inbox or depth.outbox or stats["sent"] or stats["left"]):
            return
        log.info(
            "pipeline: inbox %d (%d running), outbox %d (%d retrying), dead letters %d; since last: %d sent, "
            "delivery p50 %.0f ms p99 %.0f ms, %d accepted messages left to another process",
            depth.inbox, depth.inbox_running, depth.outbox, depth.outbox_waiting_retry, depth.dead_letters,
            stats["sent"], stats["p50_ms"], stats["p99_ms"], stats["left"],
        )  # fmt: skip


#: A message for a handler thread: parsed (or routed) already, or None to parse it from the journal's copy.
_HandlerWork = tuple[InboxItem, Message | Routed | None]


@dataclass(eq=False)
class _Handling:
    """The message a handler thread is running: whether its replies may still be posted inline."""

    item: InboxItem
    inline: bool | None  # None: not decided yet (decided at the first reply)
    started: float = 0.0  # time.monotonic() when its handler started
    chain: list[SendRequest] = field(default_factory=list)  # replies to post once the handler returned


class _Chain:
    """A handled message's replies, posted one after the other (each once the previous one is in)."""

    def __init__(self, pipeline: Pipeline, item: InboxItem, requests: list[SendRequest]) -> None:
        self.pipeline, self.item = pipeline, item
        self.requests = deque(requests)
        self.request: SendRequest | None = None

    def next(self) -> None:
        """Post the next reply, or finish the message when none is left."""
        try:
            self._next()
        except Exception:
            log.exception("message %s in %s: journal error; the message stays in the journal",
                          self.item.message_id, self.item.conversation)  # fmt: skip
            self.pipeline._chain_done(None)

    def _next(self) -> None:
        p = self.pipeline
        while self.requests:
            request = self.requests.popleft()
            try:
                request = resolve_ref(request, p.journal)
            except UnknownReference as error:  # final: a dead letter, and the next reply goes on
                if self._failed(request, error):
                    continue
                break
            self.request = request
            assert p._start is not None
            p._start(request, self._answered)
            return
        p._chain_done(self.item)

    def _answered(self, data: Any, error: CometChatError | None) -> None:
        """On the transfer thread: CometChat answered the current reply."""
        try:
            self._record(data, error)
        except Exception:
            log.exception("message %s in %s: journal error; the message stays in the journal",
                          self.item.message_id, self.item.conversation)  # fmt: skip
            self.pipeline._chain_done(None)

    def _record(self, data: Any, error: CometChatError | None) -> None:
        p, request, item = self.pipeline, self.request, self.item
        assert request is not None
        if error is not None and not self._failed(request, error):
            p._chain_done(item)  # it and the replies after it wait in the outbox
            return
        if error is None:
            remember_sent(request, data, p.journal)
            p.stats.sent(time.time() - item.accepted_at)
            p.metrics.delivered(item.accepted_at)
        self._next()

    def _failed(self, request: SendRequest, error: CometChatError) -> bool:
        """A failed attempt: True to go on with the next reply (this one is a dead letter), False when it waits
        for a retry in the outbox, with the replies after it queued behind."""
        if not self.pipeline._first_attempt_failed(self.item, request, error):
            return True
        self.pipeline._queue_unsent(self.item, self.requests)
        self.requests.clear()
        return False


class _Stats:
    """Counters for the periodic log line: outcomes, duplicates, retries, dead letters, delivery latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=4096)
        self._sent = 0
        self._left_before = 0  # counts["left"] at the last snapshot

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def sent(self, latency: float) -> None:
        with self._lock:
            self._sent += 1
            self._latencies.append(latency)

    def snapshot(self) -> dict[str, float]:
        """Replies sent, delivery latency percentiles and messages left to a helper since the last snapshot."""
        with self._lock:
            latencies = sorted(self._latencies)
            sent = self._sent
            left = self.counts.get("left", 0) - self._left_before
            self._latencies.clear()
            self._sent = 0
            self._left_before += left

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

        return {"sent": sent, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "left": left}


T = TypeVar("T")


class _Pool(Generic[T]):
    """Up to ``size`` daemon threads running ``work(item)``; threads are started only when work waits for one."""

    def __init__(self, name: str, size: int, work: Callable[[T], None]) -> None:
        self.name, self.size, self._work = name, size, work
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0

    def put(self, item: T) -> None:
        self._queue.put(item)
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                self._threads.append(start_background(self._run, f"{self.name}-{len(self._threads)}"))

    def take_queued(self) -> list[T]:
        """Remove and return the items no thread has started yet."""
        items: list[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            self._work(item)
