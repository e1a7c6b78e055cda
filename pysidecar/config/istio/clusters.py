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
  maxEjectionPercent, and the panic threshold set to minHealthPercent (0: no panic mode);
  the deprecated consecutiveErrors counts gateway errors only, as istiod maps it.
- TLS (config/istio/mtls.py): the DestinationRule's tls for the port (portLevelSettings, else
  the subset's, else the rule's), or auto mTLS; endpoints of pods labelled
  `security.istio.io/tlsMode: istio` carry metadata tlsMode=istio, as istiod's endpoints do.
- connectionPool.http idleTimeout and maxRequestsPerConnection, and tcp.maxConnectionDuration,
  become the cluster's upstream HTTP options (common_http_protocol_options), which the pools
  honour.
- The upstream HTTP protocol is istiod's (`upstream_protocol`): HTTP/2 for ports of protocol
  http2 / grpc / grpc-web (max_concurrent_streams 2^30), the downstream's for sniffed ports;
  outbound HTTP ports are upgraded to HTTP/2 by the mesh's h2UpgradePolicy UPGRADE or the
  DestinationRule's http.h2UpgradePolicy UPGRADE (DO_NOT_UPGRADE keeps HTTP/1.1; UPGRADE
  also upgrades a sniffed port); http.maxConcurrentStreams lowers the HTTP/2 stream limit;
  http.useClientProtocol makes it the downstream's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from pysidecar.config.istio import destination_rule as drule
from pysidecar.config.istio.destination_rule import DestinationRule, Subset, TrafficPolicy
from pysidecar.config.istio.mtls import cluster_tls
from pysidecar.config.istio.registry import (
    Protocol,
    Resolution,
    Service,
    ServicePort,
    outbound_cluster_name,
)
from pysidecar.model import (
    DEFAULT_PANIC_THRESHOLD,
    DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT,
    ISTIO_H2_MAX_CONCURRENT_STREAMS,
    ISTIO_UNLIMITED,
    CircuitBreakers,
    Cluster,
    ClusterType,
    DnsLookupFamily,
    LbEndpoint,
    LbPolicy,
    MeshConfig,
    OutlierDetection,
    SocketAddress,
    UpstreamHttpProtocol,
)
from pysidecar.model.http import Http2Options
from pysidecar.model.tls import TLS_MODE_ISTIO, TLS_MODE_KEY, TLS_MODE_LABEL, WorkloadIdentity

# istiod's default load balancer since 1.14 (DestinationRule simple: UNSPECIFIED).
DEFAULT_LB = LbPolicy.LEAST_REQUEST
# istiod's getDefaultCircuitBreakerThresholds: no limits unless a DestinationRule sets them.
ISTIO_CIRCUIT_BREAKERS = CircuitBreakers(ISTIO_UNLIMITED, ISTIO_UNLIMITED, ISTIO_UNLIMITED, ISTIO_UNLIMITED)


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
    """istiod's applyOutlierDetection. The deprecated consecutiveErrors counts gateway errors
    only (5xx ejection off, istio/api#617); consecutive5xxErrors / consecutiveGatewayErrors,
    when given, win over it."""
    e = OutlierDetection()
    if od.consecutive_errors:
        e = replace(
            e,
            consecutive_gateway_failure=od.consecutive_errors,
            enforcing_consecutive_gateway_failure=100,
            enforcing_consecutive_5xx=0,
        )
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


# istiod's http2ProtocolOptions(): what every HTTP/2-capable cluster it writes carries.
ISTIO_HTTP2_OPTIONS = Http2Options(max_concurrent_streams=ISTIO_H2_MAX_CONCURRENT_STREAMS)


def should_h2_upgrade(
    protocol: Protocol, mesh_upgrade: bool, pool: drule.ConnectionPool | None
) -> bool:
    """istiod's shouldH2Upgrade (outbound clusters only): useClientProtocol never upgrades; a
    DestinationRule's UPGRADE / DO_NOT_UPGRADE wins (UPGRADE even on a sniffed port: the user
    says it is HTTP); otherwise HTTP ports follow the mesh's h2UpgradePolicy."""
    if pool is not None:
        if pool.use_client_protocol:
            return False
        if pool.h2_upgrade is not None:
            return pool.h2_upgrade
    return protocol.is_http and mesh_upgrade


