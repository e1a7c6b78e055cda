"""Upstream HTTP/1.1 connections and their per-host pools (one pool per cluster and host).

Promises:
- `HostPool.acquire(stream)` hands the stream an idle keep-alive connection at once, or starts
  one connect (the cluster's connect_timeout bounding it) and calls `stream.upstream_ready`
  or `stream.upstream_connect_failed` when it settles. A connection whose stream went away
  meanwhile joins the idle list instead of being wasted.
- A connection returns to the idle list only after a complete response that allowed
  keep-alive to a completely written request (and carried fewer than the cluster's
  max_requests_per_connection); anything else closes it. Idle connections
  closed by the upstream leave the list when their close arrives; one idle for the cluster's
  `http_idle_timeout` (common_http_protocol_options.idle_timeout, default 1 h) is closed
  (upstream_cx_idle_timeout), and so is one past its `max_connection_duration` once no stream
  uses it (upstream_cx_max_duration_reached).
- An `UpstreamConnection` parses responses with httptools and forwards each event to the one
  stream attached to it; it never buffers a body.
- Circuit breakers (the cluster's, per worker) as Envoy's HTTP/1 pool applies them: a request
  that finds no idle connection becomes pending (refused at max_pending_requests); it gets a
  new connection while the cluster is under max_connections (or this host has none at all),
  else it waits for one of this host's connections to come free (upstream_cx_overflow).
  A request is attached to a connection only under max_requests. Refusals call
  `stream.upstream_connect_failed(OVERFLOW)` and count upstream_rq_pending_overflow.
- Every response status, connect failure and reset before a response is reported to the
  cluster's outlier detector, when it has one (failures as 503, Envoy's local-origin mapping).
"""

from __future__ import annotations

import asyncio
import errno
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from pysidecar.observe.stats import ClusterHttpStats, ClusterStats
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.retry import (
    CONNECT_FAILURE,
    CONNECT_TIMEOUT,
    CONNECTION_TERMINATION,
    OVERFLOW,
    PROTOCOL_ERROR,
)
from pysidecar.proxy.peer_tls import uri_san
from pysidecar.proxy.upstream_tls import open_connection

if TYPE_CHECKING:
    from pysidecar.proxy.http.stream import ActiveStream


