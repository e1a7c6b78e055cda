"""Outbound clusters for registry services, as istiod's cluster builder names and shapes them.

Promises:
- One cluster `outbound|<port>||<host>` per service port, plus `outbound|<port>|<subset>|<host>`
  per DestinationRule subset, endpoints filtered by the subset's labels.
- Resolution → cluster type: NONE → ORIGINAL_DST (CLUSTER_PROVIDED), STATIC → STATIC with the
  endpoints, DNS → STRICT_DNS (the endpoints, or the host itself), DNS_ROUND_ROBIN → LOGICAL_DNS.
- connect_timeout is the mesh's (10 s) unless the DestinationRule's connectionPool.tcp sets
  one; lb_policy is Istio's default LEAST_REQUEST unless trafficPolicy.loadBalancer says.
- Circuit breakers are istiod's: every threshold 4294967295 (ISTIO_UNLIMITED), lowered by
  connectionPool tcp.maxConnections, http.http1MaxPendingRequests, http.http2MaxRequests,
  http.maxRetries when set above 0. outlierDetection becomes Envoy's as istiod's
  applyOutlierDetection writes it: consecutive5xxErrors / consecutiveGatewayErrors with
  enforcing 100 (0 when the count is 0), Envoy's defaults (5 x 5xx enforced) otherwise,
  interval, baseEjectionTime (also the max ejection time when above 300 s),
  maxEjectionPercent, and the panic threshold set to minHealthPercent (0: no panic mode).
"""

from __future__ import annotations

from collections.abc import Iterable

from pysidecar.config.istio import destination_rule as drule
from pysidecar.config.istio.destination_rule import DestinationRule, Subset, TrafficPolicy
from pysidecar.config.istio.registry import Resolution, Service, ServicePort, outbound_cluster_name
from pysidecar.model import (
    DEFAULT_PANIC_THRESHOLD,
    ISTIO_UNLIMITED,
    CircuitBreakers,
    Cluster,
    ClusterType,
    LbEndpoint,
    LbPolicy,
    MeshConfig,
    OutlierDetection,
    SocketAddress,
)

# istiod's default load balancer since 1.14 (DestinationRule simple: UNSPECIFIED).
DEFAULT_LB = LbPolicy.LEAST_REQUEST
# istiod's getDefaultCircuitBreakerThresholds: no limits unless a DestinationRule sets them.
ISTIO_CIRCUIT_BREAKERS = CircuitBreakers(ISTIO_UNLIMITED, ISTIO_UNLIMITED, ISTIO_UNLIMITED, ISTIO_UNLIMITED)
# istiod sets healthy_panic_threshold to minHealthPercent, whose default is 0.
ISTIO_PANIC_THRESHOLD = 0.0


def circuit_breakers(pool: drule.ConnectionPool | None) -> CircuitBreakers:
    """istiod's applyConnectionPool: a threshold is lowered only by a value above 0."""
    d = ISTIO_CIRCUIT_BREAKERS
    if pool is None:
        return d

    def pick(value: int | None, default: int) -> int:
        return value if value else default

    return CircuitBreakers(
        max_connections=pick(pool.max_connections, d.max_connections),
        max_pending_requests=pick(pool.http1_max_pending_requests, d.max_pending_requests),
        max_requests=pick(pool.http2_max_requests, d.max_requests),
        max_retries=pick(pool.max_retries, d.max_retries),
    )


def outlier_detection(od: drule.OutlierDetection) -> OutlierDetection:
    """istiod's applyOutlierDetection."""
    e = OutlierDetection()
    five, gw = od.consecutive_5xx_errors, od.consecutive_gateway_errors
    base = od.base_ejection_time
    return OutlierDetection(
        consecutive_5xx=five if five is not None else e.consecutive_5xx,
        enforcing_consecutive_5xx=(100 if five else 0) if five is not None else e.enforcing_consecutive_5xx,
        consecutive_gateway_failure=gw if gw is not None else e.consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure=(100 if gw else 0) if gw is not None else e.enforcing_consecutive_gateway_failure,
        interval=od.interval,
        base_ejection_time=base,
        max_ejection_time=max(base, e.max_ejection_time),
        max_ejection_percent=od.max_ejection_percent or e.max_ejection_percent,
    )


