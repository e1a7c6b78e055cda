"""Where HTTP/1 responses are framed (Envoy's Http1::ResponseEncoderImpl): the encoding side of
the HTTP/1 downstream codec, as `http1.server_codec.HttpConnection` hands it to its streams.

Promises:
- Responses answer in the request's version; `connection: close` when the stream or the
  connection ends after it (the client asked, HTTP/1.0 without keep-alive, a drain), `keep-
  alive` to an HTTP/1.0 client that keeps it; chunked framing when the upstream gave no
  length (HTTP/1.0: the close ends the body instead); HEAD / 204 / 304 carry no body.
- A response head is held until its first body bytes (or the end of the upstream's read,
  `encode_flush`) so that head and body leave in one write: a syscall per response. A 101 is
  written at once.
- `local_reply_bytes` is a whole local reply: the stream's headers, then `connection: close`,
  then `content-length: 0` for an empty body (for HEAD, Envoy announces an empty body as
  chunked instead). One sent before the request's body is read ends the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.proxy.http.downstream import Downstream
from pysidecar.proxy.http.http1.wire import CHUNK_END, CRLF, encode_head
from pysidecar.proxy.http.stream_state import REQUEST_DONE

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
HTTP10 = b"HTTP/1.0"
_NO_BODY_STATUS = frozenset({204, 304})


def local_reply_bytes(
    status: int, body: bytes, headers: Headers, close: bool, head_only: bool
) -> bytes:
    """A whole HTTP/1.1 local reply from the stream's local reply headers."""
    if close:
        headers.append((b"connection", b"close"))
    if not body:
        headers.append(
            (b"transfer-encoding", b"chunked") if head_only else (b"content-length", b"0")
        )
    head = encode_head(status, headers)
    return head if head_only else head + body


class Http1ResponseEncoder(Downstream):
    """The encode_* half of `codec.DownstreamCodec` for HTTP/1 (HttpConnection's base)."""

    __slots__ = ("eof_sent",)
    eof_sent: bool  # our FIN went out (a delayed close): nothing more can be written

    def write(self, data: bytes) -> None:
        # After the FIN, a late write (an upstream's bytes, a second reply) is dropped: the
        # transport would raise "write() after write_eof()".
        if self.eof_sent:
            return
        self.stats.downstream_cx_tx_bytes_total += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.eof_sent:
            return
        self.stats.downstream_cx_tx_bytes_total += sum(map(len, parts))
        assert self.transport is not None
        self.transport.writelines(parts)

    def encode_continue(self, st: ActiveStream) -> None:
        self.write(CONTINUE_100)

    def encode_headers(
        self, st: ActiveStream, status: int, headers: Headers, has_length: bool
    ) -> None:
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

    def encode_trailers(self, st: ActiveStream, trailers: Headers) -> None:
        """Envoy 1.40 sends no trailers to an HTTP/1 client unless its http_protocol_options
        enable_trailers (not supported here): the response just ends."""
        self.encode_end(st)

    def encode_local_reply(
        self, st: ActiveStream, status: int, body: bytes, headers: Headers
    ) -> None:
        """A local reply, whole. One sent before the request's body is read ends the
        connection, as Envoy's does: what follows would be parsed as that body."""
        if not st.keep_alive or self.draining or (st.has_body and not st.state & REQUEST_DONE):
            st.close_after = True
        data = local_reply_bytes(status, body, headers, st.close_after, st.head_request)
        self.write(HTTP10 + data[8:] if st.http10 else data)

    def reset_stream(self, st: ActiveStream) -> None:
        """A response cannot go on (mid-body timeout, upstream reset): HTTP/1 can only close."""
        self.abort()
