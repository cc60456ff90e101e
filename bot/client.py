"""Senders: what delivers a :class:`SendRequest`.

* :class:`CometChatClient` posts to CometChat's REST API: one pool of
  keep-alive connections (urllib3, the transport under ``requests``, used
  directly because ``requests`` costs ~3x the CPU per call: 800 vs 250 us
  measured here, which matters at hundreds of replies per second per core),
  connect/read timeouts, retries with exponential
  backoff and full jitter on 429 (honouring ``Retry-After``), 5xx and network
  errors, never on other 4xx; failures raise typed errors carrying CometChat's
  error code.
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
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import urllib3
from urllib3.exceptions import HTTPError

from .errors import CometChatError, TransportError, error_for_status
from .replies import SendRequest
from .settings import Settings

log = logging.getLogger(__name__)


class Sender(Protocol):
    def attempt(self, request: SendRequest) -> dict[str, Any]:
        """Deliver ``request`` once: the created message, or a :class:`CometChatError`."""
        ...


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
    """CometChat's REST API v3 for one app, authenticated with a REST API key."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 64,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._prefix = urllib3.util.parse_url(self.base_url).path or ""
        self._headers = {"apikey": api_key, "Accept": "application/json", "Content-Type": "application/json"}
        self._pool = urllib3.connection_from_url(
            self.base_url,
            maxsize=pool_size,  # one keep-alive connection per sender thread
            block=False,
            retries=False,  # retries are ours: they need CometChat's codes and Retry-After
            timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout),
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> CometChatClient:
        retry = RetryPolicy(max_retries=settings.max_retries, max_retry_after=settings.max_retry_wait)
        return cls(settings.base_url, settings.api_key, timeout=settings.http_timeout, retry=retry, **kwargs)

    def close(self) -> None:
        self._pool.close()

    def send(self, request: SendRequest) -> dict[str, Any]:
        """POST a request, retrying what can be retried; returns the created message (``data``)."""
        retries = 0
        while True:
            try:
                return self.request("POST", request.path, request.body)
            except CometChatError as error:
                wait = self.retry.delay(retries, error)
                if wait is None:
                    raise
                retries += 1
                log.warning(
                    "send failed with %s; retry %d in %.2fs",
                    error.code,
                    retries,
                    wait,
                    extra={"message_id": request.message_id, "conversation": request.conversation_id},
                )
                self._sleep(wait)

    def attempt(self, request: SendRequest) -> dict[str, Any]:
        """One try at a request (the pipeline schedules retries itself, without blocking a thread)."""
        return self.request("POST", request.path, request.body)

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        """One attempt. Returns the answer's ``data``; raises a :class:`CometChatError` subclass."""
        data = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = self._pool.urlopen(
                method, self._prefix + path, body=data, headers={**self._headers, **(headers or {})}
            )
        except (HTTPError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        payload = _json_or_none(response.data)
        if response.status < 300:
            if isinstance(payload, dict):
                return payload.get("data", payload)
            return {} if payload is None else payload
        code, message = "", response.reason or ""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = str(payload["error"].get("code") or "")
            message = str(payload["error"].get("message") or message)
        cls = error_for_status(response.status)
        raise cls(
            message, status=response.status, code=code, retry_after=_retry_after(response.status, response.headers)
        )


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _retry_after(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), else from the rate-limit reset header."""
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    # CometChat spells the reset header both ways (PLATFORM.md 4.5).
    reset = headers.get("X-Rate-Limit-Reset") or headers.get("X-RateLimit-Reset")
    if status == 429 and reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return None


class LocalSender:
    """Local mode: print each reply and keep the latest ``history`` of them (no CometChat account needed)."""

    def __init__(self, *, history: int = 1000, echo: bool = True) -> None:
        self.sent: deque[SendRequest] = deque(maxlen=history)
        self.total = 0  # ever sent, unlike len(sent)
        self.echo = echo
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def attempt(self, request: SendRequest) -> dict[str, Any]:
        with self._lock:
            self.sent.append(request)
            self.total += 1
            message_id = f"local-{next(self._ids)}"
        if self.echo:
            body = request.body
            shown = body["data"].get("text") or json.dumps(body["data"], ensure_ascii=False)
            print(f"[bot -> {body['receiverType']} {body['receiver']}] {shown}", flush=True)
        return {**request.body, "id": message_id}

    send = attempt  # nothing to retry locally
