"""istiod's sidecar config generator in miniature: `IstioConfig` → `Bootstrap`.

Promises:
- The standard sidecar skeleton (virtualOutbound / virtualInbound, catch-all clusters) plus,
  for every visible service port:
  - HTTP ports: the shared wildcard listener `0.0.0.0_<port>` (bind_to_port false) with an
    HTTP chain (raw_buffer, http/1.1 | h2c) → HCM with route config "<port>" and a fallback
    chain to PassthroughCluster (ALLOW_ANY) or BlackHoleCluster (REGISTRY_ONLY);
  - TCP / TLS / sniffed ports with a VIP: `<vip>_<port>` → tcp_proxy to the service cluster
    (sniffed ports also get an HTTP chain with route config "<host>:<port>");
  - TLS / HTTPS ports without a VIP: `0.0.0.0_<port>` with one chain per VirtualService tls
    route (once per port, however many of its hosts the port has) and one per host no route
    names by SNI (`server_names`) → tcp_proxy, and the Passthrough / BlackHole fallback chain;
  - TCP ports without a VIP: `0.0.0.0_<port>` → tcp_proxy to the first such service.
- VirtualService tcp and tls routes pick the tcp_proxy's clusters (a match's
  `destinationSubnets` become the chain's prefix_ranges, as istiod writes them); http routes
  fill the virtual hosts (`routes`). Clusters come from `clusters.build_clusters`.
- MeshConfig's accessLogFile (encoding, format) is every listener's HCM and tcp_proxy
  `access_log`, as istiod writes it: a reload applies it and the Envoy export carries it.
- Given the workload's labels, the inbound side too: chains on virtualInbound and
  `inbound|<port>||` clusters for the Services selecting them (`inbound.py`).
- `validate` refuses what istiod would accept but can never work: a destination subset no
  DestinationRule defines. Errors name file, YAML path and resource.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from pysidecar.config.istio import routes as rt
from pysidecar.config.istio.authorization_policy import build as authz_build
from pysidecar.config.istio.authorization_policy import policies_for
from pysidecar.config.istio.clusters import ISTIO_CIRCUIT_BREAKERS, build_clusters
from pysidecar.config.istio.destination_rule import DestinationRule
from pysidecar.config.istio.documents import IstioConfig
from pysidecar.config.istio.inbound import (
    build_inbound,
    inbound_ports,
    with_authorization,
    with_inbound,
    with_passthrough_mtls,
)
from pysidecar.config.istio.meta import DEFAULT_NAMESPACE
from pysidecar.config.istio.peer_authentication import effective
from pysidecar.config.istio.registry import Protocol, Service, ServicePort, outbound_cluster_name
from pysidecar.config.istio.sidecar_scope import Sidecar, host_matches
from pysidecar.config.istio.tracing import with_mesh_tracing
from pysidecar.config.istio.virtual_service import (
    MESH_GATEWAY,
    L4Route,
    RouteDestination,
    VirtualService,
    names_gateway,
)
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import standard_sidecar, with_resources
from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    PASSTHROUGH_CLUSTER,
    AccessLogConfig,
    Bootstrap,
    CidrRange,
    FilterChain,
    FilterChainMatch,
    Listener,
    ListenerFilter,
    MeshConfig,
    OutboundTrafficPolicy,
    SocketAddress,
    TcpProxy,
    TrafficDirection,
    WeightedCluster,
)
from pysidecar.model.tls import WorkloadIdentity

log = logging.getLogger(__name__)

HTTP_MATCH = FilterChainMatch(transport_protocol="raw_buffer", application_protocols=("http/1.1", "h2c"))
INSPECTORS = (ListenerFilter.TLS_INSPECTOR, ListenerFilter.HTTP_INSPECTOR)
PASSTHROUGH_CHAIN = "PassthroughFilterChain"


@dataclass
class _WildcardPort:
    """What the shared `0.0.0.0_<port>` listener collects from every service on the port."""

    http: list[rt.HostRoutes] = field(default_factory=list)
    matched: list[tuple[str, FilterChainMatch, TcpProxy]] = field(default_factory=list)  # ("tls" | "cidr", ...)
    tcp: TcpProxy | None = None
    tcp_owner: str = ""
    tls_routes_seen: set[tuple[str, int]] = field(default_factory=set)  # (VirtualService, tls route index)
    owners: dict[tuple[frozenset[CidrRange], frozenset[str]], str] = field(default_factory=dict)

    def add(self, kind: str, match: FilterChainMatch, proxy: TcpProxy, owner: str) -> None:
        """One chain per (prefix ranges, server names): a second with the same match is
        dropped, as istiod drops filter chains with the same matching rules."""
        key = (frozenset(match.prefix_ranges), frozenset(match.server_names))
        if key in self.owners:
            what = ", ".join(map(str, match.prefix_ranges + match.server_names))
            log.warning("%s: %s already routed by %s; ignored", owner, what, self.owners[key])
            return
        self.owners[key] = owner
        self.matched.append((kind, match, proxy))


# -- scope -----------------------------------------------------------------------------------


def _sidecar(cfg: IstioConfig) -> Sidecar | None:
    plain = [s for s in cfg.sidecars if not s.has_workload_selector]
    for s in cfg.sidecars:
        if s.has_workload_selector:
            log.warning("%s: %s: workloadSelector Sidecar ignored", s.meta.file, s.meta.ref)
    for extra in plain[1:]:
        log.warning("%s: %s ignored: %s applies", extra.meta.file, extra.meta.ref, plain[0].meta.ref)
    return plain[0] if plain else None


def effective_mesh(cfg: IstioConfig) -> MeshConfig:
    mesh = cfg.mesh or MeshConfig()
    scope = _sidecar(cfg)
    if scope is not None and scope.outbound_traffic_policy is not None:
        mesh = replace(mesh, outbound_traffic_policy=scope.outbound_traffic_policy)
    return mesh


def visible_services(cfg: IstioConfig, scope: Sidecar | None) -> list[Service]:
    """One service per hostname (the first defined wins, as istiod's oldest-first), filtered by
    the Sidecar's egress hosts."""
    by_host: dict[str, Service] = {}
    for svc in cfg.services:
        if scope is not None and not scope.sees(svc.namespace, svc.hostname):
            continue
        first = by_host.setdefault(svc.hostname, svc)
        if first is not svc:
            log.warning("%s: host %s also defined by %s; the first definition is used", svc.ref, svc.hostname, first.ref)
    return list(by_host.values())


def destination_rules(cfg: IstioConfig) -> dict[str, DestinationRule]:
    out: dict[str, DestinationRule] = {}
    for dr in cfg.destination_rules:
        first = out.setdefault(dr.host, dr)
        if first is not dr:
            log.warning("%s: %s: host %s already has %s; ignored", dr.meta.file, dr.meta.ref, dr.host, first.meta.ref)
    return out


def rule_for(host: str, rules: dict[str, DestinationRule]) -> DestinationRule | None:
    if host in rules:
        return rules[host]
    matches = [h for h in rules if host_matches(h, host)]
    return rules[max(matches, key=len)] if matches else None


# -- validation ------------------------------------------------------------------------------


def validate(cfg: IstioConfig, rules: dict[str, DestinationRule]) -> None:
    """Cross-resource checks: every destination subset is defined by a DestinationRule."""
    for v in cfg.virtual_services:
        dests: list[RouteDestination] = [d for h in v.http for d in h.route]
        dests += [d for r in (*v.tcp, *v.tls) for d in r.route]
        for d in dests:
            subset = d.destination.subset
            if not subset:
                continue
            dr = rule_for(d.destination.host, rules)
            if dr is not None and dr.subset(subset) is not None:
                continue
            known = ", ".join(s.name for s in dr.subsets) if dr is not None else ""
            why = (
                f"unknown subset {subset!r} for host {d.destination.host!r}: "
                + (f"{dr.meta.ref} defines {known or 'no subsets'}" if dr is not None else "no DestinationRule for the host")
            )
            raise ConfigError(v.meta.file, f"{d.path}.destination.subset", f"{v.meta.ref}: {why}")


# -- listeners -------------------------------------------------------------------------------


def _for_host(vss: list[VirtualService], host: str) -> list[VirtualService]:
    return [v for v in vss if any(host_matches(h, host) for h in v.hosts)]


def tcp_proxy(dests: tuple[RouteDestination, ...], services: dict[str, Service], port: int) -> TcpProxy:
    if len(dests) == 1:
        cluster = rt.destination_cluster(dests[0].destination, services, port)
        return TcpProxy(stat_prefix=cluster, cluster=cluster)
    weighted = tuple(
        WeightedCluster(rt.destination_cluster(d.destination, services, port), d.weight) for d in dests if d.weight
    )
    return TcpProxy(stat_prefix=weighted[0].name, weighted_clusters=weighted)


def l4_routes(routes: tuple[L4Route, ...], port: int, gateway: str = MESH_GATEWAY, namespace: str = "") -> list[L4Route]:
    """The tcp/tls routes that apply to a port on `gateway` (`mesh`, or a Gateway's key; match
    gateways without a namespace are in `namespace`, the VirtualService's)."""
    out: list[L4Route] = []
    for r in routes:
        ok = [
            m for m in r.match
            if (not m.port or m.port == port) and (not m.gateways or names_gateway(m.gateways, gateway, namespace))
        ]  # fmt: skip
        if not r.match or ok:
            out.append(replace(r, match=tuple(ok)))
    return out


def _cidr(text: str) -> CidrRange:
    net = ipaddress.ip_network(text, strict=False)
    return CidrRange(str(net.network_address), net.prefixlen)


L4Chain = tuple[tuple[CidrRange, ...], TcpProxy]  # (prefix_ranges, tcp_proxy)


def _service_tcp(svc: Service, port: ServicePort, vss: list[VirtualService], services: dict[str, Service]) -> list[L4Chain]:
    """The tcp_proxy chains of a TCP service port, as istiod builds them: each route match with
    `destinationSubnets` is a chain matching those prefix_ranges; the first route that matches
    any destination ends the list as the port's default chain (else the service's cluster)."""
    out: list[L4Chain] = []
    for v in _for_host(vss, svc.hostname):
        for r in l4_routes(v.tcp, port.number):
            proxy = tcp_proxy(r.route, services, port.number)
            out.extend((tuple(map(_cidr, m.destination_subnets)), proxy) for m in r.match if m.destination_subnets)
            if not r.match or any(not m.destination_subnets for m in r.match):
                out.append(((), proxy))
                return out
    cluster = outbound_cluster_name(port.number, svc.hostname)
    out.append(((), TcpProxy(stat_prefix=cluster, cluster=cluster)))
    return out


def _service_tls(
    svc: Service, port: ServicePort, vss: list[VirtualService], services: dict[str, Service], w: _WildcardPort
) -> None:
    """The SNI chains a TLS service adds to its port's wildcard listener.

    A VirtualService covering several hosts of the port is applied once per port, not once per
    host (its chains would repeat: real Envoy refuses two chains with the same match). A match
    with `destinationSubnets` adds them as prefix_ranges. A host that none of the port's tls
    routes names by SNI (for any destination) keeps its default chain to its own cluster.
    """
    covered = False
    for v in _for_host(vss, svc.hostname):
        for i, r in enumerate(l4_routes(v.tls, port.number)):
            plain = tuple(h for m in r.match if not m.destination_subnets for h in m.sni_hosts)
            covered = covered or any(host_matches(h, svc.hostname) for h in plain)
            if (v.meta.ref, i) in w.tls_routes_seen:
                continue
            w.tls_routes_seen.add((v.meta.ref, i))
            proxy = tcp_proxy(r.route, services, port.number)
            if plain:
                w.add("tls", FilterChainMatch(server_names=plain), proxy, v.meta.ref)
            for m in r.match:
                if m.destination_subnets:
                    ranges = tuple(map(_cidr, m.destination_subnets))
                    w.add("tls", FilterChainMatch(prefix_ranges=ranges, server_names=m.sni_hosts), proxy, v.meta.ref)
    if not covered:
        cluster = outbound_cluster_name(port.number, svc.hostname)
        w.add("tls", FilterChainMatch(server_names=(svc.hostname,)), TcpProxy(stat_prefix=cluster, cluster=cluster), svc.ref)


def _http_routes(
    svc_host: str, svc: Service | None, port: int, vss: list[VirtualService], services: dict[str, Service], mesh: MeshConfig
) -> rt.HostRoutes:
    retry = mesh.default_http_retry_policy
    for v in _for_host(vss, svc_host):
        if v.http:
            found = rt.virtual_service_routes(v, services, port, retry)
            if found:
                return rt.HostRoutes(svc_host, svc, found)
    return rt.HostRoutes(svc_host, svc, (rt.default_route(svc_host, port, retry),))


def _listener(name: str, address: str, port: int, chains: list[FilterChain]) -> Listener:
    inspect = any(c.filter_chain_match.needs_inspection for c in chains)
    return Listener(
        name=name,
        address=SocketAddress(address, port),
        filter_chains=tuple(chains),
        bind_to_port=False,
        traffic_direction=TrafficDirection.OUTBOUND,
        listener_filters=INSPECTORS if inspect else (),
        continue_on_listener_filters_timeout=inspect,  # as istiod's port listeners
    )


def _tcp_chain(name: str, proxy: TcpProxy, match: FilterChainMatch | None = None) -> FilterChain:
    return FilterChain(name=name, filters=(proxy,), filter_chain_match=match or FilterChainMatch())


def _http_chain(
    name: str, route_name: str, port: int, hosts: list[rt.HostRoutes], policy: OutboundTrafficPolicy | None, namespace: str
) -> FilterChain:
    rc = rt.route_configuration(route_name, port, hosts, policy, namespace)
    return FilterChain(
        name=name, filters=(rt.connection_manager(f"outbound_{name}", rc),), filter_chain_match=HTTP_MATCH
    )


def _vips(svc: Service) -> tuple[list[str], tuple[CidrRange, ...]]:
    ips: list[str] = []
    cidrs: list[CidrRange] = []
    for a in svc.addresses:
        c = _cidr(a)
        if ipaddress.ip_network(a, strict=False).num_addresses == 1:
            ips.append(c.address_prefix)
        else:
            cidrs.append(c)
    return ips, tuple(cidrs)


def build_listeners(
    services: list[Service], vss: list[VirtualService], mesh: MeshConfig, namespace: str = DEFAULT_NAMESPACE
) -> tuple[Listener, ...]:
    by_host = {s.hostname: s for s in services}
    wild: dict[int, _WildcardPort] = {}
    vip_listeners: dict[str, Listener] = {}
    for svc in services:
        ips, cidrs = _vips(svc)
        for port in svc.ports:
            p = port.number
            if port.protocol is Protocol.UDP:
                continue
            if port.protocol.is_http:
                wild.setdefault(p, _WildcardPort()).http.append(_http_routes(svc.hostname, svc, p, vss, by_host, mesh))
                continue
            *subnets, (_, tcp) = _service_tcp(svc, port, vss, by_host)
            for ip in ips:
                name = f"{ip}_{p}"
                chains = [_tcp_chain(f"{name}-cidr-{i}", proxy, FilterChainMatch(prefix_ranges=r)) for i, (r, proxy) in enumerate(subnets)]
                chains.append(_tcp_chain(name, tcp))
                if port.protocol is Protocol.UNSUPPORTED:
                    route_name = f"{svc.hostname}:{p}"
                    hosts = [_http_routes(svc.hostname, svc, p, vss, by_host, mesh)]
                    chains.insert(0, _http_chain(name, route_name, p, hosts, None, namespace))
                if name in vip_listeners:
                    log.warning("%s: listener %s already defined; port %d ignored", svc.ref, name, p)
                    continue
                vip_listeners[name] = _listener(name, ip, p, chains)
            if ips:
                continue
            w = wild.setdefault(p, _WildcardPort())
            if not port.protocol.is_tls:
                for ranges, proxy in subnets:
                    w.add("cidr", FilterChainMatch(prefix_ranges=ranges), proxy, svc.ref)
            if cidrs:
                w.add("cidr", FilterChainMatch(prefix_ranges=cidrs), tcp, svc.ref)
            elif port.protocol.is_tls:
                _service_tls(svc, port, vss, by_host, w)
            else:
                if port.protocol is Protocol.UNSUPPORTED:
                    w.http.append(_http_routes(svc.hostname, svc, p, vss, by_host, mesh))
                if w.tcp is None:
                    w.tcp, w.tcp_owner = tcp, svc.ref
                else:
                    log.warning("%s: TCP port %d without a VIP is already taken by %s", svc.ref, p, w.tcp_owner)
    listeners = list(vip_listeners.values())
    for p in sorted(wild):
        listeners.append(_wildcard_listener(p, wild[p], services, vss, mesh, namespace))
    return tuple(listeners)


def _wildcard_listener(
    port: int, w: _WildcardPort, services: list[Service], vss: list[VirtualService], mesh: MeshConfig, namespace: str
) -> Listener:
    name = f"0.0.0.0_{port}"
    policy = mesh.outbound_traffic_policy
    chains: list[FilterChain] = []
    if w.http:
        hosts = list(w.http)
        if port == 80:
            hosts += _vs_only_hosts(services, vss, mesh)
        chains.append(_http_chain(name, str(port), port, hosts, policy, namespace))
    for kind in ("tls", "cidr"):
        of_kind = [(match, proxy) for k, match, proxy in w.matched if k == kind]
        chains.extend(_tcp_chain(f"{name}-{kind}-{i}", proxy, match) for i, (match, proxy) in enumerate(of_kind))
    if w.tcp is not None:
        chains.append(_tcp_chain(f"{name}-tcp", w.tcp))
    else:
        catchall = PASSTHROUGH_CLUSTER if policy is OutboundTrafficPolicy.ALLOW_ANY else BLACKHOLE_CLUSTER
        chains.append(_tcp_chain(PASSTHROUGH_CHAIN, TcpProxy(stat_prefix=catchall, cluster=catchall)))
    return _listener(name, "0.0.0.0", port, chains)


def _vs_only_hosts(services: list[Service], vss: list[VirtualService], mesh: MeshConfig) -> list[rt.HostRoutes]:
    """istiod's port-80 quirk: VirtualService hosts with no service still get a virtual host."""
    known = {s.hostname for s in services}
    by_host = {s.hostname: s for s in services}
    out: list[rt.HostRoutes] = []
    for v in vss:
        for h in v.hosts:
            if h in known or "*" in h or not v.http:
                continue
            found = rt.virtual_service_routes(v, by_host, 80, mesh.default_http_retry_policy)
            if found:
                out.append(rt.HostRoutes(h, None, found))
                known.add(h)
    return out


# -- the whole config ------------------------------------------------------------------------


def mesh_access_log(mesh: MeshConfig) -> AccessLogConfig | None:
    """MeshConfig accessLogFile / accessLogEncoding / accessLogFormat; None when off."""
    if not mesh.access_log_file:
        return None
    encoding: Literal["TEXT", "JSON"] = "JSON" if mesh.access_log_encoding == "JSON" else "TEXT"
    return AccessLogConfig(mesh.access_log_file, encoding, mesh.access_log_format or None)


def with_access_log(b: Bootstrap, access_log: AccessLogConfig) -> Bootstrap:
    """istiod's: every HCM and tcp_proxy of every listener logs to the mesh's access log."""

    def chain(c: FilterChain) -> FilterChain:
        return replace(c, filters=tuple(replace(f, access_log=(access_log,)) for f in c.filters))

    def listener(lis: Listener) -> Listener:
        default = lis.default_filter_chain
        return replace(
            lis,
            filter_chains=tuple(map(chain, lis.filter_chains)),
            default_filter_chain=chain(default) if default is not None else None,
        )

    return replace(b, listeners=tuple(map(listener, b.listeners)))


def compile_config(
    cfg: IstioConfig,
    workload_labels: Mapping[str, str] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    mesh_access_log_on: bool = True,
    identity: WorkloadIdentity | None = None,
) -> Bootstrap:
    """The sidecar's config; `workload_labels` (the pod's labels) select its inbound Services,
    `namespace` (the pod's) decides which hosts are reachable by their bare short name. The
    mesh's access log goes on every listener's filters unless `mesh_access_log_on` is False
    (`pysidecar run --access-log` wins over it)."""
    rules = destination_rules(cfg)
    validate(cfg, rules)
    scope = _sidecar(cfg)
    mesh = effective_mesh(cfg)
    services = visible_services(cfg, scope)
    vss = [v for v in cfg.virtual_services if v.for_mesh]
    if scope is not None:
        vss = [v for v in vss if any(scope.sees(v.meta.namespace, h) for h in v.hosts)]
    resolved_rules = {s.hostname: dr for s in services if (dr := rule_for(s.hostname, rules)) is not None}
    clusters = build_clusters(services, resolved_rules, mesh, identity)
    listeners = build_listeners(services, vss, mesh, namespace)
    base = standard_sidecar(mesh)
    # istiod gives its own clusters (PassthroughCluster, BlackHoleCluster, ...) unlimited
    # circuit breakers too, not plain Envoy's 1024.
    base = replace(base, clusters=tuple(replace(c, circuit_breakers=ISTIO_CIRCUIT_BREAKERS) for c in base.clusters))
    modes = effective(cfg.peer_authentications, namespace, workload_labels or {}, mesh.root_namespace)
    if identity is None and "STRICT" in modes.all_modes:
        strict = next(p for p in cfg.peer_authentications if p.mode == "STRICT" or any(m == "STRICT" for _, m in p.port_modes))
        raise ConfigError(
            strict.meta.file, "spec.mtls", f"{strict.meta.ref}: STRICT needs the workload certificate "
            "(cert-chain.pem, key.pem, root-cert.pem in --cert-dir, default /etc/certs), and none was found",
        )  # fmt: skip
    inbound = build_inbound(inbound_ports(cfg.services, workload_labels or {}, cfg.pods), mesh, modes, identity)
    base = with_inbound(base, inbound)
    base = with_passthrough_mtls(base, modes.default, identity)
    authz = policies_for(cfg.authorization_policies, namespace, workload_labels or {}, mesh.root_namespace)
    base = with_authorization(base, authz_build(authz, for_tcp=True), authz_build(authz, for_tcp=False))
    out = with_mesh_tracing(
        replace(with_resources(base, listeners, clusters), sources=cfg.files or base.sources, identity=identity)
    )
    access_log = mesh_access_log(mesh) if mesh_access_log_on else None
    return with_access_log(out, access_log) if access_log is not None else out
