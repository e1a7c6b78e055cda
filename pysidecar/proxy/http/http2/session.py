"""The HTTP/2 server session the downstream codec drives (server_codec / response_encoder): the
frames, HPACK, stream states and windows of one connection, sans I/O, whichever library does
them. Two implement it: `nghttp2_session.NgHttp2Session` (libnghttp2 through cffi, the codec
Envoy itself uses) and `h2_session.H2Session` (the pure-Python h2 library). `new_server_session`
picks libnghttp2 when the compiled build carries it (nghttp2_lib), else h2: PYSIDECAR_PURE=1 or
a machine without the build runs h2.

Promises of a session (both):
- `receive_data(bytes)` returns h2's event classes (h2.events: RequestReceived with the raw
  header block and `stream_ended`, DataReceived with its flow-controlled length, StreamEnded,
  TrailersReceived, StreamReset, WindowUpdated, ConnectionTerminated), in wire order; a
  connection error raises `SessionError` (with the events before it, when known), after the session queued its GOAWAY when the library
  chose one (COMPRESSION_ERROR for an undecodable header block, RFC 9113 §4.3).
- Nothing is written by the session: `data_to_send()` returns every frame queued since the last
  call, as one bytes (the codec writes once per loop turn).
- DATA is sent only within `send_window(sid)` (the peer's windows, less what is queued, at most
  one frame); trailers end a stream after its DATA; `goaway(code)` sends one GOAWAY per
  connection (later calls do nothing), naming the last request stream seen whole.
- Request DATA is acknowledged (WINDOW_UPDATE) only through `acknowledge_received_data`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import h2.events

    from pysidecar.proxy.http.headers import Headers


class SessionError(Exception):
    """A connection error from the library; `overflow`: a header block in too many CONTINUATION
    frames (http2.header_overflow); `flood`: the http2.* flood stat the library tripped;
    `events`: what the same read brought before the error (nghttp2 reports them, h2 cannot)."""

    def __init__(
        self,
        message: str,
        overflow: bool = False,
        flood: str | None = None,
        events: list[h2.events.Event] | None = None,
    ) -> None:
        super().__init__(message)
        self.overflow = overflow
        self.flood = flood
        self.events = events or []


class ServerSession(Protocol):
    def initiate(self, streams: int, window: int, cx_window: int, header_list: int) -> None:
        """The server's SETTINGS (max_concurrent_streams, the stream window, the header list
        size) and the connection window beyond the default 65,535."""

    def receive_data(self, data: bytes) -> list[h2.events.Event]: ...

    def data_to_send(self) -> bytes: ...

    def send_headers(self, sid: int, headers: Headers, end_stream: bool = False) -> None: ...

    def send_data(self, sid: int, data: bytes) -> None: ...

    def end_stream(self, sid: int) -> None: ...

    def send_trailers(self, sid: int, trailers: Headers) -> None: ...

    def reset_stream(self, sid: int, code: int) -> None: ...

    def acknowledge_received_data(self, n: int, sid: int) -> None: ...

    def goaway(self, code: int) -> None: ...

    def stream_open(self, sid: int) -> bool: ...

    def send_window(self, sid: int) -> int: ...

    def close(self) -> None:
        """The connection is gone: free what the library holds."""


def new_server_session(header_limit: int, count_limit: int) -> ServerSession:
    """libnghttp2 when the compiled build carries it, else h2. `header_limit` / `count_limit`
    (max_request_headers_kb, max_headers_count) bound what is kept of a request header block."""
    from pysidecar.proxy.http.http2 import nghttp2_lib

    if nghttp2_lib.load() is not None:
        from pysidecar.proxy.http.http2.nghttp2_session import NgHttp2Session

        return NgHttp2Session(header_limit, count_limit)
    from pysidecar.proxy.http.http2.h2_session import H2Session

    return H2Session(header_limit)
