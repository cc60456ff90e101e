"""The framework as a server of the benchmark harness in ``../shared/bench``.

The harness configures its servers with its own variable names; this module maps
them to ours and builds the real app (``create_app``) with the echo bot in
:mod:`benchmarks.echo_bot`. gunicorn imports it in each worker after the fork,
so every worker builds its own app and delivery threads, as in production.

=====================  ===================================
harness                ours
=====================  ===================================
CALLBACK_BASIC_AUTH    CALLBACK_USERNAME, CALLBACK_PASSWORD
COMETCHAT_API_BASE     COMETCHAT_API_URL
(gunicorn's            LOG_LEVEL=warning, unless LOG_LEVEL
--log-level warning)   is set (at INFO: see LOG_MESSAGES)
=====================  ===================================

Without ``JOURNAL_PATH`` in the environment each gunicorn run gets a journal of
its own, named after the gunicorn master, so one measurement never inherits
another's backlog; the journals of runs whose master has exited are deleted
when the next run starts (each keeps up to ~90 MB: a hundred runs had filled
9 GB of /tmp).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile

from app import create_app


def harness_settings(environ: os._Environ | dict[str, str] = os.environ) -> dict[str, str]:
    """Our settings from the harness's environment."""
    settings = {"BOTS_PACKAGE": "benchmarks.echo_bot", "LOG_LEVEL": environ.get("LOG_LEVEL", "warning")}
    if "CALLBACK_BASIC_AUTH" in environ:
        username, _, password = environ["CALLBACK_BASIC_AUTH"].partition(":")
        settings |= {"CALLBACK_USERNAME": username, "CALLBACK_PASSWORD": password}
    if "COMETCHAT_API_BASE" in environ:
        settings["COMETCHAT_API_URL"] = environ["COMETCHAT_API_BASE"]
    if "JOURNAL_PATH" not in environ:
        folder = os.path.join(tempfile.gettempdir(), "bench")
        os.makedirs(folder, exist_ok=True)
        settings["JOURNAL_PATH"] = os.path.join(folder, f"cometchat-bot-journal-{os.getppid()}.sqlite3")
        remove_finished_runs(folder)
    return settings


def remove_finished_runs(folder: str) -> None:
    """Delete the journals (with their -wal and -shm files) of earlier runs whose gunicorn master has exited."""
    for path in glob.glob(os.path.join(folder, "cometchat-bot-journal-*.sqlite3*")):
        match = re.search(r"-(\d+)\.sqlite3", path)
        if match and not _running(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):  # the run's other worker removed it first
                os.remove(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


app = create_app(harness_settings())
