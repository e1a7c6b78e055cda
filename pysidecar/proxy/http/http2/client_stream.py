"""One request/response exchange on an HTTP/2 upstream connection: the router's `UpstreamCodec`.

Promises:
- `H2UpstreamStream` is what `codec.UpstreamCodec` asks of an upstream connection, for one
  HTTP/2 stream of a shared connection (http2/client_codec.py): `encode_headers` builds the
  HTTP/2 header block (http2/request_headers.py) and refuses what the downstream HTTP/2 codec
  would refuse; `encode_data` / `encode_end` send within the stream's window (the rest waits in
  `outbox`; past `buffer_limit` the router is told to pause its downstream); `send_trailers`
  ends a request with trailers; `detach_and_close` resets the stream (RST_STREAM CANCEL), never
  the connection others share.
- `pause_reading` / `resume_reading` are the downstream's watermarks: response DATA is
  acknowledged (WINDOW_UPDATE) only while the downstream takes it.
- After `upstream_complete` or `upstream_reset` (or a reset by the router) it reports nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import h2.exceptions

from pysidecar.proxy.http.http2.request_headers import (
    Headers,
    request_block,
    request_problem,
    trailer_block,
)
from pysidecar.proxy.http.retry import PROTOCOL_ERROR
from pysidecar.proxy.http.upstream_callbacks import UpstreamStreamCallbacks
from pysidecar.proxy.peer_tls import uri_san

if TYPE_CHECKING:
    from pysidecar.proxy.http.http2.client_codec import Http2UpstreamConnection

log = logging.getLogger(__name__)


class H2UpstreamStream:
    """One request/response exchange on an Http2UpstreamConnection."""

    __slots__ = (
        "cb",
        "conn",
        "end_pending",
        "head",
        "local_done",
        "outbox",
        "outbox_bytes",
        "read_paused",
        "response_started",
        "sid",
        "trailers_pending",
        "unacked",
        "write_paused",
    )

    def __init__(self, conn: Http2UpstreamConnection, sid: int, cb: UpstreamStreamCallbacks) -> None:
        self.conn = conn
        self.sid = sid
        self.cb: UpstreamStreamCallbacks | None = cb
        self.outbox: deque[bytes] = deque()  # request data waiting for send window
        self.outbox_bytes = 0
        self.end_pending = False  # END_STREAM to send once the outbox is empty
        self.trailers_pending: Headers | None = None
        self.local_done = False  # our side ended (END_STREAM sent)
        self.unacked = 0  # response bytes received while the downstream was paused
        self.read_paused = False
        self.write_paused = False
        self.response_started = False
        self.head: Headers | None = None  # the request head, held for its first data or end

    @property
    def local_address(self) -> str | None:
        return self.conn.local_address

    # -- the router's side ------------------------------------------------------------------
    def send_headers(self, block: Headers, end_stream: bool) -> None:
        conn = self.conn
        if self.sid == 0:
            conn.assign(self)
        try:
            conn.h2.send_headers(self.sid, block, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:  # a header block h2 refuses: never sent
            log.debug("http2 upstream: request headers refused: %r", e)
            conn.fail_stream(self, PROTOCOL_ERROR)
            return
        self.local_done = end_stream
        conn.flush()

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self.local_done or self.cb is None:
            return
        if data:
            self.outbox.append(data)
            self.outbox_bytes += len(data)
        self.end_pending = self.end_pending or end_stream
        self.conn.drain_stream(self)
        if not self.write_paused and self.outbox_bytes > self.conn.buffer_limit and self.cb is not None:
            self.write_paused = True
            self.cb.upstream_pause_writing()

    def send_trailers(self, trailers: Headers) -> None:
        """Request trailers end the stream (after any data still waiting for window)."""
        if self.local_done or self.cb is None:
            return
        self.trailers_pending = trailer_block(trailers)
        self.end_pending = True
        self.conn.drain_stream(self)

    def end(self) -> None:
        self.send_data(b"", True)

    def reset(self) -> None:
        """The router gives up on the stream (timeout, downstream gone): RST_STREAM CANCEL."""
        if self.cb is None:
            return
        self.cb = None
        self.conn.cancel_stream(self)

    # -- codec.UpstreamCodec: what the router's UpstreamRequest calls ------------------------
    def attach(self, stream: UpstreamStreamCallbacks) -> None:
        self.cb = stream

    def sockname(self) -> str | None:
        return self.conn.local_address

    def peer_uri_san(self) -> str | None:
        """The upstream certificate's URI SAN when the connection is TLS (None for h2c)."""
        return uri_san(self.conn.transport)

    def encode_headers(
        self, method: bytes, target: bytes, headers: Headers, body: list[bytes], chunked: bool
    ) -> str | None:
        """The request head (HTTP/2 frames the body itself: `chunked` is not needed). Held
        until the loop turn ends or data / the end follows, so that a bodiless request is one
        HEADERS frame with END_STREAM, as Envoy sends it. A block the downstream codec would
        refuse is refused here too (returned, never sent)."""
        block = request_block(method, b"http", target, headers)
        problem = request_problem(block)
        if problem is not None:
            return problem
        self.head = block
        for part in body:
            self.outbox.append(part)
            self.outbox_bytes += len(part)
        self.conn.pool.loop.call_soon(self._flush_head)
        return None

    def _flush_head(self, end: bool = False) -> None:
        block, self.head = self.head, None
        if block is not None and self.cb is not None:
            self.send_headers(block, end_stream=end and not self.outbox)
            if self.outbox or end:
                self.send_data(b"", end)

    def encode_data(self, data: bytes) -> None:
        self._flush_head()
        self.send_data(data)

    def encode_trailers(self, trailers: Headers) -> None:
        self._flush_head()
        self.send_trailers(trailers)

    def encode_end(self) -> None:
        if self.head is not None:
            self._flush_head(end=True)
        else:
            self.end()

    def write(self, data: bytes) -> None:
        """Tunnel bytes: an upgrade cannot be carried over HTTP/2 (no extended CONNECT)."""

    def write_eof(self) -> None:
        """See write."""

    @property
    def closed(self) -> bool:
        return self.cb is None

    detach_and_close = reset

    def cancel(self) -> None:
        """Only a pending request is cancelled (PendingRequest); a stream is reset."""
        self.reset()

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.conn.ack(self.sid, n)