def _policy(dr: DestinationRule | None, subset: Subset | None) -> TrafficPolicy:
    """The subset's policy overlaid on the rule's, field by field, as istiod merges them."""
    base = dr.traffic_policy if dr is not None and dr.traffic_policy is not None else TrafficPolicy()
    over = subset.traffic_policy if subset is not None else None
    if over is None:
        return base
    return TrafficPolicy(
        lb_policy=over.lb_policy or base.lb_policy,
        connection_pool=over.connection_pool or base.connection_pool,
        outlier_detection=over.outlier_detection or base.outlier_detection,
    )


def _endpoints(svc: Service, port: ServicePort, subset: Subset | None) -> tuple[LbEndpoint, ...]:
    if svc.resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not svc.endpoints:
        return (LbEndpoint(SocketAddress(svc.hostname, port.target_port or port.number)),)
    chosen = [e for e in svc.endpoints if subset is None or e.has_labels(subset.labels)]
    out = tuple(
        LbEndpoint(SocketAddress(e.address, e.port_for(port)), e.weight)
        for e in chosen
        if not e.address.startswith("unix://")
    )
    return out[:1] if svc.resolution is Resolution.DNS_ROUND_ROBIN else out


def service_cluster(
    svc: Service, port: ServicePort, mesh: MeshConfig, dr: DestinationRule | None, subset: Subset | None = None
) -> Cluster:
    policy = _policy(dr, subset)
    pool = policy.connection_pool
    connect = pool.connect_timeout if pool is not None and pool.connect_timeout is not None else mesh.connect_timeout
    name = outbound_cluster_name(port.number, svc.hostname, subset.name if subset else "")
    od = outlier_detection(policy.outlier_detection) if policy.outlier_detection is not None else None
    # connectionPool.http.idleTimeout: the upstream connections' idle timeout (default 1 h).
    idle = pool.idle_timeout if pool is not None and pool.idle_timeout is not None else 3600.0
    if svc.resolution is Resolution.NONE or policy.lb_policy is LbPolicy.CLUSTER_PROVIDED:
        return Cluster(
            name, ClusterType.ORIGINAL_DST, connect, LbPolicy.CLUSTER_PROVIDED,
            circuit_breakers=circuit_breakers(pool), http_idle_timeout=idle,
        )  # fmt: skip
    ctype = {
        Resolution.STATIC: ClusterType.STATIC,
        Resolution.DNS: ClusterType.STRICT_DNS,
        Resolution.DNS_ROUND_ROBIN: ClusterType.LOGICAL_DNS,
    }[svc.resolution]
    return Cluster(
        name=name,
        type=ctype,
        connect_timeout=connect,
        lb_policy=policy.lb_policy or DEFAULT_LB,
        endpoints=_endpoints(svc, port, subset),
        circuit_breakers=circuit_breakers(pool),
        outlier_detection=od,
        healthy_panic_threshold=ISTIO_PANIC_THRESHOLD if od is not None else DEFAULT_PANIC_THRESHOLD,
        http_idle_timeout=idle,
    )


def build_clusters(
    services: Iterable[Service], rules: dict[str, DestinationRule], mesh: MeshConfig
) -> tuple[Cluster, ...]:
    out: dict[str, Cluster] = {}
    for svc in services:
        dr = rules.get(svc.hostname)
        for port in svc.ports:
            for subset in (None, *(dr.subsets if dr is not None else ())):
                c = service_cluster(svc, port, mesh, dr, subset)
                out.setdefault(c.name, c)
    return tuple(out.values())
