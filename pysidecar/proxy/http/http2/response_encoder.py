"""Where HTTP/2 responses are framed (the encoding half of Envoy's Http2::ServerConnectionImpl):
the encode_* side of `codec.DownstreamCodec` for `http2.server_codec.Http2Connection`.

Promises:
- A response head is held, as HTTP/1's is, until its first body bytes, its end (then HEADERS
  carries END_STREAM, as Envoy sends a bodiless response) or the end of the upstream's read
  (`encode_flush`).
- DATA goes out within the client's windows; the rest waits per stream (`pending`) while that
  stream's upstream stops being read, and goes out on WINDOW_UPDATE. A full socket buffer stops
  every stream's upstream from being read until it drains (`pause_writing`).
- Frames of one loop iteration leave in one write (`_schedule_flush`); frames queued for a
  client that does not read are counted (h2_limits: Envoy's max_outbound_frames and
  max_outbound_control_frames): past the limit the connection is aborted, counted in
  http2.outbound_flood / outbound_control_flood.
- Once the connection failed (`closing`), nothing more is encoded: a late upstream answer is
  dropped quietly.
- A response the stream cannot finish is reset (RST_STREAM INTERNAL_ERROR,
  downstream_rq_tx_reset); a 101 cannot be carried on HTTP/2 (no extended CONNECT): reset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h2.errors

from pysidecar.observe.stats import Http2CodecStats
from pysidecar.proxy.http.downstream import Downstream
from pysidecar.proxy.http.h2_limits import ProtocolConstraints
from pysidecar.proxy.http.http2.session import SessionError

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.codec import UpstreamCodec
    from pysidecar.proxy.http.headers import Headers
    from pysidecar.proxy.http.http2.session import ServerSession

log = logging.getLogger(__name__)

# ActiveStream.head_out while the stream's response head waits in `held`: the upstream
# request then calls flush_head at the end of the upstream's read, as for HTTP/1's held head.
HELD = b"held"


class Pending:
    """Response bytes the client's window does not take yet, and whether the end follows."""

    __slots__ = ("data", "end", "trailers")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.end = False
        self.trailers: Headers | None = None  # sent as the end, after the data