class _HeadDone(Exception):
    """Raised from on_headers_complete to stop the parser after a response to HEAD."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "born",
        "closed",
        "counted",
        "cx_open",
        "head_keep_alive",
        "headers",
        "idle_since",
        "idle_timer",
        "informational",
        "local_address",
        "parser",
        "peer_uri_san",
        "pending",
        "pool",
        "request_done",
        "requests",
        "response_started",
        "stream",
        "transport",
        "upgraded",
    )

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.stream: ActiveStream | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.informational = False
        self.idle_since = 0.0
        self.request_done = False
        self.response_started = False
        self.upgraded = False
        self.head_keep_alive = False
        self.local_address: str | None = None  # "ip:port", filled by the first stream
        self.peer_uri_san: str | None = None  # the upstream certificate's URI SAN (mTLS)
        self.pending = False  # holds a pending-request slot of the circuit breaker
        self.counted = False  # holds a request slot of the circuit breaker
        self.cx_open = False  # holds a connection slot of the circuit breaker
        self.idle_since = 0.0  # loop time it last joined the idle list
        self.born = 0.0  # loop time it was established (the cluster's max_connection_duration)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.requests = 0  # streams it has carried (the cluster's max_requests_per_connection)

    # -- the pool's side -----------------------------------------------------------------
    def attach(self, stream: ActiveStream) -> None:
        self.stream = stream
        self.requests += 1
        self.request_done = False
        self.response_started = False
        if not self.counted:
            self.counted = True
            self.pool.breaker.rq += 1

    def _unattach(self) -> None:
        """The request slot goes back when the stream leaves the connection."""
        if self.counted:
            self.counted = False
            self.pool.breaker.rq -= 1

    def detach_and_close(self) -> None:
        """The stream gives up on this connection (timeout, reset, downstream gone)."""
        self.stream = None
        self._unattach()
        self.close()

    def cancel(self) -> None:
        """The stream waiting for this (connecting or queued) connection gave up."""
        self.stream = None
        self.pool.cancel(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.pool.cx_stats.upstream_cx_tx_bytes_total += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)
        self.pool.cx_stats.upstream_cx_tx_bytes_total += sum(map(len, parts))

    # -- asyncio Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.born = self.pool.loop.time()
        t.set_write_buffer_limits(high=self.pool.buffer_limit)
        stats = self.pool.cx_stats
        stats.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.pool.cx_stats.upstream_cx_rx_bytes_total += len(data)
        stream = self.stream
        if self.upgraded:
            if stream is not None:
                stream.upstream_tunnel_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = True
            rest = data[int(e.args[0]) :]
            if stream is not None and rest:
                stream.upstream_tunnel_data(rest)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _HeadDone):
                raise
            # A response to HEAD ends with its head; a fresh parser reads the next one.
            self.parser = httptools.HttpResponseParser(self)
            self._message_complete(self.head_keep_alive)
        except httptools.HttpParserError:
            # Not HTTP/1.1 (an HTTP/2 server's SETTINGS, garbage): Envoy's 502 protocol error.
            self.pool.rq_stats.upstream_cx_protocol_error += 1
            self._reset(PROTOCOL_ERROR)
            return
        # A response head held for its body (one write for both) goes out by the end of the
        # read that brought it.
        if stream is not None and stream.head_out:
            stream.flush_head()

    def eof_received(self) -> bool | None:
        return None  # close our side too: HTTP/1.1 has no use for a half-open upstream

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        stats = self.pool.cx_stats
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        self.pool.forget(self)
        self.pool.cx_closed(self)
        self._unattach()
        stream = self.stream
        if stream is None or (was_closed and not self.upgraded):
            return
        if self.upgraded:
            self.stream = None
            stream.upstream_tunnel_closed()
        elif self.response_started and not self._framed():
            # A response without Content-Length or chunking ends at the upstream's close.
            self._message_complete(False)
        else:
            self._reset(CONNECTION_TERMINATION)

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue & co: passed on only under proxy_100_continue (the client has
            # Envoy's own 100 otherwise); other 1xx are dropped.
            self.informational = True
            if status == 100 and self.stream is not None:
                self.stream.upstream_continue()
            return
        stream = self.stream
        self.response_started = True
        if status == 101:
            # The connection is a tunnel from here: httptools calls on_message_complete for the
            # 101 before it stops at the upgrade, and that must not end the stream.
            self.upgraded = True
        od = self.pool.outlier
        if od is not None:
            od.put_result(self.pool.host, status)
        if stream is None:
            return
        stream.upstream_headers(status, self.headers)
        if self.stream is stream and stream.head_request and status != 101:
            self.head_keep_alive = self.parser.should_keep_alive()
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        if body and not self.informational and self.stream is not None:
            self.stream.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if not self.upgraded:
            self._message_complete(self.parser.should_keep_alive())

    # -- internals -----------------------------------------------------------------------
    def _framed(self) -> bool:
        for n, v in self.headers:
            if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in v.lower()):
                return True
        return False

    def _message_complete(self, keep_alive: bool) -> None:
        stream = self.stream
        self.stream = None
        self._unattach()
        self.response_started = False
        if keep_alive and self.request_done and not self.closed and self.pool.reusable(self):
            self.pool.release(self)
        else:
            self.close()
        if stream is not None:
            stream.upstream_complete()

    def _reset(self, reason: str) -> None:
        stream = self.stream
        self.stream = None
        self._unattach()
        od = self.pool.outlier
        if od is not None and not self.response_started:
            od.put_result(self.pool.host, 503)
        self.close()
        if stream is not None:
            stream.upstream_reset(reason, None)


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
    ) -> None:
        self.loop = loop
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

    def acquire(self, stream: ActiveStream) -> UpstreamConnection | None:
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

    def _overflow(self, stream: ActiveStream) -> None:
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
        stats = self.cx_stats
        stats.upstream_cx_total += 1
        self.rq_stats.upstream_cx_http1_total += 1
        conn.cx_open = True
        self.open += 1
        self.breaker.cx += 1
        bind = self.cluster.bind_address_for(self.host[0])
        started = self.loop.time()
        fut = asyncio.ensure_future(
            open_connection(self.loop, lambda: conn, self.host, bind, self.cluster.upstream_tls(self.host), http=True)
        )
        timer = self.loop.call_later(self.cluster.config.connect_timeout, fut.cancel)
        fut.add_done_callback(self._settled(conn, timer, started))

    def _settled(
        self, conn: UpstreamConnection, timer: asyncio.TimerHandle, started: float
    ) -> Callable[[asyncio.Future[tuple[asyncio.Transport, UpstreamConnection]]], None]:
        def done(fut: asyncio.Future[tuple[asyncio.Transport, UpstreamConnection]]) -> None:
            timer.cancel()
            stream = conn.stream
            wanted = stream is not None and stream.connecting is conn
            self._unpend(conn)
            failure: str | None = None
            if fut.cancelled():
                self.cx_stats.upstream_cx_connect_timeout += 1
                reason = CONNECT_TIMEOUT
            elif (exc := fut.exception()) is not None:
                reason, failure = CONNECT_FAILURE, _transport_failure(exc)
            else:
                self.cx_stats.upstream_cx_connect_ms.record((self.loop.time() - started) * 1000.0)
                conn.peer_uri_san = uri_san(conn.transport)
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
            self.cx_stats.upstream_cx_connect_fail += 1
            self.cx_closed(conn)  # never connected: connection_lost will not come (idempotent)
            if self.outlier is not None:
                self.outlier.put_result(self.host, 503)
            if wanted:
                assert stream is not None
                stream.upstream_connect_failed(reason, failure)

        return done


def _transport_failure(exc: BaseException) -> str | None:
    """Envoy's transport failure reason for a failed connect: `delayed connect error: 111`."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"delayed connect error: {exc.errno}"
    if isinstance(exc, OSError):
        # uvloop reports some failures without errno; the message still names the cause.
        for code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            if os.strerror(code).lower() in str(exc).lower():
                return f"delayed connect error: {code}"
    return None


class PoolManager:
    """A worker's pools, keyed by (cluster name, host); a changed cluster gets fresh pools."""

    __slots__ = ("loop", "pools")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[tuple[str, tuple[str, int]], HostPool] = {}

    def pool(
        self, cluster: ClusterRuntime, rq_stats: ClusterHttpStats, host: tuple[str, int], limit: int
    ) -> HostPool:
        key = (cluster.config.name, host)
        p = self.pools.get(key)
        if p is None or p.cluster is not cluster:
            p = self.pools[key] = HostPool(self.loop, cluster, rq_stats, host, limit)
        return p


_managers: weakref.WeakKeyDictionary[object, PoolManager] = weakref.WeakKeyDictionary()


def pools_for(worker: object, loop: asyncio.AbstractEventLoop) -> PoolManager:
    """The worker's pool manager, made on first use (pools live as long as the worker)."""
    found = _managers.get(worker)
    if found is None:
        found = _managers[worker] = PoolManager(loop)
    return found
