"""The framework's settings: one typed, validated value passed explicitly.

The framework never reads the environment itself. The application's
``config.py`` reads it once and builds a :class:`Settings`; tests build one
directly. Secrets are excluded from ``repr`` so a logged settings object never
leaks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

REGIONS = ("us", "eu", "in")
PLAYGROUND_MODES = ("local", "all", "off")


@dataclass(frozen=True)
class Settings:
    # CometChat REST API (all four, or none for local mode).
    app_id: str = ""
    region: str = ""
    api_key: str = field(default="", repr=False)
    bot_uid: str = ""
    api_url: str = ""  # override of https://{app_id}.api-{region}.cometchat.io/v3

    # The callback CometChat posts to.
    callback_path: str = "/cometchat/callback"
    callback_username: str = ""
    callback_password: str = field(default="", repr=False)
    allow_unauthenticated_callbacks: bool = False
    callback_max_bytes: int = 256 * 1024

    # Handler discovery.
    bots_package: str = "bots"

    # Conversations and interactive messages.
    state_ttl: float = 86400.0  # seconds a conversation's state lives after its last change
    bot_loop_limit: int = 3  # bot messages answered in a row in a conversation before the bot stops (0: no limit)
    known_bots: str = ""  # comma-separated uids of other bots (those built with this framework are recognised)
    public_url: str = ""  # https address of this app, for the buttons of forms and cards
    interactions_path: str = "/cometchat/interactions"
    interaction_ttl: float = 7 * 86400.0  # how long a form or card can be submitted
    secret_key: str = field(default="", repr=False)  # signs interaction tokens (default: derived from the API key)

    # Outbound HTTP.
    http_timeout: float = 10.0
    max_retries: int = 5
    max_retry_wait: float = 60.0

    # Delivery pipeline (ack first, handle and send in the background).
    journal_path: str = "var/journal.sqlite3"
    journal_sync: str = "normal"  # "full": also survive an OS crash, at a cost per callback
    dedup_ttl: float = 3600.0  # seconds a message id is remembered against redelivery
    handler_threads: int = 64  # messages handled at once per process
    max_in_flight: int = 256  # messages per process whose replies are being posted at once (without a thread each)
    sender_threads: int = 16  # threads per process posting replies that wait in the journal (retries, backlog)
    rate_limit: str = ""  # e.g. "500/min" (CometChat's free plan): paces sends across processes
    drain_timeout: float = 8.0  # on shutdown, seconds to let running work finish
    share_work: bool = True  # an idle process handles messages a busy one accepted (bot/sharing.py)
    quick_handler_ms: float = 10.0  # a route this quick runs on the answering thread (bot/quick.py); 0: never
    redis_url: str = ""  # set: scale out on Redis + RQ workers instead of the embedded journal
    worker_threads: int = 8  # Redis mode: messages handled at once per RQ worker process
    worker_metrics: str = ""  # Redis mode: "HOST:PORT" where each RQ worker process serves /metrics ("": none)

    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    log_messages: bool = True  # a line per handled message at INFO; False leaves only the WARNING outcomes
    playground: str = "local"  # local mode only: the playground for "local" clients (loopback), "all", or "off"

    def __post_init__(self) -> None:
        object.__setattr__(self, "region", self.region.strip().lower())
        object.__setattr__(self, "bot_uid", self.bot_uid.strip().lower())
        object.__setattr__(self, "api_url", self.api_url.rstrip("/"))
        self._validate()

    def _validate(self) -> None:
        problems: list[str] = []
        if self.region and self.region not in REGIONS:
            problems.append(f"COMETCHAT_REGION must be one of {', '.join(REGIONS)} (got {self.region!r})")
        given = {name: bool(getattr(self, attr)) for name, attr in _CREDENTIALS.items()}
        if self.api_url:
            given.pop("COMETCHAT_APP_ID")
            given.pop("COMETCHAT_REGION")
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(name for name, ok in given.items() if not ok)
            problems.append(f"CometChat is partly configured: also set {missing} (or unset all for local mode)")
        if bool(self.callback_username) != bool(self.callback_password):
            problems.append("set both CALLBACK_USERNAME and CALLBACK_PASSWORD, or neither")
        if self.is_live and not self.callback_auth_enabled and not self.allow_unauthenticated_callbacks:
            problems.append(
                "CometChat credentials are set but the callback is unauthenticated: set CALLBACK_USERNAME and "
                "CALLBACK_PASSWORD (and the same Basic auth on the bot in CometChat), or set "
                "ALLOW_UNAUTHENTICATED_CALLBACKS=true if something in front of the app authenticates"
            )
        if not self.callback_path.startswith("/"):
            problems.append(f"CALLBACK_PATH must start with '/' (got {self.callback_path!r})")
        if not self.interactions_path.startswith("/") or self.interactions_path == self.callback_path:
            problems.append("INTERACTIONS_PATH must start with '/' and differ from CALLBACK_PATH")
        if self.public_url and not self.public_url.startswith(("https://", "http://")):
            problems.append(f"PUBLIC_URL must be an http(s) URL (got {self.public_url!r})")
        if self.state_ttl <= 0 or self.interaction_ttl <= 0:
            problems.append("STATE_TTL and INTERACTION_TTL must be positive")
        if self.bot_loop_limit < 0:
            problems.append("BOT_LOOP_LIMIT must not be negative (0 turns the guard off)")
        if self.callback_max_bytes <= 0:
            problems.append("CALLBACK_MAX_BYTES must be positive")
        if min(self.handler_threads, self.sender_threads, self.max_in_flight, self.worker_threads) < 1:
            problems.append("HANDLER_THREADS, SENDER_THREADS, MAX_IN_FLIGHT and WORKER_THREADS must be at least 1")
        if self.dedup_ttl < 0:
            problems.append("DEDUP_TTL must not be negative")
        if self.quick_handler_ms < 0:
            problems.append("QUICK_HANDLER_MS must not be negative (0 turns quick routes off)")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            problems.append(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got {self.log_level!r})")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            problems.append("REDIS_URL must start with redis://, rediss:// or unix://")
        if self.worker_metrics and parse_address(self.worker_metrics) is None:
            problems.append(f"WORKER_METRICS must be HOST:PORT, e.g. 0.0.0.0:9100 (got {self.worker_metrics!r})")
        if self.playground not in PLAYGROUND_MODES:
            problems.append(f"PLAYGROUND must be local, all or off (got {self.playground!r})")
        if self.log_format not in ("text", "json"):
            problems.append(f"LOG_FORMAT must be text or json (got {self.log_format!r})")
        if self.journal_sync.lower() not in ("normal", "full"):
            problems.append(f"JOURNAL_SYNC must be normal or full (got {self.journal_sync!r})")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def is_live(self) -> bool:
        """True when replies go to CometChat; False in local mode (no account)."""
        return bool(self.api_key and self.bot_uid)

    @property
    def callback_auth_enabled(self) -> bool:
        return bool(self.callback_username and self.callback_password)

    @property
    def base_url(self) -> str:
        """Base URL of CometChat's REST API v3 for this app."""
        if self.api_url:
            return self.api_url
        return f"https://{self.app_id}.api-{self.region}.cometchat.io/v3"

    @property
    def known_bot_uids(self) -> tuple[str, ...]:
        return tuple(uid.strip().lower() for uid in self.known_bots.split(",") if uid.strip())

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)


_CREDENTIALS = {
    "COMETCHAT_APP_ID": "app_id",
    "COMETCHAT_REGION": "region",
    "COMETCHAT_API_KEY": "api_key",
    "COMETCHAT_BOT_UID": "bot_uid",
}


def parse_address(text: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` as (host, port), or None if it is not one (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)
