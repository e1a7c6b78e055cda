"""envoy.filters.network.http_connection_manager over HTTP/1.1: the downstream connection.

Promises:
- Parses requests with httptools as bytes arrive; each request becomes an `ActiveStream`.
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
from pysidecar.proxy.http.codec import CHUNK_END, CRLF, encode_head
from pysidecar.proxy.http.compiled import CompiledHcm
from pysidecar.proxy.http.downstream import Downstream
from pysidecar.proxy.http.header_validation import h1_request_problem
from pysidecar.proxy.http.headers import Headers
from pysidecar.proxy.http.pool import PoolManager, UpstreamConnection
from pysidecar.proxy.http.stream import ActiveStream

if TYPE_CHECKING:
    from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
HTTP10 = b"HTTP/1.0"
_NO_BODY_STATUS = frozenset({204, 304})

# Why reading from the client is paused; reading resumes when no reason is left.
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_BODY = 1, 2, 4


class _Reject(Exception):
    """Raised from a parser callback to answer the request head with a codec error: 431 when
    it passes max_request_headers_kb or max_headers_count, 501 for a transfer-encoding other
    than chunked; `details` is Envoy's response code details."""

    def __init__(self, status: int = 431, details: str = "http1.headers_too_large") -> None:
        super().__init__(details)
        self.status = status
        self.details = details


