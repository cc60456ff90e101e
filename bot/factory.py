"""Wiring: settings + routers -> a Flask app serving the callback.

``build_app`` chooses the sender (CometChat, or local mode's printer), the
store (the embedded journal, or Redis with ``REDIS_URL``) that keeps
messages, replies and conversation state, the dispatcher (routers, state,
loop guard, the actions of interactive messages) and the delivery around it
(journal and threads, or RQ workers); it registers the blueprints and the
``flask bot`` commands, and answers every HTTP error as JSON. The pieces are
kept on ``app.extensions["cometchat_bot"]`` (a :class:`BotApp`) for the
testing helpers and the CLI.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask, Response, jsonify, request
from redis import Redis
from werkzeug.exceptions import HTTPException

from . import interactions, logs
from .blueprint import create_blueprint, create_interactions_blueprint
from .cli import bot_cli
from .client import CometChatClient, LocalSender, RetryPolicy, Sender
from .dispatch import Dispatcher
from .emulator import Emulator
from .health import create_health_blueprint
from .journal import SENT_TTL, Journal, RateLimit
from .loop_guard import LoopGuard
from .metrics import MeteredSender, Metrics
from .pipeline import Pipeline, PipelineOptions
from .playground import create_playground_blueprint
from .redis_queue import RedisDelivery
from .routing import Router
from .settings import Settings
from .sharing import SharingOptions
from .state import RedisStateStore, SqliteStateStore, StateStore

log = logging.getLogger(__name__)

EXTENSION = "cometchat_bot"


@dataclass
class BotApp:
    """The framework's parts of one Flask app."""

    settings: Settings
    router: Router
    sender: Sender
    delivery: Pipeline | RedisDelivery  # embedded journal + threads, or Redis + RQ workers
    metrics: Metrics
    emulator: Emulator | None = None  # local mode: the stand-in for CometChat behind the playground

    @property
    def dispatcher(self) -> Dispatcher:
        return self.delivery.dispatcher

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every accepted message is handled and its replies delivered (True), or ``timeout`` passes.

        Tests call this after posting a callback, before looking at what was sent.
        """
        return self.delivery.wait_idle(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop background work (draining what runs for up to ``timeout`` s)."""
        return self.delivery.stop(timeout)


def build_app(
    settings: Settings,
    routers: Iterable[Router],
    *,
    sender: Sender | None = None,
    import_name: str = "app",
) -> Flask:
    """A Flask app whose callback runs ``routers`` (tried in the order given)."""
    logs.configure(settings)
    root = Router("app")
    for router in routers:
        root.include_router(router)
    emulator = None
    if sender is None:
        if settings.is_live:
            sender = CometChatClient.from_settings(settings)
        else:
            log.warning(
                "local mode: no CometChat credentials configured; replies go to the built-in emulator%s",
                " (chat at /playground)" if settings.playground != "off" else "",
            )
            emulator = Emulator(bot_uid=settings.bot_uid or "bot")
            sender = LocalSender(emulator=emulator)
    metrics = Metrics()
    tokens = interactions.Tokens(interactions.secret_for(settings), max_age=settings.interaction_ttl)
    delivery = _delivery(settings, root, MeteredSender(sender, metrics), metrics, tokens)
    metrics.depth = delivery.depth
    state = BotApp(settings, root, sender, delivery, metrics, emulator)

    app = Flask(import_name)
    app.extensions[EXTENSION] = state
    app.register_blueprint(create_blueprint(settings, delivery.dispatcher, delivery.submit, metrics))
    app.register_blueprint(
        create_interactions_blueprint(settings, tokens, delivery.sent_log.sent, delivery.submit, metrics)
    )
    app.register_blueprint(create_health_blueprint(delivery, metrics))
    if emulator is not None and settings.playground != "off":
        emulator.relay = _relay_to(app, settings)
        app.register_blueprint(create_playground_blueprint(emulator, local_only=settings.playground == "local"))
    app.register_error_handler(HTTPException, _json_http_errors(settings))
    app.cli.add_command(bot_cli)
    delivery.start()  # in each gunicorn worker (create_app runs after the fork); again on first use after a fork
    return app


