"""The typed message a handler receives.

A :class:`Message` is built once from a validated callback (see
``schemas.py``) and never mutated: routing gives each handler a copy with its
own ``match`` (what the filter captured). ``msg.reply(...)`` sends at once,
through whatever the dispatcher bound to the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

#: ``<@uid:alice>`` mention tokens inside text (PLATFORM.md 2.4).
MENTION_TOKEN = re.compile(r"<@uid:([^>\s]+)>")

_RUNS_OF_BLANKS = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True)
class User:
    uid: str
    name: str = ""
    avatar: str = ""
    role: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.uid)


@dataclass(frozen=True)
class Attachment:
    url: str
    name: str = ""
    mime_type: str = ""
    extension: str = ""
    size: int | None = None  # bytes; CometChat sends an int or a numeric string


@dataclass(frozen=True)
class Command:
    """A slash command: ``/weather Paris "New York"`` -> name ``weather``, args ``("Paris", "New York")``."""

    name: str
    args: tuple[str, ...] = ()
    arg_text: str = ""


@dataclass(frozen=True)
class Target:
    """Where a reply goes: a user uid or a group guid."""

    receiver: str
    receiver_type: str  # "user" | "group"


@dataclass(frozen=True)
class Message:
    id: str
    category: str
    type: str
    sender: User
    receiver: str
    receiver_type: str
    conversation_id: str = ""
    text: str = ""  # mention tokens normalised: the bot's own removed, others as @Name
    raw_text: str = ""  # the text exactly as sent
    attachments: tuple[Attachment, ...] = ()
    custom_data: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    mentions: tuple[User, ...] = ()
    action: str = ""  # for category "action": edited, deleted, joined, ...
    parent_id: str | None = None
    sent_at: datetime | None = None
    bot_uid: str = ""
    trigger: str = "after_message"
    raw: Mapping[str, Any] = field(default_factory=dict)  # the message object as CometChat sent it

    # Set by routing for the handler that runs.
    match: Mapping[str, Any] = field(default_factory=dict)
    command: Command | None = None
    _replier: Callable[..., None] | None = field(default=None, repr=False, compare=False)

    @property
    def is_group(self) -> bool:
        return self.receiver_type == "group"

    @property
    def is_action(self) -> bool:
        return self.category == "action"

    @property
    def bot_mentioned(self) -> bool:
        return any(user.uid == self.bot_uid for user in self.mentions)

    @property
    def from_bot(self) -> bool:
        """True for the bot's own messages (UIDs compared in lower case: CometChat lowercases them)."""
        return bool(self.bot_uid) and self.sender.uid.lower() == self.bot_uid

    @property
    def reply_target(self) -> Target:
        """Group messages are answered in the group, 1:1 messages to their sender."""
        if self.is_group:
            return Target(self.receiver, "group")
        return Target(self.sender.uid, "user")

    def reply(self, *replies: Any) -> None:
        """Send replies now (before whatever the handler returns), in order."""
        if self._replier is None:
            raise RuntimeError("this message is not being handled; msg.reply() works inside a handler")
        self._replier(*replies)

    def with_(self, **changes: Any) -> Message:
        return replace(self, **changes)


def normalise_mentions(text: str, bot_uid: str, mentions: Mapping[str, User]) -> str:
    """Drop the bot's own mention tokens and write others as ``@Name``, for pattern matching."""

    def sub(m: re.Match[str]) -> str:
        uid = m.group(1)
        if uid.lower() == bot_uid:
            return ""
        user = mentions.get(uid)
        return "@" + (user.name if user else uid)

    if "<@uid:" not in text:
        return text.strip()
    return _RUNS_OF_BLANKS.sub(" ", MENTION_TOKEN.sub(sub, text)).strip()
