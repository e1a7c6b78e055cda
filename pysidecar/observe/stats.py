"""Envoy's statistics: one declaration table per component, plain integers on the hot path.

Promises:
- Each component's stats are declared once, in a `StatsBlock` subclass listing its counters
  and gauges by Envoy's names (`ALL_TCP_PROXY_STATS(...)` in Envoy's source is the model).
  The data path holds a block and does `block.downstream_cx_total += 1`: no lookups, no locks.
- A block's full stat name is `<scope><name>`, the scope spelled as Envoy spells it (Istio's
  alt_stat_name brings the `;` delimiter its tag extraction relies on:
  `cluster.outbound|80||httpbin.org;.upstream_rq_200`).
- `StatsStore.snapshot()` is the worker's state as {full name: (kind, value)}; snapshots of
  several workers are merged by `merge` (counters and gauges add up, except gauges every
  worker keeps a copy of, declared SharedGauge, which merge by max).
- Histograms (histogram.py, compiled with the data path) keep Envoy's default bucket bounds and
  merge the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast

# Re-exported (their home is histogram.py): the declaration tables below name Histogram.
from pysidecar.observe.histogram import DEFAULT_BUCKETS as DEFAULT_BUCKETS
from pysidecar.observe.histogram import Histogram as Histogram
from pysidecar.observe.histogram import HistogramState as HistogramState

Kind = Literal["counter", "gauge", "histogram"]
B = TypeVar("B", bound="StatsBlock")

# Markers for the declaration tables: the data path sees plain ints (and Histograms).
Counter = Annotated[int, "counter"]
Gauge = Annotated[int, "gauge"]
# A gauge every worker holds a copy of (cluster membership): merged by max, not summed.
SharedGauge = Annotated[int, "gauge"]

# Stat names (last component) declared SharedGauge in any block; `merge` takes their max.
SHARED_GAUGES: set[str] = set()


class _Declared(type):
    """Turns a block's annotations into its stat lists and __slots__ (one declaration, no twin)."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> _Declared:
        ann: dict[str, str] = {k: str(v) for k, v in ns.get("__annotations__", {}).items()}
        ns["COUNTERS"] = tuple(k for k, v in ann.items() if v == "Counter")
        ns["GAUGES"] = tuple(k for k, v in ann.items() if v in ("Gauge", "SharedGauge"))
        SHARED_GAUGES.update(k for k, v in ann.items() if v == "SharedGauge")
        ns["HISTOGRAMS"] = tuple(k for k, v in ann.items() if v == "Histogram")
        ns["__slots__"] = ns["COUNTERS"] + ns["GAUGES"] + ns["HISTOGRAMS"] + (
            ("scope",) if not bases else ()
        )
        ns.pop("__annotations__", None)
        return super().__new__(mcls, name, bases, ns)


class StatsBlock(metaclass=_Declared):
    """Base of every declaration table: subclasses annotate their stats as Counter, Gauge or
    Histogram, in Envoy's names."""

    COUNTERS: ClassVar[tuple[str, ...]]
    GAUGES: ClassVar[tuple[str, ...]]
    HISTOGRAMS: ClassVar[tuple[str, ...]]
    scope: str

    def __init__(self, scope: str) -> None:
        self.scope = scope
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        for name in self.HISTOGRAMS:
            setattr(self, name, Histogram())

    def items(self) -> Iterator[tuple[str, Kind, object]]:
        for name in self.COUNTERS:
            yield self.scope + name, "counter", getattr(self, name)
        for name in self.GAUGES:
            yield self.scope + name, "gauge", getattr(self, name)
        for name in self.HISTOGRAMS:
            h: Histogram = getattr(self, name)
            yield self.scope + name, "histogram", h.state()

    def reset_counters(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)


# -- the declaration tables (Envoy's names) ---------------------------------------------------


class ServerStats(StatsBlock):
    """`server.`: the main process's own (Envoy's state: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING;
    live is 0 once /healthcheck/fail said so, while state stays LIVE, as on Envoy 1.40)."""

    concurrency: Gauge
    live: Gauge
    state: Gauge
    uptime: Gauge


SERVER_STATES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2}


class ListenerStats(StatsBlock):
    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    downstream_pre_cx_timeout: Counter
    no_filter_chain_match: Counter
    downstream_cx_active: Gauge


class ListenerSslStats(StatsBlock):
    """`listener.<address>.ssl.`: the TLS transport socket of a listener's filter chains."""

    handshake: Counter
    connection_error: Counter
    no_certificate: Counter
    fail_verify_no_cert: Counter
    fail_verify_error: Counter


class TcpProxyStats(StatsBlock):
    downstream_cx_total: Counter
    downstream_cx_no_route: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_flow_control_paused_reading_total: Counter
    downstream_flow_control_resumed_reading_total: Counter
    idle_timeout: Counter
    upstream_flush_total: Counter
    upstream_flush_active: Gauge


