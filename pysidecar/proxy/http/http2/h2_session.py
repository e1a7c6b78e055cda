"""`session.ServerSession` on the pure-Python h2 library: the downstream HTTP/2 codec's session
under PYSIDECAR_PURE=1 or without the compiled libnghttp2 binding.

Promises (beyond session.py's):
- h2's own inbound and outbound header checks are off: request blocks are judged by
  header_validation (h2 refuses a host that differs from :authority, which Envoy takes) and
  response heads are encoded by hpack_encoder.StaticEncoder, which lower-cases names and drops
  connection-specific fields.
- max_concurrent_streams is announced, not enforced by h2 (past its limit it raises mid-read,
  losing the other frames' events): the codec refuses the excess streams one by one, as Envoy.
- h2's header decoder is bounded at 4 times max_request_headers_kb (its default of 64 KiB would
  end the connection; the codec resets the stream past the limit, as Envoy).
- A header block h2 cannot decode gets GOAWAY COMPRESSION_ERROR (h2 says PROTOCOL_ERROR:
  h2_limits.with_goaway_code re-codes it).
"""

from __future__ import annotations

import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from pysidecar.proxy.http.h2_limits import COMPRESSION_ERROR, with_goaway_code
from pysidecar.proxy.http.headers import Headers
from pysidecar.proxy.http.hpack_encoder import StaticEncoder
from pysidecar.proxy.http.http2.session import SessionError
from pysidecar.proxy.http.http2.settings import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    H2_DEFAULT_WINDOW,
    server_settings,
)

_TOO_MANY_CONTINUATIONS = "Too many continuation frames received."


class H2Session:
    __slots__ = ("h2", "recode")

    def __init__(self, header_limit: int) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))  # fmt: skip
        self.h2.encoder = StaticEncoder()  # type: ignore[assignment]
        self.h2.decoder.max_header_list_size = 4 * header_limit
        self.recode = False  # the queued GOAWAY is for an undecodable header block

    def initiate(self, streams: int, window: int, cx_window: int, header_list: int) -> None:
        h = self.h2
        h.local_settings = server_settings(streams, window, header_list)
        h.initiate_connection()
        # The SETTINGS frame is written: from here h2 enforces nothing on stream counts.
        h.local_settings = server_settings(DEFAULT_MAX_CONCURRENT_STREAMS, window, header_list)
        if cx_window > H2_DEFAULT_WINDOW:
            h.increment_flow_control_window(cx_window - H2_DEFAULT_WINDOW)

    def receive_data(self, data: bytes) -> list[h2.events.Event]:
        try:
            return self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:  # h2 queued its GOAWAY already
            if isinstance(e.__cause__, hpack.HPACKError):
                self.recode = True
            raise SessionError(str(e), overflow=str(e) == _TOO_MANY_CONTINUATIONS) from e

    def data_to_send(self) -> bytes:
        out = self.h2.data_to_send()
        if self.recode:
            self.recode = False
            out = with_goaway_code(out, COMPRESSION_ERROR)
        return out

    def send_headers(self, sid: int, headers: Headers, end_stream: bool = False) -> None:
        try:
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            raise SessionError(str(e)) from e

    def send_data(self, sid: int, data: bytes) -> None:
        self.h2.send_data(sid, data)

    def end_stream(self, sid: int) -> None:
        self.h2.end_stream(sid)

    def send_trailers(self, sid: int, trailers: Headers) -> None:
        self.send_headers(sid, trailers, end_stream=True)

    def reset_stream(self, sid: int, code: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(sid, code)

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        # For a stream gone meanwhile, h2 still opens the connection's window.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.acknowledge_received_data(n, sid)

    def goaway(self, code: int) -> None:
        if self.h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):  # a GOAWAY went out already
            self.h2.close_connection(error_code=code)

    def stream_open(self, sid: int) -> bool:
        stream = self.h2.streams.get(sid)
        return stream is not None and not stream.closed

    def send_window(self, sid: int) -> int:
        h = self.h2
        return min(h.local_flow_control_window(sid), h.max_outbound_frame_size)

    def close(self) -> None:
        """Nothing held outside Python."""
