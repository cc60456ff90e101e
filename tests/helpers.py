"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bot.journal import process_owner

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate: Callable[[], object], timeout: float = 2.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False): a bounded wait for work that
    happens on other threads or processes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def start_worker(settings: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """An RQ worker process of the project's app (``flask bot worker``, the Procfile's ``worker:``), output to
    ``log``."""
    env = {**os.environ, **settings, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "bot", "worker", *args],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def dead_owner() -> str:
    """The journal owner id of a process of this host that has exited (what a killed process leaves behind)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{process_owner().split(':')[0]}:{int(dead.stdout)}:1"


class Clock:
    """An injectable clock (for the memory state store): ``clock()`` is the time, ``advance(s)`` moves it on."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
