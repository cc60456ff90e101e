"""The dispatcher: from a validated message to the requests it causes.

:meth:`Dispatcher.screen` decides, cheaply and before anything is queued,
whether a callback is handled at all (the bot's own messages, callbacks for
another bot, unknown categories are not). :meth:`Dispatcher.handle` finds the
route (:meth:`Dispatcher.route`, which the delivery may call first to choose a
thread for it), runs the ``before`` hooks, the handler and the ``after`` hooks, turns
what comes back into requests and hands them, in order, to ``deliver`` (the
delivery pipeline's, or a list in tests); then it saves the conversation
state the handler changed. A handler that raises is logged with its
traceback; the nearest ``on_error`` hook may answer instead. Nothing here
touches HTTP or Flask: the blueprint calls in, ``deliver`` goes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import api
from .api import REF, SendRequest
from .errors import CometChatError
from .loop_guard import LoopGuard
from .message import Message, ReplyRef
from .replies import build_requests, coerce
from .routing import Resolution, Router
from .schemas import Callback
from .state import StateConflict, StateSession, StateStore

log = logging.getLogger(__name__)

#: Message categories the framework knows (PLATFORM.md 5.1); others are acknowledged and ignored.
KNOWN_CATEGORIES = frozenset({"message", "custom", "interactive", "action", "call"})

Deliver = Callable[[SendRequest], Any]
#: ``api_action(interaction_id, element_id, msg, muid, thread)`` -> the apiAction of a button that reports back
#: here (``thread``: the thread the interactive reply goes to, or None).
ApiActionFactory = Callable[[str, str, Message, str, str | None], dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What handling one message did: for logs, metrics and tests."""

    message_id: str
    conversation_id: str
    handler: str  # "" when no handler matched
    #: "replied" | "no_reply" | "unmatched" | "dropped" | "loop_guard" | "handler_error" | "send_error"
    #: | "state_error"
    status: str
    sent: int
    seconds: float
    error_code: str = ""

    def log_fields(self) -> dict[str, object]:
        """The fields of the message's log line (the JSON log format shows them as keys)."""
        fields: dict[str, object] = {
            "message_id": self.message_id, "conversation": self.conversation_id, "handler": self.handler,
            "outcome": self.status, "replies": self.sent, "ms": round(self.seconds * 1000, 2),
        }  # fmt: skip
        if self.error_code:
            fields["error_code"] = self.error_code
        return fields


@dataclass(frozen=True)
class Routed:
    """A message and the route that takes it (:meth:`Dispatcher.route`): what :meth:`Dispatcher.handle` runs."""

    msg: Message  # with its state session
    resolution: Resolution | None  # None: no handler runs, ``status`` says why
    status: str  # "" when a route takes it, else "unmatched", "loop_guard" or "handler_error" (a filter raised)
    code: str  # the error's class when a filter raised
    seconds: float  # spent routing

    @property
    def handler(self) -> str:
        """The route's name ("" when none takes the message)."""
        return self.resolution.route.name if self.resolution is not None else ""


