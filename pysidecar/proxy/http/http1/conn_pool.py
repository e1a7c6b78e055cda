"""The HTTP/1.1 connection pool of one cluster host (Envoy's Http1::ConnPoolImpl), under the
cluster's circuit breakers.

Promises:
- `HostPool.acquire(stream)` (`codec.ConnPool`) hands an attempt an idle keep-alive connection
  at once, or starts one connect (the cluster's connect_timeout bounding it) and calls
  `stream.upstream_ready` or `stream.upstream_connect_failed` (`codec.PoolCallbacks`) when it
  settles. A connection whose attempt went away meanwhile joins the idle list instead of
  being wasted.
- Connections (`client_codec.UpstreamConnection`) come back through `release` when they may
  carry another request (fewer than the cluster's max_requests_per_connection, younger than
  its max_connection_duration: `reusable`). Idle connections closed by the upstream leave the
  list when their close arrives; one idle for the cluster's `http_idle_timeout`
  (common_http_protocol_options.idle_timeout, default 1 h) is closed
  (upstream_cx_idle_timeout), and so is one past its `max_connection_duration` once no stream
  uses it (upstream_cx_max_duration_reached).
- Circuit breakers (the cluster's, per worker) as Envoy's HTTP/1 pool applies them: a request
  that finds no idle connection becomes pending (refused at max_pending_requests); it gets a
  new connection while the cluster is under max_connections (or this host has none at all),
  else it waits for one of this host's connections to come free (upstream_cx_overflow).
  A request is attached to a connection only under max_requests. Refusals call
  `stream.upstream_connect_failed(OVERFLOW)` and count upstream_rq_pending_overflow.
- Every connect failure is reported to the cluster's outlier detector, when it has one (as
  503, Envoy's local-origin mapping).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pysidecar.observe.stats import ClusterHttpStats, ClusterStats
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.http1.client_codec import UpstreamConnection
from pysidecar.proxy.http.retry import OVERFLOW
from pysidecar.proxy.http.upstream_connect import Settled, connect

if TYPE_CHECKING:
    from pysidecar.proxy.http.codec import UpstreamAttempt

# How a pool opens one connection (upstream_connect.connect's signature).
Opener = Callable[
    [asyncio.AbstractEventLoop, ClusterRuntime, ClusterStats, tuple[str, int], UpstreamConnection, str, Settled],
    None,
]


class HostPool:
    """Connections to one host of one cluster, and the requests waiting for one."""

    __slots__ = (
        "breaker",
        "buffer_limit",
        "cluster",
        "cx_stats",
        "host",
        "idle",
        "loop",
        "open",
        "opener",
        "outlier",
        "rq_stats",
        "waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cluster: ClusterRuntime,
        rq_stats: ClusterHttpStats,
        host: tuple[str, int],
        buffer_limit: int,
        opener: Opener = connect,
    ) -> None:
        self.loop = loop
        self.opener = opener  # upstream_connect.connect; a test's recorder opens no socket
        self.cluster = cluster
        self.cx_stats: ClusterStats = cluster.stats
        self.rq_stats = rq_stats
        self.host = host
        self.buffer_limit = buffer_limit
        self.idle: list[UpstreamConnection] = []
        self.breaker = cluster.breaker
        self.outlier = cluster.outlier
        self.open = 0  # this host's connections, open or connecting
        # Requests past max_connections, each holding the connection it will connect with.
        self.waiting: deque[UpstreamConnection] = deque()

    def acquire(self, stream: UpstreamAttempt) -> UpstreamConnection | None:
        """An idle connection attached to `stream`, or None: the stream is pending (told
        later through upstream_ready / upstream_connect_failed) or was refused already."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                if not self.breaker.can_request():
                    self.idle.append(conn)
                    self._overflow(stream)
                    return None
                conn.attach(stream)
                return conn
        breaker = self.breaker
        if not breaker.can_queue():
            self._overflow(stream)
            return None
        conn = UpstreamConnection(self)
        conn.stream = stream
        stream.connecting = conn
        conn.pending = True
        breaker.pending += 1
        self.rq_stats.upstream_rq_pending_total += 1
        self.rq_stats.upstream_rq_pending_active += 1
        if breaker.can_connect(self.open):
            self._connect(conn)
        else:
            self.cx_stats.upstream_cx_overflow += 1
            self.waiting.append(conn)
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.transport is not None:
            conn.transport.resume_reading()  # it may have been paused for a slow client
        self.idle.append(conn)
        conn.idle_since = now = self.loop.time()
        if conn.idle_timer is None and (deadline := self._expiry(conn)) is not None:
            # One timer per connection and period, not one per request: when it fires, a
            # connection that was busy meanwhile is checked again when released.
            conn.idle_timer = self.loop.call_later(max(0.0, deadline - now), self._idle_check, conn)
        if self.waiting:
            # Not from inside the parser callback that released it: on the next loop turn.
            self.loop.call_soon(self._serve_waiting)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        if conn in self.idle:
            self.idle.remove(conn)

    def reusable(self, conn: UpstreamConnection) -> bool:
        """Whether a connection that finished a response may carry another: not past the
        cluster's max_requests_per_connection or max_connection_duration (Envoy then closes it
        once its stream is done)."""
        c = self.cluster.config
        if c.max_requests_per_connection and conn.requests >= c.max_requests_per_connection:
            self.rq_stats.upstream_cx_max_requests += 1
            return False
        if c.max_connection_duration and self.loop.time() - conn.born >= c.max_connection_duration:
            self.rq_stats.upstream_cx_max_duration_reached += 1
            return False
        return True

    def _expiry(self, conn: UpstreamConnection) -> float | None:
        """When an idle connection is to be closed: idle_timeout after it went idle, or its
        max_connection_duration, whichever comes first; None for never."""
        c = self.cluster.config
        ends = [conn.idle_since + c.http_idle_timeout] if c.http_idle_timeout > 0 else []
        if c.max_connection_duration > 0:
            ends.append(conn.born + c.max_connection_duration)
        return min(ends) if ends else None

    def _idle_check(self, conn: UpstreamConnection) -> None:
        """An idle connection past the cluster's idle_timeout (upstream_cx_idle_timeout) or
        max_connection_duration (upstream_cx_max_duration_reached) is closed."""
        conn.idle_timer = None
        if conn.closed or conn not in self.idle:
            return  # busy: re-armed when it is released again
        now = self.loop.time()
        deadline = self._expiry(conn)
        if deadline is None:
            return
        if deadline > now:
            conn.idle_timer = self.loop.call_later(deadline - now, self._idle_check, conn)
            return
        self.idle.remove(conn)
        c = self.cluster.config
        if c.max_connection_duration > 0 and now - conn.born >= c.max_connection_duration:
            self.rq_stats.upstream_cx_max_duration_reached += 1
        else:
            self.rq_stats.upstream_cx_idle_timeout += 1
        conn.close()

    def cancel(self, conn: UpstreamConnection) -> None:
        """A pending request went away: free its slot; a queued one never connects."""
        self._unpend(conn)
        if conn in self.waiting:
            self.waiting.remove(conn)

    def cx_closed(self, conn: UpstreamConnection) -> None:
        """A connection (or a connect attempt) of this pool ended: its slot comes free."""
        if conn.cx_open:
            conn.cx_open = False
            self.open -= 1
            self.breaker.cx -= 1
            if self.waiting:
                self.loop.call_soon(self._serve_waiting)

    def _unpend(self, conn: UpstreamConnection) -> None:
        if conn.pending:
            conn.pending = False
            self.breaker.pending -= 1
            self.rq_stats.upstream_rq_pending_active -= 1

    def _overflow(self, stream: UpstreamAttempt) -> None:
        self.rq_stats.upstream_rq_pending_overflow += 1
        stream.upstream_connect_failed(OVERFLOW, None)

    def _serve_waiting(self) -> None:
        """Hand freed capacity to queued requests, oldest first."""
        waiting = self.waiting
        while waiting:
            ticket = waiting[0]
            stream = ticket.stream
            if stream is None or stream.connecting is not ticket:
                waiting.popleft()
                self._unpend(ticket)
                continue
            idle = None
            while self.idle and idle is None:
                c = self.idle.pop()
                idle = None if c.closed else c
            if idle is not None:
                waiting.popleft()
                ticket.stream = None
                self._unpend(ticket)
                if self.breaker.can_request():
                    stream.upstream_ready(idle)
                else:
                    self.idle.append(idle)
                    self._overflow(stream)
                continue
            if not self.breaker.can_connect(self.open):
                return
            waiting.popleft()
            self._connect(ticket)

    def _connect(self, conn: UpstreamConnection) -> None:
        self.cx_stats.upstream_cx_total += 1
        self.rq_stats.upstream_cx_http1_total += 1
        conn.cx_open = True
        self.open += 1
        self.breaker.cx += 1
        self.opener(self.loop, self.cluster, self.cx_stats, self.host, conn, "1.1", self._settled(conn))

    def _settled(self, conn: UpstreamConnection) -> Settled:
        def done(reason: str | None, failure: str | None) -> None:
            stream = conn.stream
            wanted = stream is not None and stream.connecting is conn
            self._unpend(conn)
            if reason is None:
                if wanted and self.breaker.can_request():
                    assert stream is not None
                    stream.upstream_ready(conn)
                else:
                    conn.stream = None
                    if not conn.closed:  # it may have spoken and failed already
                        self.release(conn)
                    if wanted:
                        assert stream is not None
                        self._overflow(stream)
                return
            self.cx_closed(conn)  # never connected: connection_lost will not come (idempotent)
            if wanted:
                assert stream is not None
                stream.upstream_connect_failed(reason, failure)

        return done
