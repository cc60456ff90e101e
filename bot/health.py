"""Operations endpoints: ``/healthz`` (the process answers), ``/readyz`` (it can accept), ``/metrics``.

``/readyz`` touches what a callback needs (the journal, or Redis) and reports the
queue depth, so an operator or a load balancer sees a backlog or a broken store
before callbacks start failing with 503.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from typing import Any

from flask import Blueprint, Response, jsonify
from redis import RedisError

from .metrics import Metrics
from .pipeline import Pipeline
from .redis_queue import RedisDelivery

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
