"""The HTTP/1.1 downstream codec (Envoy's Http1::ServerConnectionImpl with the connection
manager's connection): one client connection of an http_connection_manager.

Promises:
- Parses requests with httptools as bytes arrive; each request becomes an `ActiveStream`;
  responses are framed by `response_encoder.Http1ResponseEncoder` (`codec.DownstreamCodec`).
  Requests are answered in order: a pipelined request waits (reading paused) until the one
  before it has its whole response written, as Envoy's HTTP/1 codec does.
- Keep-alive unless the client asks otherwise (HTTP/1.0 without keep-alive, `connection:
  close`) or the connection must close (a reply sent before the request was read).
- Bad traffic is answered and closed without disturbing any other connection: a malformed
  request or a Content-Length / Transfer-Encoding conflict → 400, headers over
  max_request_headers_kb (counted as bytes arrive, whole lines or not) or more than
  max_headers_count headers → 431, a transfer-encoding other than chunked → 501, a version
  other than 1.0 / 1.1 → 426, a Host with invalid characters → 400 (header_validation), headers
  not complete within request_headers_timeout → 408;
  an unexpected exception → 500 (or a reset once a response started), never a worker crash.
- Flow control: reading from the client pauses while a pipelined request waits, while the
  upstream cannot take more, or while a body waits for a connect beyond the buffer limit;
  the upstream pauses while the client cannot take more.
- After a 101 response the connection is a byte tunnel to the upstream connection.
- While the worker drains (SIGTERM), every response carries `connection: close` and the
  connection closes after it, as Envoy's drain does for HTTP/1.
- Every finished stream is recorded in one place (`Downstream.record`): HCM stats, its StreamInfo
  finished, and `worker.stream_complete(info)` when the worker has it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from pysidecar.model import SocketAddress
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.active_stream import ActiveStream
from pysidecar.proxy.http.compiled import CompiledHcm
from pysidecar.proxy.http.conn_pool import PoolManager
from pysidecar.proxy.http.http1.request_decoder import (
    PAUSE_BODY,
    PAUSE_PIPELINE,
    PAUSE_UPSTREAM,
    Http1RequestDecoder,
    Reject,
)
from pysidecar.proxy.http.http1.response_encoder import local_reply_bytes
from pysidecar.proxy.http.stream_state import REQUEST_DONE, RESPONSE_DONE, RESPONSE_STARTED, STARTED

if TYPE_CHECKING:
    from pysidecar.proxy.http.codec import UpstreamCodec
    from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)


class HttpConnection(Http1RequestDecoder):
    __slots__ = (
        "backlog",
        "deferred",
        "idle_mark",
        "idle_moved",
        "paused",
        "paused_upstream",
        "tunnel",
        "upgrade_rest",
    )

    def __init__(
        self,
        worker: Worker,
        pools: PoolManager,
        cfg: CompiledHcm,
        destination: SocketAddress,
        buffer_limit: int,
        on_close: Callable[[HttpConnection], None],
    ) -> None:
        super().__init__(worker, pools, cfg, destination, buffer_limit, on_close)
        self.parser = httptools.HttpRequestParser(self)
        self.parsing = None
        self.active = None
        self.queue = deque()
        # A codec error after complete requests: (status, details), answered once their
        # responses are out (Envoy answers what it read before the bad bytes). Nothing more
        # is read meanwhile.
        self.deferred: tuple[int, str] | None = None
        # Bytes of a read not parsed yet because _PIPELINE_DEPTH requests wait already.
        self.backlog = b""
        self.eof_sent = False
        self.tunnel: ActiveStream | None = None
        self.upgrade_rest = b""
        self.paused = 0
        self.paused_upstream: UpstreamCodec | None = None
        self.head_size = 0
        self.in_head = False  # between on_message_begin and on_headers_complete
        self.h2c = False  # the request parsed last was an h2c upgrade, proxied as a plain one
        self.head_raw = 0  # bytes of the head in progress read after the read it began in
        self.headers_timer = None
        self.head_started = 0.0  # loop time the request head in progress began; 0: none
        # The stream idle timer (Downstream's) ticks over these (see _on_stream_idle).
        self.idle_mark: tuple[object, ...] = ()
        self.idle_moved = 0.0  # loop time the stream in progress was last seen to move

    # == lifecycle ============================================================================
    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        """Take over an accepted connection (its protocol was switched to this one)."""
        self.begin(transport)
        s = self.stats
        s.downstream_cx_http1_total += 1
        s.downstream_cx_http1_active += 1
        self._arm_idle()
        if initial:
            self.data_received(initial)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for t in (self.headers_timer, self.idle_timer, self.stream_idle_timer):
            if t is not None:
                t.cancel()
        streams = [s for s in (self.active, *self.queue) if s is not None]
        self.active = None
        self.queue.clear()
        for st in streams:
            st.downstream_reset()
        s = self.stats
        s.downstream_cx_active -= 1
        s.downstream_cx_http1_active -= 1
        s.downstream_cx_destroy += 1
        if self.tunnel is not None:
            s.downstream_cx_upgrades_active -= 1
        s.downstream_cx_length_ms.record((self.loop.time() - self.started_at) * 1000)
        self.on_close(self)

    def eof_received(self) -> bool:
        """A client's half-close: answer what was asked, then close; close at once if idle."""
        if self.closing:
            return False  # the end of a delayed close
        streams = [s for s in (self.active, self.parsing, *self.queue) if s is not None]
        tunnel_up = self.tunnel.upstream() if self.tunnel is not None else None
        if not streams or (self.tunnel is not None and tunnel_up is None):
            return False
        if tunnel_up is not None:
            tunnel_up.write_eof()
            return True
        if self.parsing is not None and not self.parsing.state & STARTED:
            self.parsing = None  # an unfinished request head: nothing to answer
        for st in streams:
            st.close_after = True
        return self.active is not None

    def close_when_flushed(self) -> None:
        """Close once what is buffered is written. With delayed_close_timeout (Envoy's default
        1 s), our side is shut (FIN after the buffer) and the client gets that long to close
        first; what it still sends is read and dropped, so that the close cannot turn into a
        reset that destroys the reply in flight."""
        self.closing = True
        t = self.transport
        if t is None:
            return
        delay = self.cfg.config.delayed_close_timeout
        if delay <= 0 or not t.can_write_eof():
            t.close()  # asyncio writes what is buffered, then closes
            return
        self.eof_sent = True
        t.write_eof()
        if self.paused:
            self.paused = 0
            t.resume_reading()  # reading on is what lets the client's close arrive
        self.loop.call_later(delay, t.close)  # a no-op once the transport is closed

    # == bytes in =============================================================================
    def data_received(self, data: bytes) -> None:
        self.stats.downstream_cx_rx_bytes_total += len(data)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.downstream_tunnel_data(data)
            return
        if self.closing or self.deferred is not None:
            return
        if self.upgrade_rest:  # bytes after an upgrade request, before the upstream's 101
            self.upgrade_rest += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Feed the parser. A read that may hold many pipelined requests (not inside a body)
        is fed a slice at a time, and what follows once _PIPELINE_DEPTH requests wait is kept
        (`backlog`, reading paused) until they are answered: a pipelining flood costs a
        bounded queue, as Envoy holds about a read per connection."""
        st = self.parsing
        if len(data) <= _SLICE or (st is not None and not self.in_head and st is self.active):
            self._feed(data)
            return
        for i in range(0, len(data), _SLICE):
            if len(self.queue) >= _PIPELINE_DEPTH:
                self.backlog = data[i:]
                self.pause_reading(PAUSE_PIPELINE)
                return
            self._feed(data[i : i + _SLICE])
            if self.closing or self.deferred is not None or self.tunnel is not None:
                return
            last = self.queue[-1] if self.queue else self.active
            if last is not None and last.upgrade:  # the parser stopped at an upgrade request
                self.upgrade_rest += data[i + _SLICE :]
                return

    def _feed_backlog(self) -> None:
        data, self.backlog = self.backlog, b""
        if data and not self.closing:
            self._parse(data)
        if not self.backlog and not self.queue and self.paused:
            self.pause_clear(PAUSE_PIPELINE)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
            if self.in_head:
                self._count_unfinished_head(len(data))
        except httptools.HttpParserUpgrade as e:
            rest = data[int(e.args[0]) :]
            if self.h2c:
                # The upgrade was h2c, which Envoy strips: the request was a plain one and
                # the connection goes on as HTTP/1.1 with a fresh parser.
                self.h2c = False
                self.parser = httptools.HttpRequestParser(self)
                if rest:
                    self._parse(rest)
            else:
                self.upgrade_rest = rest
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, Reject):
                self._protocol_error(e.__context__.status, e.__context__.details)
            else:
                self._internal_error(e.__context__ or e)
        except httptools.HttpParserError as e:
            if str(e) == _TE_AFTER_CHUNKED:  # `chunked, gzip`: llhttp stops inside the value
                self._protocol_error(501, "http1.invalid_transfer_encoding")
            elif str(e) == _BAD_VERSION:  # HTTP/1.2, HTTP/3.0: Envoy's 426, as for HTTP/2.0
                self._protocol_error(426, "low_version")
            elif str(e) == _DATA_AFTER_CLOSE:
                # Bytes after a `Connection: close` request: that request is answered, then
                # the connection closes (its close_after); the rest is dropped, as Envoy does.
                self.deferred = (0, "")
                self.pause_reading(PAUSE_PIPELINE)
            else:
                self._protocol_error(400, _codec_details(e))
        except Exception as e:  # a bug must cost this connection only, never the worker
            self._internal_error(e)

    # == streams ==============================================================================
    def new_stream(self) -> ActiveStream:
        return ActiveStream(self)

    def _start(self, st: ActiveStream) -> None:
        if self.stream_idle_timer is None and self.cfg.config.stream_idle_timeout > 0:
            self.arm_stream_idle(st, self.cfg.config.stream_idle_timeout)
        try:
            st.start()
        except Exception as e:
            self._internal_error(e, st)

    def stream_done(self, st: ActiveStream) -> None:
        """Called by a stream when its response is over, and again when its request is."""
        if st.info.end_time is None:
            self.record(st)
        if st is not self.active or not (st.state & REQUEST_DONE or st.close_after):
            return
        self.active = None
        if self.paused:  # tested here: this runs once per request, reading is rarely paused
            self.pause_clear(PAUSE_UPSTREAM | PAUSE_BODY)
        if st.close_after:
            self.close_when_flushed()
            return
        # Pipelined requests, in order; a loop (not recursion) since each may finish at once.
        queue = self.queue
        while queue and self.active is None and not self.closing:
            nxt = queue.popleft()
            self.active = nxt
            self._start(nxt)
        if self.deferred is not None:
            if self.active is None and not queue:
                status, details = self.deferred
                if status:  # the codec error, now that what came before it is answered
                    self.deferred = None
                    self._protocol_error(status, details)
                else:
                    self.close_when_flushed()  # after a Connection: close request
            return
        if self.backlog and len(queue) < _PIPELINE_DEPTH:
            self.loop.call_soon(self._feed_backlog)  # not from inside this stream's callbacks
            return
        if not queue and self.paused and not self.backlog:
            self.pause_clear(PAUSE_PIPELINE)
        if self.active is None and self.idle_timer is None:
            self._arm_idle()

    def start_drain(self) -> None:
        """The worker drains: every response from now on says close (see encode_headers)."""
        self.draining = True

    def start_tunnel(self, st: ActiveStream) -> None:
        self.tunnel = st
        self.stats.downstream_cx_upgrades_total += 1
        self.stats.downstream_cx_upgrades_active += 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        rest, self.upgrade_rest = self.upgrade_rest, b""
        if rest:
            st.downstream_tunnel_data(rest)

    # == flow control ===========================================================================
    def pause_reading(self, reason: int = PAUSE_UPSTREAM) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.stats.downstream_flow_control_paused_reading_total += 1
        self.paused |= reason

    def resume_reading(self, reason: int = PAUSE_UPSTREAM) -> None:
        self.pause_clear(reason)

    def pause_stream(self, st: ActiveStream) -> None:
        """The stream's upstream cannot take more (or its body waits for a connect)."""
        self.pause_reading(PAUSE_UPSTREAM)

    def resume_stream(self, st: ActiveStream) -> None:
        self.pause_clear(PAUSE_UPSTREAM)

    def pause_clear(self, reasons: int) -> None:
        if not self.paused & reasons:
            return
        self.paused &= ~reasons
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.stats.downstream_flow_control_resumed_reading_total += 1

    def pause_writing(self) -> None:
        st = self.tunnel or self.active
        up = st.upstream() if st is not None else None
        if up is not None:
            up.pause_reading()
            self.paused_upstream = up

    def resume_writing(self) -> None:
        up = self.paused_upstream
        self.paused_upstream = None
        if up is not None:
            up.resume_reading()

    # == timers and errors ======================================================================
    def _arm_idle(self) -> None:
        timeout = self.cfg.config.idle_timeout
        if timeout > 0 and self.idle_timer is None:
            self.idle_timer = self.loop.call_later(timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.idle_timer = None
        if self.active is None and self.parsing is None and self.tunnel is None:
            self.stats.downstream_cx_idle_timeout += 1
            self.close_when_flushed()
        else:
            self._arm_idle()

    def arm_stream_idle(self, st: ActiveStream, timeout: float) -> None:
        """(Re)start the stream idle timer for `st` (a route's idle_timeout restarts it)."""
        if self.stream_idle_timer is not None:
            self.stream_idle_timer.cancel()
            self.stream_idle_timer = None
        st.idle_timeout = timeout
        if timeout > 0:  # a route's idle_timeout 0 turns it off for its streams
            self.idle_mark = _progress(st)
            self.idle_moved = self.loop.time()
            self.stream_idle_timer = self.loop.call_later(
                timeout / _IDLE_TICKS, self._on_stream_idle
            )

    def _on_stream_idle(self) -> None:
        """Envoy's stream idle timeout without a timer per request or a clock read per read:
        the timer ticks _IDLE_TICKS times a period and notes when the stream in progress
        last moved (another stream, other byte counts either way, a response started); one
        period without a move times it out. So it fires between one period and an eighth
        more after the last activity."""
        self.stream_idle_timer = None
        st = self.tunnel or self.active  # an upgraded stream idles out too
        if st is None or st.state & RESPONSE_DONE or st.idle_timeout <= 0 or self.closing:
            return  # nothing in progress: the next stream arms it again
        mark = _progress(st)
        now = self.loop.time()
        if mark != self.idle_mark:
            self.idle_mark = mark
            self.idle_moved = now
        if now - self.idle_moved < st.idle_timeout - 1e-3:
            tick = st.idle_timeout / _IDLE_TICKS
            self.stream_idle_timer = self.loop.call_later(tick, self._on_stream_idle)
            return
        self.stats.downstream_rq_idle_timeout += 1
        st.stream_idle_timeout()

    def _on_headers_timeout(self) -> None:
        self.headers_timer = None
        started = self.head_started
        if not started:
            return  # no head in progress; the next one arms the timer again
        left = started + self.cfg.config.request_headers_timeout - self.loop.time()
        if left > 0:  # the head in progress began after this timer was armed
            self.headers_timer = self.loop.call_later(left, self._on_headers_timeout)
            return
        self.stats.downstream_rq_header_timeout += 1
        if self.active is None:
            self._reply_and_close(408, b"request header timeout", "request_header_timeout", None)
        else:
            self.abort()

    def _protocol_error(self, status: int, details: str) -> None:
        bad = self.parsing
        waiting = self.active is not None or bool(self.queue)
        if waiting and (bad is None or (bad is not self.active and bad not in self.queue)):
            # Complete requests came before the bad bytes: they are answered first, then the
            # error (Envoy 1.40, checked); nothing more is read meanwhile.
            self.deferred = (status, details)
            self.pause_reading(PAUSE_PIPELINE)
            return
        self.stats.downstream_cx_protocol_error += 1
        if self.active is not None and self.active.state & RESPONSE_STARTED:
            self.abort()  # a reply cannot be put in the middle of another response
            return
        # Envoy's codec errors answer with the reason phrase as body ("Bad Request").
        self._reply_and_close(status, HTTPStatus(status).phrase.encode(), details, lr.DPE)

    def _internal_error(self, exc: BaseException, st: ActiveStream | None = None) -> None:
        log.error("http connection error: %r", exc, exc_info=exc)
        st = st or self.active
        if st is not None and st.state & RESPONSE_STARTED:
            self.abort()
            return
        self._reply_and_close(500, b"Internal Server Error", "internal_error", None)

    def _reply_and_close(self, status: int, body: bytes, details: str, flag: str | None) -> None:
        """A local reply outside any routed stream (codec errors, timeouts), then close."""
        if self.active is not None:
            self.active.drop_upstream()
        st = self.active or self.parsing or ActiveStream(self)
        if self.active is None:
            self.stats.downstream_rq_active += 1  # record takes it back
        self.active = st
        self.parsing = None
        self.closing = True
        info = st.info
        info.protocol = info.protocol or "HTTP/1.1"
        if flag is not None:
            info.response_flags.append(flag)
        info.response_code = status
        info.response_code_details = details
        info.bytes_sent = len(body)
        if self.transport is not None:
            # A stream that was routed already (a bad body) has its route's response headers.
            ops = st.response_ops if st.state & STARTED else ()
            headers = st.local_reply_headers(status, body, ops)
            self.write(local_reply_bytes(status, body, headers, close=True, head_only=False))
        st.abandon()
        self.record(st)
        self.active = None
        self.close_when_flushed()


_IDLE_TICKS = 8


def _progress(st: ActiveStream) -> tuple[object, ...]:
    info = st.info
    return (st, info.bytes_received, info.bytes_sent, st.state & RESPONSE_STARTED)


_TE_AFTER_CHUNKED = "Invalid `Transfer-Encoding` header value"  # llhttp's words
_BAD_VERSION = "Invalid HTTP version"
_DATA_AFTER_CLOSE = "Data after `Connection: close`"
_SLICE = 16384  # bytes parsed at a time from a read that may hold pipelined requests
_PIPELINE_DEPTH = 32  # requests waiting behind the one in progress, at most


def _codec_details(e: Exception) -> str:
    """Envoy 1.40's details for a parse error (checked): `http1.invalid_characters` for a
    forbidden byte in a header value, `http1.codec_error` for the rest (llhttp's reason is in
    the debug log)."""
    log.debug("http1 codec error: %s", e)
    return "http1.invalid_characters" if str(e) == "Invalid header value char" else "http1.codec_error"
