"""`session.ServerSession` on libnghttp2 (Envoy's HTTP/2 codec library), through the cffi binding
built by `pysidecar native build` (nghttp2_ffi.py): framing, HPACK, stream states and flow
control in C; this module turns nghttp2's callbacks into h2's event classes and the codec's
send_* calls into nghttp2 submissions. Used only when nghttp2_lib.load() found the binding;
compiled with mypyc with the rest of the data path (native.MODULES).

Promises (beyond session.py's):
- nghttp2 runs without HTTP messaging checks: request blocks reach header_validation whole
  (up to one field past the HCM's limits: the codec resets such a stream), so what is refused
  and how is the same as on h2, Envoy's answers.
- nghttp2 enforces max_concurrent_streams itself: excess streams get RST_STREAM REFUSED_STREAM
  until our SETTINGS is acknowledged (PROTOCOL_ERROR after, as Envoy on nghttp2); an
  undecodable header block gets nghttp2's GOAWAY COMPRESSION_ERROR; more unanswered PING /
  SETTINGS than nghttp2's 1000 ACKs queued is `outbound_control_flood`; a header block in
  too many CONTINUATION frames is a `SessionError` with `overflow`.
- Request blocks: cookie fields joined into one (RFC 9113 §8.2.3), as h2 and Envoy do.
- Response heads: names lower-cased, connection-specific fields (and `te` other than
  trailers) never sent, as hpack_encoder does for h2. A response's DATA waits in `out` per
  stream until nghttp2 frames it (its data source, read in ps_send); trailers queued behind
  DATA go out after it (nghttp2_submit_trailer from the data source).
- After `close()` every call is a no-op (a late flush of a closed connection is harmless).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

from pysidecar.proxy.http.header_validation import CONNECTION_SPECIFIC
from pysidecar.proxy.http.headers import Headers
from pysidecar.proxy.http.http2 import nghttp2_lib
from pysidecar.proxy.http.http2.session import SessionError

log = logging.getLogger(__name__)

# None without the binding: this module then imports (the compiled build lists it) but is not used.
_module: Any = nghttp2_lib.load()
ffi: Any = _module.ffi if _module is not None else None
lib: Any = _module.lib if _module is not None else None

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 7, 8
_END_STREAM = 0x1
_HCAT_REQUEST = 0
# nghttp2.h's values (its ABI): data source flags and error codes.
_EOF, _NO_END_STREAM = 0x01, 0x02
_TRAILERS_FOLLOW = _EOF | _NO_END_STREAM
_DEFERRED, _CALLBACK_FAILURE, _FLOODED, _TOO_MANY_CONTINUATIONS = -508, -902, -904, -905


class _Out:
    """A stream's response DATA not yet framed, and how its DATA ends."""

    __slots__ = ("active", "chunks", "deferred", "end", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: tuple[bytes, list[int], int] | None = None
        self.active = False  # a data source is submitted for the stream
        self.deferred = False  # it said "nothing now": resume it when data comes


def _flat(headers: Headers, response: bool) -> tuple[bytes, list[int], int]:
    """(names and values joined, their lengths, the field count) for ps_submit_headers."""
    parts: list[bytes] = []
    lens: list[int] = []
    for name, value in headers:
        if response:
            name = name.lower()
            if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                continue
        parts.append(name)
        parts.append(value)
        lens.append(len(name))
        lens.append(len(value))
    return b"".join(parts), lens, len(lens) // 2


class NgHttp2Session:
    __slots__ = ("c", "events", "goaway_sent", "handle", "highest", "out", "queued")

    def __init__(self, header_limit: int, count_limit: int) -> None:
        if ffi is None:
            raise RuntimeError(nghttp2_lib.why())
        self.handle = ffi.new_handle(self)
        self.c = lib.ps_conn_new(self.handle, header_limit, count_limit)
        if self.c == ffi.NULL:
            raise MemoryError("nghttp2_session_server_new2")
        self.events: list[Event] = []
        self.out: dict[int, _Out] = {}
        self.queued = 0  # DATA bytes in `out`, all streams
        self.highest = 0  # the last request stream received whole (GOAWAY's last-stream-id)
        self.goaway_sent = False

    def initiate(self, streams: int, window: int, cx_window: int, header_list: int) -> None:
        lib.ps_settings(self.c, streams, window, header_list)
        if cx_window > 65535:
            lib.nghttp2_submit_window_update(self.c.session, 0, 0, cx_window - 65535)

    # == in ====================================================================================
    def receive_data(self, data: bytes) -> list[Event]:
        if self.c == ffi.NULL:
            return []
        events = self.events = []
        c = self.c
        rv = lib.ps_recv(c, data, len(data))
        if rv < 0:
            self.goaway_sent = self.goaway_sent or bool(c.goaway)
            raise SessionError(
                ffi.string(lib.nghttp2_strerror(rv)).decode(),
                overflow=rv == _TOO_MANY_CONTINUATIONS,
                flood="outbound_control_flood" if rv == _FLOODED else None,
                events=events,
            )
        if c.goaway and not self.goaway_sent:  # nghttp2 ended the connection itself
            self.goaway_sent = True  # (HPACK, its RST_STREAM rate limit): code in its GOAWAY
            raise SessionError(f"nghttp2 sent GOAWAY {c.goaway_code}", events=events)
        return events

    def _block(self) -> Headers:
        c = self.c
        n = c.hn
        raw = ffi.buffer(c.hbuf, c.hlen)[:]
        ends = ffi.unpack(c.hoff, 2 * n)
        block: Headers = []
        start = 0
        cookies = 0
        for i in range(0, 2 * n, 2):
            name_end, end = ends[i], ends[i + 1]
            name = raw[start:name_end]
            block.append((name, raw[name_end:end]))
            cookies += name == b"cookie"
            start = end
        return _join_cookies(block) if cookies > 1 else block

    def on_frame(self, ftype: int, flags: int, sid: int, cat: int, code: int) -> None:
        events = self.events
        if ftype == _HEADERS:
            ended = StreamEnded(stream_id=sid) if flags & _END_STREAM else None
            if cat == _HCAT_REQUEST:
                self.highest = max(self.highest, sid)
                events.append(RequestReceived(stream_id=sid, headers=self._block(), stream_ended=ended))
            else:
                events.append(TrailersReceived(stream_id=sid, headers=self._block(), stream_ended=ended))
            if ended is not None:
                events.append(ended)
        elif ftype == _DATA:  # with END_STREAM (the C side passes no other)
            events.append(StreamEnded(stream_id=sid))
        elif ftype == _RST_STREAM:
            events.append(StreamReset(stream_id=sid, error_code=code))
        elif ftype == _WINDOW_UPDATE:
            events.append(WindowUpdated(stream_id=sid, delta=code))
        elif ftype == _SETTINGS:  # the peer's initial window may have grown: retry what waits
            events.append(WindowUpdated(stream_id=0, delta=0))
        elif ftype == _GOAWAY:
            events.append(ConnectionTerminated())

    def on_data(self, sid: int, data: bytes) -> None:
        self.events.append(DataReceived(stream_id=sid, data=data, flow_controlled_length=len(data)))

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        if self.c != ffi.NULL:
            lib.nghttp2_session_consume(self.c.session, sid, n)

    # == out ===================================================================================
    def data_to_send(self) -> bytes:
        if self.c == ffi.NULL:
            return b""
        c = self.c
        n = lib.ps_send(c)
        if n <= 0:
            return b""
        out: bytes = ffi.buffer(c.obuf, n)[:]
        c.olen = 0
        return out

    def send_headers(self, sid: int, headers: Headers, end_stream: bool = False) -> None:
        if self.c == ffi.NULL:
            return
        buf, lens, n = _flat(headers, True)
        rv = lib.ps_submit_headers(self.c, end_stream, sid, buf, lens, n)
        if rv < 0:
            raise SessionError(ffi.string(lib.nghttp2_strerror(rv)).decode())

    def send_data(self, sid: int, data: bytes) -> None:
        o = self._stream_out(sid)
        o.chunks.append(data)
        o.size += len(data)
        self.queued += len(data)
        self._source(sid, o)

    def end_stream(self, sid: int) -> None:
        o = self._stream_out(sid)
        o.end = True
        self._source(sid, o)

    def send_trailers(self, sid: int, trailers: Headers) -> None:
        o = self.out.get(sid)
        if o is None or not o.active:
            self.send_headers(sid, trailers, end_stream=True)
            return
        o.trailers = _flat(trailers, True)  # after the DATA queued before them
        o.end = True
        self._source(sid, o)

    def _stream_out(self, sid: int) -> _Out:
        o = self.out.get(sid)
        if o is None:
            o = self.out[sid] = _Out()
        return o

    def _source(self, sid: int, o: _Out) -> None:
        if self.c == ffi.NULL:
            return
        if not o.active:
            rv = lib.ps_submit_data(self.c, sid)
            if rv < 0:
                raise SessionError(ffi.string(lib.nghttp2_strerror(rv)).decode())
            o.active = True
        elif o.deferred:
            o.deferred = False
            lib.nghttp2_session_resume_data(self.c.session, sid)

    def on_read(self, sid: int, buf: Any, length: int, flags: Any) -> int:
        """nghttp2's data source: up to `length` bytes of the stream's DATA into `buf`."""
        o = self.out.get(sid)
        if o is None:  # reset meanwhile
            flags[0] = _EOF
            return 0
        chunks = o.chunks
        n = 0
        while chunks and n < length:
            chunk = chunks[0]
            take = min(len(chunk), length - n)
            ffi.memmove(buf + n, chunk, take)
            if take == len(chunk):
                chunks.popleft()
            else:
                chunks[0] = chunk[take:]
            n += take
        o.size -= n
        self.queued -= n
        if not chunks:
            if o.trailers is not None:
                buf_, lens, count = o.trailers
                lib.ps_submit_trailer(self.c, sid, buf_, lens, count)
                flags[0] = _TRAILERS_FOLLOW
                o.active = False
            elif o.end:
                flags[0] = _EOF
                o.active = False
            elif not n:
                o.deferred = True
                return _DEFERRED
        return n

    def on_close(self, sid: int) -> None:
        o = self.out.pop(sid, None)
        if o is not None:
            self.queued -= o.size

    def reset_stream(self, sid: int, code: int) -> None:
        if self.c == ffi.NULL:
            return
        self.on_close(sid)
        lib.nghttp2_submit_rst_stream(self.c.session, 0, sid, code)

    def goaway(self, code: int) -> None:
        if self.goaway_sent or self.c == ffi.NULL:
            return
        self.goaway_sent = True
        lib.nghttp2_submit_goaway(self.c.session, 0, self.highest, code, ffi.NULL, 0)

    def stream_open(self, sid: int) -> bool:
        return self.c != ffi.NULL and bool(lib.ps_stream_open(self.c, sid))

    def send_window(self, sid: int) -> int:
        if self.c == ffi.NULL:
            return 0
        o = self.out.get(sid)
        return int(lib.ps_window(self.c, sid, o.size if o is not None else 0, self.queued))

    def close(self) -> None:
        if self.c != ffi.NULL:
            lib.ps_conn_del(self.c)
            self.c = ffi.NULL
            self.out.clear()


def _join_cookies(block: Headers) -> Headers:
    """HTTP/2's split cookie fields joined with "; " where the first was (RFC 9113 §8.2.3), as
    h2 does for the h2 session and Envoy before the request goes on."""
    first = next(i for i, (n, _) in enumerate(block) if n == b"cookie")
    joined = b"; ".join(v for n, v in block if n == b"cookie")
    rest = [h for h in block if h[0] != b"cookie"]
    rest.insert(first, (b"cookie", joined))
    return rest


def _on_error(exc: type[BaseException], value: BaseException, tb: Any) -> None:
    log.error("nghttp2 callback failed: %r", value, exc_info=(exc, value, tb))


def ps_on_frame(handle: Any, ftype: int, flags: int, sid: int, cat: int, code: int) -> int:
    ffi.from_handle(handle).on_frame(ftype, flags, sid, cat, code)
    return 0


def ps_on_data(handle: Any, sid: int, data: Any, length: int) -> int:
    ffi.from_handle(handle).on_data(sid, ffi.buffer(data, length)[:])
    return 0


def ps_on_close(handle: Any, sid: int, code: int) -> int:
    ffi.from_handle(handle).on_close(sid)
    return 0


def ps_on_read(handle: Any, sid: int, buf: Any, length: int, flags: Any) -> int:
    n: int = ffi.from_handle(handle).on_read(sid, buf, length, flags)
    return n


if _module is not None:  # the C glue's extern "Python" callbacks; a raise fails the nghttp2 call
    for _callback in (ps_on_frame, ps_on_data, ps_on_close, ps_on_read):
        ffi.def_extern(onerror=_on_error, error=_CALLBACK_FAILURE)(_callback)
