"""Small helpers shared by the tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from bot.journal import process_owner


def wait_for(predicate: Callable[[], object], timeout: float = 2.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False): a bounded wait for work that
    happens on other threads or processes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


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
