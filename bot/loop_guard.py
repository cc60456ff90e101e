"""Protection against two bots answering each other forever.

The framework never answers its own messages, but two bots in one group
with ``allMessages`` (or a bot that DMs this one) can answer each other
without end: bot A's reply is relayed to bot B, whose reply is relayed to A
(PLATFORM.md 1.5). The guard counts the messages from other bots that this
bot answered in a conversation since a person last wrote there; past
``BOT_LOOP_LIMIT`` it stops answering bots there until a person writes (or
the count expires after ``LOOP_WINDOW`` seconds without a bot message).

A message is from a bot when its sender is in ``KNOWN_BOTS``, or when it
carries the marker this framework puts into the metadata of every reply it
sends (so two bots built with it know each other without configuration).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .message import Message
from .replies import MARKER
from .state import State, StateStore, update

#: Seconds without a bot message after which a conversation's count starts again.
LOOP_WINDOW = 600.0


class LoopGuard:
    def __init__(self, store: StateStore, *, limit: int, known_bots: Iterable[str] = ()) -> None:
        self.store = store
        self.limit = limit
        self.known_bots = frozenset(uid.strip().lower() for uid in known_bots if uid.strip())

    def is_bot(self, msg: Message) -> bool:
        return msg.sender.uid.lower() in self.known_bots or bool(msg.metadata.get(MARKER))

    def admits(self, msg: Message) -> bool:
        """Whether the bot may answer ``msg``: False once it answered ``limit`` bot messages in a row there.

        Every bot message keeps the count alive for another ``LOOP_WINDOW`` (answered or not); a person's
        message in a group starts it again.
        """
        key = _key(msg)
        if not self.is_bot(msg):
            # A person wrote: the bots may talk again. (In a 1:1 chat with a bot no person ever writes; there
            # the count only expires.)
            record = self.store.load(key) if msg.is_group else None
            if record is not None and record.data.get("answered"):  # only a count worth clearing is written
                update(self.store, key, State.clear, ttl=LOOP_WINDOW)
            return True
        admitted = True

        def seen(state: State) -> None:
            nonlocal admitted
            admitted = state.get("answered", 0) < self.limit
            state["last_seen"] = time.time()  # a change, so the window starts again

        update(self.store, key, seen, ttl=LOOP_WINDOW)
        return admitted

    def answered(self, msg: Message) -> None:
        """Count a bot message the bot answered (``admits`` said yes and the handler replied)."""
        if self.is_bot(msg):
            update(self.store, _key(msg), _count_answer, ttl=LOOP_WINDOW)


def _key(msg: Message) -> str:
    return f"loop\x1f{msg.bot_uid}\x1f{msg.conversation_id}"


def _count_answer(state: State) -> None:
    state["answered"] = state.get("answered", 0) + 1