class Dispatcher:
    def __init__(
        self,
        router: Router,
        deliver: Deliver | None = None,
        *,
        bot_uid: str = "",
        state: StateStore | None = None,
        state_ttl: float = 86400.0,
        loop_guard: LoopGuard | None = None,
        api_action: ApiActionFactory | None = None,
        log_messages: bool = True,
    ) -> None:
        """``deliver`` is the default for :meth:`handle`; ``state`` the store behind ``msg.state``;
        ``api_action`` makes the actions of interactive messages (None: they cannot be sent).

        ``log_messages=False`` drops the ``INFO`` line of each handled message (a busy bot's largest
        logging cost, see docs/operations.md); outcomes logged at ``WARNING`` are logged still."""
        self.router = router
        self.deliver = deliver
        self.bot_uid = bot_uid.lower()
        self.state = state
        self.state_ttl = state_ttl
        self.loop_guard = loop_guard
        self.api_action = api_action
        self.log_messages = log_messages

    def screen(self, callback: Callback) -> str:
        """Why this callback is not handled ('' if it is). Ignored callbacks are still acknowledged."""
        msg = callback.message
        if msg is None:
            return f"trigger {callback.trigger!r} carries no message"
        if self.bot_uid and callback.bot and callback.bot != self.bot_uid:
            return f"callback for bot {callback.bot!r}, this app is {self.bot_uid!r}"
        if msg.from_bot:
            return "the bot's own message"
        if msg.category not in KNOWN_CATEGORIES:
            return f"unknown category {msg.category!r}"
        if (
            callback.trigger != "after_message"
            and msg.bot_uid
            and not msg.is_group
            and msg.receiver.lower() != msg.bot_uid
        ):
            # Webhooks v2 relay every message of the app, not only those to the bot (PLATFORM.md 7.2).
            return "1:1 message not addressed to the bot"
        return ""

    def route(self, msg: Message) -> Routed:
        """The first half of :meth:`handle`: the route that takes ``msg`` (after the loop guard), nothing run yet.

        The delivery looks at the route before it decides which thread runs
        it (bot/quick.py); :meth:`handle` takes the result. The loop guard
        counts the message here, so a message is routed once.
        """
        started = time.perf_counter()
        if self.state is not None:
            msg = msg.with_(_states=StateSession(self.state, msg, ttl=self.state_ttl))
        resolution, status, code = None, "unmatched", ""
        if self.loop_guard is not None and not self.loop_guard.admits(msg):
            status = "loop_guard"  # bots answering each other: this one stops here
        else:
            try:
                resolution = self.router.resolve(msg)
            except Exception as error:  # a filter is user code too (a predicate, a router's own filter)
                log.exception("message %s in %s: a filter raised while routing", msg.id, msg.conversation_id)
                status, code = "handler_error", type(error).__name__
        return Routed(msg, resolution, "" if resolution is not None else status, code, time.perf_counter() - started)

    def handle(
        self, msg: Message | Routed, deliver: Deliver | None = None, *, flush: Callable[[], None] | None = None
    ) -> Outcome:
        """Run the handler for ``msg`` (or a message :meth:`route` routed) and hand the requests it causes to
        ``deliver``, in order.

        The state the handler changed is saved after its replies went out, so
        that a re-run after a crash starts from the state they answered: a
        ``deliver`` that holds requests back to post them later passes
        ``flush``, called before such a save, to post them now.

        Logs one line per message (its id, conversation, handler, outcome, replies and time).
        """
        deliver = deliver or self.deliver
        if deliver is None:
            raise TypeError("Dispatcher.handle needs a deliver function")
        started = time.perf_counter()
        routed = msg if isinstance(msg, Routed) else self.route(msg)
        routing = routed.seconds if routed is msg else 0.0  # (else already in this call's time)
        msg = routed.msg
        handler, status, sent, code = routed.handler, routed.status, 0, routed.code
        if routed.resolution is not None:
            status, sent, code = self._handle(msg, routed.resolution, deliver, msg._states, flush)
            if sent and self.loop_guard is not None:
                self.loop_guard.answered(msg)
        seconds = time.perf_counter() - started + routing
        outcome = Outcome(msg.id, msg.conversation_id, handler, status, sent, seconds, code)
        level = logging.INFO if status in ("replied", "no_reply", "unmatched", "dropped") else logging.WARNING
        if (self.log_messages or level > logging.INFO) and log.isEnabledFor(level):
            log.log(
                level, "message %s in %s: %s%s, %d replies, handled in %.1f ms",
                msg.id, msg.conversation_id, status, f" by {handler}" if handler else "", sent, outcome.seconds * 1000,
                extra=outcome.log_fields(),
            )  # fmt: skip
        return outcome

    def _handle(
        self,
        msg: Message,
        resolution: Resolution,
        deliver: Deliver,
        states: StateSession | None,
        flush: Callable[[], None] | None,
    ) -> tuple[str, int, str]:
        """Hooks, handler, replies, state: (status, requests sent, error code)."""
        turn = _Turn(self, msg, deliver)
        turn.msg = msg.with_(
            match=resolution.captures,
            command=resolution.captures.get("command"),
            state_scope=resolution.router.state_scope,
            _turn=turn,
        )
        status, code = "replied", ""
        try:
            status = self._run(resolution, turn)
        except CometChatError as error:
            status, code = "send_error", error.code
            log.error("message %s in %s: reply not delivered: %s", msg.id, msg.conversation_id, error)
        except Exception as error:
            status, code = "handler_error", type(error).__name__
            log.exception("message %s in %s: handler %s raised", msg.id, msg.conversation_id, resolution.route.name)
            if states is not None:
                states.discard()  # a failed handler's half-made changes are not kept; on_error starts afresh
            self._on_error(turn, resolution, error)
        if states is not None:
            # After the replies went out (or were queued): a re-run after a crash starts from the same state.
            if flush is not None and states.loaded:
                flush()
            try:
                states.save()
            except StateConflict as error:
                log.error("message %s in %s: state not saved: %s", msg.id, msg.conversation_id, error)
                status, code = "state_error", "StateConflict"
        if status == "replied" and turn.sent == 0:
            status = "no_reply"
        return status, turn.sent, code

    def _run(self, resolution: Resolution, turn: _Turn) -> str:
        """Hooks and handler; returns the status ("replied" unless a before hook dropped the message)."""
        for hook in resolution.before_hooks():
            result = hook(turn.msg)
            if result is None or result is True:
                continue
            if result is False:
                if self.log_messages:
                    log.info("message %s: dropped by %s", turn.msg.id, getattr(hook, "__qualname__", hook))
                return "dropped"
            if isinstance(result, Message):
                turn.msg = result.with_(_turn=turn)
                continue
            turn.running = False
            turn.send(coerce(result))  # the hook answered instead of the handler
            return "replied"
        try:
            result = resolution.route.call(turn.msg, resolution.captures)
        finally:
            turn.running = False
        replies = coerce(result)
        for hook in resolution.after_hooks():
            changed = hook(turn.msg, replies)
            if changed is not None:
                replies = coerce(changed)
        turn.send(replies)
        return "replied"

    def _on_error(self, turn: _Turn, resolution: Resolution, error: Exception) -> None:
        turn.running = False
        for hook in resolution.error_handlers():
            try:
                turn.send(coerce(hook(turn.msg, error)))
            except CometChatError as send_error:
                log.error("message %s: error reply not delivered: %s", turn.msg.id, send_error)
            except Exception:
                log.exception("message %s: on_error hook %s raised", turn.msg.id, getattr(hook, "__qualname__", hook))
            return