class HttpConnection(Downstream):
    __slots__ = (
        "active",
        "h2c",
        "head_raw",
        "head_size",
        "head_started",
        "headers_timer",
        "idle_mark",
        "idle_moved",
        "in_head",
        "parser",
        "parsing",
        "paused",
        "paused_upstream",
        "queue",
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
        self.parsing: ActiveStream | None = None
        self.active: ActiveStream | None = None
        self.queue: deque[ActiveStream] = deque()
        self.tunnel: ActiveStream | None = None
        self.upgrade_rest = b""
        self.paused = 0
        self.paused_upstream: UpstreamConnection | None = None
        self.head_size = 0
        self.in_head = False  # between on_message_begin and on_headers_complete
        self.h2c = False  # the request parsed last was an h2c upgrade, proxied as a plain one
        self.head_raw = 0  # bytes of the head in progress read after the read it began in
        self.headers_timer: asyncio.TimerHandle | None = None
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
        if not streams or (self.tunnel is not None and self.tunnel.upstream is None):
            return False
        if self.tunnel is not None:
            up = self.tunnel.upstream
            if up is not None and up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
            return True
        if self.parsing is not None and not self.parsing.started:
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
        if self.closing:
            return
        if self.upgrade_rest:  # bytes after an upgrade request, before the upstream's 101
            self.upgrade_rest += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
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
            if isinstance(e.__context__, _Reject):
                self._protocol_error(e.__context__.status, e.__context__.details)
            else:
                self._internal_error(e.__context__ or e)
        except httptools.HttpParserError as e:
            if str(e) == _TE_AFTER_CHUNKED:  # `chunked, gzip`: llhttp stops inside the value
                self._protocol_error(501, "http1.invalid_transfer_encoding")
            elif str(e) == _BAD_VERSION:  # HTTP/1.2, HTTP/3.0: Envoy's 426, as for HTTP/2.0
                self._protocol_error(426, "low_version")
            else:
                self._protocol_error(400, _codec_details(e))
        except Exception as e:  # a bug must cost this connection only, never the worker
            self._internal_error(e)

    def write(self, data: bytes) -> None:
        self.stats.downstream_cx_tx_bytes_total += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.stats.downstream_cx_tx_bytes_total += sum(map(len, parts))
        assert self.transport is not None
        self.transport.writelines(parts)

    # == the codec's encoding side: what ActiveStream hands its downstream ======================
    def encode_continue(self, st: ActiveStream) -> None:
        self.write(CONTINUE_100)

    def encode_headers(self, st: ActiveStream, status: int, headers: Headers, has_length: bool) -> None:
        """The response head: HTTP/1 adds connection and chunked framing (HEAD / 204 / 304 have
        no body), answers in the request's version, and holds the head until the first body
        bytes (or the end of the upstream's read, `encode_flush`) so that head and body leave
        in one write: a syscall per response. A 101 is written at once."""
        chunked = False  # framed as chunked: transfer-encoding goes last
        if status == 101:
            head = encode_head(status, headers)
            self.write(HTTP10 + head[8:] if st.http10 else head)
            return
        if status not in _NO_BODY_STATUS and not has_length:
            if st.http10:
                st.close_after = True  # HTTP/1.0 has no chunking: the close ends the body
            else:
                # A HEAD response says it too, without a body (as Envoy 1.40 does).
                chunked = True
                st.chunked_out = not st.head_request
        if st.close_after or not st.keep_alive or self.draining:
            st.close_after = True
            headers.append((b"connection", b"close"))
        elif st.http10:
            headers.append((b"connection", b"keep-alive"))  # HTTP/1.0 closes unless told
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        head = encode_head(status, headers)
        st.head_out = HTTP10 + head[8:] if st.http10 else head

    def encode_flush(self, st: ActiveStream) -> None:
        head = st.head_out
        if head:
            st.head_out = b""
            self.write(head)

    def encode_data(self, st: ActiveStream, data: bytes) -> None:
        head = st.head_out
        if st.chunked_out:
            parts = [b"%x\r\n" % len(data), data, CRLF]
            if head:
                parts.insert(0, head)
        elif head:
            parts = [head, data]
        else:
            self.write(data)
            return
        st.head_out = b""
        self.writelines(parts)

    def encode_end(self, st: ActiveStream) -> None:
        head = st.head_out
        if st.chunked_out:
            st.head_out = b""
            self.write(head + CHUNK_END if head else CHUNK_END)
        elif head:
            st.head_out = b""
            self.write(head)

    def encode_local_reply(self, st: ActiveStream, status: int, body: bytes) -> None:
        """A local reply, whole. One sent before the request's body is read ends the
        connection, as Envoy's does: what follows would be parsed as that body."""
        if not st.keep_alive or self.draining or (st.has_body and not st.request_done):
            st.close_after = True
        cfg = self.cfg
        data = lr.local_reply(
            status,
            body,
            cfg.server,
            st.response_ops,
            cfg.lua_response,
            close=st.close_after,
            head_only=st.head_request,
        )
        self.write(HTTP10 + data[8:] if st.http10 else data)

    def reset_stream(self, st: ActiveStream) -> None:
        """A response cannot go on (mid-body timeout, upstream reset): HTTP/1 can only close."""
        self.abort()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        st = ActiveStream(self)
        info = st.info
        info.listener_name = self.listener_name
        info.downstream_local_address = self.local_address
        info.downstream_remote_address = self.peer
        info.requested_server_name = self.server_name
        info.downstream_tls = self.tls
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
            raise _Reject()
        headers = self.parsing.headers  # type: ignore[union-attr]
        name = name.lower()
        if self.cfg.underscores and b"_" in name:
            if self.cfg.underscores == 1:
                raise _Reject(400, "http1.unexpected_underscore")
            return  # DROP_HEADER
        headers.append((name, value))
        if len(headers) > self.cfg.header_count_limit:  # Envoy's max_headers_count (Host counts)
            raise _Reject(431, "http1.too_many_headers")
        # Envoy implements no transfer coding but chunked (llhttp would take `gzip, chunked`
        # as chunked and drop the gzip).
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise _Reject(501, "http1.invalid_transfer_encoding")

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
            raise _Reject(*refused)
        if st.http10 and not self.cfg.config.accept_http_10:
            raise _Reject(426, "http1.low_version")  # Envoy's default: no HTTP/1.0
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
            raise _Reject()

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

    # == streams ==============================================================================
    def _start(self, st: ActiveStream) -> None:
        if self.stream_idle_timer is None and self.cfg.config.stream_idle_timeout > 0:
            self.arm_stream_idle(st, self.cfg.config.stream_idle_timeout)
        try:
            st.start()
            if st.request_done:
                st.arm_route_timer()
        except Exception as e:
            self._internal_error(e, st)

    def stream_done(self, st: ActiveStream) -> None:
        """Called by a stream when its response is over, and again when its request is."""
        if st.info.end_time is None:
            self.record(st)
        if st is not self.active or not (st.request_done or st.close_after):
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
        if not queue and self.paused:
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
        if st.timer is not None:  # an upgraded stream has no response end to time
            st.timer.cancel()
            st.timer = None
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
        up = st.upstream if st is not None else None
        if up is not None and up.transport is not None:
            up.transport.pause_reading()
            self.paused_upstream = up

    def resume_writing(self) -> None:
        up = self.paused_upstream
        self.paused_upstream = None
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

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
            self.stream_idle_timer = self.loop.call_later(timeout / _IDLE_TICKS, self._on_stream_idle)

    def _on_stream_idle(self) -> None:
        """Envoy's stream idle timeout without a timer per request or a clock read per read:
        the timer ticks _IDLE_TICKS times a period and notes when the stream in progress
        last moved (another stream, other byte counts either way, a response started); one
        period without a move times it out. So it fires between one period and an eighth
        more after the last activity."""
        self.stream_idle_timer = None
        st = self.tunnel or self.active  # an upgraded stream idles out too
        if st is None or st.response_done or st.idle_timeout <= 0 or self.closing:
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
        self.stats.downstream_cx_protocol_error += 1
        if self.active is not None and self.active.response_started:
            self.abort()  # a reply cannot be put in the middle of another response
            return
        # Envoy's codec errors answer with the reason phrase as body ("Bad Request").
        self._reply_and_close(status, HTTPStatus(status).phrase.encode(), details, lr.DPE)

    def _internal_error(self, exc: BaseException, st: ActiveStream | None = None) -> None:
        log.error("http connection error: %r", exc, exc_info=exc)
        st = st or self.active
        if st is not None and st.response_started:
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
            ops = st.response_ops if st.started else ()
            reply = lr.local_reply(
                status, body, self.cfg.server, ops, self.cfg.lua_response, close=True
            )
            self.write(reply)
        st.response_done = True
        st.request_done = True
        st.close_after = True
        self.record(st)
        self.active = None
        self.close_when_flushed()


def _upgrade_value(headers: list[tuple[bytes, bytes]]) -> bytes:
    for n, v in headers:
        if n == b"upgrade":
            return v.strip().lower()
    return b""


_IDLE_TICKS = 8


def _progress(st: ActiveStream) -> tuple[object, ...]:
    info = st.info
    return (st, info.bytes_received, info.bytes_sent, st.response_started)


_TE_AFTER_CHUNKED = "Invalid `Transfer-Encoding` header value"  # llhttp's words
_BAD_VERSION = "Invalid HTTP version"


def _codec_details(e: Exception) -> str:
    """Envoy 1.40's details for a parse error (checked): `http1.invalid_characters` for a
    forbidden byte in a header value, `http1.codec_error` for the rest (llhttp's reason is in
    the debug log)."""
    log.debug("http1 codec error: %s", e)
    return "http1.invalid_characters" if str(e) == "Invalid header value char" else "http1.codec_error"