class ClusterStats(StatsBlock):
    upstream_cx_total: Counter
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_none_healthy: Counter
    upstream_cx_destroy: Counter
    upstream_cx_rx_bytes_total: Counter
    upstream_cx_tx_bytes_total: Counter
    upstream_cx_overflow: Counter
    # The downstream backed up: reading from the upstream paused / resumed (Envoy's names).
    upstream_flow_control_paused_reading_total: Counter
    upstream_flow_control_resumed_reading_total: Counter
    upstream_cx_active: Gauge
    membership_healthy: SharedGauge
    membership_total: SharedGauge
    upstream_cx_connect_ms: Histogram


class HttpConnManagerStats(StatsBlock):
    """`http.<stat_prefix>.`: the HTTP connection manager and its router (no_route, ...)."""

    downstream_cx_total: Counter
    downstream_cx_destroy: Counter
    downstream_cx_http1_total: Counter
    downstream_cx_http2_total: Counter
    downstream_cx_protocol_error: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_cx_idle_timeout: Counter
    downstream_cx_upgrades_total: Counter
    downstream_rq_total: Counter
    downstream_rq_http1_total: Counter
    downstream_rq_http2_total: Counter
    downstream_rq_1xx: Counter
    downstream_rq_2xx: Counter
    downstream_rq_3xx: Counter
    downstream_rq_4xx: Counter
    downstream_rq_5xx: Counter
    downstream_rq_completed: Counter
    downstream_rq_timeout: Counter
    downstream_rq_header_timeout: Counter
    downstream_rq_idle_timeout: Counter
    downstream_rq_rx_reset: Counter
    downstream_rq_tx_reset: Counter
    downstream_rq_ws_on_non_ws_route: Counter
    downstream_rq_too_many_premature_resets: Counter
    downstream_flow_control_paused_reading_total: Counter
    downstream_flow_control_resumed_reading_total: Counter
    no_route: Counter
    no_cluster: Counter
    rq_direct_response: Counter
    rq_total: Counter
    downstream_cx_active: Gauge
    downstream_cx_http1_active: Gauge
    downstream_cx_http2_active: Gauge
    downstream_cx_upgrades_active: Gauge
    downstream_rq_active: Gauge
    downstream_rq_time: Histogram
    downstream_cx_length_ms: Histogram


class Http2CodecStats(StatsBlock):
    """`http2.`: Envoy's HTTP/2 codec stats for downstream connections (made on the first one,
    as Envoy's appear): floods, resets both ways, header lists over the limits."""

    header_overflow: Counter
    inbound_empty_frames_flood: Counter
    inbound_priority_frames_flood: Counter
    inbound_window_update_frames_flood: Counter
    outbound_control_flood: Counter
    outbound_flood: Counter
    rx_messaging_error: Counter
    rx_reset: Counter
    tx_reset: Counter


class _OpenBlock:
    """A base without __slots__: gives a block a __dict__ for a table sized by the traffic."""


class ClusterHttpStats(StatsBlock, _OpenBlock):
    """`cluster.<name>.upstream_rq_*`: requests through a cluster; `upstream_rq_<code>` per
    status code seen (Envoy creates those on first use, so they live in a dict)."""

    upstream_rq_total: Counter
    upstream_rq_completed: Counter
    upstream_rq_1xx: Counter
    upstream_rq_2xx: Counter
    upstream_rq_3xx: Counter
    upstream_rq_4xx: Counter
    upstream_rq_5xx: Counter
    upstream_rq_timeout: Counter
    upstream_rq_per_try_timeout: Counter
    upstream_rq_retry: Counter
    upstream_rq_retry_success: Counter
    upstream_rq_retry_limit_exceeded: Counter
    upstream_rq_pending_total: Counter
    upstream_rq_pending_failure_eject: Counter
    upstream_rq_pending_overflow: Counter
    upstream_rq_retry_overflow: Counter
    upstream_rq_rx_reset: Counter
    upstream_rq_tx_reset: Counter
    upstream_cx_http1_total: Counter
    upstream_cx_http2_total: Counter
    upstream_cx_protocol_error: Counter
    upstream_cx_idle_timeout: Counter
    upstream_cx_max_duration_reached: Counter
    upstream_cx_max_requests: Counter
    upstream_rq_active: Gauge
    upstream_rq_pending_active: Gauge
    upstream_rq_time: Histogram

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.codes: dict[int, int] = {}

    def count_code(self, code: int) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def items(self) -> Iterator[tuple[str, Kind, object]]:
        yield from super().items()
        for code, n in sorted(self.codes.items()):
            yield f"{self.scope}upstream_rq_{code}", "counter", n

    def reset_counters(self) -> None:
        super().reset_counters()
        self.codes = dict.fromkeys(self.codes, 0)


class HttpInspectorStats(StatsBlock):
    read_error: Counter
    http10_found: Counter
    http11_found: Counter
    http2_found: Counter
    http_not_found: Counter


class TlsInspectorStats(StatsBlock):
    client_hello_too_large: Counter
    tls_found: Counter
    tls_not_found: Counter
    alpn_found: Counter
    alpn_not_found: Counter
    sni_found: Counter
    sni_not_found: Counter


def listener_scope(address: str) -> str:
    """`listener.0.0.0.0_15001.`: Envoy names listener stats by address."""
    return f"listener.{address}."


