"""Error classes, each carrying the code that names the problem.

Three families:

* :class:`ConfigError`: the app cannot start with these settings.
* :class:`CallbackError`: an incoming request is rejected; it becomes a 4xx
  with a JSON body ``{"error": {"code", "message", "fields"?}}``.
* :class:`CometChatError`: CometChat's REST API refused a request; ``code`` is
  CometChat's own error code (``ERR_UID_NOT_FOUND``, ...) when it sent one.
"""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(Exception):
    """The settings are inconsistent; the message says what to change."""


class CallbackError(Exception):
    """A rejected request to one of the framework's endpoints."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, fields: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})

    def to_json(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class InvalidJSON(CallbackError):
    code = "invalid_json"


class UnsupportedMediaType(CallbackError):
    status = 415
    code = "unsupported_media_type"


class InvalidCallback(CallbackError):
    code = "invalid_callback"


class Unauthorized(CallbackError):
    status = 401
    code = "unauthorized"


class DeliveryUnavailable(CallbackError):
    """The message could not be recorded durably (journal or Redis failing): not acknowledged, may be retried."""

    status = 503
    code = "unavailable"


# --------------------------------------------------------------- CometChat API


class CometChatError(Exception):
    """A request to CometChat's REST API failed.

    ``status`` is the HTTP status (0 when no answer arrived), ``code`` is
    CometChat's ``error.code`` or, when the body had none, ``HTTP_<status>``.
    """

    retryable = False
    #: The request may have been carried out although no answer said so (it timed out after it was sent): before
    #: a reply is tried again, CometChat is asked whether it has it (bot.client.find_delivered).
    in_doubt = False

    def __init__(self, message: str, *, status: int = 0, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or (f"HTTP_{status}" if status else "ERR_TRANSPORT")
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code} (HTTP {self.status}): {self.message}" if self.status else f"{self.code}: {self.message}"


class BadRequest(CometChatError):
    """400: the body was refused (empty text, invalid data, ...). Not retried."""


class AuthenticationError(CometChatError):
    """401: the REST API key is wrong or lacks access. Not retried."""


class Forbidden(CometChatError):
    """403: e.g. ``ERR_NOT_A_MEMBER``: the bot is not in the group. Not retried."""


class NotFound(CometChatError):
    """404: ``ERR_UID_NOT_FOUND``, ``ERR_GUID_NOT_FOUND``, ``ERR_BOT_NOT_FOUND``. Not retried."""


class RateLimited(CometChatError):
    """429 ``ERR_TOO_MANY_REQUESTS``; ``retry_after`` holds the server's wait in seconds."""

    retryable = True


class ServerError(CometChatError):
    """5xx: CometChat failed; retried with backoff."""

    retryable = True

    @property
    def in_doubt(self) -> bool:
        return self.status == 504  # a gateway stopped waiting for CometChat, which may have gone on


class TransportError(CometChatError):
    """No usable answer: connection refused, reset, timed out. Retried with backoff.

    ``in_doubt`` when the request had been sent in full (a timeout or a reset while waiting for the answer).
    """

    retryable = True

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class UnknownReference(CometChatError):
    """A request refers to an earlier reply (``ref``) whose CometChat id is not known: it was never delivered."""

    def __init__(self, muid: str) -> None:
        super().__init__(f"the reply it refers to ({muid}) was not delivered", code="ERR_REFERENCE_NOT_SENT")


_BY_STATUS: dict[int, type[CometChatError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    429: RateLimited,
}


def error_for_status(status: int) -> type[CometChatError]:
    """The exception class for an HTTP status of a failed API answer."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, CometChatError)
