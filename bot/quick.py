"""Quick routes: handled by the thread that answered the callback, right after the answer.

Normally the request thread journals a callback, answers 200 and hands the
message to a handler thread (bot/pipeline.py). For a handler that takes a
fraction of a millisecond (a command, an echo, a lookup in a dict) that
hand-off is most of the work: waking the handler thread and passing the GIL
back and forth between it and the request threads cost more CPU than the
handler itself. Measured with benchmarks/cpu_per_callback.sh (gthread
workers, 0 ms API latency, five alternating pairs): 12-18 % more callbacks
per second in four of them, and 6.6-7.9 context switches per callback instead
of 8.0-9.6, when the echo bot's route runs on the answering thread
(benchmarks/RESULTS.md).

So a route that has been quick runs there, once the answer is out (WSGI's
``close()``, which the server calls after it sent the response: the answer
never waits for the handler), like Starlette's background tasks. Which
routes are quick is learned, per process, from their own runs
(:class:`QuickRoutes`): one whose last ``runs`` runs each took under
``limit`` seconds; a single slower run sends it back to handler threads
until it has been quick that many times again. A route that calls an LLM or
another service never qualifies, so a request thread is never held up for
long, and a route starts on handler threads until it has shown its speed.

Only threaded servers (``wsgi.multithread``, e.g. gunicorn's gthread
workers) do this: there one request thread busy with a sub-millisecond
handler leaves the others free, while a sync worker's only thread would take
no callback meanwhile. Flask's test client is not threaded either, so tests
see the handler threads unless they ask for a threaded environ. At most
``quick_at_once`` request threads of a process (2) run handlers at the same
moment: a message that finds them busy goes to a handler thread (under the
benchmark's load, 0.5-1 % of them did).

:class:`Answering` keeps the messages between the answer and ``close()``. A
server or middleware that never calls ``close()`` (against PEP 3333) would
leave them claimed: the pipeline's claimer hands any still waiting after
``grace`` seconds to a handler thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

#: A route runs on the answering thread after this many runs in a row each took less than the limit.
QUICK_RUNS = 32
#: Seconds after which a message still waiting for its answering thread goes to a handler thread.
ANSWER_GRACE = 1.0

T = TypeVar("T")

log = logging.getLogger(__name__)


class QuickRoutes:
    """Which routes have been quick lately, by route name (a process's own runs).

    Counters are updated from several threads without a lock: a lost
    update only delays or advances a route's switch by a run. A route's
    first switch each way is logged at INFO, later ones at DEBUG (a route
    near the limit may switch often under load).
    """

    def __init__(self, limit: float, runs: int = QUICK_RUNS) -> None:
        self.limit = limit  # seconds; 0 turns quick routes off
        self.runs = runs
        self._quick_runs: dict[str, int] = {}  # route name -> quick runs in a row (capped at ``runs``)
        self._told: set[tuple[str, bool]] = set()  # (route, quick) switches logged at INFO

    @property
    def enabled(self) -> bool:
        """False with a limit of 0: every route runs on handler threads."""
        return self.limit > 0

    def admits(self, route: str) -> bool:
        """Whether ``route`` may run on the answering thread."""
        return self.enabled and self._quick_runs.get(route, 0) >= self.runs

    def ran(self, route: str, seconds: float) -> None:
        """Record a run of ``route`` (wherever it ran) that took ``seconds``."""
        runs = self._quick_runs.get(route, 0)
        if seconds < self.limit:
            if runs < self.runs:
                self._quick_runs[route] = runs + 1
                if runs + 1 == self.runs:
                    self._switched(route, True, seconds)
        elif runs:
            self._quick_runs[route] = 0
            if runs >= self.runs:
                self._switched(route, False, seconds)

    def _switched(self, route: str, quick: bool, seconds: float) -> None:
        level = logging.DEBUG if (route, quick) in self._told else logging.INFO
        self._told.add((route, quick))
        if quick:
            log.log(level, "route %s: its last %d runs each took less than %.0f ms; it now runs on the thread that "
                    "answered the callback", route or "(unmatched)", self.runs, self.limit * 1000)  # fmt: skip
        else:
            log.log(level, "route %s: a run took %.0f ms; back on handler threads until it is quick again",
                    route or "(unmatched)", seconds * 1000)  # fmt: skip


class Answering(Generic[T]):
    """Work waiting for the thread that answered its callback, by key; whoever takes an entry first runs it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, T]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, key: int, entry: T) -> None:
        with self._lock:
            self._waiting[key] = (self._clock(), entry)

    def take(self, key: int) -> T | None:
        """The entry, if nobody took it yet (the answering thread, once its answer is out)."""
        with self._lock:
            found = self._waiting.pop(key, None)
        return None if found is None else found[1]

    def take_overdue(self, grace: float = ANSWER_GRACE) -> list[T]:
        """The entries waiting longer than ``grace`` seconds (their answering thread never came back for them)."""
        if not self._waiting:
            return []
        cutoff = self._clock() - grace
        with self._lock:
            overdue = [key for key, (since, _) in self._waiting.items() if since < cutoff]
            return [self._waiting.pop(key)[1] for key in overdue]

    def take_all(self) -> list[T]:
        with self._lock:
            entries = [entry for _, entry in self._waiting.values()]
            self._waiting.clear()
        return entries