def upstream_protocol(
    protocol: Protocol, outbound: bool, mesh: MeshConfig, pool: drule.ConnectionPool | None
) -> tuple[UpstreamHttpProtocol, Http2Options]:
    """The cluster's upstream HTTP protocol and HTTP/2 options, in istiod's order:
    setUpstreamProtocol (port protocol), applyH2Upgrade (outbound), applyConnectionPool
    (maxConcurrentStreams on an explicit HTTP/2 cluster, then useClientProtocol)."""
    kind = UpstreamHttpProtocol.HTTP1
    h2 = Http2Options()
    if protocol.is_http2:
        kind, h2 = UpstreamHttpProtocol.HTTP2, ISTIO_HTTP2_OPTIONS
    elif protocol is Protocol.UNSUPPORTED:
        kind, h2 = UpstreamHttpProtocol.USE_DOWNSTREAM, ISTIO_HTTP2_OPTIONS
    if outbound and should_h2_upgrade(protocol, mesh.h2_upgrade, pool):
        # setH2Options replaces use_downstream_protocol_config too (a sniffed port, UPGRADE).
        kind, h2 = UpstreamHttpProtocol.HTTP2, ISTIO_HTTP2_OPTIONS
    if pool is not None and pool.max_concurrent_streams and kind is UpstreamHttpProtocol.HTTP2:
        h2 = Http2Options(max_concurrent_streams=pool.max_concurrent_streams)
    if pool is not None and pool.use_client_protocol:
        kind, h2 = UpstreamHttpProtocol.USE_DOWNSTREAM, ISTIO_HTTP2_OPTIONS
    return kind, h2


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
        tls=over.tls or base.tls,
        port_tls=over.port_tls or base.port_tls,
    )


def _endpoints(svc: Service, port: ServicePort, subset: Subset | None) -> tuple[LbEndpoint, ...]:
    if svc.resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not svc.endpoints:
        return (LbEndpoint(SocketAddress(svc.hostname, port.target_port or port.number)),)
    chosen = [e for e in svc.endpoints if subset is None or e.has_labels(subset.labels)]
    istio = ((TLS_MODE_KEY, TLS_MODE_ISTIO),)
    out = tuple(
        LbEndpoint(
            SocketAddress(e.address, e.port_for(port)), e.weight,
            istio if dict(e.labels).get(TLS_MODE_LABEL) == TLS_MODE_ISTIO else (),
        )
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
    # istiod's applyConnectionPool: http.idleTimeout and maxRequestsPerConnection go to the
    # cluster's common_http_protocol_options.
    idle = pool.idle_timeout if pool is not None and pool.idle_timeout is not None else DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT
    per_connection = (pool.max_requests_per_connection or 0) if pool is not None else 0
    max_duration = (pool.max_connection_duration or 0.0) if pool is not None else 0.0
    http_protocol, h2 = upstream_protocol(port.protocol, True, mesh, pool)
    if svc.resolution is Resolution.NONE or policy.lb_policy is LbPolicy.CLUSTER_PROVIDED:
        return Cluster(
            name, ClusterType.ORIGINAL_DST, connect, LbPolicy.CLUSTER_PROVIDED, circuit_breakers=circuit_breakers(pool),
            http_idle_timeout=idle, max_requests_per_connection=per_connection, max_connection_duration=max_duration,
            upstream_http_protocol=http_protocol, http2_options=h2,
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
        # istiod's choice for an IPv4 sidecar: names resolve to A records only.
        dns_lookup_family=DnsLookupFamily.AUTO if ctype is ClusterType.STATIC else DnsLookupFamily.V4_ONLY,
        circuit_breakers=circuit_breakers(pool),
        outlier_detection=od,
        # istiod: the panic threshold is outlierDetection.minHealthPercent (default 0: no panic).
        healthy_panic_threshold=float(policy.outlier_detection.min_health_percent)
        if policy.outlier_detection is not None
        else DEFAULT_PANIC_THRESHOLD,
        http_idle_timeout=idle,
        max_requests_per_connection=per_connection,
        max_connection_duration=max_duration,
        upstream_http_protocol=http_protocol,
        http2_options=h2,
    )


def build_clusters(
    services: Iterable[Service],
    rules: dict[str, DestinationRule],
    mesh: MeshConfig,
    identity: WorkloadIdentity | None = None,
) -> tuple[Cluster, ...]:
    out: dict[str, Cluster] = {}
    for svc in services:
        dr = rules.get(svc.hostname)
        for port in svc.ports:
            for subset in (None, *(dr.subsets if dr is not None else ())):
                c = service_cluster(svc, port, mesh, dr, subset)
                if c.name not in out:
                    out[c.name] = cluster_tls(c, svc, _policy(dr, subset).tls_for(port.number), identity, mesh)
    return tuple(out.values())
