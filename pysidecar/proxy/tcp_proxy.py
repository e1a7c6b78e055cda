"""envoy.filters.network.tcp_proxy: relay one downstream connection to one upstream host.

Promises:
- Bytes arrive exactly and in order in both directions. Half-close is respected: a FIN from
  one side becomes a shutdown(SHUT_WR) towards the other, and the connection closes only when
  both directions are done or one side closes or resets. A TLS-terminated downstream has no
  half-close: the upstream's FIN closes it (close_notify) once its bytes are written.
- Flow control is Envoy's watermark scheme: when one side's write buffer passes the listener's
  per_connection_buffer_limit_bytes, the other side stops reading until it drains below a
  quarter of it (counted as tcp.*.downstream_flow_control_paused/resumed_reading_total when
  the downstream is paused, cluster.*.upstream_flow_control_paused/resumed_reading_total when
  the upstream is, as Envoy counts them). Bytes read before the upstream is connected are held up to the same limit.
  Nothing buffers without bound.
- The chosen host counts the session as one active request (`Host.active`, as Envoy's TCP pool
  does) from the pick until close: LEAST_REQUEST balances on it.
- Connect timeout (the cluster's connect_timeout) and idle timeout (tcp_proxy idle_timeout,
  0 = none) close the connection; a cluster with no host (BlackHoleCluster) closes the
  downstream at once, counting upstream_cx_none_healthy. Every outcome lands in the stats.
- The cluster's max_connections circuit breaker (per worker) is checked before connecting:
  at the limit the downstream is closed at once (flag UO, upstream_cx_overflow), as Envoy's
  tcp_proxy does. Connect outcomes feed the cluster's outlier detector (failure as 503,
  success as 200: Envoy's local-origin mapping).
- The hot path is two asyncio Protocols writing straight into each other's transports: no
  tasks, no queues, no per-chunk allocation beyond what the event loop hands us. A stream
  (one read of STREAM_CHUNK or more) between plain TCP ends (no filter needs the bytes, no
  TLS) moves to the splice(2) path (proxy/splice.py: the bytes no longer enter user space)
  once both write buffers are empty; when it cannot (pipes unavailable, too many spliced
  sessions) it stays here and tries again at the next such read. Both paths keep the same
  promises and stats.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, cast

from pysidecar.common.stream_info import StreamInfo
from pysidecar.model import SocketAddress, TcpProxy, WeightedCluster
from pysidecar.observe.stats import ClusterStats, TcpProxyStats
from pysidecar.proxy.circuit_breaker import CircuitBreaker
from pysidecar.proxy.cluster_manager import ClusterManager, ClusterRuntime
from pysidecar.proxy.lb import Host
from pysidecar.proxy.loop_detect import forwarding_loop, loop_message
from pysidecar.proxy.peer_tls import uri_san
from pysidecar.proxy.splice import STREAM_CHUNK, SpliceRelay
from pysidecar.proxy.upstream_tls import open_connection

log = logging.getLogger(__name__)

# Response flags, Envoy's spelling, for the access log.
NO_HEALTHY_UPSTREAM = "UH"
UPSTREAM_CONNECT_FAILURE = "UF"
NO_CLUSTER_FOUND = "NC"
UPSTREAM_OVERFLOW = "UO"


def _fmt(addr: tuple[Any, ...] | None) -> str | None:
    # A socket name: (host, port), or IPv6's (host, port, flowinfo, scope_id).
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pick_weighted(clusters: tuple[WeightedCluster, ...], rng: random.Random) -> str:
    """Envoy's weighted_clusters choice: a random draw over the weights."""
    total = sum(c.weight for c in clusters)
    point = rng.randrange(total)
    for c in clusters:
        if point < c.weight:
            return c.name
        point -= c.weight
    return clusters[-1].name


def _report(cluster: ClusterRuntime, host: tuple[str, int], status: int) -> None:
    if cluster.outlier is not None:
        cluster.outlier.put_result(host, status)


