"""The Flask blueprints CometChat (and its clients) post to: authenticate, validate, hand off, answer.

* The callback (``CALLBACK_PATH``): CometChat relays each message for the
  bot. The view does only what must happen before the answer: Basic auth,
  content type, size, JSON, schema, the screen (own messages, other bots),
  and the hand-off of the :class:`Message` to ``submit`` (the pipeline
  journals it; handlers run after the answer). Under a threaded server the
  pipeline may give the request thread work for after the answer (a quick
  route's handler, bot/quick.py): it runs when the server closes the
  response, once the answer is sent.
* The interaction endpoint (``INTERACTIONS_PATH``): the users' UI kits post
  here when someone submits a form or clicks a card button the bot sent
  (bot/interactions.py). It is called from browsers on the customer's site,
  so it answers CORS preflights; the signed token in the body is its
  authentication.

Every rejection is a 4xx with a JSON body naming the problem; ignored
callbacks are acknowledged with 200.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable

from flask import Blueprint, Response, g, jsonify, request
from redis import RedisError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from . import interactions
from .auth import BasicAuth
from .dispatch import Dispatcher
from .errors import CallbackError, DeliveryUnavailable, InvalidJSON, Unauthorized, UnsupportedMediaType
from .interactions import Replayed, Tokens
from .metrics import Metrics
from .schemas import parse_callback, parse_interaction, submission_message
from .settings import Settings

log = logging.getLogger(__name__)

#: Takes an accepted message and the body to keep (``dedup_ttl=`` and ``defer=`` optional: see
#: bot.pipeline.Pipeline.submit); returns "accepted" or "duplicate".
Submit = Callable[..., str]
#: ``sent(muid)``: the record of a delivered reply (its CometChat id and body), or None.
SentLookup = Callable[[str], object]


def create_blueprint(settings: Settings, dispatcher: Dispatcher, submit: Submit, metrics: Metrics) -> Blueprint:
    """The callback endpoint at ``settings.callback_path``; accepted messages go to ``submit``."""
    bp = Blueprint("cometchat", __name__)
    auth = BasicAuth(settings.callback_username, settings.callback_password) if settings.callback_auth_enabled else None
    _answer_errors_as_json(bp, "callback")

    @bp.after_request
    def count(response: Response) -> Response:
        # Rejections (4xx, 503) are counted by status: some never reach the view (a 413 while reading the body).
        # (A 405 is answered by Flask's routing before the blueprint: it is not counted here.)
        metrics.callback(g.pop("callback_outcome", None) or f"rejected_{response.status_code}")
        return response

    @bp.post(settings.callback_path)
    def callback() -> Response:
        if auth is not None and not auth.check_header(request.environ.get("HTTP_AUTHORIZATION")):
            raise Unauthorized("missing or wrong Basic auth credentials for the callback")
        data = _read_json_body("callback", settings.callback_max_bytes)
        cb = parse_callback(_decode_json(data), bot_uid=settings.bot_uid)
        reason = dispatcher.screen(cb)
        if reason:
            log.debug("callback ignored: %s", reason)
            g.callback_outcome = "ignored"
            return jsonify(status="ignored", reason=reason)
        assert cb.message is not None  # screen() passes only callbacks with a message
        after_answer: list[Callable[[], None]] = []
        # Only a threaded server's request thread takes work after its answer (a sync worker's would hold off the
        # next callback; Flask's test client is not threaded either).
        defer = after_answer.append if request.environ.get("wsgi.multithread") else None
        status = submit(cb.message, data, defer=defer)
        if status == "duplicate":
            log.info("message %s in %s: delivered again; already accepted", cb.message.id, cb.message.conversation_id)
        g.callback_outcome = status
        response = _answer(status, cb.message.id)
        for work in after_answer:
            response.call_on_close(work)  # called by the server once the answer is sent (PEP 3333's close())
        return response

    return bp


def create_interactions_blueprint(
    settings: Settings, tokens: Tokens, sent: SentLookup, submit: Submit, metrics: Metrics
) -> Blueprint:
    """The endpoint the buttons of the bot's forms and cards call (``settings.interactions_path``)."""
    bp = Blueprint("cometchat_interactions", __name__)
    _answer_errors_as_json(bp, "submission")

    @bp.after_request
    def cors_and_count(response: Response) -> Response:
        # Called by fetch() from the customer's web app: any origin may post (no cookies; the token authenticates).
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "86400"
        if request.method == "POST":
            metrics.interaction(g.pop("interaction_outcome", None) or f"rejected_{response.status_code}")
        return response

    @bp.route(settings.interactions_path, methods=["OPTIONS"])
    def preflight() -> Response:
        return Response(status=204)

    def sent_record(muid: str) -> object:
        try:
            return sent(muid)
        except (sqlite3.Error, RedisError) as exc:  # as for callbacks: the store is down, try again later
            log.error("submission: the journal or Redis cannot be read: %s", exc)
            raise DeliveryUnavailable("the bot cannot check submissions right now; try again") from exc

    @bp.post(settings.interactions_path)
    def interaction() -> Response:
        data = _read_json_body("submission", settings.callback_max_bytes)
        event = interactions.verify(
            parse_interaction(_decode_json(data)), tokens, bot_uid=settings.bot_uid, sent=sent_record, now=time.time()
        )
        msg = submission_message(event, bot_uid=settings.bot_uid)
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        # A token is good for one submission per user: remembered as long as the token lives.
        if submit(msg, body, dedup_ttl=tokens.max_age) == "duplicate":
            raise Replayed("this was already submitted")
        log.info(
            "submission %s of %s by %s in %s accepted",
            msg.submission.element_id, msg.submission.interaction_id, msg.sender.uid, msg.conversation_id,
        )  # fmt: skip
        g.interaction_outcome = "accepted"
        return jsonify(status="accepted", submission=msg.id)

    return bp


