"""Replies: small value objects that know their CometChat request body.

A handler returns ``None``, a ``str``, a reply object or an iterable of them;
:func:`coerce` turns that into a list of replies, and :func:`build_requests`
turns replies into :class:`~bot.api.SendRequest` values for the client: the
target (group or sender), the thread (a reply to a thread message stays in
its thread), the 10 KB split of long text, a stable ``muid`` per request.
Nothing here does I/O.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import mimetypes
import posixpath
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from . import api
from .api import SendRequest
from .message import Message, Target

log = logging.getLogger(__name__)

#: CometChat rejects a message whose ``data`` exceeds 10 KB (PLATFORM.md 4.6). We keep a margin.
MAX_DATA_BYTES = 10_000
#: The metadata key stamped on every reply: ``{"@bot": "<bot uid>"}``. Other bots built with this framework
#: recognise the message as a bot's (bot/loop_guard.py); CometChat's clients ignore unknown metadata.
MARKER = "@bot"
#: Room kept in a message's ``data`` for the marker (a bot uid is at most 50 characters).
_MARKER_ROOM = len(f',"{MARKER}":""') + 50
#: Tags: at most 25, each at most 100 characters (PLATFORM.md 4.2).
MAX_TAGS, MAX_TAG_LENGTH = 25, 100

#: JSON-encoded size of one character at most (ensure_ascii=False): a control character becomes \u00XX.
_MAX_JSON_BYTES_PER_CHAR = 6

_MUID_NAMESPACE = uuid.UUID("6f1c3f64-2f0e-4a53-9b55-8f2f7f3f8b10")


@dataclass(frozen=True)
class ReplyContext:
    """What a reply needs to know to write its body: where it goes and, for interactive messages, its actions."""

    target: Target
    bot_uid: str = "bot"
    muid: str = ""
    #: ``api_action(interaction_id, element_id)`` -> the ``action`` of a button that reports back to this
    #: app (an ``apiAction`` to a URL on the framework's server with a signed token); None where none can be made.
    api_action: Callable[[str, str], dict[str, Any]] | None = None


class Reply(ABC):
    """Base of reply objects. ``data()`` is the message's ``data``; ``category``/``type`` place it.

    ``in_thread``: None (default) answers in the thread the message came from, if any; True starts (or
    stays in) a thread under the message; False answers in the main conversation.
    """

    category: ClassVar[str] = "message"
    type: str
    metadata: Mapping[str, Any] | None
    tags: Sequence[str]
    in_thread: bool | None

    @abstractmethod
    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        """The message's ``data`` object (text, attachments, customData or interactiveData)."""

    def body(self, ctx: ReplyContext) -> dict[str, Any]:
        """The Send Bot Message body for ``ctx.target`` (without ``muid``, which the request adds)."""
        data = self.data(ctx)
        data["metadata"] = {**(self.metadata or {}), MARKER: ctx.bot_uid}
        body: dict[str, Any] = {
            "receiver": ctx.target.receiver,
            "receiverType": ctx.target.receiver_type,
            "category": self.category,
            "type": self.type,
            "data": data,
        }
        if self.tags:
            body["tags"] = list(self.tags)
        return body

    def parts(self) -> Iterator[Reply]:
        """The replies actually sent: itself, or several pieces when it is too large for one message."""
        yield self

    def _check_tags(self) -> None:
        if len(self.tags) > MAX_TAGS or any(len(t) > MAX_TAG_LENGTH for t in self.tags):
            raise ValueError(f"at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each")


@dataclass(frozen=True)
class Text(Reply):
    text: str
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    type: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Text needs a str, got {type(self.text).__name__}")
        self._check_tags()

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        return {"text": self.text}

    def parts(self) -> Iterator[Reply]:
        if not self.text.strip():
            log.warning("not sending an empty text reply (CometChat rejects empty text)")
            return
        wrapper = _json_size({"text": "", "metadata": dict(self.metadata)}) if self.metadata else _BARE_TEXT_SIZE
        budget = MAX_DATA_BYTES - wrapper - _MARKER_ROOM
        if budget < 1000:
            raise ValueError("reply metadata leaves no room for text under the 10 KB data limit")
        if len(self.text) * _MAX_JSON_BYTES_PER_CHAR <= budget:  # surely fits: no need to measure (the usual case)
            yield self
            return
        for chunk in split_text(self.text, budget):
            yield Text(chunk, self.metadata, self.tags, self.in_thread)


@dataclass(frozen=True)
class _Media(Reply):
    url: str
    name: str = ""
    mime_type: str = ""
    extension: str = ""
    size: int | None = None
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError(f"{type(self).__name__} needs a url")
        self._check_tags()

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        name = self.name or posixpath.basename(urlsplit(self.url).path) or "file"
        extension = self.extension or posixpath.splitext(name)[1].lstrip(".")
        mime = self.mime_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        attachment: dict[str, Any] = {"url": self.url, "name": name, "mimeType": mime, "extension": extension}
        if self.size is not None:
            attachment["size"] = self.size
        return {"attachments": [attachment]}


class Image(_Media):
    type: ClassVar[str] = "image"


