"""The HTTP/2 downstream codec (Envoy's Http2::ServerConnectionImpl with the connection
manager's connection): one client connection of an http_connection_manager.

A thin asyncio.Protocol over a sans-I/O HTTP/2 session (session.py: libnghttp2 in the compiled
build, else the h2 library): each request stream runs the same `ActiveStream` as HTTP/1
(routing, retries, timeouts, header operations, local replies) to the same upstream pools; this
module turns the session's events (h2's event classes) into stream calls, and
`response_encoder.Http2ResponseEncoder` the stream's encode_* calls into frames.

Promises:
- A stream's header block becomes the request ActiveStream knows (`request_decoder`: limits,
  `:authority` as host, a body without content-length chunked).
- Malformed frames or headers (header_validation: missing or repeated pseudo-headers, names
  that are not lower-case tokens, CR / LF / NUL / controls in values, an invalid :method,
  :path, :authority or host, connection-specific headers) end the whole connection with GOAWAY PROTOCOL_ERROR, as
  Envoy does by default (`override_stream_error_on_invalid_http_message` false), counted in
  downstream_cx_protocol_error.
- Flow control both ways, never unbounded: request DATA is acknowledged (WINDOW_UPDATE) only
  once handed to the stream, and not while the stream is paused (its upstream cannot take
  more, or its body waits for a connect beyond the buffer limit): the client's windows bound
  what is held. The response side is `response_encoder`'s.
- A mid-response failure resets that stream only (RST_STREAM INTERNAL_ERROR); a drain sends
  GOAWAY (NO_ERROR) and closes once the open streams are done; the idle timeout closes a
  connection without streams the same way.
- HCM stats: downstream_cx_http2_total / _active, downstream_rq_http2_total and the shared
  ones (record_stream); the access log's %PROTOCOL% is `HTTP/2`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.errors
import h2.events

from pysidecar.model import SocketAddress
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.active_stream import ActiveStream
from pysidecar.proxy.http.compiled import CompiledHcm
from pysidecar.proxy.http.conn_pool import PoolManager
from pysidecar.proxy.http.h2_limits import (
    ProtocolConstraints,
    is_premature,
    too_many_premature_resets,
)
from pysidecar.proxy.http.header_validation import h2_request_problem
from pysidecar.proxy.http.http2.request_decoder import over_limits, request_head
from pysidecar.proxy.http.http2.request_headers import trailer_block
from pysidecar.proxy.http.http2.response_encoder import Http2ResponseEncoder
from pysidecar.proxy.http.http2.session import SessionError, new_server_session
from pysidecar.proxy.http.http2.settings import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_STREAM_WINDOW,
)
from pysidecar.proxy.http.stream_state import RESPONSE_DONE, RESPONSE_STARTED

if TYPE_CHECKING:
    from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Http2Connection(Http2ResponseEncoder):
    __slots__ = (
        "batch_resets",
        "closed_streams",
        "idle_marks",
        "max_streams",
        "paused",
        "premature_resets",
        "unacked",
    )

    def __init__(
        self,
        worker: Worker,
        pools: PoolManager,
        cfg: CompiledHcm,
        destination: SocketAddress,
        buffer_limit: int,
        on_close: Callable[[Http2Connection], None],
    ) -> None:
        super().__init__(worker, pools, cfg, destination, buffer_limit, on_close)
        # Request headers are judged by `h2_request_problem` (header_validation), on both sessions.
        self.session = new_server_session(cfg.header_limit, cfg.header_count_limit)
        self.streams = {}
        self.ids = {}
        self.pending = {}
        self.held = {}
        self.ended = set()
        self.idle_marks: dict[ActiveStream, tuple[tuple[int, int, bool], float]] = {}
        self.unacked: dict[int, int] = {}  # stream id → DATA bytes held back while paused
        self.paused: dict[int, int] = {}  # stream id → pause count
        self.paused_upstreams = []
        self.write_blocked = False
        self.flush_scheduled = False
        self.max_streams = DEFAULT_MAX_CONCURRENT_STREAMS
        # Envoy's flood limits and premature-reset accounting (h2_limits).
        self.constraints = ProtocolConstraints()
        self.h2stats = worker.stats.http2()
        self.closed_streams = 0
        self.premature_resets = 0
        self.batch_resets: set[int] = set()  # streams the read being handled also resets

    # == lifecycle ============================================================================
    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        self.begin(transport)
        s = self.stats
        s.downstream_cx_http2_total += 1
        s.downstream_cx_http2_active += 1
        o = self.cfg.config.http2
        window = (o and o.initial_stream_window_size) or DEFAULT_STREAM_WINDOW
        cx_window = (o and o.initial_connection_window_size) or DEFAULT_CONNECTION_WINDOW
        streams = (o and o.max_concurrent_streams) or DEFAULT_MAX_CONCURRENT_STREAMS
        self.max_streams = streams
        self.session.initiate(streams, window, cx_window, self.cfg.header_limit)
        self._flush()
        self._arm_idle()
        if self.draining:
            self.start_drain()
        if initial:
            self.data_received(initial)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for t in (self.idle_timer, self.stream_idle_timer):
            if t is not None:
                t.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            st.downstream_reset()
        self.session.close()
        s = self.stats
        s.downstream_cx_active -= 1
        s.downstream_cx_http2_active -= 1
        s.downstream_cx_destroy += 1
        s.downstream_cx_length_ms.record((self.loop.time() - self.started_at) * 1000)
        self.on_close(self)

    def eof_received(self) -> bool:
        return False  # HTTP/2 has no half-close of the connection: close it

    def close_when_flushed(self) -> None:
        """GOAWAY, then close once what is buffered is written."""
        if self.closing:
            return
        self.closing = True
        self._goaway(h2.errors.ErrorCodes.NO_ERROR)
        if self.transport is not None:
            self.transport.close()

    def start_drain(self) -> None:
        """The worker drains: GOAWAY now (no new streams), close when the open ones are done."""
        self.draining = True
        if not self.streams:
            self.close_when_flushed()
            return
        self._goaway(h2.errors.ErrorCodes.NO_ERROR)

    def _goaway(self, code: h2.errors.ErrorCodes) -> None:
        self.session.goaway(code)  # once per connection: later calls do nothing
        self._flush()

    # == bytes in =============================================================================
    def data_received(self, data: bytes) -> None:
        self.stats.downstream_cx_rx_bytes_total += len(data)
        if self.closing:
            return
        flood = self.constraints.inbound(data)
        if flood is not None:
            self._flood(flood)
            return
        try:
            events = self.session.receive_data(data)
        except SessionError as e:
            # The frames before the error count first (a rapid reset meets Envoy's premature
            # reset accounting before nghttp2's own RST_STREAM rate limit).
            if not self._events(e.events):
                return
            if e.flood is not None:  # the library's own flood limit (nghttp2's queued ACKs)
                self.count_flood(e.flood)
                self.abort()
                return
            self._protocol_error(e)
            return
        self._events(events)
        self._schedule_flush()

    def _events(self, events: list[h2.events.Event]) -> bool:
        """Whether the connection goes on after them."""
        # A stream the same read opens and resets (rapid reset) is never started: nothing of it
        # reaches an upstream.
        self.batch_resets = {e.stream_id or 0 for e in events if isinstance(e, h2.events.StreamReset)}
        for ev in events:
            if self.closing:  # a protocol error ended the connection: the rest is moot
                return False
            try:
                self._event(ev)
            except Exception as e:  # a bug must cost this connection only, never the worker
                log.error("http2 connection error: %r", e, exc_info=e)
                self._goaway(h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.abort()
                return False
        return not self.closing

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            self._data(ev.stream_id, ev.data or b"", ev.flow_controlled_length or 0)
        elif isinstance(ev, h2.events.RequestReceived):
            self._request(ev.stream_id, ev.headers or [], ev.stream_ended is not None)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id or 0)
            if st is not None:
                st.decode_complete()
        elif isinstance(ev, h2.events.StreamReset):
            self._reset_by_client(ev.stream_id or 0)
        elif isinstance(ev, h2.events.WindowUpdated):
            self._window_updated(ev.stream_id or 0)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            # The client's GOAWAY: no new streams from it; the open ones finish, then we close.
            self.draining = True
            if not self.streams:
                self.close_when_flushed()
        elif isinstance(ev, h2.events.TrailersReceived) and (st := self.streams.get(ev.stream_id or 0)):
            st.request_trailers = trailer_block(list(ev.headers or []))  # sent at the end (h2 only)

    def _request(self, sid: int, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        cfg = self.cfg
        if over_limits(raw, cfg):  # this stream is reset, the connection goes on (Envoy 1.40)
            s = self.stats
            s.downstream_rq_total += 1
            s.downstream_rq_http2_total += 1
            s.downstream_rq_rx_reset += 1
            self.session.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if len(self.streams) >= self.max_streams:  # this one would be one too many
            # Over the max_concurrent_streams we announced: REFUSED_STREAM (Envoy 1.40, checked).
            self.session.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if cfg.underscores == 2:  # DROP_HEADER
            raw = [h for h in raw if b"_" not in h[0]]
        problem = h2_request_problem(raw)
        if problem is not None:
            self._protocol_error(ValueError(problem))
            return
        if self.draining:
            self.session.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        st = ActiveStream(self)
        self.describe(st.info)
        st.info.protocol = "HTTP/2"
        st.method, st.url, st.headers = request_head(raw, ended)
        st.head_request = st.method == b"HEAD"
        self.streams[sid] = st
        self.ids[st] = sid
        s = self.stats
        s.downstream_rq_total += 1
        s.downstream_rq_http2_total += 1
        s.downstream_rq_active += 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.stream_idle_timer is None and self.cfg.config.stream_idle_timeout > 0:
            self._arm_stream_idle_tick(self.cfg.config.stream_idle_timeout)
        if sid in self.batch_resets:
            return  # its StreamReset follows in this read
        try:
            st.start()
        except Exception as e:
            log.error("http2 stream error: %r", e, exc_info=e)
            if not st.state & RESPONSE_STARTED:
                st.send_local_reply(lr.INTERNAL_ERROR)
            else:
                self.reset_stream(st)

    def _data(self, sid: int, data: bytes, flow: int) -> None:
        st = self.streams.get(sid)
        if st is not None and data:
            st.decode_body(data)
        if not flow:
            return
        if sid in self.paused and st is not None:
            self.unacked[sid] = self.unacked.get(sid, 0) + flow
            return
        self._ack(sid, flow)

    def _ack(self, sid: int, n: int) -> None:
        self.session.acknowledge_received_data(n, sid)

    def _reset_by_client(self, sid: int) -> None:
        self.h2stats.rx_reset += 1
        self.pending.pop(sid, None)
        self.held.pop(sid, None)
        self.unacked.pop(sid, None)
        self.paused.pop(sid, None)
        st = self.streams.pop(sid, None)
        if st is not None:
            self.ids.pop(st, None)
            st.downstream_reset()
            self._stream_closed(st)
            self._maybe_idle()



    # == streams ==============================================================================
    def stream_done(self, st: ActiveStream) -> None:
        """Called by a stream when its response is over, and again when its request is."""
        if st.info.end_time is None:
            self.record(st)
        if not st.state & RESPONSE_DONE:
            return
        sid = self.ids.pop(st, None)
        if sid is None:
            return
        self.streams.pop(sid, None)
        self.paused.pop(sid, None)
        self.ended.discard(sid)
        self.held.pop(sid, None)
        self.idle_marks.pop(st, None)
        held = self.unacked.pop(sid, 0)
        if held:
            self._ack(sid, held)
        self._schedule_flush()
        self._stream_closed(st)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams:
            return
        if self.draining:
            self.loop.call_soon(self._close_if_idle)
        else:
            self._arm_idle()

    def _close_if_idle(self) -> None:
        if not self.streams and not self.pending:
            self.close_when_flushed()

    # == flow control ===========================================================================
    def pause_stream(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is not None:
            self.paused[sid] = self.paused.get(sid, 0) + 1
            self.stats.downstream_flow_control_paused_reading_total += 1

    def resume_stream(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is None or sid not in self.paused:
            return
        n = self.paused[sid] - 1
        if n > 0:
            self.paused[sid] = n
            return
        del self.paused[sid]
        self.stats.downstream_flow_control_resumed_reading_total += 1
        held = self.unacked.pop(sid, 0)
        if held:
            self._ack(sid, held)
            self._schedule_flush()

    # == timers and errors ======================================================================
    def _arm_idle(self) -> None:
        timeout = self.cfg.config.idle_timeout
        if timeout > 0 and self.idle_timer is None:
            self.idle_timer = self.loop.call_later(timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.idle_timer = None
        if not self.streams:
            self.stats.downstream_cx_idle_timeout += 1
            self.close_when_flushed()

    def arm_stream_idle(self, st: ActiveStream, timeout: float) -> None:
        """A route's idle_timeout for this stream (the connection's tick checks every stream)."""
        st.idle_timeout = timeout
        if timeout > 0 and self.stream_idle_timer is None:
            self._arm_stream_idle_tick(timeout)

    def _arm_stream_idle_tick(self, timeout: float) -> None:
        self.stream_idle_timer = self.loop.call_later(timeout / _IDLE_TICKS, self._on_stream_idle)

    def _on_stream_idle(self) -> None:
        """Envoy's stream idle timeout, per stream, from one connection timer: each tick notes
        which streams moved (bytes either way, a response started); a stream unmoved for its
        timeout gets the stream's own ending (504 / 408 / reset, flag SI)."""
        self.stream_idle_timer = None
        if self.closing or not self.streams:
            return
        now = self.loop.time()
        shortest = 0.0
        for st in list(self.streams.values()):
            if st.state & RESPONSE_DONE or st.idle_timeout <= 0:
                continue
            mark = (st.info.bytes_received, st.info.bytes_sent, st.state & RESPONSE_STARTED != 0)
            seen = self.idle_marks.get(st)
            if seen is None or seen[0] != mark:
                self.idle_marks[st] = (mark, now)
            elif now - seen[1] >= st.idle_timeout - 1e-3:
                self.stats.downstream_rq_idle_timeout += 1
                st.stream_idle_timeout()
                continue
            shortest = st.idle_timeout if not shortest else min(shortest, st.idle_timeout)
        if shortest:
            self._arm_stream_idle_tick(shortest)

    def _protocol_error(self, e: Exception) -> None:
        """A connection error: GOAWAY (the session queued one with the error's own code, e.g.
        COMPRESSION_ERROR for HPACK, when it raised; else PROTOCOL_ERROR), then close."""
        log.debug("http2 protocol error: %r", e)
        self.stats.downstream_cx_protocol_error += 1
        if isinstance(e, SessionError) and e.overflow:  # too many CONTINUATION frames
            self.h2stats.header_overflow += 1
        self._goaway(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._close_failed()

    def _flood(self, stat: str) -> None:
        """An inbound flood (h2_limits): GOAWAY ENHANCE_YOUR_CALM, counted, then close."""
        self.count_flood(stat)
        self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self._close_failed()

    def _close_failed(self) -> None:
        """Close after a connection error: the open streams are reset now (their upstreams
        dropped, so no late answer arrives); what is queued gets a second to leave, as
        Envoy's delayed close, then the connection is aborted (a client that does not read
        cannot hold it open)."""
        self._flush()  # the GOAWAY
        self.closing = True
        streams = list(self.streams.values())
        self.streams.clear()
        self.ids.clear()
        for st in streams:
            st.downstream_reset()
        t = self.transport
        if t is not None:
            t.close()
            self.loop.call_later(_ABORT_AFTER_S, t.abort)

    def _stream_closed(self, st: ActiveStream) -> None:
        """Envoy's premature-reset accounting (CVE-2023-44487): every ended stream counts;
        too many ended early without a response close the connection."""
        self.closed_streams += 1
        info = st.info
        if is_premature(time.time() - info.start_time, info.response_code):
            self.premature_resets += 1
            if too_many_premature_resets(self.closed_streams, self.premature_resets) and not self.closing:
                self.stats.downstream_rq_too_many_premature_resets += 1
                self.stats.downstream_cx_protocol_error += 1
                self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                self._close_failed()


_IDLE_TICKS = 8
_ABORT_AFTER_S = 1.0  # Envoy's delayed_close_timeout default

