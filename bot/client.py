"""Senders: what delivers a :class:`SendRequest`.

* :class:`CometChatClient` posts to CometChat's REST API over keep-alive
  HTTP/1.1 connections that one thread drives (bot/transfers.py), without
  blocking for the pipeline (``start``: the answer comes to a callback) or
  blocking for scripts and the CLI (``attempt``, ``send``); connect and
  total timeouts, retries with exponential backoff and full jitter on 429
  (honouring ``Retry-After``), 5xx and network errors, never on other 4xx;
  failures raise typed errors carrying CometChat's error code. Its own
  small HTTP client because the client side of a request is much of a
  reply's CPU cost: measured against the harness's fake, one POST costs
  ~86,000 instructions on a socket with bot/http.py, ~153,000 with
  libcurl (pycurl), more with urllib3 or ``requests``.
* :class:`LocalSender` is local mode (no CometChat account): it prints the
  replies and keeps the latest ones, for the console, tests and the playground.

Both have ``attempt(request) -> dict`` (one try; the created message) and
``send(request)`` (with the blocking retries, for scripts and the CLI; the
pipeline schedules its own retries instead).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from . import api
from .api import SendRequest
from .errors import CometChatError, TransportError, UnknownReference, error_for_status
from .http import Response, header_lines, request_bytes, split_base_url
from .message import Target
from .settings import Settings
from .transfers import Exchange, Transfers

if TYPE_CHECKING:
    from .emulator import Emulator

log = logging.getLogger(__name__)


class Sender(Protocol):
    def attempt(self, request: SendRequest) -> Any:
        """Perform ``request`` once: the answer's ``data`` (the created message), or a :class:`CometChatError`."""
        ...


class SentLog(Protocol):
    """Where the ids of delivered replies that others refer to are kept (the journal, or Redis)."""

    def remember_sent(self, muid: str, message_id: str, conversation: str, body: Any = None) -> None: ...

    def sent(self, muid: str) -> Any:
        """A record with ``message_id`` and ``body``, or None."""
        ...


def perform(sender: Sender, request: SendRequest, sent_log: SentLog) -> Any:
    """One attempt at ``request``: its ``{ref}`` resolved first, the created message's id recorded after.

    Raises :class:`UnknownReference` (final) when the reply it refers to was never delivered.
    """
    request = resolve_ref(request, sent_log)
    result = sender.attempt(request)
    remember_sent(request, result, sent_log)
    return result


def find_delivered(sender: Sender, request: SendRequest, *, bot_uid: str, since: float) -> dict[str, Any] | None:
    """The message CometChat already holds for ``request`` (a reply with the same muid), or None.

    Asked before sending again a reply that may have gone out already: its
    process was killed during the attempt, or the attempt timed out after
    the request was sent (``since``: when the callback it answers was
    accepted). CometChat is not known to drop a repeated muid (PLATFORM.md,
    "Things a framework must handle" 17), so this is what keeps such a
    reply from appearing twice. Raises the lookup's :class:`CometChatError`:
    the caller then sends the reply anyway (twice rather than not at all).
    """
    lookup = api.find_reply(bot_uid, request, since)
    if lookup is None:
        return None
    data = sender.attempt(lookup)
    for message in data if isinstance(data, list) else ():
        if isinstance(message, dict) and message.get("muid") == request.muid:
            return message
    return None


def found_or_none(sender: Sender, request: SendRequest, *, bot_uid: str, since: float) -> dict[str, Any] | None:
    """:func:`find_delivered`, with a failed lookup logged and taken for "not there" (the reply is then sent:
    twice rather than never)."""
    try:
        return find_delivered(sender, request, bot_uid=bot_uid, since=since)
    except CometChatError as error:
        log.warning(
            "message %s in %s: could not look up whether reply %s was delivered before (%s); sending it",
            request.message_id, request.conversation_id, request.muid, error,
        )  # fmt: skip
        return None


def already_delivered(sender: Sender, request: SendRequest, sent_log: SentLog, *, bot_uid: str, since: float) -> bool:
    """Whether a reply that may have gone out already (:func:`find_delivered`) is in CometChat (then its id is
    recorded as :func:`perform` would have). False, to send it, when it is not there or the lookup failed."""
    found = found_or_none(sender, request, bot_uid=bot_uid, since=since)
    if found is None:
        return False
    log.info(
        "message %s in %s: reply %s is in CometChat already (id %s), from an earlier attempt; not sent again",
        request.message_id, request.conversation_id, request.muid, found.get("id"),
    )  # fmt: skip
    remember_sent(request, found, sent_log)
    return True


