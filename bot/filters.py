"""Filters: small objects that decide whether a handler takes a message.

A filter is called with a :class:`Message` and returns ``None`` (no match) or
a dict of what it captured (empty when there is nothing to capture). The
captures reach the handler as ``msg.match`` and, for the parameters the
handler declares, as keyword arguments. Every filter is built once, at
registration; calling one does no compiling.

``describe()`` is what ``flask bot routes`` prints.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .message import Command, Message

Captures = dict[str, Any]


class Filter(Protocol):
    #: Whether the filter may take ``action`` messages (edits, deletes, group events).
    #: The router never offers them to a filter that does not ask.
    accepts_actions: bool
    #: Whether it may take submissions of the bot's forms and cards (only ``on_submit`` does, unless asked):
    #: a catch-all ``on_message()`` or an ``on_thread()`` must not swallow them. Absent means False.
    accepts_submissions: bool

    def __call__(self, msg: Message) -> Captures | None: ...

    def describe(self) -> str: ...


class TextFilter:
    """Text messages whose (mention-normalised) text contains a match of ``pattern``."""

    accepts_actions = False

    def __init__(self, pattern: str | re.Pattern[str], *, ignore_case: bool = True) -> None:
        if isinstance(pattern, re.Pattern):
            self.pattern = pattern
        else:
            self.pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)

    def __call__(self, msg: Message) -> Captures | None:
        if msg.category != "message" or msg.type != "text":
            return None
        m = self.pattern.search(msg.text)
        if m is None:
            return None
        return m.groupdict()

    def describe(self) -> str:
        return f"text ~ /{self.pattern.pattern}/" + ("i" if self.pattern.flags & re.IGNORECASE else "")


class CommandFilter:
    """Slash commands: ``/name arg1 "arg two"`` (name case-insensitive; aliases allowed)."""

    accepts_actions = False
    _SHAPE = re.compile(r"^/(?P<name>[\w][\w.-]*)(?:\s+(?P<rest>.*))?$", re.DOTALL)

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError("on_command needs at least one command name")
        self.names = tuple(n.lstrip("/").lower() for n in names)

    def __call__(self, msg: Message) -> Captures | None:
        command = parse_command(msg)
        if command is None or command.name not in self.names:
            return None
        return {"command": command, "args": command.args, "arg_text": command.arg_text}

    def describe(self) -> str:
        return "command " + " | ".join("/" + n for n in self.names)


def parse_command(msg: Message) -> Command | None:
    """The slash command in a text message, or None. Quotes group arguments, as in a shell."""
    if msg.category != "message" or msg.type != "text" or not msg.text.startswith("/"):
        return None
    m = CommandFilter._SHAPE.match(msg.text)
    if m is None:
        return None
    rest = (m.group("rest") or "").strip()
    try:
        args = tuple(shlex.split(rest))
    except ValueError:  # unbalanced quotes: fall back to plain words
        args = tuple(rest.split())
    return Command(name=m.group("name").lower(), args=args, arg_text=rest)


class TypeFilter:
    """Messages of the given types (``image``, ``file``, ...) in one category (default ``message``)."""

    def __init__(self, types: Iterable[str], *, category: str = "message") -> None:
        self.types = frozenset(types)
        if not self.types:
            raise ValueError("give at least one message type")
        self.category = category
        self.accepts_actions = category == "action"

    def __call__(self, msg: Message) -> Captures | None:
        if msg.category == self.category and msg.type in self.types:
            return {}
        return None

    def describe(self) -> str:
        return f"{self.category} type in {{{', '.join(sorted(self.types))}}}"


class ActionFilter:
    """``action`` messages (edits, deletes, group member events), optionally by ``data.action``."""

    accepts_actions = True

    def __init__(self, *actions: str) -> None:
        self.actions = frozenset(actions)

    def __call__(self, msg: Message) -> Captures | None:
        if msg.category != "action":
            return None
        if self.actions and msg.action not in self.actions:
            return None
        return {}

    def describe(self) -> str:
        return "action" + (f" in {{{', '.join(sorted(self.actions))}}}" if self.actions else "")


class PredicateFilter:
    """Any message for which ``predicate(msg)`` is true; a dict result becomes the captures."""

    def __init__(self, predicate: Callable[[Message], Any], *, actions: bool = False, submissions: bool = False):
        self.predicate = predicate
        self.accepts_actions = actions
        self.accepts_submissions = submissions

    def __call__(self, msg: Message) -> Captures | None:
        result = self.predicate(msg)
        if not result:
            return None
        return dict(result) if isinstance(result, dict) else {}

    def describe(self) -> str:
        return f"predicate {getattr(self.predicate, '__qualname__', repr(self.predicate))}"


class MentionFilter:
    """Messages that @mention the bot (``<@uid:bot>`` in the text or in ``data.mentions``)."""

    accepts_actions = False

    def __call__(self, msg: Message) -> Captures | None:
        return {} if msg.bot_mentioned and msg.category != "action" else None

    def describe(self) -> str:
        return "mentions the bot"


class ThreadFilter:
    """Replies inside a thread (``parentId`` set), optionally of one parent message."""

    accepts_actions = False

    def __init__(self, parent_id: str | None = None) -> None:
        self.parent_id = parent_id

    def __call__(self, msg: Message) -> Captures | None:
        if msg.parent_id is None or (self.parent_id is not None and msg.parent_id != self.parent_id):
            return None
        return {}

    def describe(self) -> str:
        return "thread reply" + (f" under {self.parent_id}" if self.parent_id else "")


class SubmitFilter:
    """Submissions of an interactive message (form, card, scheduler) the bot sent, by its interaction id."""

    accepts_actions = False
    accepts_submissions = True

    def __init__(self, *interaction_ids: str) -> None:
        if not interaction_ids:
            raise ValueError("on_submit needs the id of the form or card (Form('booking', ...) -> 'booking')")
        self.ids = frozenset(interaction_ids)

    def __call__(self, msg: Message) -> Captures | None:
        submission = msg.submission
        if submission is None or submission.interaction_id not in self.ids:
            return None
        return {"values": submission.values, "submission": submission}

    def describe(self) -> str:
        return "submit of " + " | ".join(sorted(self.ids))


class StepFilter:
    """Another filter, taken only while the conversation's state is at one of ``steps``.

    ``"*"`` means any step (inside a dialog). The inner filter runs first, so
    the state is loaded only for messages that could match.
    """

    def __init__(self, inner: Filter, steps: str | Iterable[str], scope: Callable[[], str]) -> None:
        self.inner = inner
        self.steps = frozenset([steps] if isinstance(steps, str) else steps)
        if not self.steps or not all(isinstance(step, str) and step for step in self.steps):
            raise ValueError("state= takes a step name, several, or '*' for any step")
        self.scope = scope  # the router's state scope, read at match time
        self.accepts_actions = inner.accepts_actions
        self.accepts_submissions = getattr(inner, "accepts_submissions", False)

    def __call__(self, msg: Message) -> Captures | None:
        captures = self.inner(msg)
        if captures is None:
            return None
        step = msg.state_for(self.scope()).step
        if step is None or ("*" not in self.steps and step not in self.steps):
            return None
        return captures

    def describe(self) -> str:
        return f"{self.inner.describe()} [state {' | '.join(sorted(self.steps))}]"


#: Which group messages a router answers (``Router(group_policy=...)``), named as in CometChat's
#: ``groupChatSetting`` (PLATFORM.md 1.4) or shorter. Other categories (actions, submissions) are not affected.
GROUP_POLICIES = {
    "all": "all",
    "allMessages": "all",
    "mentioned": "mentioned",
    "mentionedMessages": "mentioned",
    "commands": "commands",
    "slashedMessages": "commands",
    "none": "none",
}


def group_policy_admits(policy: str, msg: Message) -> bool:
    """Whether a router with ``policy`` may answer ``msg`` (always, outside groups)."""
    if not msg.is_group or msg.category not in ("message", "custom") or policy == "all":
        return True
    if policy == "mentioned":
        return msg.bot_mentioned
    if policy == "commands":
        return msg.type == "text" and msg.text.startswith("/")
    return False


class AnyText:
    """Every text message: the filter of a fallback handler."""

    accepts_actions = False

    def __call__(self, msg: Message) -> Captures | None:
        return {} if msg.category == "message" and msg.type == "text" else None

    def describe(self) -> str:
        return "any text (fallback)"