class TcpProxySession(asyncio.Protocol):
    """One downstream connection and its upstream; also the downstream side's Protocol."""

    __slots__ = (
        "_breaker",
        "_closed",
        "_connect_task",
        "_idle_handle",
        "_idle_seen",
        "_lb_host",
        "_may_splice",
        "_pending",
        "_pending_bytes",
        "_pending_eof",
        "_splice",
        "cluster",
        "cluster_stats",
        "config",
        "destination",
        "downstream",
        "downstream_eof",
        "info",
        "limit",
        "loop",
        "on_close",
        "rx_bytes",
        "stats",
        "tx_bytes",
        "upstream",
        "upstream_eof",
        "upstream_host",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: TcpProxy,
        stats: TcpProxyStats,
        destination: SocketAddress,
        buffer_limit: int,
        on_close: Callable[[TcpProxySession], None],
    ) -> None:
        self.loop = loop
        self.config = config
        self.stats = stats
        self.destination = destination
        self.limit = buffer_limit
        self.on_close = on_close
        self.downstream: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.cluster: ClusterRuntime | None = None
        self.cluster_stats: ClusterStats | None = None
        self.upstream_host: tuple[str, int] | None = None
        self.info = StreamInfo()
        self.rx_bytes = 0  # from downstream
        self.tx_bytes = 0  # to downstream
        self.downstream_eof = False
        self.upstream_eof = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_eof = False
        self._closed = False
        self._breaker: CircuitBreaker | None = None  # holds one of the cluster's connections
        self._lb_host: Host | None = None  # holds one of the host's active requests
        self._splice: SpliceRelay | None = None  # set once the splice path carries the bytes
        self._may_splice = False  # plain TCP both ways: a stream may move to the splice path
        self._connect_task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_seen = -1

    # -- start ---------------------------------------------------------------------------
    def start(
        self,
        transport: asyncio.Transport,
        initial: bytes,
        clusters: ClusterManager,
        rng: random.Random,
        splice: bool = True,
        own: frozenset[SocketAddress] = frozenset(),
    ) -> None:
        """Take over an accepted connection (its protocol is switched to this session);
        `splice` False keeps the bytes in Python (a TLS transport's are clear text only there)."""
        self.downstream = transport
        self.stats.downstream_cx_total += 1
        name = (
            self.config.cluster
            if self.config.cluster is not None
            else pick_weighted(self.config.weighted_clusters, rng)
        )
        cluster = clusters.get(name)
        if cluster is None:
            self.stats.downstream_cx_no_route += 1
            self.info.response_flags.append(NO_CLUSTER_FOUND)
            self.close()
            return
        self.cluster = cluster
        self.cluster_stats = cluster.stats
        picked = cluster.choose_host(self.destination)
        if picked is None:
            cluster.stats.upstream_cx_none_healthy += 1
            self.info.response_flags.append(NO_HEALTHY_UPSTREAM)
            self.close()
            return
        own_listener = forwarding_loop(picked.address, picked.port, own, self.destination.address)
        if own_listener is not None:
            log.warning(
                "%s", loop_message(cluster.config.name, picked.address, picked.port, own_listener)
            )
            self.close()
            return
        picked.active += 1
        self._lb_host = picked
        self.upstream_host = host = picked.key
        self.info.upstream_cluster = cluster.config.name
        self.info.upstream_host = _fmt(host)
        breaker = cluster.breaker
        if not breaker.can_connect():
            cluster.stats.upstream_cx_overflow += 1
            self.info.response_flags.append(UPSTREAM_OVERFLOW)
            self.close()
            return
        breaker.cx += 1
        self._breaker = breaker
        # splice(2) would move clear text past an upstream TLS session.
        self._may_splice = splice and cluster.upstream_tls(host) is None
        transport.set_write_buffer_limits(high=self.limit)
        if initial:
            self.data_received(initial)
        self._connect_task = self.loop.create_task(self._connect(cluster, host))

    async def _connect(self, cluster: ClusterRuntime, host: tuple[str, int]) -> None:
        stats = cluster.stats
        stats.upstream_cx_total += 1
        bind = cluster.bind_address_for(host[0])
        started = self.loop.time()
        opening = open_connection(
            self.loop, lambda: _Upstream(self), host, bind, cluster.upstream_tls(host)
        )
        connecting = self.loop.create_task(opening)
        timer = self.loop.call_later(cluster.config.connect_timeout, connecting.cancel)
        try:
            await connecting
        except asyncio.CancelledError:
            if self._closed:
                return
            stats.upstream_cx_connect_timeout += 1
            stats.upstream_cx_connect_fail += 1
            self.info.response_flags.append(UPSTREAM_CONNECT_FAILURE)
            _report(cluster, host, 503)
            self.close()
            return
        except OSError:
            stats.upstream_cx_connect_fail += 1
            self.info.response_flags.append(UPSTREAM_CONNECT_FAILURE)
            _report(cluster, host, 503)
            self.close()
            return
        finally:
            timer.cancel()
        _report(cluster, host, 200)
        stats.upstream_cx_connect_ms.record((self.loop.time() - started) * 1000.0)

    def _to_splice(self) -> None:
        """A stream between plain TCP ends: let the splice relay carry it, if it takes both
        sockets now (it changes nothing when it does not)."""
        down, up = self.downstream, self.upstream
        if down is None or up is None or self.downstream_eof or self.upstream_eof or self._closed:
            return
        relay = SpliceRelay.take_over(self, down, up)
        if relay is not None:
            self._splice = relay
            self._may_splice = False
            self.downstream = self.upstream = None  # the relay owns both sockets now

    def upstream_connected(self, transport: asyncio.Transport) -> None:
        """Called from the upstream's connection_made, before any of its data can arrive."""
        if self._closed:
            transport.abort()
            return
        stats = self.cluster_stats
        assert stats is not None
        stats.upstream_cx_active += 1
        self.upstream = transport
        self.info.upstream_local_address = _fmt(transport.get_extra_info("sockname"))
        self.info.upstream_peer_uri_san = uri_san(transport)
        transport.set_write_buffer_limits(high=self.limit)
        if self._pending:
            transport.writelines(self._pending)
            stats.upstream_cx_tx_bytes_total += self._pending_bytes
            self._pending = []
            self._pending_bytes = 0
            if self.downstream is not None and not self.downstream_eof:
                self.downstream.resume_reading()
        if self._pending_eof and transport.can_write_eof():
            transport.write_eof()
        if self.config.idle_timeout > 0:
            self._idle_handle = self.loop.call_later(self.config.idle_timeout, self._idle_check)

    # -- downstream Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        # Sessions are attached with set_protocol after accept; never constructed by a server.
        raise AssertionError("TcpProxySession is attached with set_protocol")

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.rx_bytes += n
        self.stats.downstream_cx_rx_bytes_total += n
        up = self.upstream
        if up is not None:
            up.write(data)
            self.cluster_stats.upstream_cx_tx_bytes_total += n  # type: ignore[union-attr]
            if n >= STREAM_CHUNK and self._may_splice:
                self._to_splice()
            return
        self._pending.append(data)
        self._pending_bytes += n
        if self._pending_bytes >= self.limit and self.downstream is not None:
            self.downstream.pause_reading()

    def eof_received(self) -> bool:
        self.downstream_eof = True
        up = self.upstream
        if up is None:
            self._pending_eof = True
        elif up.can_write_eof():
            up.write_eof()
        if self.upstream_eof:
            self.close()
        return True

    def pause_writing(self) -> None:
        # The downstream cannot take more: stop reading the upstream until it drains.
        if self.upstream is not None:
            self.upstream.pause_reading()
            self.cluster_stats.upstream_flow_control_paused_reading_total += 1  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream_eof:
            self.upstream.resume_reading()
            self.cluster_stats.upstream_flow_control_resumed_reading_total += 1  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream_eof = True
        self.close()

    # -- upstream events (called by _Upstream) ------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        n = len(data)
        self.tx_bytes += n
        self.stats.downstream_cx_tx_bytes_total += n
        self.cluster_stats.upstream_cx_rx_bytes_total += n  # type: ignore[union-attr]
        self.downstream.write(data)  # type: ignore[union-attr]
        if n >= STREAM_CHUNK and self._may_splice:
            self._to_splice()

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        down = self.downstream
        if down is not None:
            if down.can_write_eof():
                down.write_eof()
            else:
                down.close()  # TLS has no half-close: close_notify once the bytes are written
        if self.downstream_eof:
            self.close()

    def upstream_pause_writing(self) -> None:
        if self.downstream is not None:
            self.downstream.pause_reading()
            self.stats.downstream_flow_control_paused_reading_total += 1

    def upstream_resume_writing(self) -> None:
        if self.downstream is not None and not self.downstream_eof:
            self.downstream.resume_reading()
            self.stats.downstream_flow_control_resumed_reading_total += 1

    def upstream_lost(self) -> None:
        self.upstream_eof = True
        if self.cluster_stats is not None and self.upstream is not None:
            self.cluster_stats.upstream_cx_active -= 1
            self.cluster_stats.upstream_cx_destroy += 1
        self.upstream = None
        self.close()

    # -- timers and teardown ---------------------------------------------------------------
    def _idle_check(self) -> None:
        # Envoy 1.40 logs an idle close with no response flag (SI is HTTP's stream idle
        # timeout) and no termination details; tests/conformance/test_tcp_idle.py pins that.
        # Byte totals instead of a timestamp per chunk: the hot path stays free of clock calls,
        # at the price of closing between one and two idle periods after the last byte.
        seen = self.rx_bytes + self.tx_bytes
        if seen != self._idle_seen:
            self._idle_seen = seen
            self._idle_handle = self.loop.call_later(self.config.idle_timeout, self._idle_check)
            return
        self.stats.idle_timeout += 1
        self.close()

    def close(self) -> None:
        """Close both sides, flushing what is already buffered (Envoy's FlushWrite)."""
        if self._closed:
            return
        self._closed = True
        if self._breaker is not None:
            self._breaker.cx -= 1
            self._breaker = None
        if self._lb_host is not None:
            self._lb_host.active -= 1
            self._lb_host = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        relay = self._splice
        if relay is not None:
            if self.cluster_stats is not None:
                self.cluster_stats.upstream_cx_active -= 1
                self.cluster_stats.upstream_cx_destroy += 1
            relay.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.downstream is not None:
            self.downstream.close()
        info = self.info
        info.bytes_received = self.rx_bytes
        info.bytes_sent = self.tx_bytes
        info.finish()
        self.on_close(self)


class _Upstream(asyncio.Protocol):
    """The upstream side: forwards every event to its session."""

    __slots__ = ("session",)

    def __init__(self, session: TcpProxySession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.upstream_connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def eof_received(self) -> bool:
        self.session.upstream_eof_received()
        return True

    def pause_writing(self) -> None:
        self.session.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.session.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost()
