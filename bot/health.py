"""Health endpoints for the platform's probes: ``/healthz`` (the process answers) and ``/readyz`` (it can accept).

``/readyz`` touches what a callback needs (the journal, or Redis) and reports the
queue depth, so an operator or a load balancer sees a backlog or a broken store
before callbacks start failing with 503.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from typing import Any

from flask import Blueprint, jsonify
from redis import RedisError

from .pipeline import Pipeline
from .redis_queue import RedisDelivery

log = logging.getLogger(__name__)


def create_health_blueprint(delivery: Pipeline | RedisDelivery) -> Blueprint:
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

    return bp
