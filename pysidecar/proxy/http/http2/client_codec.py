"""The HTTP/2 upstream codec: one h2c connection to one upstream host, many streams on it.

Promises:
- An `Http2UpstreamConnection` is an asyncio Protocol over `h2` (client side). It opens with
  the cluster's http2_protocol_options (windows, no push) and carries streams up to
  `capacity()`: the smaller of the peer's SETTINGS_MAX_CONCURRENT_STREAMS and the cluster's
  max_concurrent_streams, and no more streams in all than max_requests_per_connection (then
  it drains: no new streams, closed when its last stream ends, upstream_cx_max_requests).
- Each stream is an `H2UpstreamStream` handle for the router side (send_headers, send_data,
  send_trailers, end, reset, pause_reading / resume_reading) and reports to its
  `UpstreamStreamCallbacks`: headers, body, trailers, complete, reset (with Envoy's reason),
  pause / resume writing. A handle that was reset or finished reports nothing more.
- Flow control both ways: request data beyond the stream's send window waits in the handle
  (never more than `buffer_limit` before the router is told to pause its downstream, resumed
  below half of it); response data is acknowledged (WINDOW_UPDATE) only while the router's
  downstream is not paused, so a slow client holds the upstream to its window, not to memory.
- GOAWAY: the connection drains (no new streams); streams above last_stream_id are reset as
  `remote_refused_stream_reset` (never processed by the upstream: retriable as Envoy retries
  them); the others finish. RST_STREAM from the upstream: `remote_reset`
  (`remote_refused_stream_reset` for REFUSED_STREAM). A frame h2 refuses: every stream reset
  `protocol_error`, GOAWAY PROTOCOL_ERROR, closed (upstream_cx_protocol_error). The transport
  closing: `connection_termination` for streams not complete.
- Never raises into the event loop for anything the peer sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from pysidecar.model.http import Http2Options
from pysidecar.proxy.http.http2.client_stream import H2UpstreamStream
from pysidecar.proxy.http.http2.request_headers import (
    response_status,
    strip_pseudo,
    trailer_block,
)
from pysidecar.proxy.http.retry import CONNECTION_TERMINATION, PROTOCOL_ERROR
from pysidecar.proxy.http.upstream_callbacks import UpstreamStreamCallbacks

if TYPE_CHECKING:
    from pysidecar.proxy.http.http2.conn_pool import Http2HostPool

log = logging.getLogger(__name__)

REMOTE_RESET = "remote_reset"
REMOTE_REFUSED = "remote_refused_stream_reset"

# pysidecar's windows when the cluster sets none: what the upstream may send before the
# proxy's client took it (Envoy's 256 MiB defaults would let one stream fill memory).
DEFAULT_STREAM_WINDOW = 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 2**31 - 1  # Envoy's upstream default


class _ClientConnection(h2.connection.H2Connection):
    """h2's client connection, except that a GOAWAY does not close it for the streams the
    peer will still answer: h2 moves to CLOSED on GOAWAY and then refuses every frame, so the
    responses to streams at or below last_stream_id (which RFC 9113 6.8 says proceed) would be
    lost. The pool opens no new stream on a connection that received GOAWAY (`draining`)."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        self.state_machine.state = state
        return result


