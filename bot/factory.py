"""Wiring: settings + routers -> a Flask app serving the callback.

``build_app`` chooses the sender (CometChat, or local mode's printer), builds
the dispatcher, registers the blueprint and answers every HTTP error as JSON.
The pieces are kept on ``app.extensions["cometchat_bot"]`` (a :class:`BotApp`)
for the testing helpers and the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from .blueprint import create_blueprint
from .client import CometChatClient, LocalSender, Sender
from .dispatch import Dispatcher, Outcome
from .message import Message
from .routing import Router
from .settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "cometchat_bot"


@dataclass
class BotApp:
    """The framework's parts of one Flask app."""

    settings: Settings
    router: Router
    sender: Sender
    dispatcher: Dispatcher

    def submit(self, msg: Message) -> Outcome:
        """Handle an accepted message (inline, in the request)."""
        outcome = self.dispatcher.handle(msg)
        log.info(
            "message %s in %s: %s by %s, %d sent in %.1f ms",
            outcome.message_id,
            outcome.conversation_id,
            outcome.status,
            outcome.handler or "-",
            outcome.sent,
            outcome.seconds * 1000,
        )
        return outcome

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every accepted message has been handled (True) or ``timeout`` passes (False).

        Tests call this after posting a callback, before looking at what was sent.
        Messages are handled inline in the request for now, so there is never
        anything left to wait for.
        """
        return True


def build_app(
    settings: Settings,
    routers: Iterable[Router],
    *,
    sender: Sender | None = None,
    import_name: str = "app",
) -> Flask:
    """A Flask app whose callback runs ``routers`` (tried in the order given)."""
    _configure_logging(settings)
    root = Router("app")
    for router in routers:
        root.include_router(router)
    if sender is None:
        if settings.is_live:
            sender = CometChatClient.from_settings(settings)
        else:
            log.warning("local mode: no CometChat credentials configured; replies are printed, not sent")
            sender = LocalSender()
    dispatcher = Dispatcher(root, sender.send, bot_uid=settings.bot_uid)
    state = BotApp(settings, root, sender, dispatcher)

    app = Flask(import_name)
    app.extensions[EXTENSION] = state
    app.register_blueprint(create_blueprint(settings, dispatcher, state.submit))
    app.register_error_handler(HTTPException, _json_http_error)
    return app


def bot_app(app: Flask) -> BotApp:
    """The framework's parts of ``app`` (built by :func:`build_app`)."""
    return app.extensions[EXTENSION]


def _json_http_error(error: HTTPException) -> Response:
    """Every HTTP error as JSON: a bot's endpoints talk to programs, not browsers."""
    code = (error.name or "error").lower().replace(" ", "_")
    response = jsonify(error={"code": code, "message": error.description or error.name})
    response.status_code = error.code or 500
    for key, value in error.get_headers():
        if key.lower() in ("allow", "retry-after"):  # 405 must say which methods are allowed
            response.headers[key] = value
    return response


def _configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bot").setLevel(settings.log_level.upper())
