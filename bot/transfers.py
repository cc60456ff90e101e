"""HTTP exchanges in flight: one thread drives all of a client's exchanges over one libcurl multi handle.

The pipeline posts most replies through this: a handler thread hands its
message's replies over and is free at once, and the replies of hundreds of
conversations are in flight together without a thread each. Measured with
the benchmark harness (benchmarks/RESULTS.md), this cut the CPU cost of a
callback by about a sixth in gunicorn's gthread mode: a thread blocked in
each request meant dozens of threads per process contending for the GIL.

:meth:`Transfers.start` takes a prepared ``pycurl.Curl`` and a function
called, on the loop's thread, with the handle and ``None`` once the exchange
is done, or with a :class:`~bot.errors.TransportError` if none happened. The
handle goes back to :meth:`Transfers.handle` for reuse; libcurl keeps the
keep-alive connections in the multi handle's pool, shared by all handles.

The loop waits with ``poll()`` on the sockets libcurl names through its
socket callback (``socket_action``), not with ``select()`` on
``multi.fdset()``: those cannot see descriptors above 1024, which a busy
gunicorn worker reaches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
import weakref
from collections.abc import Callable

import pycurl

from .errors import TransportError
from .threads import current_pid, start_background

log = logging.getLogger(__name__)

Done = Callable[[pycurl.Curl, TransportError | None], None]

_POLL_EVENTS = {
    pycurl.POLL_IN: select.POLLIN,
    pycurl.POLL_OUT: select.POLLOUT,
    pycurl.POLL_INOUT: select.POLLIN | select.POLLOUT,
}


class Transfers:
    """A curl multi handle and the thread that drives it, started in the process that first uses it."""

    def __init__(self, *, max_connections: int = 256) -> None:
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._loop: _Loop | None = None

    @property
    def in_flight(self) -> int:
        """Exchanges started and not yet done in this process (a hint for back-pressure)."""
        loop = self._loop
        return loop.in_flight if loop is not None and loop.pid == current_pid() else 0

    def handle(self) -> pycurl.Curl:
        """A curl handle to prepare for :meth:`start` (a used one when there is one)."""
        loop = self._loop
        if loop is not None and loop.pid == current_pid():
            with loop.lock:
                if loop.free:
                    return loop.free.pop()
        return pycurl.Curl()

    def start(self, handle: pycurl.Curl, done: Done) -> None:
        """Run the prepared ``handle``'s exchange on the loop thread; ``done`` is called there when it ends."""
        loop = self._loop
        if loop is None or loop.pid != current_pid() or not loop.alive:  # not started, closed, failed, or forked
            with self._lock:
                loop = self._loop
                if loop is None or loop.pid != current_pid() or not loop.alive:
                    loop = self._loop = _Loop(self.max_connections)
        loop.start(handle, done)

    def close(self) -> None:
        """Stop the loop thread (exchanges still running are abandoned: their ``done`` is not called)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == current_pid():
            loop.stop()


class _Loop:
    """One thread, one multi handle, and what they share with the threads that start exchanges."""

    def __init__(self, max_connections: int) -> None:
        self.pid = current_pid()
        self.lock = threading.Lock()
        self.free: list[pycurl.Curl] = []  # handles done with, for reuse
        self.in_flight = 0
        self.alive = True  # False once its thread has ended (stopped, or failed: a new loop takes over)
        self._queue: queue.SimpleQueue[tuple[pycurl.Curl, Done] | None] = queue.SimpleQueue()
        self._sleeping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The pipe is closed when nothing refers to this loop any more (its thread has ended, and no thread is
        # about to start an exchange on it): never while someone might still write to its number.
        # Not at interpreter exit: the pipeline's own exit handler still drains through this loop then.
        weakref.finalize(self, _close_all, self._wake_r, self._wake_w).atexit = False
        # Only the loop thread touches these.
        self._done: dict[pycurl.Curl, Done] = {}
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._timer_at: float | None = None  # when libcurl wants socket_action(SOCKET_TIMEOUT) called
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        start_background(self._run, "bot-transfers")

    def start(self, handle: pycurl.Curl, done: Done) -> None:
        with self.lock:
            self.in_flight += 1
        self._queue.put((handle, done))
        # The loop says it is about to sleep before it looks at the queue a last time, so a request put here
        # is either seen by that look or wakes the poll() below.
        if self._sleeping:
            self._wake()

    def stop(self) -> None:
        self._queue.put(None)
        self._wake()

    def _wake(self) -> None:
        # A full pipe wakes the loop anyway; a closed one (the loop ended) has no one to wake.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    # ------------------------------------------------------------ libcurl's callbacks (on the loop thread)

    def _on_socket(self, what: int, fd: int, multi: pycurl.CurlMulti, socketp: object) -> None:
        if what == pycurl.POLL_REMOVE:
            with contextlib.suppress(KeyError):
                self._poll.unregister(fd)
        else:
            self._poll.register(fd, _POLL_EVENTS[what])  # registers, or changes the events of, ``fd``

    def _on_timer(self, timeout_ms: int) -> None:
        self._timer_at = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        failure: TransportError | None = None
        try:
            while self._take_new():
                self._wait_and_act()
                self._finish_done()
        except Exception as exc:
            log.exception("transfer loop failed; its exchanges fail as transport errors, new ones get a new loop")
            failure = TransportError(f"the transfer loop failed: {exc!r}")
        finally:
            self.alive = False
            if failure is not None:
                self._fail_all(failure)
            for handle in list(self._done):
                self._multi.remove_handle(handle)
                handle.close()
            self._multi.close()
            with self.lock:
                for handle in self.free:
                    handle.close()
                self.free.clear()

    def _fail_all(self, failure: TransportError) -> None:
        """Tell every exchange of a failed loop, started or still queued, that it failed (so it is retried)."""
        waiting = list(self._done.items())
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                waiting.append(entry)
        for handle, done in waiting:
            self._report(handle, done, failure)

    def _take_new(self) -> bool:
        """Add the exchanges started since the last pass; False once asked to stop."""
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return True
            if entry is None:
                return False
            handle, done = entry
            self._done[handle] = done
            self._multi.add_handle(handle)  # libcurl sets a timer at once: the next pass starts it

    def _wait_and_act(self) -> None:
        self._sleeping = True
        try:
            if self._queue.empty():
                timeout = None
                if self._timer_at is not None:
                    timeout = max(0, int((self._timer_at - time.monotonic()) * 1000 + 0.999))
                events = self._poll.poll(timeout)
            else:
                events = self._poll.poll(0)
        finally:
            self._sleeping = False
        for fd, event in events:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            mask = 0
            if event & (select.POLLIN | select.POLLHUP):
                mask |= pycurl.CSELECT_IN
            if event & select.POLLOUT:
                mask |= pycurl.CSELECT_OUT
            if event & (select.POLLERR | select.POLLNVAL):
                mask |= pycurl.CSELECT_ERR
            self._socket_action(fd, mask)
        if self._timer_at is not None and time.monotonic() >= self._timer_at:
            self._timer_at = None
            self._socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _socket_action(self, fd: int, mask: int) -> None:
        while self._multi.socket_action(fd, mask)[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _finish_done(self) -> None:
        while True:
            queued, finished, failed = self._multi.info_read()
            for handle in finished:
                self._complete(handle, None, reuse=True)
            for handle, code, text in failed:
                # A connection in an unknown state is not reused: the handle is closed.
                self._complete(handle, TransportError(f"curl error {code}: {text}"), reuse=False)
            if not queued:
                return

    def _complete(self, handle: pycurl.Curl, error: TransportError | None, *, reuse: bool) -> None:
        self._multi.remove_handle(handle)
        self._report(handle, self._done.pop(handle), error)
        if reuse:
            with self.lock:
                self.free.append(handle)
        else:
            handle.close()

    def _report(self, handle: pycurl.Curl, done: Done, error: TransportError | None) -> None:
        """An exchange is over: it leaves the in-flight count and its ``done`` is told (what that raises is logged)."""
        with self.lock:
            self.in_flight -= 1
        try:
            done(handle, error)
        except Exception:
            log.exception("transfer: its completion raised")


def _close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
