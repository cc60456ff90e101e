"""The typed message a handler receives.

A :class:`Message` is built once from a validated callback (see
``schemas.py``), or from a verified form submission (``interactions.py``),
and never mutated: routing gives each handler a copy with its own ``match``
(what the filter captured). ``msg.reply(...)``, ``msg.react(...)`` and the
other actions go out through the turn the dispatcher bound to the message,
in order with the handler's replies; ``msg.state`` is the conversation's
state, bound the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import State

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
class Submission:
    """What a user entered in (or clicked on) an interactive message the bot sent."""

    interaction_id: str  # the form's / card's id: Form("booking", ...) -> "booking"
    element_id: str  # the element clicked (the submit button, a card button)
    values: Mapping[str, Any] = field(default_factory=dict)  # form values by element id
    message_id: str = ""  # CometChat's id of the interactive message
    muid: str = ""  # the muid the bot gave it
    original: Mapping[str, Any] | None = None  # the message as the bot sent it (when recorded)
    timezone: str = ""  # the user's time zone, as the UI kit reports it


@dataclass(frozen=True)
class ReplyRef:
    """A reply sent with ``msg.reply()``, to edit or delete later (``msg.edit(ref, "...")``)."""

    muids: tuple[str, ...]


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

    submission: Submission | None = None  # for category "interaction": a form or card the bot sent, submitted

    # Set by the dispatcher for the handler that runs.
    match: Mapping[str, Any] = field(default_factory=dict)
    command: Command | None = None
    state_scope: str = "conversation"  # the scope of msg.state: the matching router's
    _turn: Any = field(default=None, repr=False, compare=False)  # sends replies and actions (dispatch._Turn)
    _states: Any = field(default=None, repr=False, compare=False)  # loads states (state.StateSession)

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

    # ------------------------------------------------------------ state

    @property
    def state(self) -> State:
        """The conversation's state (per user in groups for ``Router(state_scope="user")``): a dict and a step."""
        return self.state_for(self.state_scope)

    def state_for(self, scope: str) -> State:
        if self._states is None:
            raise RuntimeError(
                "this message has no state bound: msg.state works inside a handler "
                "(or from bot.testing.make_message(..., state={...}))"
            )
        return self._states.get(scope)

    # ------------------------------------------------------------ acting (inside a handler)

    def reply(self, *replies: Any, in_thread: bool | None = None) -> ReplyRef:
        """Send replies now (before whatever the handler returns), in order; the ref edits or deletes them."""
        return self._acting().send_interim(*replies, in_thread=in_thread)

    def edit(self, ref: ReplyRef, text: str | None = None, *, metadata: Mapping[str, Any] | None = None) -> None:
        """Edit a reply sent earlier with ``msg.reply()`` (e.g. "Thinking..." -> the answer)."""
        self._acting().edit(ref, text=text, metadata=metadata)

    def delete(self, ref: ReplyRef) -> None:
        """Delete a reply sent earlier with ``msg.reply()``."""
        self._acting().delete(ref)

    def react(self, reaction: str) -> None:
        """React to this message as the bot (``msg.react("👍")``)."""
        self._acting().react(reaction)

    def mark_read(self) -> None:
        """Mark this conversation read for the bot."""
        self._acting().mark_read()

    def mark_interacted(self, *element_ids: str) -> None:
        """Mark a submitted form's (or card's) elements interacted for the user (default: the clicked one)."""
        self._acting().mark_interacted(element_ids)

    def _acting(self) -> Any:
        if self._turn is None:
            raise RuntimeError("this message is not being handled; msg.reply() and friends work inside a handler")
        return self._turn

    def with_(self, **changes: Any) -> Message:
        """A copy with ``changes`` (on the path of every message: a shallow copy, cheaper than ``replace``)."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"Message has no field {', '.join(sorted(unknown))}")
        copy = object.__new__(Message)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy


_FIELDS = frozenset(f.name for f in fields(Message))


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


def conversation_id(sender: str, receiver: str, receiver_type: str) -> str:
    """CometChat's id of the conversation a message goes to: ``group_<guid>``, or the two uids sorted around
    ``_user_`` (PLATFORM.md 2.2, 2.3: ``alice_user_helpdesk-bot``)."""
    if receiver_type == "group":
        return f"group_{receiver}"
    first, second = sorted((sender, receiver))
    return f"{first}_user_{second}"
