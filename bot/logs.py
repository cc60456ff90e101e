"""Logging: one line per handled message, as text or as JSON (``LOG_FORMAT=json``) for log pipelines.

The framework logs through the standard library under ``bot.*``. Lines about a
message carry its fields as ``extra`` (``message_id``, ``conversation``,
``handler``, ``outcome``, ``replies``, ``ms``): the JSON formatter puts them
in the object, the text formatter already has them in the sentence. Secrets
never reach a log line: settings hide them from ``repr``, and requests carry
no API key (the client adds it).
"""

from __future__ import annotations

import json
import logging
import time

from .settings import Settings

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ``extra`` fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(settings: Settings) -> None:
    """Set up logging once per process (an app the host already configured logging for keeps its setup)."""
    level = settings.log_level.upper()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger("bot").setLevel(level)
