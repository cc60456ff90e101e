"""HTTP exchanges in flight: one thread per client drives all of them, over keep-alive connections.

The pipeline posts most replies through this: a handler thread hands its
message's replies over and is free at once, and the replies of hundreds of
conversations are in flight together without a thread each. Blocking calls
(:meth:`Transfers.request`: the CLI, retries posted from the journal) go
through the same thread and wait for their answer.

The loop is small on purpose. It waits on the sockets with the selectors
module (epoll on Linux: no limit on descriptor numbers), writes each
request with one ``send``, reads the answer with bot/http.py's parser, and
keeps the connection for the next request to the same origin. It replaced a
libcurl (pycurl) multi loop: measured with benchmarks/cpu_per_callback.sh
(2 sync workers, alternating runs), the transfer thread spends 83-99 us of
CPU per reply instead of 128-129 us with the harness's fake answering at
once, 82-88 us instead of 153-171 us when it answers after 100 ms, and the
handler threads, which prepared libcurl's handles, 10-30 % less. libcurl
called back into Python a dozen times per exchange (socket and timer
changes, each header line), each a round of the GIL.

* Connections: per origin, reused most recent first; at most
  ``max_connections`` open (exchanges beyond wait for one). An idle
  connection that the server closes is noticed (it becomes readable) and
  dropped. A request on a reused connection that dies before any byte of
  the answer is sent once more on a new one: the server closed it as it was
  being reused (libcurl does the same).
* TLS with the default certificate checks (``ssl.create_default_context``,
  or the context given), the server's name sent and verified.
* Time limits: the connection must be up within ``connect_timeout`` and the
  whole exchange done within ``timeout``; else it fails as a
  :class:`~bot.errors.TransportError`.
* Names are resolved by the thread that starts the exchange (so a slow DNS
  answer does not hold up the loop), and kept for a minute.
* Proxies are not used: the bot connects to CometChat directly.

``done(response, error)`` is called on the loop's thread, exactly once per
exchange, unless :meth:`Transfers.close` abandons it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import socket
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import TransportError
from .http import Origin, ProtocolError, Response, ResponseParser
from .threads import current_pid, start_background

log = logging.getLogger(__name__)

Done = Callable[[Response | None, TransportError | None], None]

#: Seconds a resolved address is used before it is looked up again.
DNS_TTL = 60.0
#: Bytes read from a socket at a time.
READ_SIZE = 65536

_CONNECTING, _HANDSHAKING, _SENDING, _RECEIVING, _IDLE = range(5)


@dataclass(eq=False)
class Exchange:
    """One request to send to ``origin`` (its bytes, from bot/http.py) and what its answer is for."""

    origin: Origin
    data: bytes
    expect_body: bool = True  # False for HEAD: no body whatever the headers say
    # Set when it starts.
    done: Done | None = field(default=None, repr=False)
    addresses: list[tuple] = field(default_factory=list, repr=False)  # the origin's, from getaddrinfo
    deadline: float = 0.0
    retried: bool = False  # sent once more after a reused connection died before answering
    finished: bool = False


class Transfers:
    """The exchanges of one client: a loop thread, started in the process that first uses it (again after a fork)."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_connections = max_connections
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple]]] = {}

    @property
    def in_flight(self) -> int:
        """Exchanges started and not yet done in this process (a hint for back-pressure)."""
        loop = self._loop
        return loop.in_flight if loop is not None and loop.pid == current_pid() else 0

    def start(self, exchange: Exchange, done: Done) -> None:
        """Send ``exchange`` from the loop thread; ``done`` is called there with its answer or its failure."""
        try:
            addresses = self._resolve(exchange.origin)
        except OSError as exc:
            done(None, TransportError(f"cannot resolve {exchange.origin.host}: {exc}"))
            return
        exchange.done, exchange.addresses = done, addresses
        exchange.deadline = time.monotonic() + self.timeout
        self._running_loop().start(exchange)

    def request(self, exchange: Exchange) -> Response:
        """Send ``exchange`` and wait for its answer (from any thread but the loop's); raises TransportError."""
        loop = self._running_loop()
        if threading.current_thread() is loop.thread:
            raise RuntimeError("a blocking request from the transfer thread itself would wait for ever")
        answered = threading.Event()
        outcome: list[Response | TransportError | None] = [None]

        def done(response: Response | None, error: TransportError | None) -> None:
            outcome[0] = response if error is None else error
            answered.set()

        self.start(exchange, done)
        # The loop answers by the exchange's deadline; the margin covers a loop too busy to look at its clock.
        if not answered.wait(self.timeout + 5.0):
            raise TransportError(f"no answer within {self.timeout:g} s (the transfer thread did not answer)")
        result = outcome[0]
        if isinstance(result, TransportError):
            raise result
        assert result is not None
        return result

    def close(self) -> None:
        """Stop the loop thread (exchanges still running are abandoned: their ``done`` is not called)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == current_pid():
            loop.stop()

    def _running_loop(self) -> _Loop:
        loop = self._loop
        if loop is None or loop.pid != current_pid() or not loop.alive:  # not started, closed, failed, or forked
            with self._lock:
                loop = self._loop
                if loop is None or loop.pid != current_pid() or not loop.alive:
                    loop = self._loop = _Loop(
                        self.timeout, self.connect_timeout, self.max_connections, self.ssl_context
                    )
        return loop

    def _resolve(self, origin: Origin) -> list[tuple]:
        key = (origin.host, origin.port)
        now = time.monotonic()
        cached = self._addresses.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = socket.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        self._addresses[key] = (now + DNS_TTL, addresses)
        return addresses

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


class _Connection:
    """One socket to an origin, and the exchange it carries (if any)."""

    __slots__ = (
        "addresses",
        "connect_deadline",
        "events",
        "exchange",
        "origin",
        "out",
        "parser",
        "reused",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, origin: Origin, addresses: list[tuple]) -> None:
        self.sock = sock
        self.origin = origin
        self.state = _CONNECTING
        self.events = 0  # what the selector waits for on it (0: not registered)
        self.exchange: Exchange | None = None
        self.out = b""
        self.parser: ResponseParser | None = None
        self.reused = False
        self.addresses = addresses  # the ones left to try if this connection cannot be made
        self.connect_deadline = 0.0


class _Loop:
    """One thread, its selector, the connections, and what they share with the threads that start exchanges."""

    def __init__(
        self, timeout: float, connect_timeout: float, max_connections: int, ssl_context: Callable[[], ssl.SSLContext]
    ) -> None:
        self.pid = current_pid()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.alive = True  # False once its thread has ended (stopped, or failed: a new loop takes over)
        self._timeout, self._connect_timeout, self._max_connections = timeout, connect_timeout, max_connections
        self._ssl_context = ssl_context
        self._queue: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
        self._sleeping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The pipe is closed when nothing refers to this loop any more (its thread has ended, and no thread is
        # about to start an exchange on it): never while someone might still write to its number.
        # Not at interpreter exit: the pipeline's own exit handler still drains through this loop then.
        weakref.finalize(self, _close_all, self._wake_r, self._wake_w).atexit = False
        # Only the loop thread touches these.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0  # connections open (idle ones included)
        self._waiting: deque[Exchange] = deque()  # for a free connection
        self._deadlines: deque[Exchange] = deque()  # started in order, so their deadlines come in order
        self._connecting: deque[_Connection] = deque()  # likewise their connect deadlines
        self._active: set[_Connection] = set()  # carrying an exchange, or connecting for one
        self.thread = start_background(self._run, "bot-transfers")

    def start(self, exchange: Exchange) -> None:
        with self.lock:
            self.in_flight += 1
        self._queue.put(exchange)
        # The loop says it is about to sleep before it looks at the queue a last time, so an exchange put here
        # is either seen by that look or wakes the select() below.
        if self._sleeping:
            self._wake()

    def stop(self) -> None:
        self._queue.put(None)
        self._wake()

    def _wake(self) -> None:
        # A full pipe wakes the loop anyway; a closed one (the loop ended) has no one to wake.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        failure: TransportError | None = None
        try:
            while self._take_new():
                self._wait_and_act()
                self._expire()
        except Exception as exc:
            log.exception("transfer loop failed; its exchanges fail as transport errors, new ones get a new loop")
            failure = TransportError(f"the transfer loop failed: {exc!r}")
        finally:
            self.alive = False
            if failure is not None:
                self._fail_all(failure)
            for key in list(self._selector.get_map().values()):
                if key.data is not None:
                    _close_socket(key.data.sock)
            self._selector.close()

    def _take_new(self) -> bool:
        """Start the exchanges put since the last pass; False once asked to stop."""
        while True:
            try:
                exchange = self._queue.get_nowait()
            except queue.Empty:
                return True
            if exchange is None:
                return False
            self._deadlines.append(exchange)
            self._begin(exchange)

    def _wait_and_act(self) -> None:
        self._sleeping = True
        try:
            timeout = self._next_timeout() if self._queue.empty() else 0
            events = self._selector.select(timeout)
        finally:
            self._sleeping = False
        for key, mask in events:
            conn = key.data
            if conn is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            self._act(conn, mask)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        times = []
        while self._deadlines and self._deadlines[0].finished:
            self._deadlines.popleft()
        if self._deadlines:
            times.append(self._deadlines[0].deadline)
        while self._connecting and self._connecting[0].state != _CONNECTING:
            self._connecting.popleft()
        if self._connecting:
            times.append(self._connecting[0].connect_deadline)
        return max(0.0, min(times) - now) if times else None

    def _expire(self) -> None:
        now = time.monotonic()
        connecting = self._connecting
        while connecting and (connecting[0].state != _CONNECTING or connecting[0].connect_deadline <= now):
            conn = connecting.popleft()
            if conn.state == _CONNECTING:
                host, limit = conn.origin.host, self._connect_timeout
                self._fail(conn, TransportError(f"no connection to {host} within {limit:g} s (timed out)"))
        while self._deadlines and (self._deadlines[0].finished or self._deadlines[0].deadline <= now):
            exchange = self._deadlines.popleft()
            if exchange.finished:
                continue
            error = TransportError(f"no answer from {exchange.origin.host} within {self._timeout:g} s (timed out)")
            conn = next((c for c in self._active if c.exchange is exchange), None)  # (a timeout is rare)
            if conn is not None:
                self._fail(conn, error)
            else:  # still waiting for a free connection
                self._waiting.remove(exchange)
                self._report(exchange, None, error)

    # ------------------------------------------------------------ exchanges and connections

    def _begin(self, exchange: Exchange) -> None:
        """Send ``exchange`` on an idle connection to its origin, or on a new one (when one may be opened)."""
        idle = self._idle.get(exchange.origin)
        if idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
            self._active.add(conn)
            conn.reused = True
            self._carry(conn, exchange)
            return
        if self._open >= self._max_connections and not self._close_an_idle_connection():
            self._waiting.append(exchange)
            return
        self._connect(exchange, list(exchange.addresses))

    def _close_an_idle_connection(self) -> bool:
        for idle in self._idle.values():
            if idle:
                self._close(idle.pop(0))  # the least recently used of an origin
                return True
        return False

    def _connect(self, exchange: Exchange, addresses: list[tuple]) -> None:
        family, kind, proto, _, address = addresses.pop(0)
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self._report(exchange, None, TransportError(f"cannot open a socket: {exc}"))
            return
        sock.setblocking(False)
        conn = _Connection(sock, exchange.origin, addresses)
        conn.exchange = exchange
        conn.connect_deadline = time.monotonic() + self._connect_timeout
        self._open += 1
        self._active.add(conn)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._connection_failed(conn, OSError(code, os.strerror(code)))
            return
        self._connecting.append(conn)
        self._set_events(conn, selectors.EVENT_WRITE)

    def _carry(self, conn: _Connection, exchange: Exchange) -> None:
        """Put ``exchange`` on a connection that is ready for it (idle, or just connected), and send it."""
        conn.exchange = exchange
        conn.parser = ResponseParser(expect_body=exchange.expect_body)
        conn.out = exchange.data
        conn.state = _SENDING
        self._send(conn)

    def _act(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.state == _CONNECTING:
                error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self._connection_failed(conn, OSError(error, os.strerror(error)))
                elif conn.origin.scheme == "https":
                    self._start_tls(conn)
                else:
                    self._connected(conn)
            elif conn.state == _HANDSHAKING:
                self._handshake(conn)
            elif conn.state == _SENDING:
                self._send(conn)
            elif conn.state == _RECEIVING:
                self._receive(conn)
            else:  # idle: the server closed it, or sent what nobody asked for
                self._drop_idle(conn)
        except (OSError, ProtocolError) as exc:
            self._broken(conn, exc)

    def _connected(self, conn: _Connection) -> None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange = conn.exchange
        assert exchange is not None
        self._carry(conn, exchange)

    def _start_tls(self, conn: _Connection) -> None:
        self._selector.unregister(conn.sock)  # the wrapped socket takes the plain one's place (and descriptor)
        conn.events = 0
        conn.sock = self._ssl_context().wrap_socket(
            conn.sock, server_hostname=conn.origin.host, do_handshake_on_connect=False
        )
        conn.state = _HANDSHAKING
        self._handshake(conn)

    def _handshake(self, conn: _Connection) -> None:
        try:
            conn.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._set_events(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(conn, selectors.EVENT_WRITE)
            return
        self._connected(conn)

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        except ssl.SSLWantReadError:
            self._set_events(conn, selectors.EVENT_READ)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._set_events(conn, selectors.EVENT_WRITE)
        else:
            conn.state = _RECEIVING
            self._set_events(conn, selectors.EVENT_READ)

    def _set_events(self, conn: _Connection, events: int) -> None:
        if conn.events == events:
            return  # the common case: a kept connection waits for its answer as it waited while idle
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _receive(self, conn: _Connection) -> None:
        parser = conn.parser
        assert parser is not None
        while True:
            try:
                data = conn.sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._set_events(conn, selectors.EVENT_WRITE)
                return
            if not data:  # the server closed: the answer ends here if its body was delimited so (else eof raises)
                self._answered(conn, parser.eof())
                return
            response = parser.feed(data)
            if response is not None:
                self._answered(conn, response)
                return
            if len(data) < READ_SIZE and not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                return  # what the kernel had is read; the rest comes with the next readable event

    def _answered(self, conn: _Connection, response: Response) -> None:
        exchange = conn.exchange
        assert exchange is not None
        conn.exchange = conn.parser = None
        conn.out = b""
        self._active.discard(conn)
        if response.keep_alive:
            conn.state = _IDLE
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            self._close(conn)
        self._report(exchange, response, None)
        self._next_waiting()

    def _broken(self, conn: _Connection, exc: Exception) -> None:
        """A connection failed while carrying an exchange (or while idle)."""
        if conn.state == _IDLE:
            self._drop_idle(conn)
            return
        exchange = conn.exchange
        stale = conn.reused and conn.parser is not None and not conn.parser.started
        if exchange is not None and stale and not exchange.retried and isinstance(exc, OSError | ProtocolError):
            # A kept connection the server had closed as it was reused: once more on a new one.
            exchange.retried = True
            conn.exchange = None
            self._close(conn)
            self._begin(exchange)
            return
        self._fail(conn, TransportError(_describe(exc, conn.origin)))

    def _connection_failed(self, conn: _Connection, exc: OSError) -> None:
        """The connection could not be made: the next address, if one is left, else the exchange fails."""
        exchange = conn.exchange
        if exchange is not None and conn.addresses:
            addresses = conn.addresses
            conn.exchange = None
            self._close(conn)
            self._connect(exchange, addresses)
            return
        self._fail(conn, TransportError(_describe(exc, conn.origin)))

    def _fail(self, conn: _Connection, error: TransportError) -> None:
        if conn.state == _RECEIVING:  # the request went out in full: the server may have carried it out
            error.in_doubt = True
        exchange = conn.exchange
        conn.exchange = None
        self._close(conn)
        if exchange is not None:
            self._report(exchange, None, error)
        self._next_waiting()

    def _drop_idle(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin, [])
        if conn in idle:
            idle.remove(conn)
        self._close(conn)
        self._next_waiting()

    def _close(self, conn: _Connection) -> None:
        self._active.discard(conn)
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0
        if conn.state != -1:
            self._open -= 1
            conn.state = -1
        _close_socket(conn.sock)

    def _next_waiting(self) -> None:
        """Start what waits for a connection, now that one is free (or idle again) or may be opened."""
        while self._waiting:
            full = not self._idle.get(self._waiting[0].origin) and self._open >= self._max_connections
            if full and not self._close_an_idle_connection():  # (one kept for another origin makes room)
                return
            self._begin(self._waiting.popleft())

    def _report(self, exchange: Exchange, response: Response | None, error: TransportError | None) -> None:
        """An exchange is over: it leaves the in-flight count and its ``done`` is told (what that raises is logged)."""
        if exchange.finished:
            return
        exchange.finished = True
        with self.lock:
            self.in_flight -= 1
        done = exchange.done
        assert done is not None
        try:
            done(response, error)
        except Exception:
            log.exception("transfer: its completion raised")

    def _fail_all(self, failure: TransportError) -> None:
        """Tell every exchange of a failed loop, started or still queued, that it failed (so it is retried)."""
        pending = [conn.exchange for conn in list(self._active) if conn.exchange is not None]
        pending += self._waiting
        while True:
            try:
                exchange = self._queue.get_nowait()
            except queue.Empty:
                break
            if exchange is not None:
                pending.append(exchange)
        for exchange in pending:
            self._report(exchange, None, failure)


def _describe(exc: Exception, origin: Origin) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {origin.host} failed: {exc}"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return f"connection to {origin.host}:{origin.port} refused"
    return f"connection to {origin.host}:{origin.port} failed: {exc}"


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
