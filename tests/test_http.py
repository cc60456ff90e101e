"""bot/http.py: requests as bytes, and answers read from bytes however they arrive."""

from __future__ import annotations

import pytest

from bot.http import MAX_BODY, Origin, ProtocolError, ResponseParser, header_lines, request_bytes, split_base_url

OK_JSON = b'{"data": {"id": "7"}}'


def feed_in_pieces(parser: ResponseParser, data: bytes, size: int):
    """Feed ``data`` ``size`` bytes at a time; the response, and how many pieces it took."""
    response = None
    pieces = [data[at : at + size] for at in range(0, len(data), size)]
    for n, piece in enumerate(pieces, 1):
        response = parser.feed(piece)
        if response is not None:
            assert n == len(pieces), "complete before its last byte"
    return response


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("url", "origin", "prefix"),
    [
        ("https://app.api-eu.cometchat.io/v3", Origin("https", "app.api-eu.cometchat.io", 443), "/v3"),
        ("https://app.api-eu.cometchat.io/v3/", Origin("https", "app.api-eu.cometchat.io", 443), "/v3"),
        ("http://127.0.0.1:18080/v3", Origin("http", "127.0.0.1", 18080), "/v3"),
        ("http://[::1]:8080", Origin("http", "::1", 8080), ""),
    ],
)
def test_a_base_url_splits_into_origin_and_prefix(url, origin, prefix):
    assert split_base_url(url) == (origin, prefix)


@pytest.mark.parametrize("url", ["ftp://x/v3", "https:///v3", "https://x/v3?a=1", "https://u:p@x/v3", "x/v3"])
def test_other_urls_are_refused(url):
    with pytest.raises(ValueError):
        split_base_url(url)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (Origin("https", "x.io", 443), "x.io"),
        (Origin("http", "x.io", 80), "x.io"),
        (Origin("http", "127.0.0.1", 18080), "127.0.0.1:18080"),
        (Origin("https", "::1", 8443), "[::1]:8443"),
    ],
)
def test_the_host_header_names_a_port_only_when_it_is_not_the_default(origin, host):
    assert origin.host_header == host


def test_a_post_is_the_request_line_host_length_headers_and_body():
    head = header_lines([("apikey", "k"), ("Content-Type", "application/json")])
    data = request_bytes("POST", "/v3/bots/b/messages", Origin("https", "a.io", 443), head, b'{"x":1}')
    assert data == (
        b"POST /v3/bots/b/messages HTTP/1.1\r\nHost: a.io\r\nContent-Length: 7\r\n"
        b"apikey: k\r\nContent-Type: application/json\r\n\r\n"
        b'{"x":1}'
    )


def test_a_get_has_no_length_and_no_body():
    data = request_bytes("GET", "/v3/bots/b", Origin("http", "a.io", 80), b"apikey: k\r\n", None)
    assert data == b"GET /v3/bots/b HTTP/1.1\r\nHost: a.io\r\napikey: k\r\n\r\n"


def test_header_values_are_utf8_and_cannot_smuggle_lines():
    assert header_lines({"onBehalfOf": "zoë"}) == "onBehalfOf: zoë\r\n".encode()
    for name, value in [("X", "a\r\nInjected: 1"), ("X\n", "a"), ("", "a"), ("A:B", "c")]:
        with pytest.raises(ValueError):
            header_lines({name: value})


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize("size", [1, 7, 100_000], ids=["byte-by-byte", "7-bytes", "at-once"])
def test_a_content_length_answer_is_complete_with_its_last_byte(size):
    data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(OK_JSON),
        OK_JSON,
    )
    response = feed_in_pieces(ResponseParser(), data, size)
    assert (response.status, response.body, response.keep_alive) == (200, OK_JSON, True)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("size", [1, 5, 100_000], ids=["byte-by-byte", "5-bytes", "at-once"])
def test_a_chunked_answer_is_put_together(size):
    data = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"dat\r\n10\r\na": {"id": "7"}}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    response = feed_in_pieces(ResponseParser(), data, size)
    assert (response.status, response.body, response.keep_alive) == (201, OK_JSON, True)


def test_interim_answers_are_skipped_with_their_headers():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 100 Continue\r\nRetry-After: 99\r\n\r\n") is None
    response = parser.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
    assert response.status == 503 and "retry-after" not in response.headers


@pytest.mark.parametrize("status", [204, 304])
def test_a_status_without_a_body_is_complete_after_its_headers(status):
    response = ResponseParser().feed(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert response.status == status and response.body == b""


def test_the_answer_to_a_head_has_no_body():
    response = ResponseParser(expect_body=False).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert response.body == b""


def test_an_answer_delimited_by_the_close_ends_with_it():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\n" + OK_JSON[:5]) is None
    assert parser.feed(OK_JSON[5:]) is None
    response = parser.eof()
    assert response.body == OK_JSON and not response.keep_alive


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n", False),
        (b"HTTP/1.0 200 OK\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", True),
    ],
)
def test_the_connection_is_kept_unless_a_side_says_otherwise(head, keep_alive):
    response = ResponseParser().feed(head + b"Content-Length: 2\r\n\r\n{}")
    assert response.keep_alive is keep_alive


def test_repeated_and_odd_headers_are_read_leniently():
    response = ResponseParser().feed(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nretry-after:  15 \r\nX-Binary: \xff\xe9\r\n"
        b": nameless\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n"
    )
    assert response.headers["retry-after"] == "15"  # the last one
    assert response.headers["x-empty"] == "" and response.headers["x-binary"] == "\xff\xe9"
    assert "" not in response.headers


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 abc\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "out of range"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), "out of range"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra", "after the answer"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"x" * (70 * 1024), "headers"),
    ],
    ids=["not-http", "bad-status", "bad-length", "negative-length", "huge-length", "bad-chunk", "signed-chunk",
         "prefixed-chunk", "empty-chunk-size", "chunk-end", "extra-bytes", "endless-headers"],
)  # fmt: skip
def test_what_is_not_an_answer_is_a_protocol_error(data, words):
    with pytest.raises(ProtocolError, match=words):
        ResponseParser().feed(data)


@pytest.mark.parametrize(
    ("received", "words"),
    [(b"", "before answering"), (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "middle")],
)
def test_a_close_before_the_answer_is_complete_is_a_protocol_error(received, words):
    parser = ResponseParser()
    parser.feed(received)
    assert parser.started is bool(received)  # a connection that failed before any byte may be retried
    with pytest.raises(ProtocolError, match=words):
        parser.eof()
