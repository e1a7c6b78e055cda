"""Outbound clusters for registry services, as istiod's cluster builder names and shapes them.

Promises:
- One cluster `outbound|<port>||<host>` per service port, plus `outbound|<port>|<subset>|<host>`
  per DestinationRule subset, endpoints filtered by the subset's labels.
- Resolution → cluster type: NONE → ORIGINAL_DST (CLUSTER_PROVIDED), STATIC → STATIC with the
  endpoints, DNS → STRICT_DNS (the endpoints, or the host itself), DNS_ROUND_ROBIN → LOGICAL_DNS.
- connect_timeout is the mesh's (10 s) unless the DestinationRule's connectionPool.tcp sets
  one; lb_policy is Istio's default LEAST_REQUEST unless trafficPolicy.loadBalancer says.
"""

from __future__ import annotations

from collections.abc import Iterable

from pysidecar.config.istio.destination_rule import DestinationRule, Subset, TrafficPolicy
from pysidecar.config.istio.registry import Resolution, Service, ServicePort, outbound_cluster_name
from pysidecar.model import Cluster, ClusterType, LbEndpoint, LbPolicy, MeshConfig, SocketAddress

# istiod's default load balancer since 1.14 (DestinationRule simple: UNSPECIFIED).
DEFAULT_LB = LbPolicy.LEAST_REQUEST


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
    if svc.resolution is Resolution.NONE or policy.lb_policy is LbPolicy.CLUSTER_PROVIDED:
        return Cluster(name, ClusterType.ORIGINAL_DST, connect, LbPolicy.CLUSTER_PROVIDED)
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
