"""Where HTTP/1 requests are parsed (the decoding half of Envoy's Http1::ServerConnectionImpl):
httptools' callbacks for `http1.server_codec.HttpConnection`, each request an `ActiveStream`.

Promises:
- Request heads are bounded as they arrive: over max_request_headers_kb (counted per header,
  and per read for a head not finished) → 431, over max_headers_count → 431, an underscore
  under REJECT_REQUEST → 400 (DROP_HEADER drops it), a transfer-encoding other than chunked →
  501, HTTP/1.0 unless accepted → 426, what `header_validation.h1_request_problem` refuses (a
  version other than 1.0 / 1.1, a Host with invalid characters, ...) (`Reject`, answered by
  the connection).
- An h2c upgrade is dropped as Envoy's HTTP/1 codec drops it: the request goes on as a plain
  one. Any other upgrade ends what can follow on the connection.
- A request whose turn has come starts at once (`_start`); a pipelined one waits in order,
  reading paused (PAUSE_PIPELINE).
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

from pysidecar.proxy.http.active_stream import ActiveStream
from pysidecar.proxy.http.header_validation import h1_request_problem
from pysidecar.proxy.http.http1.response_encoder import Http1ResponseEncoder

# Why reading from the client is paused; reading resumes when no reason is left.
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_BODY = 1, 2, 4


class Reject(Exception):
    """Raised from a parser callback to answer the request head with a codec error: 431 when
    it passes max_request_headers_kb or max_headers_count, 501 for a transfer-encoding other
    than chunked; `details` is Envoy's response code details."""

    def __init__(self, status: int = 431, details: str = "http1.headers_too_large") -> None:
        super().__init__(details)
        self.status = status
        self.details = details


class Http1RequestDecoder(Http1ResponseEncoder):
    """httptools' request callbacks and the request parsing state (HttpConnection's base)."""

    __slots__ = (
        "active",
        "h2c",
        "head_raw",
        "head_size",
        "head_started",
        "headers_timer",
        "in_head",
        "parser",
        "parsing",
        "queue",
    )
    active: ActiveStream | None  # the stream being answered
    parsing: ActiveStream | None  # the stream whose request is being read
    queue: deque[ActiveStream]  # pipelined streams, in order
    parser: httptools.HttpRequestParser
    headers_timer: asyncio.TimerHandle | None
    head_size: int
    in_head: bool  # between on_message_begin and on_headers_complete
    h2c: bool  # the request parsed last was an h2c upgrade, proxied as a plain one
    head_raw: int  # bytes of the head in progress read after the read it began in
    head_started: float  # loop time the request head in progress began; 0: none

    # The connection's (http1.server_codec.HttpConnection).
    def new_stream(self) -> ActiveStream:
        raise NotImplementedError

    def _start(self, st: ActiveStream) -> None:
        raise NotImplementedError

    def _on_headers_timeout(self) -> None:
        raise NotImplementedError

    def _protocol_error(self, status: int, details: str) -> None:
        raise NotImplementedError

    def pause_reading(self, reason: int = PAUSE_UPSTREAM) -> None:
        raise NotImplementedError

    def on_message_begin(self) -> None:
        st = self.new_stream()
        self.describe(st.info)
        self.parsing = st
        self.head_size = 0
        self.in_head = True
        self.head_raw = -1  # this read is not counted: part of it may be an earlier request's
        timeout = self.cfg.config.request_headers_timeout
        if timeout > 0:
            # One lazy timer per connection, not a timer per request: it checks the deadline of
            # the head in progress when it fires (see _on_headers_timeout).
            self.head_started = self.loop.time()
            if self.headers_timer is None:
                self.headers_timer = self.loop.call_later(timeout, self._on_headers_timeout)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        st = self.parsing
        assert st is not None
        st.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called per header: _count_head inlined.
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.cfg.header_limit:
            raise Reject()
        headers = self.parsing.headers  # type: ignore[union-attr]
        name = name.lower()
        if self.cfg.underscores and b"_" in name:
            if self.cfg.underscores == 1:
                raise Reject(400, "http1.unexpected_underscore")
            return  # DROP_HEADER
        headers.append((name, value))
        if len(headers) > self.cfg.header_count_limit:  # Envoy's max_headers_count (Host counts)
            raise Reject(431, "http1.too_many_headers")
        # Envoy implements no transfer coding but chunked (llhttp would take `gzip, chunked`
        # as chunked and drop the gzip).
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise Reject(501, "http1.invalid_transfer_encoding")

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        self.in_head = False
        st = self.parsing
        assert st is not None
        p = self.parser
        st.method = p.get_method()
        st.http10 = p.get_http_version() == "1.0"
        st.keep_alive = p.should_keep_alive()
        st.upgrade = p.should_upgrade()
        if st.upgrade and _upgrade_value(st.headers) == b"h2c":
            # Envoy's HTTP/1 codec drops an h2c upgrade (Upgrade, HTTP2-Settings; Connection
            # names the latter, so it goes too): the request is proxied as a plain one.
            st.upgrade = False
            self.h2c = True
            st.headers = [h for h in st.headers if h[0] not in (b"upgrade", b"http2-settings")]
        st.head_request = st.method == b"HEAD"
        refused = h1_request_problem(st.method, st.url, p.get_http_version(), st.headers)
        if refused is not None:
            raise Reject(*refused)
        if st.http10 and not self.cfg.config.accept_http_10:
            raise Reject(426, "http1.low_version")  # Envoy's default: no HTTP/1.0
        if st.upgrade:
            st.close_after = True  # the parser stops at an upgrade: nothing follows on it
        s = self.stats
        s.downstream_rq_total += 1
        s.downstream_rq_http1_total += 1
        s.downstream_rq_active += 1
        if self.active is None:
            self.active = st
            self._start(st)
        else:
            self.queue.append(st)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        st = self.parsing
        if st is not None and body:
            st.decode_body(body)

    def on_message_complete(self) -> None:
        st = self.parsing
        self.parsing = None
        if st is not None:
            st.decode_complete()

    def _count_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > self.cfg.header_limit:
            raise Reject()

    def _count_unfinished_head(self, n: int) -> None:
        """A read ended inside a request head. httptools keeps an unfinished header line to
        itself (on_header sees only whole lines), so a header without its CRLF would be held
        until the headers timeout: count whole reads instead, after the one the head began in
        (bounded by one read; that one may hold the end of the request before)."""
        if self.head_raw < 0:
            self.head_raw = 0
            return
        self.head_raw += n
        if self.head_raw > self.cfg.header_limit:
            self._protocol_error(431, "http1.headers_too_large")


def _upgrade_value(headers: list[tuple[bytes, bytes]]) -> bytes:
    for n, v in headers:
        if n == b"upgrade":
            return v.strip().lower()
    return b""
