"""Senders: what delivers a :class:`SendRequest`.

* :class:`CometChatClient` posts to CometChat's REST API: one pooled
  ``requests.Session``, connect/read timeouts, retries with exponential
  backoff and full jitter on 429 (honouring ``Retry-After``), 5xx and network
  errors, never on other 4xx; failures raise typed errors carrying CometChat's
  error code.
* :class:`LocalSender` is local mode (no CometChat account): it prints the
  replies and keeps the latest ones, for the console, tests and the playground.

Both have ``send(request) -> dict`` (the created message).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter

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
        pool_size: int = 32,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(5.0, timeout), timeout)  # (connect, read)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update({"apikey": api_key, "Accept": "application/json"})

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> CometChatClient:
        retry = RetryPolicy(max_retries=settings.max_retries, max_retry_after=settings.max_retry_wait)
        return cls(settings.base_url, settings.api_key, timeout=settings.http_timeout, retry=retry, **kwargs)

    def close(self) -> None:
        self.session.close()

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
        kwargs: dict[str, Any] = {"timeout": self.timeout, "headers": dict(headers or {})}
        if body is not None:
            kwargs["data"] = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        try:
            response = self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code < 300:
            try:
                payload = response.json()
            except ValueError:
                return {}
            return payload.get("data", payload) if isinstance(payload, dict) else payload
        raise _error_from(response)


def _error_from(response: requests.Response) -> CometChatError:
    code, message = "", response.reason or ""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = str(payload["error"].get("code") or "")
        message = str(payload["error"].get("message") or message)
    cls = error_for_status(response.status_code)
    return cls(message, status=response.status_code, code=code, retry_after=_retry_after(response))


def _retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), else from the rate-limit reset header."""
    value = response.headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    # CometChat spells the reset header both ways (PLATFORM.md 4.5).
    reset = response.headers.get("X-Rate-Limit-Reset") or response.headers.get("X-RateLimit-Reset")
    if response.status_code == 429 and reset:
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
