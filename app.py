"""The deployable app: ``flask --app app run`` locally, ``gunicorn 'app:create_app()'`` in production."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

import config
from bot.discovery import discover_routers
from bot.factory import build_app


def create_app(settings: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment; ``settings`` overrides variables by name (e.g. in tests)."""
    cfg = config.load(settings)
    return build_app(cfg, discover_routers(cfg.bots_package), import_name=__name__)