def _answer(status: str, message_id: str) -> Response:
    """The callback's JSON answer, written out directly: ``jsonify`` costs ~78,000 instructions and
    ``json.dumps`` of the dict ~25,000 (callgrind), on every callback."""
    return Response(f'{{"status":"{status}","message_id":{json.dumps(message_id)}}}', content_type="application/json")


def _answer_errors_as_json(bp: Blueprint, what: str) -> None:
    @bp.errorhandler(CallbackError)
    def rejected(error: CallbackError) -> Response:
        response = jsonify(error.to_json())
        response.status_code = error.status
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Basic realm="cometchat-bot", charset="UTF-8"'
        log.info("%s rejected (%d %s): %s", what, error.status, error.code, error.message)
        return response


def _read_json_body(what: str, max_bytes: int) -> bytes:
    """The request body, checked to be JSON (415) and at most ``max_bytes`` long (413).

    CometChat's callbacks take a short way, read straight from the WSGI
    input: declared exactly ``application/json`` with a Content-Length
    within the limit. Werkzeug's ``request.is_json`` and ``get_data()``, which
    every other request goes through, cost ~80,000 instructions per callback
    (callgrind), the short way ~20,000.
    """
    environ = request.environ
    length = environ.get("CONTENT_LENGTH", "")
    if (
        environ.get("CONTENT_TYPE") == "application/json"
        and length.isdigit()
        and int(length) <= max_bytes
        and "HTTP_TRANSFER_ENCODING" not in environ
    ):
        data = environ["wsgi.input"].read(int(length))
        if len(data) != int(length):
            raise ClientDisconnected(f"the {what} body ended after {len(data)} of {length} bytes")
        return data
    if not request.is_json:
        raise UnsupportedMediaType(
            f"the {what} must be JSON (Content-Type: application/json), got {request.mimetype or 'none'!r}"
        )
    # One byte over the limit is read so that a body without Content-Length (chunked) is refused too, rather
    # than silently cut at the limit.
    request.max_content_length = max_bytes + 1
    data = request.get_data(cache=False)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge(f"the {what} body is larger than {max_bytes} bytes")
    return data


def _decode_json(data: bytes) -> object:
    if not data:
        raise InvalidJSON("the body is empty; expected a JSON object")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidJSON("the body is not usable JSON: nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer
        raise InvalidJSON("the body is not usable JSON: a number has too many digits") from None
