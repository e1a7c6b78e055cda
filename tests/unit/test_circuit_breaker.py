"""Circuit breakers: threshold checks, the HTTP pool's pending queue and overflow, tcp limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.model import (
    ISTIO_UNLIMITED,
    CircuitBreakers,
    Cluster,
    ClusterType,
    LbEndpoint,
    OutlierDetection,
    SocketAddress,
)
from pysidecar.observe.stats import StatsStore
from pysidecar.proxy.circuit_breaker import CircuitBreaker
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.http1.client_codec import UpstreamConnection
from pysidecar.proxy.http.http1.conn_pool import HostPool
from pysidecar.proxy.http.retry import OVERFLOW


def test_thresholds_and_the_empty_pool_exception() -> None:
    b = CircuitBreaker(CircuitBreakers(max_connections=1, max_pending_requests=1, max_requests=2, max_retries=0))
    assert b.can_connect(0) and b.can_queue() and b.can_request()
    b.cx, b.pending, b.rq = 1, 1, 2
    assert not b.can_connect(1)
    assert b.can_connect(0)  # a host pool with no connection may always open one (Envoy)
    assert not b.can_connect()  # tcp_proxy has no such exception
    assert not b.can_queue() and not b.can_request() and not b.can_retry()


def test_envoy_defaults() -> None:
    assert CircuitBreakers() == CircuitBreakers(1024, 1024, 1024, 3)


class FakeStream:
    """What the pool calls on a stream; records the calls."""

    def __init__(self) -> None:
        self.connecting: Any = None
        self.calls: list[tuple[str, object]] = []

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        self.connecting = None
        self.calls.append(("ready", conn))
        conn.attach(self)  # type: ignore[arg-type]

    def upstream_connect_failed(self, reason: str, failure: str | None) -> None:
        self.connecting = None
        self.calls.append(("failed", reason))

    def upstream_complete(self) -> None:
        self.calls.append(("complete", None))


def _pool(limits: CircuitBreakers) -> tuple[HostPool, list[UpstreamConnection], asyncio.AbstractEventLoop]:
    """A pool whose connects only count (no sockets): the breaker accounting under test."""
    loop = asyncio.new_event_loop()
    store = StatsStore()
    cluster = Cluster(
        "c", ClusterType.STATIC, endpoints=(LbEndpoint(SocketAddress("127.0.0.1", 9)),), circuit_breakers=limits
    )
    runtime = ClusterRuntime(cluster, store.cluster("c"), store)
    connects: list[UpstreamConnection] = []

    def record(*args: Any) -> None:
        connects.append(args[4])  # (loop, cluster, cx_stats, host, conn, http, settled)

    pool = HostPool(loop, runtime, store.cluster_http("c"), ("127.0.0.1", 9), 1 << 20, opener=record)
    return pool, connects, loop


def test_pending_overflow_and_the_queue_past_max_connections() -> None:
    pool, connects, loop = _pool(CircuitBreakers(max_connections=1, max_pending_requests=1))
    try:
        a, b, c = FakeStream(), FakeStream(), FakeStream()
        assert pool.acquire(a) is None  # type: ignore[arg-type]
        assert len(connects) == 1 and pool.breaker.pending == 1
        assert pool.acquire(b) is None  # type: ignore[arg-type]
        assert b.calls == [("failed", OVERFLOW)]  # the one pending slot is taken
        assert pool.rq_stats.upstream_rq_pending_overflow == 1
        # a's connection comes up: a is attached, its pending slot comes free.
        conn = connects[0]
        pool._unpend(conn)
        a.upstream_ready(conn)
        assert pool.breaker.pending == 0 and pool.breaker.rq == 1
        # c finds no idle connection and max_connections reached: it waits, no new connect.
        assert pool.acquire(c) is None  # type: ignore[arg-type]
        assert len(connects) == 1 and len(pool.waiting) == 1
        assert pool.cx_stats.upstream_cx_overflow == 1
        # a's response completes with keep-alive: the connection goes to c.
        conn.request_done = True
        conn._message_complete(True)
        assert pool.breaker.rq == 0
        loop.run_until_complete(asyncio.sleep(0))
        assert a.calls[-1] == ("complete", None)
        assert c.calls == [("ready", conn)] and not pool.waiting and pool.breaker.pending == 0
        assert pool.breaker.rq == 1
    finally:
        loop.close()


def test_a_cancelled_waiter_frees_its_slot_and_never_connects() -> None:
    pool, connects, loop = _pool(CircuitBreakers(max_connections=1, max_pending_requests=5))
    try:
        a, b = FakeStream(), FakeStream()
        pool.acquire(a)  # type: ignore[arg-type]
        pool.acquire(b)  # type: ignore[arg-type]
        assert pool.breaker.pending == 2 and len(pool.waiting) == 1
        b.connecting.cancel()
        assert pool.breaker.pending == 1 and not pool.waiting
        assert len(connects) == 1
    finally:
        loop.close()


def test_max_requests_refuses_an_idle_connection() -> None:
    pool, _, loop = _pool(CircuitBreakers(max_requests=0))
    try:
        idle = UpstreamConnection(pool)
        pool.idle.append(idle)
        s = FakeStream()
        assert pool.acquire(s) is None  # type: ignore[arg-type]
        assert s.calls == [("failed", OVERFLOW)] and pool.idle == [idle]
    finally:
        loop.close()


ISTIO = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.lab]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}, {address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.lab
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 1, maxRetries: 2}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
"""


def test_istio_connection_pool_and_outlier_detection_compile_as_istiod(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ISTIO)
    b = load([str(tmp_path)])
    c = b.cluster("outbound|80||backend.lab")
    assert c is not None and c.connect_timeout == 2.0
    assert c.circuit_breakers == CircuitBreakers(1, 1, ISTIO_UNLIMITED, 2)
    assert c.outlier_detection == OutlierDetection(
        consecutive_5xx=2, enforcing_consecutive_5xx=100, interval=1.0, base_ejection_time=30.0, max_ejection_percent=50
    )
    assert c.healthy_panic_threshold == 0.0  # istiod: minHealthPercent, default 0
    passthrough = b.cluster("PassthroughCluster")
    assert passthrough is not None and passthrough.circuit_breakers.max_connections == ISTIO_UNLIMITED
    # Exported to Envoy YAML and read back: the same clusters.
    out = tmp_path / "out" / "envoy.yaml"
    out.parent.mkdir()
    out.write_text(yaml.safe_dump(to_envoy(b)))
    again = load_file(str(out))
    assert again.cluster(c.name) == c


def test_envoy_yaml_thresholds_by_priority(tmp_path: Path) -> None:
    p = tmp_path / "b.yaml"
    p.write_text(
        """
static_resources:
  clusters:
  - name: c
    circuit_breakers:
      thresholds:
      - {priority: HIGH, max_connections: 5}
      - {max_connections: 7, max_pending_requests: 8, track_remaining: true}
    outlier_detection: {consecutive_5xx: 3, interval: 2s, enforcing_success_rate: 0}
    common_lb_config: {healthy_panic_threshold: {value: 25}}
"""
    )
    c = load_file(str(p)).clusters[0]
    assert c.circuit_breakers == CircuitBreakers(7, 8, 1024, 3)
    assert c.outlier_detection == OutlierDetection(consecutive_5xx=3, interval=2.0)
    assert c.healthy_panic_threshold == 25.0