class Http2ResponseEncoder(Downstream):
    """The encode_* half of `codec.DownstreamCodec` for HTTP/2 (Http2Connection's base)."""

    __slots__ = (
        "constraints",
        "ended",
        "flush_scheduled",
        "h2stats",
        "held",
        "ids",
        "paused_upstreams",
        "pending",
        "session",
        "streams",
        "write_blocked",
    )
    paused_upstreams: list[tuple[int, UpstreamCodec]]  # read-disabled while the socket is full
    session: ServerSession  # nghttp2 or h2 (http2/session.py)
    streams: dict[int, ActiveStream]
    ids: dict[ActiveStream, int]
    pending: dict[int, Pending]  # response bytes past the client's window, per stream
    held: dict[int, Headers]  # response heads not sent yet (encode_headers)
    ended: set[int]  # streams whose END_STREAM went out
    write_blocked: bool  # the socket's buffer is full: every stream's upstream is paused
    flush_scheduled: bool
    constraints: ProtocolConstraints  # Envoy's flood limits (h2_limits)
    h2stats: Http2CodecStats

    def _sid(self, st: ActiveStream) -> int | None:
        # None once the connection failed: a late upstream answer is dropped quietly.
        return None if self.closing else self.ids.get(st)

    def encode_continue(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is not None:
            self.session.send_headers(sid, [(b":status", b"100")])
            self._schedule_flush()

    def encode_headers(
        self, st: ActiveStream, status: int, headers: Headers, has_length: bool
    ) -> None:
        """The response head is held, as HTTP/1's is, until the first body bytes, the end (then
        HEADERS carries END_STREAM, as Envoy sends a bodiless response) or the end of the
        upstream's read (`encode_flush`; the upstream request calls it while `head_out` is set)."""
        sid = self._sid(st)
        if sid is not None:
            self.held[sid] = [(b":status", b"%d" % status), *headers]
            st.head_out = HELD

    def _send_head(self, st: ActiveStream, sid: int, end: bool) -> bool:
        st.head_out = b""
        block = self.held.pop(sid)
        try:
            self.session.send_headers(sid, block, end_stream=end)
        except SessionError as e:
            log.debug("http2: response headers refused: %r", e)
            self.reset_stream(st)
            return False
        if end:
            self.ended.add(sid)
        self._schedule_flush()
        return True

    def encode_flush(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is not None and sid in self.held:
            self._send_head(st, sid, False)

    def encode_data(self, st: ActiveStream, data: bytes) -> None:
        sid = self._sid(st)
        if (
            sid is None
            or (sid in self.held and not self._send_head(st, sid, False))
            or not self._open(sid)
        ):
            return
        self._send(sid, data, False)

    def encode_end(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is None:
            return
        if sid in self.held:
            self._send_head(st, sid, True)
        elif self._open(sid):
            self._send(sid, b"", True)

    def encode_trailers(self, st: ActiveStream, trailers: Headers) -> None:
        """Trailers end the stream: HEADERS with END_STREAM once the data before them is out."""
        sid = self._sid(st)
        if sid is None or (sid in self.held and not self._send_head(st, sid, False)) or not self._open(sid):
            return
        p = self.pending.get(sid)
        if p is not None:
            p.trailers, p.end = trailers, True
            return
        self.ended.add(sid)
        try:
            self.session.send_trailers(sid, trailers)
        except SessionError as e:
            log.debug("http2: trailers refused: %r", e)
            self.reset_stream(st)
            return
        self._schedule_flush()

    def encode_local_reply(
        self, st: ActiveStream, status: int, body: bytes, headers: Headers
    ) -> None:
        sid = self._sid(st)
        if sid is None:
            return
        end = st.head_request or not body
        try:
            self.session.send_headers(sid, [(b":status", b"%d" % status), *headers], end_stream=end)
        except SessionError as e:
            log.debug("http2: local reply refused: %r", e)
            self.reset_stream(st)
            return
        if not end:
            self._send(sid, body, True)
        self._schedule_flush()

    def reset_stream(self, st: ActiveStream) -> None:
        sid = self._sid(st)
        if sid is None:
            return
        self.pending.pop(sid, None)
        self.held.pop(sid, None)
        self.session.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self.stats.downstream_rq_tx_reset += 1
        self.h2stats.tx_reset += 1
        self._schedule_flush()

    def start_tunnel(self, st: ActiveStream) -> None:
        """A 101 cannot be carried on HTTP/2 (extended CONNECT is not implemented): reset."""
        st.drop_upstream()
        self.reset_stream(st)

    def write(self, data: bytes) -> None:
        """Tunnel bytes: never, on HTTP/2 (see start_tunnel)."""

    def _open(self, sid: int) -> bool:
        return sid not in self.ended and self.session.stream_open(sid)

    def _send(self, sid: int, data: bytes, end: bool) -> None:
        """DATA within the client's windows; the rest waits in `pending` for WINDOW_UPDATE,
        with the stream's upstream paused meanwhile."""
        p = self.pending.get(sid)
        if p is not None:
            if data:
                p.data.append(data)
            p.end = p.end or end
            return
        rest = self._send_window(sid, data)
        if rest:
            p = self.pending[sid] = Pending()
            p.data.append(rest)
            p.end = end
            self._pause_upstream(sid)
        elif end:
            self.ended.add(sid)
            self.session.end_stream(sid)
        self._schedule_flush()

    def _send_window(self, sid: int, data: bytes) -> bytes:
        session = self.session
        while data:
            window = session.send_window(sid)
            if window <= 0:
                return data
            session.send_data(sid, data[:window])
            data = data[window:]
        return b""

    def _window_updated(self, sid: int) -> None:
        for s in list(self.pending) if sid == 0 else [sid]:
            p = self.pending.get(s)
            if p is None or not self._open(s):
                self.pending.pop(s, None)
                continue
            while p.data:
                rest = self._send_window(s, p.data[0])
                if rest:
                    p.data[0] = rest
                    break
                p.data.pop(0)
            if not p.data:
                del self.pending[s]
                if p.trailers is not None:
                    self.session.send_trailers(s, p.trailers)
                elif p.end:  # the stream is done on our side already: `ended` is not needed
                    self.session.end_stream(s)
                self._resume_upstream(s)

    def _pause_upstream(self, sid: int) -> None:
        st = self.streams.get(sid)
        up = st.upstream() if st is not None else None
        if up is not None:
            up.pause_reading()

    def _resume_upstream(self, sid: int) -> None:
        if self.write_blocked:
            return  # resume_writing resumes every stream
        st = self.streams.get(sid)
        up = st.upstream() if st is not None else None
        if up is not None:
            up.resume_reading()

    def pause_writing(self) -> None:
        self.write_blocked = True
        for sid, st in self.streams.items():
            up = st.upstream()
            if up is not None:
                up.pause_reading()
                self.paused_upstreams.append((sid, up))

    def resume_writing(self) -> None:
        self.write_blocked = False
        ups, self.paused_upstreams = self.paused_upstreams, []
        for sid, up in ups:
            if sid not in self.pending:
                up.resume_reading()

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self._write(self.session.data_to_send())

    def _write(self, data: bytes) -> None:
        t = self.transport
        if data and t is not None and not t.is_closing():
            if not self.closing:
                flood = self.constraints.outbound(data, t.get_write_buffer_size() > 0)
                if flood is not None:  # the client does not read what it makes us send
                    self.count_flood(flood)
                    self.abort()
                    return
            self.stats.downstream_cx_tx_bytes_total += len(data)
            t.write(data)

    def count_flood(self, stat: str) -> None:
        """One of Envoy's http2.* flood counters (h2_limits names it)."""
        log.debug("http2 flood: %s", stat)
        h = self.h2stats
        setattr(h, stat, getattr(h, stat) + 1)
