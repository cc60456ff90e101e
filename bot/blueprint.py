"""The Flask blueprint CometChat posts to: authenticate, validate, hand off, answer.

The view does only what must happen before the answer: Basic auth, content
type, size, JSON, schema, the screen (own messages, other bots), and the
hand-off of the :class:`Message` to ``submit`` (the pipeline journals it;
handlers run after the answer). Every rejection is a 4xx with
a JSON body naming the problem; ignored callbacks are acknowledged with 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .auth import BasicAuth
from .dispatch import Dispatcher
from .errors import CallbackError, InvalidJSON, Unauthorized, UnsupportedMediaType
from .message import Message
from .metrics import Metrics
from .schemas import parse_callback
from .settings import Settings

log = logging.getLogger(__name__)

#: Takes an accepted message and its callback body; returns "accepted" or "duplicate".
Submit = Callable[[Message, bytes], str]


def create_blueprint(settings: Settings, dispatcher: Dispatcher, submit: Submit, metrics: Metrics) -> Blueprint:
    """The callback endpoint at ``settings.callback_path``; accepted messages go to ``submit``."""
    bp = Blueprint("cometchat", __name__)
    auth = BasicAuth(settings.callback_username, settings.callback_password) if settings.callback_auth_enabled else None

    @bp.errorhandler(CallbackError)
    def rejected(error: CallbackError) -> tuple[Response, int] | Response:
        response = jsonify(error.to_json())
        response.status_code = error.status
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Basic realm="cometchat-bot", charset="UTF-8"'
        log.info("callback rejected (%d %s): %s", error.status, error.code, error.message)
        return response

    @bp.after_request
    def count(response: Response) -> Response:
        # Rejections (4xx, 503) are counted by status: some never reach the view (413 while reading, 405).
        metrics.callbacks.labels(g.pop("callback_outcome", None) or f"rejected_{response.status_code}").inc()
        return response

    @bp.post(settings.callback_path)
    def callback() -> Response:
        if auth is not None and not auth.check(request.authorization):
            raise Unauthorized("missing or wrong Basic auth credentials for the callback")
        if not request.is_json:
            raise UnsupportedMediaType(
                f"the callback must be JSON (Content-Type: application/json), got {request.mimetype or 'none'!r}"
            )
        # Larger bodies: 413. One byte over the limit is read so that a body without Content-Length (chunked)
        # is refused too, rather than silently cut at the limit.
        request.max_content_length = settings.callback_max_bytes + 1
        data = request.get_data(cache=False)
        if len(data) > settings.callback_max_bytes:
            raise RequestEntityTooLarge(f"the callback body is larger than {settings.callback_max_bytes} bytes")
        cb = parse_callback(_decode_json(data), bot_uid=settings.bot_uid)
        reason = dispatcher.screen(cb)
        if reason:
            log.debug("callback ignored: %s", reason)
            g.callback_outcome = "ignored"
            return jsonify(status="ignored", reason=reason)
        assert cb.message is not None  # screen() passes only callbacks with a message
        status = submit(cb.message, data)
        if status == "duplicate":
            log.info("message %s in %s: delivered again; already accepted", cb.message.id, cb.message.conversation_id)
        g.callback_outcome = status
        return jsonify(status=status, message_id=cb.message.id)

    return bp


def _decode_json(data: bytes) -> object:
    if not data:
        raise InvalidJSON("the callback body is empty; expected a JSON object")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InvalidJSON("the callback body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"the callback body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidJSON("the callback body is not usable JSON: nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise InvalidJSON("the callback body is not usable JSON: a number has too many digits") from None