def cluster_scope(stat_name: str) -> str:
    """`cluster.<stat name>.`; Istio's alt_stat_name ends in `;`, giving `cluster.x;.`."""
    return f"cluster.{stat_name}."


def tcp_scope(stat_prefix: str) -> str:
    return f"tcp.{stat_prefix}."


class StatsStore:
    """A worker's stat blocks, created on first use and kept across config reloads."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[type[StatsBlock], str], StatsBlock] = {}

    def block(self, kind: type[B], scope: str) -> B:
        key = (kind, scope)
        found = self._blocks.get(key)
        if found is None:
            found = self._blocks[key] = kind(scope)
        assert isinstance(found, kind)
        return found

    def listener(self, address: str) -> ListenerStats:
        return self.block(ListenerStats, listener_scope(address))

    def listener_ssl(self, address: str) -> ListenerSslStats:
        return self.block(ListenerSslStats, listener_scope(address) + "ssl.")

    def cluster(self, name: str) -> ClusterStats:
        return self.block(ClusterStats, cluster_scope(name))

    def tcp(self, stat_prefix: str) -> TcpProxyStats:
        return self.block(TcpProxyStats, tcp_scope(stat_prefix))

    def http(self, stat_prefix: str) -> HttpConnManagerStats:
        return self.block(HttpConnManagerStats, f"http.{stat_prefix}.")

    def cluster_http(self, name: str) -> ClusterHttpStats:
        return self.block(ClusterHttpStats, cluster_scope(name))

    def http2(self) -> Http2CodecStats:
        return self.block(Http2CodecStats, "http2.")

    def http_inspector(self) -> HttpInspectorStats:
        return self.block(HttpInspectorStats, "http_inspector.")

    def tls_inspector(self) -> TlsInspectorStats:
        return self.block(TlsInspectorStats, "tls_inspector.")

    def snapshot(self) -> dict[str, tuple[Kind, object]]:
        out: dict[str, tuple[Kind, object]] = {}
        for b in self._blocks.values():
            for name, kind, value in b.items():
                out[name] = (kind, value)
        return out

    def reset_counters(self) -> None:
        for b in self._blocks.values():
            b.reset_counters()


def merge(snapshots: Iterable[dict[str, tuple[Kind, object]]]) -> dict[str, tuple[Kind, object]]:
    """Add up per-worker snapshots: counters and gauges sum, histograms sum bucket by bucket."""
    out: dict[str, tuple[Kind, object]] = {}
    for snap in snapshots:
        for name, (kind, value) in snap.items():
            prev = out.get(name)
            if prev is None:
                out[name] = (kind, value)
            elif kind == "histogram":
                b, counts, n, total = cast(HistogramState, value)
                _, pcounts, pn, ptotal = cast(HistogramState, prev[1])
                summed = [x + y for x, y in zip(counts, pcounts, strict=True)]
                out[name] = (kind, (b, summed, n + pn, total + ptotal))
            elif name.rpartition(".")[2] in SHARED_GAUGES:
                out[name] = (kind, max(cast(int, prev[1]), cast(int, value)))
            else:
                out[name] = (kind, cast(int, prev[1]) + cast(int, value))
    return out


class IstioHttpStats(StatsBlock):
    """Istio's standard HTTP metrics, one block per label set (istio_metrics.py names the scope).
    Declared here, not beside their recorder: a block made by the metaclass must be defined in
    an interpreted module (mypyc builds a compiled module's classes without their annotations)."""

    istio_requests_total: Counter
    istio_request_duration_milliseconds: Histogram
    istio_request_bytes: Histogram
    istio_response_bytes: Histogram


class IstioTcpStats(StatsBlock):
    istio_tcp_connections_opened_total: Counter
    istio_tcp_connections_closed_total: Counter
    istio_tcp_received_bytes_total: Counter
    istio_tcp_sent_bytes_total: Counter


class OutlierDetectionStats(StatsBlock):
    """`cluster.<name>.outlier_detection.`: Envoy's outlier detection stats (consecutive kinds)."""

    ejections_enforced_total: Counter
    ejections_overflow: Counter
    ejections_total: Counter
    ejections_detected_consecutive_5xx: Counter
    ejections_enforced_consecutive_5xx: Counter
    ejections_detected_consecutive_gateway_failure: Counter
    ejections_enforced_consecutive_gateway_failure: Counter
    ejections_active: Gauge


class RbacStats(StatsBlock):
    """`http.<stat_prefix>.rbac.` (HTTP filter) or `<stat_prefix>rbac.` (network filter, Istio's
    `tcp.`): envoy.filters.http.rbac / envoy.filters.network.rbac."""

    allowed: Counter
    denied: Counter
    logged: Counter
    not_logged: Counter


class FaultStats(StatsBlock):
    """`http.<stat_prefix>.fault.`: envoy.filters.http.fault."""

    delays_injected: Counter
    aborts_injected: Counter


def outlier_detection_stats(store: StatsStore, stat_name: str) -> OutlierDetectionStats:
    return store.block(OutlierDetectionStats, cluster_scope(stat_name) + "outlier_detection.")
