"""One attempt of the router on one upstream host (Envoy's Router::UpstreamRequest): the pool's
callbacks while it waits for a connection, the upstream codec's response decoder once it has
one, and the attempt's own accounting.

Promises:
- `start()` counts the attempt (upstream_rq_total / _active, the host's active requests, the
  access log's upstream host) and asks the host's pool (`codec.ConnPool`) for a connection;
  `upstream_ready` / `upstream_connect_failed` are the pool's answer.
- It talks to its connection only through `codec.UpstreamCodec`, and the codec to it only
  through `codec.ResponseDecoder`: an HTTP/2 or TLS upstream plugs in under it unchanged.
- The per-try timeout runs from the request's end on the wire (Envoy's); it goes to the router.
- The attempt's accounting is undone exactly once, whichever way it ends (`_end`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from pysidecar.proxy.http.codec import ConnPool, UpstreamCodec
    from pysidecar.proxy.http.headers import Headers
    from pysidecar.proxy.http.router_filter import Router
    from pysidecar.proxy.lb import Host


@functools.lru_cache(maxsize=4096)
def host_text(host: tuple[str, int]) -> str:
    """`ip:port` / `[ip6]:port`, cached: the same few upstream hosts are formatted per request."""
    return f"[{host[0]}]:{host[1]}" if ":" in host[0] else f"{host[0]}:{host[1]}"


class UpstreamRequest:
    __slots__ = (
        "active",
        "attempt_started",
        "connecting",
        "lb_host",
        "per_try_timer",
        "pool",
        "router",
        "trailers",
        "upstream",
    )

    def __init__(self, router: Router, pool: ConnPool, host: Host) -> None:
        self.router = router
        self.pool = pool
        self.lb_host = host
        self.upstream: UpstreamCodec | None = None
        self.connecting: UpstreamCodec | None = None  # set by the pool while it connects
        self.per_try_timer: asyncio.TimerHandle | None = None
        self.attempt_started = 0.0
        self.active = False
        self.trailers: Headers | None = None  # the response's, passed on at its end

    def start(self) -> None:
        router = self.router
        stream = router.stream
        host = self.lb_host
        host.active += 1
        self.active = True
        stream.info.upstream_host = host_text(host.key)
        stats = router.rq_stats
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        self.attempt_started = stream.conn.loop.time()
        up = self.pool.acquire(self)
        if up is not None:
            self.upstream_ready(up)

    # == the pool's callbacks ======================================================================
    def upstream_ready(self, up: UpstreamCodec) -> None:
        self.connecting = None
        self.upstream = up
        up.attach(self)
        self.router.stream.info.upstream_local_address = up.sockname()
        self.router.stream.info.upstream_peer_uri_san = up.peer_uri_san()
        self.router.encode_request(self, up)

    def upstream_connect_failed(self, reason: str, failure: str | None) -> None:
        self.connecting = None
        self._end()
        self.router.stream.info.upstream_transport_failure_reason = failure
        self.router.on_reset(self, reason, failure)

    # == the request ===============================================================================
    def request_sent(self) -> None:
        """The whole request is on its way: the per-try timeout starts."""
        up = self.upstream
        assert up is not None
        trailers = self.router.stream.request_trailers
        if trailers:
            up.encode_trailers(trailers)
        else:
            up.encode_end()
        policy = self.router.policy
        if policy is not None and policy.per_try_timeout > 0:
            loop = self.router.stream.conn.loop
            self.per_try_timer = loop.call_later(policy.per_try_timeout, self._on_per_try_timeout)

    def _on_per_try_timeout(self) -> None:
        self.per_try_timer = None
        self.router.on_per_try_timeout(self)

    def cancel_per_try_timer(self) -> None:
        if self.per_try_timer is not None:
            self.per_try_timer.cancel()
            self.per_try_timer = None

    # == the response decoder (what the upstream codec reports) ====================================
    def upstream_continue(self) -> None:
        self.router.stream.encode_continue()

    def upstream_headers(self, status: int, headers: Headers) -> None:
        self.router.on_headers(self, status, headers)

    def upstream_body(self, data: bytes) -> None:
        self.router.stream.encode_data(data)

    def upstream_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers

    def upstream_read_done(self) -> None:
        stream = self.router.stream
        if stream.head_out:
            stream.flush_head()

    def upstream_complete(self) -> None:
        self.upstream = None
        self._end()
        self.router.on_complete(self)

    def upstream_reset(self, reason: str, failure: str | None) -> None:
        self.upstream = self.connecting = None  # an upstream may speak (and fail) while connecting
        self._end()
        self.router.on_reset(self, reason, failure)

    def upstream_pause_writing(self) -> None:
        stream = self.router.stream
        stream.conn.pause_stream(stream)

    def upstream_resume_writing(self) -> None:
        stream = self.router.stream
        stream.conn.resume_stream(stream)

    def upstream_tunnel_data(self, data: bytes) -> None:
        self.router.stream.encode_tunnel_data(data)

    def upstream_tunnel_closed(self) -> None:
        self.upstream = None
        self._end()
        self.router.stream.tunnel_closed()

    # == endings ===================================================================================
    def abandon(self) -> None:
        """The router gives up on this attempt (per-try timeout, a retried response)."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.detach_and_close()
        self._end()

    def drop(self) -> None:
        """The stream is over or answered otherwise: close the connection, or stop waiting."""
        self.cancel_per_try_timer()
        up = self.upstream
        self.upstream = None
        if up is not None:
            self._end()
            up.detach_and_close()
        c = self.connecting
        self.connecting = None
        if c is not None:
            self._end()
            c.cancel()  # the pool keeps the connection when it completes

    def _end(self) -> None:
        self.cancel_per_try_timer()
        if self.active:
            self.active = False
            self.router.rq_stats.upstream_rq_active -= 1
            self.lb_host.active -= 1