class _Turn:
    """One message being handled: numbers its replies (stable muids) and hands its requests on in order."""

    def __init__(self, dispatcher: Dispatcher, msg: Message, deliver: Deliver) -> None:
        self.dispatcher = dispatcher
        self.msg = msg
        self.deliver = deliver
        self.bot_uid = dispatcher.bot_uid or msg.bot_uid or "bot"
        self.seq = 0
        self.sent = 0
        self.running = True  # the handler is still running: what it sends now is "interim"

    def send(self, replies: list, *, in_thread: bool | None = None, remember: bool = False) -> ReplyRef:
        if not replies:
            return ReplyRef(())
        requests = build_requests(
            self.msg, replies, bot_uid=self.bot_uid, first_seq=self.seq, in_thread=in_thread, remember=remember,
            api_action=self._api_action,
        )  # fmt: skip
        self.seq += len(requests)
        for request in requests:
            self._deliver(request)
            self.sent += 1
        return ReplyRef(tuple(request.muid for request in requests))

    def send_interim(self, *results: Any, in_thread: bool | None = None) -> ReplyRef:
        """``msg.reply(...)``: replies sent while the handler is still running (remembered, for edits)."""
        return self.send(coerce(list(results)), in_thread=in_thread, remember=True)

    def edit(self, ref: ReplyRef, *, text: str | None, metadata: Mapping[str, Any] | None) -> None:
        if not ref.muids:
            raise ValueError("nothing to edit: that msg.reply() sent nothing")
        if text is not None and not text.strip():
            raise ValueError("CometChat rejects empty text; delete the reply instead")
        self._deliver(api.edit_message(self.bot_uid, REF, text=text, metadata=metadata, **self._context(ref.muids[0])))

    def delete(self, ref: ReplyRef) -> None:
        for muid in ref.muids:
            self._deliver(api.delete_message(self.bot_uid, REF, **self._context(muid)))

    def react(self, reaction: str) -> None:
        if self.msg.submission is not None:
            raise ValueError("a submission is not a chat message; react to the form with its message id instead")
        self._deliver(api.add_reaction(self.bot_uid, self.msg.id, reaction, **self._context()))

    def mark_read(self) -> None:
        self._deliver(api.mark_read(self.bot_uid, self.msg.reply_target, **self._context()))

    def mark_interacted(self, element_ids: Iterable[str]) -> None:
        submission = self.msg.submission
        if submission is None:
            raise ValueError("mark_interacted() is for submissions of the bot's forms and cards")
        ids = tuple(element_ids) or (submission.element_id,)
        if submission.message_id:
            self._deliver(api.mark_interacted(self.msg.sender.uid, submission.message_id, ids, **self._context()))
        else:  # the kit did not say the form's id: look it up (by the form's muid) when this is sent
            self._deliver(api.mark_interacted(self.msg.sender.uid, REF, ids, **self._context(submission.muid)))

    def _context(self, ref: str = "") -> dict[str, Any]:
        return {"message_id": self.msg.id, "conversation_id": self.msg.conversation_id, "ref": ref}

    def _deliver(self, request: SendRequest) -> None:
        self.deliver(replace(request, interim=True) if self.running else request)

    def _api_action(self, interaction_id: str, element_id: str, muid: str, thread: str | None) -> dict[str, Any]:
        maker = self.dispatcher.api_action
        if maker is None:
            raise ValueError("interactive messages need the interaction endpoint (an app made by build_app)")
        return maker(interaction_id, element_id, self.msg, muid, thread)
