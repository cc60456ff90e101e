"""All settings of the app, read from the environment once (see the README's configuration table).

``load()`` turns environment variables into the framework's typed
:class:`bot.settings.Settings`; ``create_app(settings={...})`` passes
overrides keyed by the same variable names. Nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from bot.errors import ConfigError
from bot.settings import Settings


def _bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


#: environment variable -> (Settings field, parser)
VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "COMETCHAT_APP_ID": ("app_id", str),
    "COMETCHAT_REGION": ("region", str),
    "COMETCHAT_API_KEY": ("api_key", str),
    "COMETCHAT_BOT_UID": ("bot_uid", str),
    "COMETCHAT_API_URL": ("api_url", str),
    "COMETCHAT_TIMEOUT": ("http_timeout", float),
    "COMETCHAT_MAX_RETRIES": ("max_retries", int),
    "COMETCHAT_MAX_RETRY_WAIT": ("max_retry_wait", float),
    "CALLBACK_PATH": ("callback_path", str),
    "CALLBACK_USERNAME": ("callback_username", str),
    "CALLBACK_PASSWORD": ("callback_password", str),
    "ALLOW_UNAUTHENTICATED_CALLBACKS": ("allow_unauthenticated_callbacks", _bool),
    "CALLBACK_MAX_BYTES": ("callback_max_bytes", int),
    "BOTS_PACKAGE": ("bots_package", str),
    "STATE_TTL": ("state_ttl", float),
    "BOT_LOOP_LIMIT": ("bot_loop_limit", int),
    "KNOWN_BOTS": ("known_bots", str),
    "PUBLIC_URL": ("public_url", str),
    "INTERACTIONS_PATH": ("interactions_path", str),
    "INTERACTION_TTL": ("interaction_ttl", float),
    "SECRET_KEY": ("secret_key", str),
    "JOURNAL_PATH": ("journal_path", str),
    "JOURNAL_SYNC": ("journal_sync", str),
    "DEDUP_TTL": ("dedup_ttl", float),
    "HANDLER_THREADS": ("handler_threads", int),
    "SENDER_THREADS": ("sender_threads", int),
    "MAX_IN_FLIGHT": ("max_in_flight", int),
    "COMETCHAT_RATE_LIMIT": ("rate_limit", str),
    "DRAIN_TIMEOUT": ("drain_timeout", float),
    "SHARE_WORK": ("share_work", _bool),
    "QUICK_HANDLER_MS": ("quick_handler_ms", float),
    "REDIS_URL": ("redis_url", str),
    "WORKER_THREADS": ("worker_threads", int),
    "WORKER_METRICS": ("worker_metrics", str),
    "LOG_LEVEL": ("log_level", str),
    "LOG_FORMAT": ("log_format", str.lower),
    "LOG_MESSAGES": ("log_messages", _bool),
    "PLAYGROUND": ("playground", str.lower),
}


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment), then ``overrides`` on top."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(VARIABLES))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(VARIABLES))}")
    values: dict[str, Any] = {}
    for name, (field, parse) in VARIABLES.items():
        if name in overrides:
            raw = overrides[name]
        elif name in environ:
            raw = environ[name]
        else:
            continue
        if isinstance(raw, str):
            try:
                raw = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        values[field] = raw
    return Settings(**values)
