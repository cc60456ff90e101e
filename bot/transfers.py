"""HTTP exchanges in flight: one thread per process drives all of them over one libcurl multi handle.

The pipeline posts most replies through this: a handler thread hands its
message's replies over and is free at once, and the replies of hundreds of
conversations are in flight together without a thread each. Measured with
the benchmark harness (benchmarks/RESULTS.md), this took the cost of a
callback down by a quarter in gunicorn's gthread mode: a thread blocked in
each request meant dozens of threads per process contending for the GIL.

:meth:`Transfers.start` takes a prepared ``pycurl.Curl`` and a function
called, on the loop's thread, with the handle and ``None`` once the exchange
is done, or with a :class:`~bot.errors.TransportError` if none happened. The
handle goes back to :meth:`Transfers.handle` for reuse: libcurl keeps the
keep-alive connections in the multi handle's pool, shared by all handles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
from collections.abc import Callable

import pycurl

from .errors import TransportError

log = logging.getLogger(__name__)

Done = Callable[[pycurl.Curl, TransportError | None], None]


class Transfers:
    """A curl multi handle and the thread that drives it, started in the process that first uses it."""

    def __init__(self, *, max_connections: int = 256) -> None:
        self.max_connections = max_connections
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[pycurl.Curl, Done] | None] = queue.SimpleQueue()
        self._free: list[pycurl.Curl] = []
        self._done: dict[pycurl.Curl, Done] = {}
        self._sleeping = False
        self._wake_r = self._wake_w = -1
        self.in_flight = 0  # started and not yet done (read without the lock: a hint for back-pressure)

    def handle(self) -> pycurl.Curl:
        """A curl handle to prepare for :meth:`start` (a used one when there is one)."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return pycurl.Curl()

    def start(self, handle: pycurl.Curl, done: Done) -> None:
        """Run the prepared ``handle``'s exchange on the loop thread; ``done`` is called there when it ends."""
        self._ensure_running()
        with self._lock:
            self.in_flight += 1
        self._queue.put((handle, done))
        # The loop says it is about to sleep before it looks at the queue a last time, so a request put here
        # is either seen by that look or wakes the select() below.
        if self._sleeping:
            self._wake()

    def close(self) -> None:
        """Stop the loop thread (exchanges still running are abandoned: their ``done`` is not called)."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self._pid = None
        self._queue.put(None)
        self._wake()

    def _wake(self) -> None:
        # A full pipe wakes the loop anyway; a closed one (the loop stopped) has no one to wake.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # After a fork the parent's thread and handles are not ours: start afresh.
            self._pid = os.getpid()
            self._free, self._done, self.in_flight = [], {}, 0
            self._queue = queue.SimpleQueue()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            multi = pycurl.CurlMulti()
            multi.setopt(pycurl.M_MAXCONNECTS, self.max_connections)
            threading.Thread(
                target=self._run,
                args=(multi, self._queue, self._wake_r, self._wake_w),
                name="bot-transfers",
                daemon=True,
            ).start()

    def _run(self, multi: pycurl.CurlMulti, inbox: queue.SimpleQueue, wake_r: int, wake_w: int) -> None:
        try:
            while self._loop_once(multi, inbox, wake_r):
                pass
        finally:
            multi.close()
            os.close(wake_r)
            os.close(wake_w)

    def _loop_once(self, multi: pycurl.CurlMulti, inbox: queue.SimpleQueue, wake_r: int) -> bool:
        while True:
            try:
                entry = inbox.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return False
            handle, done = entry
            self._done[handle] = done
            multi.add_handle(handle)
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        self._finish_done(multi)
        read, write, error = multi.fdset()
        self._sleeping = True
        try:
            if inbox.empty():
                wait = multi.timeout()  # ms until libcurl has something to do (a timeout), -1: none
                if wait < 0:
                    timeout = 1.0 if self._done else None  # nothing in flight: sleep until woken
                else:
                    timeout = min(wait / 1000, 1.0)
                select.select([*read, wake_r], write, error, timeout)
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        finally:
            self._sleeping = False
        return True

    def _finish_done(self, multi: pycurl.CurlMulti) -> None:
        while True:
            queued, finished, failed = multi.info_read()
            for handle in finished:
                self._complete(multi, handle, None, reuse=True)
            for handle, code, text in failed:
                # A connection in an unknown state is not reused: the handle is closed.
                self._complete(multi, handle, TransportError(f"curl error {code}: {text}"), reuse=False)
            if not queued:
                return

    def _complete(
        self, multi: pycurl.CurlMulti, handle: pycurl.Curl, error: TransportError | None, *, reuse: bool
    ) -> None:
        multi.remove_handle(handle)
        done = self._done.pop(handle)
        with self._lock:
            self.in_flight -= 1
        try:
            done(handle, error)
        except Exception:
            log.exception("transfer: its completion raised")
        if reuse:
            with self._lock:
                self._free.append(handle)
        else:
            handle.close()