class Http2UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_connection_window",
        "_local_settings",
        "born",
        "buffer_limit",
        "closed",
        "draining",
        "h2",
        "idle_timer",
        "local_address",
        "max_streams",
        "pool",
        "ready",
        "streams",
        "streams_total",
        "transport",
        "unsent",
    )

    def __init__(self, pool: Http2HostPool, options: Http2Options, buffer_limit: int) -> None:
        self.pool = pool
        self.buffer_limit = buffer_limit
        self.h2 = _ClientConnection(
            # Blocks are checked by request_problem before they are sent, and responses are
            # relayed as received: h2's own per-header checks would only cost time.
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        # Remote settings start at h2's defaults until the peer's SETTINGS arrive; our own
        # limit on concurrent streams is the cluster's.
        self.max_streams = options.max_concurrent_streams or DEFAULT_MAX_CONCURRENT_STREAMS
        self._local_settings = {
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: options.initial_stream_window_size or DEFAULT_STREAM_WINDOW,
        }
        self._connection_window = options.initial_connection_window_size or DEFAULT_CONNECTION_WINDOW
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpstreamStream] = {}  # by id: HEADERS sent
        self.unsent: set[H2UpstreamStream] = set()  # opened, HEADERS not sent yet
        self.streams_total = 0
        self.ready = False
        self.closed = False
        self.draining = False
        self.local_address: str | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.born = 0.0

    # -- capacity ---------------------------------------------------------------------------
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if not self.ready or self.draining or self.closed:
            return 0
        limit = min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)
        left = limit - len(self.streams) - len(self.unsent)
        per_connection = self.pool.cluster.config.max_requests_per_connection
        if per_connection:
            left = min(left, per_connection - self.streams_total)
        return max(0, left)

    def open_stream(self, cb: UpstreamStreamCallbacks) -> H2UpstreamStream:
        """A stream whose id comes with its HEADERS (`assign`): ids must go out in increasing
        order, and heads are sent in the order requests finish, not in the order they opened."""
        st = H2UpstreamStream(self, 0, cb)
        self.unsent.add(st)
        self.streams_total += 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        per_connection = self.pool.cluster.config.max_requests_per_connection
        if per_connection and self.streams_total >= per_connection:
            self.draining = True  # Envoy: the connection carries no more, closed once idle
            self.pool.rq_stats.upstream_cx_max_requests += 1
        return st

    # -- asyncio Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        self.born = self.pool.loop.time()
        t.set_write_buffer_limits(high=self.buffer_limit)  # type: ignore[attr-defined]
        sock = t.get_extra_info("sockname")
        if sock:
            host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
            self.local_address = f"{host}:{sock[1]}"
        self.pool.cx_stats.upstream_cx_active += 1
        h = self.h2
        h.local_settings = h2.settings.Settings(client=True, initial_values=self._local_settings)
        h.initiate_connection()
        grow = self._connection_window - 65535
        if grow > 0:
            h.increment_flow_control_window(grow)
        self.ready = True
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.pool.cx_stats.upstream_cx_rx_bytes_total += len(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError as e:
            # A header block past the decoder's limit (64 KiB; Envoy's 60 KiB): Envoy's codec
            # resets that stream and reports a remote reset (503 UR, checked on 1.40). h2's
            # HPACK state is lost with it, so this connection ends: its streams all get that.
            log.debug("http2 upstream: oversized headers: %r", e)
            self._connection_error(REMOTE_RESET)
            return
        except h2.exceptions.ProtocolError as e:
            log.debug("http2 upstream: protocol error: %r", e)
            self._connection_error()
            return
        touched = {sid for ev in events if (sid := getattr(ev, "stream_id", 0))}
        for ev in events:
            self._event(ev)
            if self.closed:
                return
        self.flush()
        for sid in touched:  # the end of this read: heads held for their body go out
            st = self.streams.get(sid)
            if st is not None and st.cb is not None:
                st.cb.upstream_read_done()

    def pause_writing(self) -> None:
        for st in list(self.streams.values()):
            if st.cb is not None and not st.write_paused:
                st.write_paused = True
                st.cb.upstream_pause_writing()

    def resume_writing(self) -> None:
        for st in list(self.streams.values()):
            if st.cb is not None and st.write_paused and st.outbox_bytes <= self.buffer_limit // 2:
                st.write_paused = False
                st.cb.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.transport is not None:
            stats = self.pool.cx_stats
            stats.upstream_cx_active -= 1
            stats.upstream_cx_destroy += 1
        for st in [*self.streams.values(), *self.unsent]:
            self._end_stream(st, CONNECTION_TERMINATION)
        self.pool.connection_closed(self)

    # -- events -----------------------------------------------------------------------------
    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            status = response_status(ev.headers or [])
            if st is None:
                return
            if status is None:
                self.fail_stream(st, PROTOCOL_ERROR)
                return
            st.response_started = True
            self.pool.response_status(status)
            if st.cb is not None:
                st.cb.upstream_headers(status, strip_pseudo(list(ev.headers or [])))
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and st.cb is not None and response_status(ev.headers or []) == 100:
                st.cb.upstream_continue()
        elif isinstance(ev, h2.events.DataReceived):
            self._data(ev)
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and st.cb is not None:
                st.cb.upstream_trailers(trailer_block(list(ev.headers or [])))
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                self._complete(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                refused = ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                self.pool.rq_stats.upstream_rq_rx_reset += 1
                self._end_stream(st, REMOTE_REFUSED if refused else REMOTE_RESET)
        elif isinstance(ev, h2.events.WindowUpdated):
            for st in list(self.streams.values()) if ev.stream_id == 0 else filter(None, [self.streams.get(ev.stream_id)]):
                self.drain_stream(st)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.pool.capacity_changed(self)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._goaway(ev.last_stream_id or 0)

    def _data(self, ev: h2.events.DataReceived) -> None:
        n = ev.flow_controlled_length or 0
        st = self.streams.get(ev.stream_id)
        if st is None or st.cb is None:
            if n:
                self.ack(ev.stream_id, n)  # a stream we gave up on: keep the connection's window open
            return
        if st.read_paused:
            st.unacked += n
        elif n:
            self.ack(ev.stream_id, n)
        if ev.data:
            st.cb.upstream_body(ev.data)

    def _goaway(self, last_stream_id: int) -> None:
        """Drain: streams the upstream never saw are refused (retriable), the rest finish."""
        self.draining = True
        for st in [*self.streams.values(), *self.unsent]:  # unsent: never seen either
            if st.sid > last_stream_id or st.sid == 0:
                self._end_stream(st, REMOTE_REFUSED)
        if not self.streams:
            self.close()
        self.pool.capacity_changed(self)

    def _connection_error(self, reason: str = PROTOCOL_ERROR) -> None:
        self.pool.rq_stats.upstream_cx_protocol_error += 1
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.flush()
        for st in [*self.streams.values(), *self.unsent]:
            self._end_stream(st, reason)
        self.close()

    # -- streams ----------------------------------------------------------------------------
    def drain_stream(self, st: H2UpstreamStream) -> None:
        """Send what the stream's and the connection's windows allow, then its end."""
        if self.closed or st.local_done or st.sid not in self.streams:
            return
        h = self.h2
        try:
            while st.outbox:
                window = min(h.local_flow_control_window(st.sid), h.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = st.outbox[0]
                if len(chunk) > window:
                    st.outbox[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    st.outbox.popleft()
                st.outbox_bytes -= len(chunk)
                end = st.end_pending and not st.outbox and st.trailers_pending is None
                h.send_data(st.sid, chunk, end_stream=end)
                if end:
                    st.local_done = True
            if not st.outbox and st.end_pending and not st.local_done:
                if st.trailers_pending is not None:
                    h.send_headers(st.sid, st.trailers_pending, end_stream=True)
                else:
                    h.send_data(st.sid, b"", end_stream=True)
                st.local_done = True
        except h2.exceptions.ProtocolError as e:  # the stream closed meanwhile
            log.debug("http2 upstream: send on stream %d refused: %r", st.sid, e)
        self.flush()
        if st.write_paused and st.outbox_bytes <= self.buffer_limit // 2 and st.cb is not None:
            st.write_paused = False
            st.cb.upstream_resume_writing()

    def ack(self, sid: int, n: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(n, sid)
        self.flush()

    def assign(self, st: H2UpstreamStream) -> None:
        """The stream's id, as its HEADERS go out."""
        self.unsent.discard(st)
        st.sid = self.h2.get_next_available_stream_id()
        self.streams[st.sid] = st

    def _forget(self, st: H2UpstreamStream) -> bool:
        """The stream leaves the connection (once): its circuit-breaker request slot too."""
        if st.sid == 0:
            if st not in self.unsent:
                return False
            self.unsent.discard(st)
        elif self.streams.pop(st.sid, None) is None:
            return False
        self.pool.stream_released()
        return True

    def cancel_stream(self, st: H2UpstreamStream) -> None:
        if not self._forget(st):
            return
        if st.sid == 0:  # never on the wire
            self._stream_gone()
            return
        self.pool.rq_stats.upstream_rq_tx_reset += 1
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.CANCEL)
        if st.unacked:
            self.ack(st.sid, st.unacked)
        self.flush()
        self._stream_gone()

    def fail_stream(self, st: H2UpstreamStream, reason: str) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._end_stream(st, reason)
        self.flush()

    def _complete(self, st: H2UpstreamStream) -> None:
        if not self._forget(st):
            return
        cb, st.cb = st.cb, None
        if not st.local_done:
            # The response ended before the request did: Envoy stops sending (RST NO_ERROR).
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.NO_ERROR)
        if cb is not None:
            cb.upstream_complete()
        self._stream_gone()

    def _end_stream(self, st: H2UpstreamStream, reason: str) -> None:
        if not self._forget(st):
            return
        cb, st.cb = st.cb, None
        if cb is not None:
            if not st.response_started:
                self.pool.reset_before_response()
            cb.upstream_reset(reason, None)
        self._stream_gone()

    def _stream_gone(self) -> None:
        if self.streams or self.unsent:
            self.pool.capacity_changed(self)
            return
        if self.draining:
            self.close()
            return
        idle = self.pool.cluster.config.http_idle_timeout
        if idle > 0 and not self.closed and self.idle_timer is None:
            self.idle_timer = self.pool.loop.call_later(idle, self._idle_timeout)
        self.pool.capacity_changed(self)

    def _idle_timeout(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.unsent and not self.closed:
            self.pool.rq_stats.upstream_cx_idle_timeout += 1
            self.close()

    # -- output -----------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.h2.data_to_send()
        t = self.transport
        if data and t is not None and not t.is_closing():
            self.pool.cx_stats.upstream_cx_tx_bytes_total += len(data)
            t.write(data)

    def close(self) -> None:
        """Close now; streams still open are ended by connection_lost."""
        if self.closed:
            return
        self.closed = True
        self.draining = True
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()  # GOAWAY NO_ERROR (refused when one was sent)
            self.flush()
            self.transport.close()
