"""Sharing the work between the processes of a host when the callbacks all reach one of them.

gunicorn's gthread worker accepts every connection it can (benoitc/gunicorn
#3433, #2817), so one worker may hold all of a client's keep-alive
connections while the other holds none, for as long as they stay open. The
busy one then runs the request side *and* the handlers and sends of every
message under its one GIL, while the other idles. Measured with
benchmarks/one_busy_worker.sh (one gthread worker taking all of the harness's
load, another idle): 568-714 callbacks/s with ``SHARE_WORK=false``, 768-974/s
with this, at 0 ms API latency.

So, per process:

* **offering help**: a process that has taken no callback for
  ``idle_after`` seconds while others accept messages (the journal's newest
  is younger than ``offer_ttl``) writes an offer to the journal's
  ``helpers`` table, renewed while that holds and good for ``offer_ttl``
  seconds. While it offers and its polls find work, its claimer polls
  every ``poll`` seconds instead of the usual interval (an offer nobody
  takes costs no extra scans of the inbox). A message whose handler merely
  runs long makes no offer.
* **leaving work**: a process taking more than ``min_rate`` callbacks per
  second while another offers help journals new messages unclaimed and its
  claimer leaves them be; the helper's claimer takes them.

Below ``min_rate`` a message is never left: a helper's poll would add up to
``poll`` seconds to its reply for no gain. Order and deduplication do not
change, since every claim goes through the journal's lane rule. A helper that
dies stops renewing: within ``offer_ttl`` the busy process handles its
messages itself again (it claims what was left), and the journal's recovery
gives back what the helper had claimed.

The decisions are kept here, apart from the pipeline's threads: the request
thread calls :meth:`Sharing.accepted` per callback, the claimer thread calls
:meth:`Sharing.tick` each round. Both take their clocks as arguments for tests.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .journal import Journal

#: Callbacks are counted over windows of this many seconds to tell the rate.
RATE_WINDOW = 0.1


@dataclass(frozen=True)
class SharingOptions:
    enabled: bool = True
    min_rate: float = 200.0  # callbacks/s over which a process leaves new messages to a helper
    idle_after: float = 0.5  # seconds without a callback after which a process may offer help
    offer_ttl: float = 1.0  # seconds an offer holds unless renewed (a third of it between renewals)
    poll: float = 0.005  # seconds between a helper's claims while they find work...
    poll_for: float = 0.25  # ... that is, for this long after a claim that found some


class Sharing:
    """One process's side of work sharing: whether to leave a message to a helper, whether to offer help."""

    def __init__(
        self,
        journal: Journal,
        options: SharingOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.options = options or SharingOptions()
        self._clock, self._wall_clock = clock, wall_clock
        self._last_callback = -math.inf
        self._window_start = clock()
        self._window_count = 0
        self._leaving = False  # the last window was over min_rate and another process offered help
        self.offering = False
        self._renew_at = -math.inf

    # ------------------------------------------------------------ request thread

    def accepted(self) -> bool:
        """A callback arrived: True to journal it unclaimed, for a helper.

        Called from every request thread without a lock: the counts may
        miss a callback now and then, which only blurs the rate a little.
        """
        if not self.options.enabled:
            return False
        now = self._clock()
        self._last_callback = now
        self._window_count += 1
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW:
            fast = self._window_count / elapsed > self.options.min_rate
            self._window_start, self._window_count = now, 0
            # One read of the helpers table per window, and none at all while the rate is low.
            try:
                self._leaving = fast and self.journal.help_offered(self._wall_clock())
            except sqlite3.Error:  # keep the message here; recording it (next) reports the journal's trouble
                self._leaving = False
        return self._leaving

    @property
    def leaving(self) -> bool:
        """Messages are being left to a helper (so this process's claimer does not claim them back)."""
        return self._leaving and self._clock() - self._last_callback < self.options.idle_after

    # ------------------------------------------------------------ claimer thread

    def tick(self) -> bool:
        """Offer, renew or withdraw help as this process's load says; True while offering (poll fast then)."""
        if not self.options.enabled:
            return False
        now = self._clock()
        if now - self._last_callback < self.options.idle_after:
            if self.offering:  # callbacks reach this process again: it is busy enough with its own
                self.withdraw()
            return False
        if now >= self._renew_at:
            self._renew_at = now + self.options.offer_ttl / 3
            wall = self._wall_clock()
            newest = self.journal.newest_accepted_at()
            if newest is not None and newest > wall - self.options.offer_ttl:
                self.journal.offer_help(wall + self.options.offer_ttl, now=wall)
                self.offering = True
            elif self.offering:
                self.withdraw()
        return self.offering

    def withdraw(self) -> None:
        """Take back this process's offer (it is busy again, or stopping)."""
        if self.offering:
            self.offering = False
            self.journal.withdraw_help()
