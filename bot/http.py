"""HTTP/1.1 messages for CometChat's REST API, without I/O: the request's bytes, and a parser of the answer.

The transfer thread (bot/transfers.py) owns the sockets; this module only
turns a request into the bytes to send and the bytes received into a
:class:`Response`. What it covers is what a JSON REST API needs: one
request at a time per connection (no pipelining), bodies delimited by
``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the
connection, interim ``1xx`` answers skipped, keep-alive unless either side
says ``close``. Bodies are not compressed (no ``Accept-Encoding`` is sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: Past these sizes an answer is refused rather than buffered (CometChat's answers are a few KB).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 answer we can read."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port, as a connection pool keys them."""

    scheme: str  # "http" or "https"
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else f"{host}:{self.port}"


def split_base_url(url: str) -> tuple[Origin, str]:
    """``https://app.api-eu.cometchat.io/v3`` -> (its origin, the path prefix ``/v3``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"a base URL has no query, fragment or credentials: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname, port), parts.path.rstrip("/")


def request_bytes(method: str, target: str, origin: Origin, head: bytes, body: bytes | None) -> bytes:
    """One request as sent: the request line, ``Host``, the caller's header lines (``head``: each ending in
    CRLF, already encoded), ``Content-Length`` unless ``body`` is None (a GET), and the body."""
    if body is None:
        return f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n".encode() + head + b"\r\n"
    start = f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Length: {len(body)}\r\n"
    return start.encode() + head + b"\r\n" + body


def header_lines(headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Header lines for :func:`request_bytes` (values are sent as UTF-8; CR and LF are refused)."""
    items = headers.items() if isinstance(headers, dict) else headers
    lines = []
    for name, value in items:
        if any(c in f"{name}{value}" for c in "\r\n") or not name or ":" in name:
            raise ValueError(f"not a header: {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode()


@dataclass
class Response:
    """A final answer: its status, its header lines (raw, and by lower-case name) and its body."""

    status: int
    head: bytes  # the header lines after the status line, as received
    body: bytes
    keep_alive: bool
    _headers: dict[str, str] | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """Header values by lower-case name (the last one of a repeated header)."""
        if self._headers is None:
            self._headers = _parse_headers(self.head)
        return self._headers


def _parse_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers


class ResponseParser:
    """Reads one answer from the bytes a connection receives: :meth:`feed` them as they come, :meth:`eof` when
    the server closed; either returns the :class:`Response` once it is complete (and None until then).

    ``expect_body=False`` for a request whose answer has none whatever its headers say (HEAD).
    """

    def __init__(self, *, expect_body: bool = True) -> None:
        self._buffer = bytearray()
        self._expect_body = expect_body
        self._status = 0
        self._head = b""
        self._keep_alive = True
        self._length: int | None = None  # the body's length; None: until the connection closes
        self._chunked = False
        self._body = bytearray()
        self._headers: dict[str, str] = {}
        self._in_body = False
        self._chunk_left = -1  # -1: a chunk-size line is next; -2: the trailer is next
        self.started = False  # a byte of the answer arrived (a connection that fails before may be retried)

    def feed(self, data: bytes) -> Response | None:
        if data:
            self.started = True
            self._buffer += data
        while not self._in_body:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ProtocolError(f"no end of the answer's headers in {MAX_HEAD} bytes")
                return None
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._start(block)
        return self._read_body()

    def eof(self) -> Response | None:
        """The server closed the connection: the answer, if it was delimited by the close; else an error."""
        if self._in_body and self._length is None and not self._chunked:
            self._body += self._buffer
            self._buffer.clear()
            return self._response()
        what = "in the middle of the answer" if self.started else "before answering"
        raise ProtocolError(f"the server closed the connection {what}")

    def _start(self, block: bytes) -> None:
        status_line, _, head = block.partition(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            return  # an interim answer ("100 Continue", "103 Early Hints"): the final one follows
        self._status, self._head, self._in_body = status, head, True
        self._headers = headers = _parse_headers(head) if head else {}
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (version == b"HTTP/1.1" or "keep-alive" in connection)
        if not self._expect_body or status in (204, 304):
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"Content-Length {headers['content-length']!r} is not a number") from None
            if not 0 <= self._length <= MAX_BODY:
                raise ProtocolError(f"Content-Length {self._length} is out of range")
        else:
            self._keep_alive = False  # the body ends when the connection does

    def _read_body(self) -> Response | None:
        if self._chunked:
            return self._read_chunks()
        if self._length is None:
            if len(self._body) + len(self._buffer) > MAX_BODY:
                raise ProtocolError(f"an answer of more than {MAX_BODY} bytes")
            self._body += self._buffer
            self._buffer.clear()
            return None
        if len(self._buffer) < self._length:
            return None
        self._body = self._buffer[: self._length]
        if len(self._buffer) > self._length:
            raise ProtocolError("bytes after the answer's body (pipelining is not used)")
        self._buffer = bytearray()
        return self._response()

    def _read_chunks(self) -> Response | None:
        while True:
            if self._chunk_left >= 0:
                if len(self._buffer) < self._chunk_left + 2:
                    return None
                if self._buffer[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                    raise ProtocolError("a chunk does not end with CRLF")
                self._body += self._buffer[: self._chunk_left]
                del self._buffer[: self._chunk_left + 2]
                self._chunk_left = -1
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ProtocolError("a chunk-size line too long")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            if self._chunk_left == -2:  # the trailer: header lines up to an empty one
                if not line:
                    if self._buffer:
                        raise ProtocolError("bytes after the answer's body (pipelining is not used)")
                    return self._response()
                continue
            size_text = line.split(b";", 1)[0].strip()
            # Hex digits only: int() would also take a sign, "0x" and underscores ("-5" looped on the next line).
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                raise ProtocolError(f"not a chunk size: {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                self._chunk_left = -2
            elif len(self._body) + size > MAX_BODY:
                raise ProtocolError(f"an answer of more than {MAX_BODY} bytes")
            else:
                self._chunk_left = size

    def _response(self) -> Response:
        return Response(self._status, self._head, bytes(self._body), self._keep_alive, self._headers)
