"""The dispatcher: from a validated callback to delivered replies.

:meth:`Dispatcher.screen` decides, cheaply and before anything is queued,
whether a callback is handled at all (the bot's own messages, callbacks for
another bot, unknown categories are not). :meth:`Dispatcher.handle` runs the
first matching handler with the message, turns what it returns into requests
and hands them to the sender in order. A handler that raises is logged with
its traceback; the nearest ``on_error`` hook may answer instead. Nothing here
touches HTTP or Flask: the blueprint calls in, the sender goes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .errors import CometChatError
from .message import Message
from .replies import SendRequest, build_requests, coerce
from .routing import Resolution, Router
from .schemas import Callback

log = logging.getLogger(__name__)

#: Message categories the framework knows (PLATFORM.md 5.1); others are acknowledged and ignored.
KNOWN_CATEGORIES = frozenset({"message", "custom", "interactive", "action", "call"})

Deliver = Callable[[SendRequest], Any]


@dataclass(frozen=True)
class Outcome:
    """What handling one message did: for logs, metrics and tests."""

    message_id: str
    conversation_id: str
    handler: str  # "" when no handler matched
    status: str  # "replied" | "no_reply" | "unmatched" | "handler_error" | "send_error"
    sent: int
    seconds: float
    error_code: str = ""


class Dispatcher:
    def __init__(self, router: Router, deliver: Deliver, *, bot_uid: str = "") -> None:
        self.router = router
        self.deliver = deliver
        self.bot_uid = bot_uid.lower()

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

    def handle(self, msg: Message) -> Outcome:
        """Run the handler for ``msg`` and deliver its replies, in order."""
        started = time.perf_counter()
        resolution = self.router.resolve(msg)
        if resolution is None:
            log.debug("message %s in %s: no handler matched", msg.id, msg.conversation_id)
            return Outcome(msg.id, msg.conversation_id, "", "unmatched", 0, time.perf_counter() - started)
        turn = _Turn(self, msg)
        handler = resolution.route.name
        status, code = "replied", ""
        try:
            bound = msg.with_(
                match=resolution.captures, command=resolution.captures.get("command"), _replier=turn.send_interim
            )
            turn.send(resolution.route.call(bound, resolution.captures))
        except CometChatError as error:
            status, code = "send_error", error.code
            log.error("message %s in %s: reply not delivered: %s", msg.id, msg.conversation_id, error)
        except Exception as error:
            status, code = "handler_error", type(error).__name__
            log.exception("message %s in %s: handler %s raised", msg.id, msg.conversation_id, handler)
            self._on_error(turn, resolution, error)
        if status == "replied" and turn.sent == 0:
            status = "no_reply"
        outcome = Outcome(msg.id, msg.conversation_id, handler, status, turn.sent, time.perf_counter() - started, code)
        log.info(
            "message %s in %s: %s by %s, %d replies, handled in %.1f ms",
            msg.id, msg.conversation_id, status, handler, turn.sent, outcome.seconds * 1000,
        )  # fmt: skip
        return outcome

    def _on_error(self, turn: _Turn, resolution: Resolution, error: Exception) -> None:
        for hook in resolution.error_handlers():
            try:
                turn.send(hook(turn.msg, error))
            except CometChatError as send_error:
                log.error("message %s: error reply not delivered: %s", turn.msg.id, send_error)
            except Exception:
                log.exception("message %s: on_error hook %s raised", turn.msg.id, getattr(hook, "__qualname__", hook))
            return


class _Turn:
    """One message being handled: numbers its replies (stable muids) and delivers them in order."""

    def __init__(self, dispatcher: Dispatcher, msg: Message) -> None:
        self.dispatcher = dispatcher
        self.msg = msg
        self.seq = 0
        self.sent = 0

    def send(self, *results: Any, interim: bool = False) -> None:
        replies = coerce(list(results))
        if not replies:
            return
        bot_uid = self.dispatcher.bot_uid or self.msg.bot_uid or "bot"
        requests = build_requests(self.msg, replies, bot_uid=bot_uid, first_seq=self.seq)
        self.seq += len(requests)
        for request in requests:
            self.dispatcher.deliver(replace(request, interim=True) if interim else request)
            self.sent += 1

    def send_interim(self, *results: Any) -> None:
        """``msg.reply(...)``: replies sent while the handler is still running."""
        self.send(*results, interim=True)