def resolve_ref(request: SendRequest, sent_log: SentLog) -> SendRequest:
    """``request`` with the CometChat id of the reply it refers to (``{ref}``) filled in, if it refers to one.

    Raises :class:`UnknownReference` (final) when that reply was never delivered.
    """
    if not request.ref:
        return request
    record = sent_log.sent(request.ref)
    if record is None:
        raise UnknownReference(request.ref)
    return request.resolve(record.message_id)


def remember_sent(request: SendRequest, result: Any, sent_log: SentLog) -> None:
    """Record the id CometChat gave a reply that later requests may refer to (``remember``)."""
    if request.remember and request.muid and isinstance(result, dict) and result.get("id") is not None:
        body = request.body if request.body.get("category") == "interactive" else None
        sent_log.remember_sent(request.muid, str(result["id"]), request.conversation_id, body)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed request again, and after how long."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0  # a longer Retry-After is capped, not obeyed blindly

    def delay(self, retries_done: int, error: CometChatError) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if not error.retryable or retries_done >= self.max_retries:
            return None
        if error.retry_after is not None:
            # Honour the server's wait; a little jitter so many waiting senders do not return at once.
            return min(error.retry_after, self.max_retry_after) + random.uniform(0, 0.1 * self.base_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retries_done))  # "full jitter"


