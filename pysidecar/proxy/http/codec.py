"""The seams of the HTTP path, declared: what the connection-manager stream, the router and the
codecs may call on each other (Envoy's `envoy/http/codec.h` and `conn_pool.h`, in Python).

    downstream codec ──(DownstreamCodec)── ActiveStream ── filters ── Router
                                                                        │ one per attempt
                                                UpstreamRequest ◀───────┘
    ConnPool.acquire(PoolCallbacks) ─▶ UpstreamCodec ─(ResponseDecoder)─▶ UpstreamRequest

- `DownstreamCodec`: a downstream connection as the stream sees it, whatever its protocol
  (`http1.server_codec.HttpConnection`, `http2.server_codec.Http2Connection`): encode the
  response (continue, headers, data, end, a local reply), reset the stream, read-disable it
  (`pause_stream` / `resume_stream`: the watermarks of the opposite side), and hear that the
  stream is over (`stream_done`).
- `UpstreamCodec`: one upstream connection as an attempt uses it: encode the request (headers
  with what is buffered of the body, data, end), read-disable (`pause_reading` /
  `resume_reading`: the downstream's watermarks), give it up (`detach_and_close`) or stop
  waiting for it (`cancel`). `http1.client_codec.UpstreamConnection` is one.
- `ResponseDecoder`: what an upstream codec reports to the attempt attached to it.
- `ConnPool` / `PoolCallbacks`: a per-host pool hands an attempt a connection now, or later
  through `upstream_ready` / `upstream_connect_failed` (Envoy's onPoolReady / onPoolFailure).

Adding HTTP/2 to upstreams touches none of the stream, the router or the upstream request:
write an `UpstreamCodec` (one h2 stream of a shared connection; `encode_headers` ignores
`chunked`, HTTP/2 frames the body itself) and a `ConnPool` whose `acquire` hands out such
streams, and name the pool class in `conn_pool.POOL_KINDS` under the protocol that
`conn_pool.upstream_protocol(cluster)` returns for the cluster. TLS to upstreams is the same:
a pool whose connect wraps the socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from pysidecar.model import SocketAddress
    from pysidecar.observe.stats import HttpConnManagerStats
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.compiled import CompiledHcm
    from pysidecar.proxy.http.conn_pool import PoolManager
    from pysidecar.proxy.http.headers import Headers
    from pysidecar.proxy.peer_tls import DownstreamTls
    from pysidecar.proxy.worker import Worker


class DownstreamCodec(Protocol):
    """A downstream HTTP connection, as its streams use it."""

    cfg: CompiledHcm
    stats: HttpConnManagerStats
    loop: asyncio.AbstractEventLoop
    worker: Worker
    pools: PoolManager
    destination: SocketAddress
    buffer_limit: int
    scheme: bytes
    peer_ip: str
    draining: bool
    tls: DownstreamTls | None  # the terminated TLS session's peer (x-forwarded-client-cert)

    def encode_continue(self, st: ActiveStream) -> None: ...

    def encode_headers(
        self, st: ActiveStream, status: int, headers: Headers, has_length: bool
    ) -> None:
        """The response head; the codec may hold it until `encode_flush` or the first data."""

    def encode_flush(self, st: ActiveStream) -> None: ...

    def encode_data(self, st: ActiveStream, data: bytes) -> None: ...

    def encode_end(self, st: ActiveStream) -> None: ...

    def encode_trailers(self, st: ActiveStream, trailers: Headers) -> None:
        """The response's end with trailers (HTTP/2: a HEADERS frame with END_STREAM)."""

    def encode_local_reply(
        self, st: ActiveStream, status: int, body: bytes, headers: Headers
    ) -> None:
        """A whole local reply: `headers` are local_reply_headers after the encoder filters."""

    def reset_stream(self, st: ActiveStream) -> None: ...

    def pause_stream(self, st: ActiveStream) -> None:
        """Read-disable: stop taking the stream's request bytes (its upstream is full)."""

    def resume_stream(self, st: ActiveStream) -> None: ...

    def stream_done(self, st: ActiveStream) -> None:
        """The stream's response is over (called again when its request is)."""

    def start_tunnel(self, st: ActiveStream) -> None: ...

    def write(self, data: bytes) -> None:
        """Tunnel bytes after a 101."""

    def close_when_flushed(self) -> None: ...

    def arm_stream_idle(self, st: ActiveStream, timeout: float) -> None: ...


class ResponseDecoder(Protocol):
    """What an upstream codec calls on the attempt attached to it."""

    def upstream_continue(self) -> None: ...

    def upstream_headers(self, status: int, headers: Headers) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_trailers(self, trailers: Headers) -> None:
        """Response trailers (HTTP/2): the end follows with upstream_complete."""

    def upstream_read_done(self) -> None:
        """The end of one read from the upstream: a held response head goes out now."""

    def upstream_complete(self) -> None: ...

    def upstream_reset(self, reason: str, failure: str | None) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...

    def upstream_tunnel_data(self, data: bytes) -> None: ...

    def upstream_tunnel_closed(self) -> None: ...


class PoolCallbacks(Protocol):
    """What a pool calls on an attempt waiting for a connection."""

    connecting: UpstreamCodec | None

    def upstream_ready(self, up: UpstreamCodec) -> None: ...

    def upstream_connect_failed(self, reason: str, failure: str | None) -> None: ...


class UpstreamAttempt(ResponseDecoder, PoolCallbacks, Protocol):
    """An attempt, as its pool and then its connection see it (Envoy's UpstreamRequest is
    both the pool's callbacks and the codec's response decoder)."""


class UpstreamCodec(Protocol):
    """One upstream connection (or HTTP/2 stream) carrying one attempt."""

    @property
    def closed(self) -> bool: ...

    @property
    def local_address(self) -> str | None: ...

    def attach(self, stream: UpstreamAttempt) -> None: ...

    def sockname(self) -> str | None:
        """Our address on this connection, `ip:port` (cached by the codec)."""

    def peer_uri_san(self) -> str | None:
        """The upstream certificate's URI SAN on a TLS connection (its SPIFFE identity)."""

    def encode_headers(
        self, method: bytes, target: bytes, headers: Headers, body: list[bytes], chunked: bool
    ) -> str | None:
        """The request head with what is buffered of the body, in one write; or, when the head
        must not be written (header_validation.upstream_head_problem), why, writing nothing."""

    def encode_data(self, data: bytes) -> None: ...

    def encode_end(self) -> None:
        """The request is complete (HTTP/1 chunked: the last chunk)."""

    def encode_trailers(self, trailers: Headers) -> None:
        """The request is complete with trailers (HTTP/2; HTTP/1 drops them, as Envoy)."""

    def write(self, data: bytes) -> None:
        """Tunnel bytes after a 101."""

    def write_eof(self) -> None:
        """The client half-closed a tunnel."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def detach_and_close(self) -> None: ...

    def cancel(self) -> None: ...


class ConnPool(Protocol):
    """Connections to one host of one cluster."""

    host: tuple[str, int]

    def acquire(self, stream: UpstreamAttempt) -> UpstreamCodec | None: ...