def _delivery(
    settings: Settings, router: Router, sender: Sender, metrics: Metrics, tokens: interactions.Tokens
) -> Pipeline | RedisDelivery:
    retry = RetryPolicy(max_retries=settings.max_retries, max_retry_after=settings.max_retry_wait)
    rate_limit = RateLimit.parse(settings.rate_limit)
    # A form's id is checked when it is submitted: keep it as long as its buttons work.
    sent_ttl = max(SENT_TTL, settings.interaction_ttl)
    if settings.redis_url:
        redis = Redis.from_url(settings.redis_url)
        dispatcher = _dispatcher(settings, router, RedisStateStore(redis), tokens)
        return RedisDelivery(
            redis, dispatcher, sender, dedup_ttl=settings.dedup_ttl, retry=retry, rate_limit=rate_limit,
            metrics=metrics, sent_ttl=sent_ttl,
        )  # fmt: skip
    journal = Journal(
        settings.journal_path, dedup_ttl=settings.dedup_ttl, rate_limit=rate_limit, synchronous=settings.journal_sync,
        sent_ttl=sent_ttl,
    )  # fmt: skip
    options = PipelineOptions(
        handler_threads=settings.handler_threads,
        sender_threads=settings.sender_threads,
        max_in_flight=settings.max_in_flight,
        drain_timeout=settings.drain_timeout,
        sharing=SharingOptions(enabled=settings.share_work),
        quick_handler=settings.quick_handler_ms / 1000,
    )
    dispatcher = _dispatcher(settings, router, SqliteStateStore(journal), tokens)
    return Pipeline(journal, dispatcher, sender, retry=retry, options=options, metrics=metrics)


def _dispatcher(settings: Settings, router: Router, state: StateStore, tokens: interactions.Tokens) -> Dispatcher:
    loop_guard = (
        LoopGuard(state, limit=settings.bot_loop_limit, known_bots=settings.known_bot_uids)
        if settings.bot_loop_limit
        else None
    )
    return Dispatcher(
        router,
        bot_uid=settings.bot_uid,
        state=state,
        state_ttl=settings.state_ttl,
        loop_guard=loop_guard,
        api_action=interactions.ActionMaker(tokens, interactions.endpoint_url(settings)),
        log_messages=settings.log_messages,
    )


def _relay_to(app: Flask, settings: Settings) -> Callable[[dict], int]:
    """How the emulator posts a callback: through the app's own callback endpoint, Basic auth included."""
    headers = {}
    if settings.callback_auth_enabled:
        credentials = f"{settings.callback_username}:{settings.callback_password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()

    def relay(callback: dict) -> int:
        return app.test_client().post(settings.callback_path, json=callback, headers=headers).status_code

    return relay


def bot_app(app: Flask) -> BotApp:
    """The framework's parts of ``app`` (built by :func:`build_app`)."""
    return app.extensions[EXTENSION]


def _json_http_errors(settings: Settings) -> Callable[[HTTPException], Response]:
    """Every HTTP error as JSON: a bot's endpoints talk to programs, not browsers.

    A POST to a path the app does not serve is also logged, with the paths it
    does: a webhook URL that does not end with ``CALLBACK_PATH`` is the usual
    reason no callback arrives, and gunicorn's access log is off.
    """

    def json_http_error(error: HTTPException) -> Response:
        if error.code == 404 and request.method == "POST":
            log.info(
                "POST %r: no such endpoint (404); callbacks go to POST %s, form submissions to POST %s",
                request.path, settings.callback_path, settings.interactions_path,
            )  # fmt: skip
        code = (error.name or "error").lower().replace(" ", "_")
        response = jsonify(error={"code": code, "message": error.description or error.name})
        response.status_code = error.code or 500
        for key, value in error.get_headers():
            if key.lower() in ("allow", "retry-after"):  # 405 must say which methods are allowed
                response.headers[key] = value
        return response

    return json_http_error