class CometChatClient:
    """CometChat's REST API v3 for one app, authenticated with a REST API key.

    ``bot_uid`` is the bot that the message methods (``send_message``, ``edit_message``, ...) act for.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        bot_uid: str = "",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the certificates to trust (default: the system's, ``ssl.create_default_context()``)."""
        self.base_url = base_url
        self.bot_uid = bot_uid
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._sleep = sleep
        self._head = header_lines(
            [
                ("apikey", api_key),
                ("Accept", "application/json"),
                ("Content-Type", "application/json"),
                ("User-Agent", "cometchat-bot-flask"),
            ]
        )
        # One thread drives every exchange in flight, for start() and the blocking calls alike.
        self._transfers = Transfers(timeout=timeout, connect_timeout=min(5.0, timeout), ssl_context=ssl_context)

    @property
    def base_url(self) -> str:
        """The API's base, e.g. ``https://{appId}.api-{region}.cometchat.io/v3``."""
        return self._base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        origin, prefix = split_base_url(url)
        self._base_url, self._origin, self._prefix = url.rstrip("/"), origin, prefix

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> CometChatClient:
        retry = RetryPolicy(max_retries=settings.max_retries, max_retry_after=settings.max_retry_wait)
        kwargs.setdefault("bot_uid", settings.bot_uid)
        return cls(settings.base_url, settings.api_key, timeout=settings.http_timeout, retry=retry, **kwargs)

    def close(self) -> None:
        """Stop the transfer thread and close its connections (a later call starts them again)."""
        self._transfers.close()

    def send(self, request: SendRequest) -> Any:
        """Perform a request, retrying what can be retried; returns the answer's ``data``.

        A reply whose attempt may have been carried out (``in_doubt``: it timed out after it was sent) is
        looked up before it is tried again, and the message found is returned.
        """
        retries, started, in_doubt = 0, time.time(), False
        while True:
            try:
                doubt = in_doubt and self.bot_uid  # (without the bot's uid its conversation is not known)
                found = found_or_none(self, request, bot_uid=self.bot_uid, since=started) if doubt else None
                return found if found is not None else self.attempt(request)
            except CometChatError as error:
                wait = self.retry.delay(retries, error)
                if wait is None:
                    raise
                retries, in_doubt = retries + 1, in_doubt or error.in_doubt
                log.warning(
                    "send failed with %s; retry %d in %.2fs",
                    error.code,
                    retries,
                    wait,
                    extra={"message_id": request.message_id, "conversation": request.conversation_id},
                )
                self._sleep(wait)

    def attempt(self, request: SendRequest) -> Any:
        """One try at a request (the pipeline schedules retries itself, without blocking a thread)."""
        if request.ref:
            raise ValueError(f"{request.describe()} still refers to reply {request.ref}; resolve it first")
        return self.request(request.method, request.path, request.body, headers=dict(request.headers))

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        """One attempt. Returns the answer's ``data``; raises a :class:`CometChatError` subclass."""
        return _data(self._transfers.request(self._exchange(method, path, body, headers)))

    # ------------------------------------------------------------------ the calls of bot/api.py, with retries

    @property
    def _bot(self) -> str:
        if not self.bot_uid:
            raise ValueError("this client has no bot_uid: pass bot_uid= (from_settings uses COMETCHAT_BOT_UID)")
        return self.bot_uid

    def send_message(self, body: Mapping[str, Any]) -> Any:
        """Send a message as the bot (``POST /bots/{uid}/messages``); returns the created message."""
        return self.send(api.bot_message(self._bot, body))

    def send_thread_message(self, parent_id: str, body: Mapping[str, Any]) -> Any:
        """Reply as the bot in the thread of message ``parent_id``; returns the created message."""
        return self.send(api.thread_message(self._bot, parent_id, body))

    def edit_message(
        self,
        message_id: str,
        *,
        text: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
    ) -> Any:
        """Edit one of the bot's messages (only what is given changes)."""
        return self.send(api.edit_message(self._bot, message_id, text=text, metadata=metadata, tags=tags))

    def delete_message(self, message_id: str, *, permanent: bool = False) -> Any:
        """Delete one of the bot's messages (a soft delete unless ``permanent``)."""
        return self.send(api.delete_message(self._bot, message_id, permanent=permanent))

    def add_reaction(self, message_id: str, reaction: str) -> Any:
        """React to a message as the bot, e.g. ``add_reaction("9031", "👍")``."""
        return self.send(api.add_reaction(self._bot, message_id, reaction))

    def remove_reaction(self, message_id: str, reaction: str) -> Any:
        """Take back the bot's reaction to a message."""
        return self.send(api.remove_reaction(self._bot, message_id, reaction))

    def mark_read(self, target: Target) -> Any:
        """Mark the bot's conversation with a user or group read."""
        return self.send(api.mark_read(self._bot, target))

    def mark_interacted(self, user_uid: str, message_id: str, element_ids: Iterable[str]) -> Any:
        """Mark elements of an interactive message as used by ``user_uid`` (on that user's behalf, not the bot's)."""
        return self.send(api.mark_interacted(user_uid, message_id, element_ids))

    def create_bot(self, uid: str, **settings: Any) -> Any:
        """Create a bot for the existing user ``uid``; ``settings`` as :func:`bot.api.bot_settings`.

        The answer holds the Basic auth password in clear text: never log it.
        """
        return self.send(api.create_bot(uid, **settings))

    def update_bot(self, uid: str, **settings: Any) -> Any:
        """Change a bot's settings (only those given); the answer holds the password in clear text."""
        return self.send(api.update_bot(uid, **settings))

    def get_bot(self, uid: str) -> Any:
        """A bot's settings (``ERR_BOT_NOT_FOUND`` if none); the answer holds the password in clear text."""
        return self.send(api.get_bot(uid))

    def delete_bot(self, uid: str) -> Any:
        """Delete a bot; its user remains."""
        return self.send(api.delete_bot(uid))

    def get_user(self, uid: str) -> Any:
        """A user (``ERR_UID_NOT_FOUND`` if none, or deactivated)."""
        return self.send(api.get_user(uid))

    def start(self, request: SendRequest, done: Callable[[Any, CometChatError | None], None]) -> None:
        """One try at ``request`` without blocking: ``done(data, None)`` or ``done(None, error)`` is called later,
        on the transfer thread (bot/transfers.py), when CometChat has answered."""
        if request.ref:
            raise ValueError(f"{request.describe()} still refers to reply {request.ref}; resolve it first")
        exchange = self._exchange(request.method, request.path, request.body, request.headers)

        def finished(response: Response | None, error: TransportError | None) -> None:
            if error is not None:
                done(None, error)
                return
            assert response is not None
            try:
                data = _data(response)
            except CometChatError as failure:
                done(None, failure)
                return
            done(data, None)

        self._transfers.start(exchange, finished)

    @property
    def in_flight(self) -> int:
        """Requests started with :meth:`start` and not yet answered (in this process)."""
        return self._transfers.in_flight

    def _exchange(self, method: str, path: str, body: Any, headers: Mapping[str, str] | None) -> Exchange:
        if not path.startswith("/") or any(c in path for c in " \t\r\n"):
            raise ValueError(f"not a request path: {path!r}")
        if method == "GET":
            payload = None  # no body, no Content-Length
        else:  # a body, or an empty one (Content-Length: 0) for POST/DELETE calls that take none
            payload = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        head = self._head + header_lines(dict(headers)) if headers else self._head
        data = request_bytes(method, self._prefix + path, self._origin, head, payload)
        return Exchange(self._origin, data, expect_body=method != "HEAD")


