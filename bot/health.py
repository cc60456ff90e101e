"""Operations endpoints: ``/healthz`` (the process answers), ``/readyz`` (it can accept), ``/metrics``.

Web processes serve them with the app; an RQ worker process, which serves no HTTP, can serve them on an
address of its own (:func:`serve`, ``WORKER_METRICS``).

``/readyz`` touches what a callback needs (the journal, or Redis) and reports the
queue depth, so an operator or a load balancer sees a backlog or a broken store
before callbacks start failing with 503.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from flask import Blueprint, Flask, Response, jsonify
from prometheus_client.exposition import ThreadingWSGIServer
from redis import RedisError

from .metrics import Metrics
from .pipeline import Pipeline
from .redis_queue import RedisDelivery
from .threads import start_background

log = logging.getLogger(__name__)


def create_health_blueprint(delivery: Pipeline | RedisDelivery, metrics: Metrics) -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @bp.get("/readyz")
    def readyz() -> Any:
        try:
            depth = delivery.depth()
        except (sqlite3.Error, RedisError, OSError) as exc:
            log.warning("not ready: %s: %s", type(exc).__name__, exc)
            return jsonify(status="unavailable", error=f"{type(exc).__name__}: {exc}"), 503
        store = "redis" if isinstance(delivery, RedisDelivery) else "journal"
        return jsonify(status="ready", store=store, depth=dataclasses.asdict(depth))

    @bp.get("/metrics")
    def prometheus() -> Response:
        try:
            body, content_type = metrics.render()
        except (sqlite3.Error, RedisError, OSError) as exc:  # the queue depth could not be read
            return jsonify(status="unavailable", error=f"{type(exc).__name__}: {exc}"), 503
        return Response(body, content_type=content_type)

    return bp


def serve(delivery: Pipeline | RedisDelivery, metrics: Metrics, host: str, port: int) -> tuple[str, int]:
    """Answer these endpoints on ``host:port`` from a background thread; returns the address bound (``port`` 0:
    any free port)."""
    app = Flask(__name__)
    app.register_blueprint(create_health_blueprint(delivery, metrics))
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    start_background(server.serve_forever, "bot-metrics")
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a scrape every few seconds is not news."""
