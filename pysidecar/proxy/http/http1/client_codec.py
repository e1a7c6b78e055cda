"""The HTTP/1.1 upstream codec (Envoy's Http1::ClientConnectionImpl with its CodecClient): one
connection to an upstream host, carrying one request at a time for its pool.

Promises:
- It implements `codec.UpstreamCodec`: `encode_headers` writes the request head with what is
  buffered of the body in one write (chunk-framed when the request is chunked), never a head
  that could frame a second request (`header_validation.upstream_head_problem`: refused),
  `encode_data` / `encode_end` the rest; read-disable is `pause_reading` / `resume_reading`.
- It parses responses with httptools and reports each event to the one attempt attached to it
  (`codec.ResponseDecoder`); it never buffers a body. A response Envoy's codec refuses is a
  protocol error (502 UPE before the response, a reset flagged UPE after): garbage, a bad
  status line, content-length or chunk size, CL with TE, a transfer-encoding other than
  chunked, headers over 80 KiB or 100 (Envoy 1.40's limits, an endless header included), a
  close inside a head or before a framed body's end. A response to HEAD ends with its head;
  a 101 turns the connection into a byte tunnel; a response without length or chunking ends
  at the upstream's close.
- It goes back to its pool only after a complete response that allowed keep-alive to a
  completely written request; anything else closes it. Every response status and every reset
  before a response is reported to the cluster's outlier detector (failures as 503).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from pysidecar.proxy.http.header_validation import upstream_head_problem
from pysidecar.proxy.http.http1.wire import CHUNK_END, CRLF, encode_request_head
from pysidecar.proxy.http.retry import CONNECTION_TERMINATION, PROTOCOL_ERROR
from pysidecar.proxy.peer_tls import uri_san

if TYPE_CHECKING:
    from pysidecar.proxy.http.codec import UpstreamAttempt
    from pysidecar.proxy.http.headers import Headers
    from pysidecar.proxy.http.http1.conn_pool import HostPool


class _HeadDone(Exception):
    """Raised from on_headers_complete to stop the parser after a response to HEAD."""


class _Malformed(Exception):
    """Raised from a parser callback: a response head Envoy's codec refuses (over its size or
    count limits, a transfer-encoding other than chunked): a protocol error."""


# Envoy 1.40's limits on an upstream response head (measured: 79 KiB of headers pass, 81 KiB
# are 502 UPE; 100 headers pass, 101 do not).
MAX_RESPONSE_HEADERS_BYTES = 80 * 1024
MAX_RESPONSE_HEADERS_COUNT = 100


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "born",
        "chunked",
        "closed",
        "counted",
        "cx_open",
        "head_keep_alive",
        "head_raw",
        "head_request",
        "head_size",
        "headers",
        "idle_since",
        "idle_timer",
        "in_head",
        "informational",
        "local_address",
        "parser",
        "peer_uri",
        "peer_uri_of",
        "pending",
        "pool",
        "request_done",
        "requests",
        "response_started",
        "stream",
        "transport",
        "upgraded",
    )

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.stream: UpstreamAttempt | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.informational = False
        self.idle_since = 0.0
        self.request_done = False
        self.response_started = False
        self.upgraded = False
        self.head_keep_alive = False
        self.local_address: str | None = None  # "ip:port", filled by the first stream
        # The peer certificate's URI SAN and the transport it was read from: once per
        # connection, not per request (get_extra_info is a Python-level call on uvloop).
        self.peer_uri: str | None = None
        self.peer_uri_of: asyncio.BaseTransport | None = None
        self.pending = False  # holds a pending-request slot of the circuit breaker
        self.counted = False  # holds a request slot of the circuit breaker
        self.cx_open = False  # holds a connection slot of the circuit breaker
        self.idle_since = 0.0  # loop time it last joined the idle list
        self.born = 0.0  # loop time it was established (the cluster's max_connection_duration)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.requests = 0  # streams it has carried (the cluster's max_requests_per_connection)
        self.chunked = False  # the request in progress is chunk-framed
        self.head_request = False  # ... and is a HEAD: its response ends with its head
        self.in_head = False  # a response head has begun and is not complete
        self.head_size = 0  # its names and values so far
        self.head_raw = 0  # bytes read while it is unfinished (httptools holds partial lines)

    # -- the pool's side -----------------------------------------------------------------
    def attach(self, stream: UpstreamAttempt) -> None:
        self.stream = stream
        self.requests += 1
        self.request_done = False
        self.response_started = False
        if not self.counted:
            self.counted = True
            self.pool.breaker.rq += 1

    def _unattach(self) -> None:
        """The request slot goes back when the stream leaves the connection."""
        if self.counted:
            self.counted = False
            self.pool.breaker.rq -= 1

    def detach_and_close(self) -> None:
        """The stream gives up on this connection (timeout, reset, downstream gone)."""
        self.stream = None
        self._unattach()
        self.close()

    def cancel(self) -> None:
        """The stream waiting for this (connecting or queued) connection gave up."""
        self.stream = None
        self.pool.cancel(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.pool.cx_stats.upstream_cx_tx_bytes_total += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)
        self.pool.cx_stats.upstream_cx_tx_bytes_total += sum(map(len, parts))

    # -- the request: codec.UpstreamCodec ------------------------------------------------
    def encode_headers(
        self, method: bytes, target: bytes, headers: Headers, body: list[bytes], chunked: bool
    ) -> str | None:
        head = encode_request_head(method, target, headers)
        problem = upstream_head_problem(method, target, headers, head)
        if problem is not None:
            return problem
        self.chunked = chunked
        self.head_request = method == b"HEAD"
        parts = [head]
        if chunked:
            for p in body:
                parts += (b"%x\r\n" % len(p), p, CRLF)
        else:
            parts.extend(body)
        self.writelines(parts)
        return None

    def encode_data(self, data: bytes) -> None:
        if self.chunked:
            self.writelines([b"%x\r\n" % len(data), data, CRLF])
        else:
            self.write(data)

    def encode_end(self) -> None:
        if self.chunked:
            self.write(CHUNK_END)
        self.request_done = True

    def encode_trailers(self, trailers: Headers) -> None:
        """Request trailers are not sent over HTTP/1 (Envoy's default, no enable_trailers)."""
        self.encode_end()

    def sockname(self) -> str | None:
        """Our `ip:port` on this connection: a syscall, once per connection."""
        local = self.local_address
        if local is None and self.transport is not None:
            sock = self.transport.get_extra_info("sockname")
            if sock:
                host, port = str(sock[0]), int(sock[1])
                local = self.local_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return local

    def peer_uri_san(self) -> str | None:
        t = self.transport
        if t is not self.peer_uri_of:
            self.peer_uri_of = t
            self.peer_uri = uri_san(t)
        return self.peer_uri

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- asyncio Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.born = self.pool.loop.time()
        t.set_write_buffer_limits(high=self.pool.buffer_limit)
        stats = self.pool.cx_stats
        stats.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.pool.cx_stats.upstream_cx_rx_bytes_total += len(data)
        stream = self.stream
        if self.upgraded:
            if stream is not None:
                stream.upstream_tunnel_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = True
            rest = data[int(e.args[0]) :]
            if stream is not None and rest:
                stream.upstream_tunnel_data(rest)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Malformed):
                self._protocol_error()
                return
            if not isinstance(e.__context__, _HeadDone):
                raise
            # A response to HEAD ends with its head; a fresh parser reads the next one.
            self.parser = httptools.HttpResponseParser(self)
            self._message_complete(self.head_keep_alive)
        except httptools.HttpParserError:
            # Not HTTP/1.1 (an HTTP/2 server's SETTINGS, garbage, a bad chunk size): Envoy's
            # protocol error (502 UPE before the response, a reset flagged UPE after).
            self._protocol_error()
            return
        if self.in_head:
            # httptools keeps an unfinished header line to itself: an endless header is
            # counted by the reads that end inside the head (bounded by one read's overcount).
            self.head_raw += len(data)
            if self.head_raw > MAX_RESPONSE_HEADERS_BYTES:
                self._protocol_error()
                return
        # A response head held for its body (one write for both) goes out by the end of the
        # read that brought it.
        if stream is not None:
            stream.upstream_read_done()

    def eof_received(self) -> bool | None:
        return None  # close our side too: HTTP/1.1 has no use for a half-open upstream

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        stats = self.pool.cx_stats
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        self.pool.forget(self)
        self.pool.cx_closed(self)
        self._unattach()
        stream = self.stream
        if stream is None or (was_closed and not self.upgraded):
            return
        if self.upgraded:
            self.stream = None
            stream.upstream_tunnel_closed()
        elif self.response_started and not self._framed():
            # A response without Content-Length or chunking ends at the upstream's close.
            self._message_complete(False)
        elif self.in_head or self.response_started:
            # Closed inside a head, or before a framed body's end: Envoy's protocol error.
            self.pool.rq_stats.upstream_cx_protocol_error += 1
            self._reset(PROTOCOL_ERROR)
        else:
            self._reset(CONNECTION_TERMINATION)

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []
        self.in_head = True
        self.head_size = 0
        self.head_raw = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_RESPONSE_HEADERS_BYTES or len(self.headers) > MAX_RESPONSE_HEADERS_COUNT:
            raise _Malformed()
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise _Malformed()  # Envoy implements no other transfer coding

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue & co: passed on only under proxy_100_continue (the client has
            # Envoy's own 100 otherwise); other 1xx are dropped.
            self.informational = True
            if status == 100 and self.stream is not None:
                self.stream.upstream_continue()
            return
        stream = self.stream
        self.response_started = True
        if status == 101:
            # The connection is a tunnel from here: httptools calls on_message_complete for the
            # 101 before it stops at the upgrade, and that must not end the stream.
            self.upgraded = True
        od = self.pool.outlier
        if od is not None:
            od.put_result(self.pool.host, status)
        if stream is None:
            return
        stream.upstream_headers(status, self.headers)
        if self.stream is stream and self.head_request and status != 101:
            self.head_keep_alive = self.parser.should_keep_alive()
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        if body and not self.informational and self.stream is not None:
            self.stream.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if not self.upgraded:
            self._message_complete(self.parser.should_keep_alive())

    # -- internals -----------------------------------------------------------------------
    def _framed(self) -> bool:
        for n, v in self.headers:
            if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in v.lower()):
                return True
        return False

    def _message_complete(self, keep_alive: bool) -> None:
        stream = self.stream
        self.stream = None
        self._unattach()
        self.response_started = False
        if keep_alive and self.request_done and not self.closed and self.pool.reusable(self):
            self.pool.release(self)
        else:
            self.close()
        if stream is not None:
            stream.upstream_complete()

    def _protocol_error(self) -> None:
        """The upstream's bytes broke the codec. A response head already handed over (held for
        its body) goes out first, as Envoy's went; then the attempt is reset."""
        self.pool.rq_stats.upstream_cx_protocol_error += 1
        stream = self.stream
        if stream is not None and self.response_started:
            stream.upstream_read_done()
        self._reset(PROTOCOL_ERROR)

    def _reset(self, reason: str) -> None:
        stream = self.stream
        self.stream = None
        self._unattach()
        od = self.pool.outlier
        if od is not None and not self.response_started:
            od.put_result(self.pool.host, 503)
        self.close()
        if stream is not None:
            stream.upstream_reset(reason, None)