class File(_Media):
    type: ClassVar[str] = "file"


class Audio(_Media):
    type: ClassVar[str] = "audio"


class Video(_Media):
    type: ClassVar[str] = "video"


@dataclass(frozen=True)
class Custom(Reply):
    """A custom message: ``Custom("location", {"latitude": 48.8, "longitude": 2.3})``."""

    type: str
    custom_data: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    category: ClassVar[str] = "custom"

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("Custom needs a type")
        if not self.custom_data:
            raise ValueError("CometChat rejects custom messages with empty customData (ERR_EMPTY_CUSTOM_DATA)")
        self._check_tags()

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        data = {"customData": dict(self.custom_data)}
        if _json_size(data) > MAX_DATA_BYTES:
            raise ValueError("custom data is larger than CometChat's 10 KB data limit")
        return data


# ------------------------------------------------------------------ requests


def coerce(result: Any) -> list[Reply]:
    """What a handler returned -> replies. Raises TypeError for anything else."""
    if result is None:
        return []
    if isinstance(result, str):
        return [Text(result)]
    if isinstance(result, Reply):
        return [result]
    if isinstance(result, Iterable) and not isinstance(result, (bytes, Mapping)):
        replies: list[Reply] = []
        for item in result:
            replies.extend(coerce(item))
        return replies
    raise TypeError(
        f"a handler returned {type(result).__name__}; return None, a str, a reply (Text, Image, File, Audio, "
        "Video, Custom) or a list of them"
    )


def build_requests(
    msg: Message,
    replies: Iterable[Reply],
    *,
    bot_uid: str,
    first_seq: int = 0,
    in_thread: bool | None = None,
    remember: bool = False,
    api_action: Callable[[str, str, str, str | None], dict[str, Any]] | None = None,
) -> list[SendRequest]:
    """Requests for ``replies`` to ``msg``, numbered from ``first_seq`` for their muids.

    ``in_thread`` applies to replies that leave it open; ``remember`` records the
    created messages' ids (for later edits); interactive messages are always
    remembered (a submission is checked against the message it came from).
    ``api_action(interaction_id, element_id, muid, thread)`` makes the actions
    of interactive messages (``thread``: the parent of the thread the reply
    goes to, where answers to a submission go too).
    """
    target = msg.reply_target
    requests: list[SendRequest] = []
    seq = first_seq
    for reply in replies:
        for part in reply.parts():
            reply_muid = muid(bot_uid, msg.id, seq)
            parent = thread_parent(msg, part.in_thread if part.in_thread is not None else in_thread)
            bound = None if api_action is None else functools.partial(_bound_action, api_action, reply_muid, parent)
            ctx = ReplyContext(target, bot_uid, reply_muid, bound)
            body = part.body(ctx)
            body["muid"] = ctx.muid
            context = {
                "message_id": msg.id,
                "conversation_id": msg.conversation_id,
                "remember": remember or part.category == "interactive",
            }
            if parent:
                requests.append(api.thread_message(bot_uid, parent, body, **context))
            else:
                requests.append(api.bot_message(bot_uid, body, **context))
            seq += 1
    return requests


def _bound_action(
    api_action: Callable[[str, str, str, str | None], dict[str, Any]],
    muid: str,
    thread: str | None,
    interaction_id: str,
    element_id: str,
) -> dict[str, Any]:
    return api_action(interaction_id, element_id, muid, thread)


def thread_parent(msg: Message, in_thread: bool | None) -> str | None:
    """The thread a reply to ``msg`` goes to: None for the main conversation.

    None (the default) keeps a reply to a thread message in that thread; True
    starts a thread under ``msg`` (or stays in its thread: threads do not nest);
    False answers in the main conversation.
    """
    if in_thread is False:
        return None
    if in_thread is None:
        return msg.parent_id
    return msg.parent_id or msg.id


def muid(bot_uid: str, message_id: str, seq: int) -> str:
    """A muid that is the same every time the same reply to the same message is sent (retries, redeliveries).

    ``uuid.uuid5(_MUID_NAMESPACE, ...)``, computed without the UUID object (this runs for every reply).
    """
    digest = bytearray(hashlib.sha1(_MUID_NAMESPACE.bytes + f"{bot_uid}\x1f{message_id}\x1f{seq}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def split_text(text: str, budget: int) -> list[str]:
    """Split ``text`` into pieces whose JSON-encoded size stays within ``budget`` bytes.

    Cuts at the last paragraph break, line break or space that fits, and only
    inside a word when a single word is too long.
    """
    pieces: list[str] = []
    rest = text
    while _json_size(rest) > budget:
        cut = _fit(rest, budget)
        window = rest[:cut]
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > cut // 2:
                cut = at + len(sep)
                break
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest.strip():
        pieces.append(rest)
    return [p for p in pieces if p.strip()]


def _fit(text: str, budget: int) -> int:
    """The longest prefix length of ``text`` whose JSON encoding fits ``budget`` (binary search)."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _json_size(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


#: The size of a text message's data around its text when it has no metadata (the usual case, measured once).
_BARE_TEXT_SIZE = _json_size({"text": "", "metadata": {}})
