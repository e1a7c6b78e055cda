"""HTTP/2 connection pool for one host of one cluster: streams multiplexed over few connections.

Promises:
- `acquire(client)` (codec.ConnPool) returns a stream on a connection with capacity at once,
  or None: either the request waits (`client.connecting` is its `PendingRequest`; the client
  hears `upstream_ready(stream)` or `upstream_connect_failed(reason, failure)` later, and
  `cancel()` withdraws it) or a circuit breaker refused it (the client was told, `overflow`).
- A new connection is opened only when no open or connecting connection can take the
  waiting requests: connections fill up to their capacity (peer SETTINGS_MAX_CONCURRENT_STREAMS,
  the cluster's max_concurrent_streams and max_requests_per_connection) before another opens.
- Circuit breakers as Envoy's HTTP/2 pool applies them: max_requests counts streams (one
  slot per stream, given back when it ends), max_pending_requests counts waiting requests,
  max_connections counts connections (a host with none may always open one). Refusals count
  upstream_rq_pending_overflow; waiting for a connection slot counts upstream_cx_overflow.
- A connect that fails or times out fails the waiting requests only when no other connection
  is open or connecting for them (upstream_cx_connect_fail / _timeout).
- Stats: upstream_cx_total, upstream_cx_http2_total, upstream_cx_active, upstream_cx_destroy,
  upstream_cx_connect_ms, upstream_rq_pending_total / _active; response codes and resets before
  a response go to the cluster's outlier detector when it has one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from pysidecar.model.http import Http2Options
from pysidecar.observe.stats import ClusterHttpStats, ClusterStats
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.http2.client_codec import Http2UpstreamConnection
from pysidecar.proxy.http.http2.client_stream import H2UpstreamStream
from pysidecar.proxy.http.retry import OVERFLOW
from pysidecar.proxy.http.upstream_callbacks import UpstreamStreamCallbacks
from pysidecar.proxy.http.upstream_connect import Settled, connect


class PoolClient(UpstreamStreamCallbacks, Protocol):
    connecting: Any  # the PendingRequest while it waits (codec.PoolCallbacks)

    def upstream_ready(self, up: H2UpstreamStream) -> None: ...
    def upstream_connect_failed(self, reason: str, failure: str | None) -> None: ...


class PendingRequest:
    """A request waiting for a stream; `cancel()` when its client gives up."""

    __slots__ = ("client", "pool")

    def __init__(self, pool: Http2HostPool, client: PoolClient) -> None:
        self.pool = pool
        self.client: PoolClient | None = client

    def cancel(self) -> None:
        if self.client is not None:
            self.client = None
            self.pool.unpend(self)


class Http2HostPool:
    __slots__ = (
        "breaker",
        "buffer_limit",
        "cluster",
        "conns",
        "cx_stats",
        "host",
        "loop",
        "options",
        "outlier",
        "rq_stats",
        "serve_scheduled",
        "waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cluster: ClusterRuntime,
        rq_stats: ClusterHttpStats,
        host: tuple[str, int],
        buffer_limit: int,
        options: Http2Options | None = None,
    ) -> None:
        self.loop = loop
        self.cluster = cluster
        self.cx_stats: ClusterStats = cluster.stats
        self.rq_stats = rq_stats
        self.host = host
        self.buffer_limit = buffer_limit
        self.options = options if options is not None else cluster.config.http2_options
        self.breaker = cluster.breaker
        self.outlier = cluster.outlier
        self.conns: list[Http2UpstreamConnection] = []  # open or connecting
        self.waiting: deque[PendingRequest] = deque()
        self.serve_scheduled = False

    # -- the router's side ------------------------------------------------------------------
    def acquire(self, stream: PoolClient) -> H2UpstreamStream | None:
        conn = self._with_capacity()
        if conn is not None and not self.waiting:
            if not self.breaker.can_request():
                self._overflow(stream)
                return None
            return self._attach(conn, stream)
        if not self.breaker.can_queue():
            self._overflow(stream)
            return None
        ticket = stream.connecting = PendingRequest(self, stream)
        self.waiting.append(ticket)
        self.breaker.pending += 1
        self.rq_stats.upstream_rq_pending_total += 1
        self.rq_stats.upstream_rq_pending_active += 1
        self._maybe_connect()
        return None

    def unpend(self, ticket: PendingRequest) -> None:
        """A waiting request leaves the queue (served, cancelled or failed)."""
        try:
            self.waiting.remove(ticket)
        except ValueError:
            return
        self.breaker.pending -= 1
        self.rq_stats.upstream_rq_pending_active -= 1

    # -- the connections' side --------------------------------------------------------------
    def stream_released(self) -> None:
        self.breaker.rq -= 1

    def capacity_changed(self, conn: Http2UpstreamConnection) -> None:
        """A stream ended, SETTINGS or GOAWAY arrived: serve the queue on the next turn (not
        from inside the connection's event handling)."""
        if self.waiting and not self.serve_scheduled:
            self.serve_scheduled = True
            self.loop.call_soon(self._serve)

    def connection_closed(self, conn: Http2UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            self.breaker.cx -= 1
        self.capacity_changed(conn)

    def response_status(self, status: int) -> None:
        if self.outlier is not None:
            self.outlier.put_result(self.host, status)

    def reset_before_response(self) -> None:
        if self.outlier is not None:
            self.outlier.put_result(self.host, 503)

    # -- internals --------------------------------------------------------------------------
    def _with_capacity(self) -> Http2UpstreamConnection | None:
        for c in self.conns:
            if c.capacity() > 0:
                return c
        return None

    def _attach(self, conn: Http2UpstreamConnection, client: UpstreamStreamCallbacks) -> H2UpstreamStream:
        self.breaker.rq += 1
        return conn.open_stream(client)

    def _overflow(self, client: PoolClient) -> None:
        self.rq_stats.upstream_rq_pending_overflow += 1
        client.upstream_connect_failed(OVERFLOW, None)

    def _serve(self) -> None:
        self.serve_scheduled = False
        while self.waiting:
            conn = self._with_capacity()
            if conn is None:
                break
            ticket = self.waiting[0]
            client = ticket.client
            self.unpend(ticket)
            ticket.client = None
            if client is None:
                continue
            if not self.breaker.can_request():
                self._overflow(client)
                continue
            client.upstream_ready(self._attach(conn, client))
        self._maybe_connect()

    def _connecting(self) -> int:
        return sum(1 for c in self.conns if not c.ready and not c.closed)

    def _maybe_connect(self) -> None:
        """Open a connection when the waiting requests have none coming."""
        if not self.waiting or self._connecting():
            return
        if not self.breaker.can_connect(len(self.conns)):
            self.cx_stats.upstream_cx_overflow += 1
            return
        self._connect()

    def _connect(self) -> None:
        conn = Http2UpstreamConnection(self, self.options, self.buffer_limit)
        self.conns.append(conn)
        self.breaker.cx += 1
        self.cx_stats.upstream_cx_total += 1
        self.rq_stats.upstream_cx_http2_total += 1
        connect(self.loop, self.cluster, self.cx_stats, self.host, conn, "2", self._settled(conn))

    def _settled(self, conn: Http2UpstreamConnection) -> Settled:
        def done(reason: str | None, failure: str | None) -> None:
            if reason is None:
                self._serve()
                return
            conn.closed = True
            if conn in self.conns:
                self.conns.remove(conn)
                self.breaker.cx -= 1
            if any(not c.closed for c in self.conns):
                return  # another connection will serve them
            while self.waiting:
                ticket = self.waiting[0]
                client = ticket.client
                self.unpend(ticket)
                ticket.client = None
                if client is not None:
                    client.upstream_connect_failed(reason, failure)

        return done