def _data(response: Response) -> Any:
    """What :func:`answer_data` makes of an answer (its headers are read only for a failure)."""
    headers = response.headers if response.status >= 300 else None
    return answer_data(response.status, _json_or_none(response.body), headers)


def answer_data(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Any:
    """The ``data`` of a successful answer; a :class:`CometChatError` (with CometChat's code) for a failed one.

    ``headers`` are keyed by lower-case name (``Retry-After`` of a 429).
    """
    if status < 300:
        if isinstance(payload, dict):
            return payload.get("data", payload)
        return {} if payload is None else payload
    code, message = "", f"HTTP {status}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = str(payload["error"].get("code") or "")
        message = str(payload["error"].get("message") or message)
    cls = error_for_status(status)
    raise cls(message, status=status, code=code, retry_after=_retry_after(status, headers or {}))


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _retry_after(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), else from the rate-limit reset header.

    ``headers`` are keyed by lower-case name.
    """
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    # CometChat spells the reset header both ways (PLATFORM.md 4.5).
    reset = headers.get("x-rate-limit-reset") or headers.get("x-ratelimit-reset")
    if status == 429 and reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return None


class LocalSender:
    """Local mode: print each reply, keep the latest ``history`` of them, and (with an ``emulator``) answer as
    CometChat would (bot/emulator.py: the playground). Without an emulator every request succeeds: what tests
    use to record replies."""

    def __init__(self, *, history: int = 1000, echo: bool = True, emulator: Emulator | None = None) -> None:
        self.sent: deque[SendRequest] = deque(maxlen=history)
        self.message_ids: dict[str, str] = {}  # muid -> the id "CometChat" gave the message (tests submit forms)
        self.total = 0  # ever sent, unlike len(sent)
        self.echo = echo
        self.emulator = emulator
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def attempt(self, request: SendRequest) -> Any:
        if self.emulator is None and request.method == "GET":
            return self._delivered()  # a lookup (api.find_reply) reads; it sends nothing, and is not shown
        if self.emulator is not None:
            status, payload = self.emulator.handle(request.method, request.path, request.body, request.headers)
            result = answer_data(status, payload)  # raises CometChat's error, as the real API would
        elif request.is_message:
            result = {**request.body, "id": f"local-{next(self._ids)}"}
        else:
            result = {"success": True}
        with self._lock:
            self.sent.append(request)
            self.total += 1
            if request.is_message and request.muid and isinstance(result, dict) and "id" in result:
                self.message_ids[request.muid] = str(result["id"])
                if len(self.message_ids) > (self.sent.maxlen or 1000):  # as long a memory as the history
                    del self.message_ids[next(iter(self.message_ids))]
        if self.echo:
            print(_shown(request), flush=True)
        return result

    send = attempt  # nothing to retry locally

    def _delivered(self) -> list[dict[str, Any]]:
        """The messages this sender created, as a list API would show them (the latest ``history`` of them)."""
        with self._lock:
            return [
                {**request.body, "id": self.message_ids[request.muid]}
                for request in self.sent
                if request.is_message and request.muid in self.message_ids
            ]


def _shown(request: SendRequest) -> str:
    """One line for the terminal: ``[bot -> user alice] Hello``."""
    body = request.body
    if request.is_message:
        shown = body["data"].get("text") or json.dumps(body["data"], ensure_ascii=False)
        where = " (in thread)" if request.path.endswith("/thread") else ""
        return f"[bot -> {body['receiverType']} {body['receiver']}{where}] {shown}"
    return f"[bot: {request.describe()}]" + ("" if body is None else " " + json.dumps(body, ensure_ascii=False))
