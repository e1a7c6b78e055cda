"""The inbound side istiod builds for the workload this sidecar serves: virtualInbound chains.

Promises:
- `inbound_ports(services, labels, pods)` finds this workload's ports the way istiod's
  ServiceTargets do: every port of a Kubernetes Service whose non-empty `spec.selector` matches
  `labels`, keyed by its target port (a number, or a name resolved through the named container
  ports of a Pod document carrying `labels`; unresolvable names are skipped with a warning).
  Two Services on one target port: the first defined wins, as istiod's oldest-first, with a
  warning when their protocols differ. Sorted by target port. No labels, no ports.
- `build_inbound(ports, mesh)` gives, per target port P, istiod's names and shapes:
  - HTTP ports (http, http2, grpc, grpc-web): chain `0.0.0.0_P` matching destination port P and
    transport raw_buffer → HTTP connection manager, stat_prefix `inbound_0.0.0.0_P`,
    `server_name: istio-envoy` (istiod's inbound ServerName), inline route config `inbound|P||`
    with one virtual host `inbound|http|<service port>`, domains `*`, route `default` (prefix
    `/`, timeout 0, retry on reset-before-request twice, decorator `<host>:<service port>/*`)
    to cluster `inbound|P||`;
  - sniffed ports (no protocol from name or appProtocol): that HTTP chain with ALPN
    http/1.1 | h2c, plus a TCP chain;
  - any other port: a TCP chain `0.0.0.0_P`, tcp_proxy stat_prefix and cluster `inbound|P||`;
  - cluster `inbound|P||`: ORIGINAL_DST (CLUSTER_PROVIDED) from 127.0.0.6 / ::6, as istiod's
    default inboundTrafficPolicy PASSTHROUGH builds it (the app sees 127.0.0.6 on its pod IP,
    like InboundPassthroughClusterIpv4), mesh connect timeout, istiod's unlimited circuit breakers.
- `with_inbound(bootstrap, inbound)` appends the chains to the virtualInbound listener, after
  its blackhole and passthrough chains (as istiod orders them), and adds the clusters.
- Per port, the PeerAuthentication mode (`MtlsModes`) picks istiod's chains: DISABLE, or no
  workload identity: plaintext only (the shapes above); PERMISSIVE: mTLS chains (transport
  `tls`, Istio's ALPNs, terminating with the workload certificate and requiring a client
  certificate, config/istio/mtls.py) in front of the plaintext ones; STRICT: TLS chains only, so
  plaintext finds no chain and is closed (listener `no_filter_chain_match`).
- Pure: labels and Pod ports are inputs; nothing is read from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from pysidecar.config.istio import mtls
from pysidecar.config.istio import routes as rt
from pysidecar.config.istio.clusters import ISTIO_CIRCUIT_BREAKERS, upstream_protocol
from pysidecar.config.istio.kube import PodPorts
from pysidecar.config.istio.peer_authentication import MtlsModes
from pysidecar.config.istio.registry import Protocol, Service, ServicePort
from pysidecar.config.sidecar import (
    HTTP_ALPNS,
    INBOUND_PASSTHROUGH_BIND,
    INBOUND_RETRY,
    INBOUND_SERVER_NAME,
)
from pysidecar.model import (
    VIRTUAL_INBOUND,
    Bootstrap,
    Cluster,
    ClusterType,
    FilterChain,
    FilterChainMatch,
    LbPolicy,
    MeshConfig,
    TcpProxy,
)
from pysidecar.model.http import (
    Decorator,
    HttpConnectionManager,
    HttpFilter,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.model.rbac import RBAC_HTTP_FILTER, RBAC_HTTP_TYPE, RbacFilter
from pysidecar.model.tls import WorkloadIdentity

log = logging.getLogger(__name__)

# The virtual listener's wildcard: it names inbound chains and their stat prefixes.
WILDCARD = "0.0.0.0"
PLAINTEXT = "raw_buffer"


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One workload port istiod builds inbound config for (its inboundChainConfig)."""

    target_port: int  # the destination port chains match, and the cluster's name
    service_port: int  # names the virtual host and the decorator
    protocol: Protocol
    hostname: str  # the service it came from (decorator)
    ref: str  # for warnings

    @property
    def cluster_name(self) -> str:
        """istiod's BuildInboundSubsetKey."""
        return f"inbound|{self.target_port}||"

    @property
    def chain_name(self) -> str:
        return f"{WILDCARD}_{self.target_port}"


@dataclass(frozen=True, slots=True)
class Inbound:
    chains: tuple[FilterChain, ...] = ()
    clusters: tuple[Cluster, ...] = ()


# -- which ports -----------------------------------------------------------------------------


def selects(selector: Iterable[tuple[str, str]], labels: Mapping[str, str]) -> bool:
    """Kubernetes' equality selector; an empty one selects nothing (a Service without one has
    no endpoints managed for it)."""
    wanted = tuple(selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted)


def _named_ports(pods: Iterable[PodPorts], labels: Mapping[str, str]) -> dict[str, int]:
    """Named container ports of the Pod documents that are this workload (carry its labels)."""
    out: dict[str, int] = {}
    for pod in pods:
        if all(dict(pod.labels).get(k) == v for k, v in labels.items()):
            for name, number in pod.ports:
                out.setdefault(name, number)
    return out


def _target_port(svc: Service, port: ServicePort, named: Mapping[str, int]) -> int | None:
    if port.target_port_name is None:
        return port.target_port or port.number
    found = named.get(port.target_port_name)
    if found is None:
        log.warning(
            "%s: port %d: targetPort %r is a name no Pod document with the workload labels declares; "
            "no inbound chain for it", svc.ref, port.number, port.target_port_name,
        )  # fmt: skip
    return found


def inbound_ports(
    services: Iterable[Service], labels: Mapping[str, str], pods: Iterable[PodPorts] = ()
) -> tuple[InboundPort, ...]:
    if not labels:
        return ()
    named = _named_ports(pods, labels)
    by_port: dict[int, InboundPort] = {}
    for svc in services:
        if not svc.kubernetes or not selects(svc.selector, labels):
            continue
        for port in svc.ports:
            target = _target_port(svc, port, named)
            if target is None or port.protocol is Protocol.UDP:
                continue
            found = InboundPort(target, port.number, port.protocol, svc.hostname, svc.ref)
            first = by_port.setdefault(target, found)
            if first is not found and first.protocol is not found.protocol:
                log.warning(
                    "%s: target port %d is already served as %s by %s; port %d (%s) ignored",
                    svc.ref, target, first.protocol.value, first.ref, port.number, port.protocol.value,
                )  # fmt: skip
    return tuple(by_port[p] for p in sorted(by_port))


# -- what istiod builds for them -------------------------------------------------------------


def default_route(p: InboundPort) -> Route:
    """istiod's BuildDefaultHTTPInboundRoute."""
    return Route(
        match=RouteMatch(prefix="/"),
        name=rt.DEFAULT_ROUTE,
        route=RouteAction(cluster=p.cluster_name, timeout=0.0, retry_policy=INBOUND_RETRY),
        decorator=Decorator(f"{p.hostname}:{p.service_port}/*"),
    )


def connection_manager(p: InboundPort) -> HttpConnectionManager:
    """istiod's inbound HCM: the outbound one's shape (router, websocket, no stream idle
    timeout), its own stat prefix and server name, one wildcard virtual host."""
    vhost = VirtualHost(name=f"inbound|http|{p.service_port}", domains=("*",), routes=(default_route(p),))
    rc = RouteConfiguration(name=p.cluster_name, virtual_hosts=(vhost,), validate_clusters=False)
    hcm = rt.connection_manager(f"inbound_{p.chain_name}", rc)
    # listener_inbound.go: append the client's certificate details to XFCC and forward it.
    return replace(
        hcm, server_name=INBOUND_SERVER_NAME,
        forward_client_cert_details="APPEND_FORWARD", set_current_client_cert_details=("subject", "dns", "uri"),
    )  # fmt: skip


def _match(p: InboundPort, alpns: tuple[str, ...] = (), transport: str = PLAINTEXT) -> FilterChainMatch:
    return FilterChainMatch(destination_port=p.target_port, transport_protocol=transport, application_protocols=alpns)


def filter_chains(p: InboundPort, mode: str = "DISABLE", identity: WorkloadIdentity | None = None) -> tuple[FilterChain, ...]:
    """istiod's getFilterChainMatchOptions for the port's protocol and mTLS mode."""
    http = FilterChain(p.chain_name, (connection_manager(p),), _match(p))
    tcp = FilterChain(p.chain_name, (TcpProxy(stat_prefix=p.cluster_name, cluster=p.cluster_name),), _match(p))
    if identity is None or mode == "DISABLE":
        if p.protocol.is_http:
            return (http,)
        if p.protocol is Protocol.UNSUPPORTED:
            # Sniffed: the HTTP chain only for what the HTTP inspector recognised.
            return (replace(http, filter_chain_match=_match(p, HTTP_ALPNS)), tcp)
        return (tcp,)
    tls = mtls.TLS_TRANSPORT

    def mtls_chain(chain: FilterChain, alpns: tuple[str, ...], is_http: bool) -> FilterChain:
        assert identity is not None
        return replace(
            chain, filter_chain_match=_match(p, alpns, tls), transport_socket=mtls.downstream_context(identity, is_http)
        )

    tls_passthrough = replace(tcp, filter_chain_match=_match(p, (), tls))
    if mode == "STRICT":
        if p.protocol.is_http:
            return (mtls_chain(http, (), True),)
        if p.protocol is Protocol.UNSUPPORTED:
            return (mtls_chain(http, mtls.MTLS_HTTP_ALPNS, True), mtls_chain(tcp, (), False))
        return (mtls_chain(tcp, (), False),)
    # PERMISSIVE
    if p.protocol.is_http:
        return (mtls_chain(http, mtls.ALL_ISTIO_MTLS_ALPNS, True), http)
    if p.protocol is Protocol.UNSUPPORTED:
        return (
            mtls_chain(http, mtls.MTLS_HTTP_ALPNS, True),
            replace(http, filter_chain_match=_match(p, HTTP_ALPNS)),
            mtls_chain(tcp, mtls.MTLS_TCP_WITH_MXC_ALPNS, False),
            tcp,
            tls_passthrough,
        )
    return (mtls_chain(tcp, mtls.ALL_ISTIO_MTLS_ALPNS, False), tls_passthrough, tcp)


def cluster(p: InboundPort, mesh: MeshConfig) -> Cluster:
    # istiod's setUpstreamProtocol for inbound: HTTP/2 to grpc/http2 ports, the downstream's
    # protocol to sniffed ones (no h2 upgrade inbound).
    http_protocol, h2 = upstream_protocol(p.protocol, False, mesh, None)
    return Cluster(
        name=p.cluster_name,
        type=ClusterType.ORIGINAL_DST,
        connect_timeout=mesh.connect_timeout,
        lb_policy=LbPolicy.CLUSTER_PROVIDED,
        upstream_bind_addresses=INBOUND_PASSTHROUGH_BIND,
        circuit_breakers=ISTIO_CIRCUIT_BREAKERS,
        upstream_http_protocol=http_protocol,
        http2_options=h2,
    )


def build_inbound(
    ports: Iterable[InboundPort],
    mesh: MeshConfig,
    modes: MtlsModes | None = None,
    identity: WorkloadIdentity | None = None,
) -> Inbound:
    ports = tuple(ports)
    modes = modes or MtlsModes("DISABLE")
    return Inbound(
        chains=tuple(c for p in ports for c in filter_chains(p, modes.for_port(p.target_port), identity)),
        clusters=tuple(cluster(p, mesh) for p in ports),
    )


PASSTHROUGH_CHAINS = (VIRTUAL_INBOUND, f"{VIRTUAL_INBOUND}-catchall-http")


def passthrough_mtls(chain: FilterChain, mode: str, identity: WorkloadIdentity | None) -> tuple[FilterChain, ...]:
    """A plaintext passthrough chain (HTTP or TCP, per address family) under the workload's
    mode, as istiod's buildInboundPassthroughChains: PERMISSIVE adds its mTLS twin (Istio's
    HTTP / TCP ALPNs, terminated with the workload certificate), STRICT keeps only a TLS one
    (so plaintext to a port no Service names is refused too)."""
    if identity is None or mode == "DISABLE":
        return (chain,)
    http = isinstance(chain.terminal_filter, HttpConnectionManager)
    alpns: tuple[str, ...]
    if http:
        alpns = mtls.MTLS_HTTP_ALPNS
    else:
        alpns = () if mode == "STRICT" else mtls.MTLS_TCP_WITH_MXC_ALPNS
    tls = replace(
        chain,
        filter_chain_match=replace(chain.filter_chain_match, transport_protocol=mtls.TLS_TRANSPORT, application_protocols=alpns),
        transport_socket=mtls.downstream_context(identity, http),
    )
    return (tls,) if mode == "STRICT" else (tls, chain)


def with_passthrough_mtls(b: Bootstrap, mode: str, identity: WorkloadIdentity | None) -> Bootstrap:
    listeners = tuple(
        replace(x, filter_chains=tuple(
            c for ch in x.filter_chains
            for c in (passthrough_mtls(ch, mode, identity) if ch.name in PASSTHROUGH_CHAINS else (ch,))
        )) if x.name == VIRTUAL_INBOUND else x
        for x in b.listeners
    )  # fmt: skip
    return replace(b, listeners=listeners)


def with_authorization(b: Bootstrap, tcp: tuple[RbacFilter, ...], http: tuple[RbacFilter, ...]) -> Bootstrap:
    """Istio's authorization on every virtualInbound chain but the blackhole: network RBAC
    filters before tcp_proxy, HTTP RBAC filters before the router."""

    def chain(c: FilterChain) -> FilterChain:
        if c.name.endswith("-blackhole"):
            return c
        term = c.terminal_filter
        if isinstance(term, TcpProxy):
            return replace(c, rbac=tcp)
        filters = tuple(HttpFilter(RBAC_HTTP_FILTER, RBAC_HTTP_TYPE, rbac=f) for f in http)
        return replace(c, filters=(*c.filters[:-1], replace(term, http_filters=filters + term.http_filters)))

    if not tcp and not http:
        return b
    listeners = tuple(
        replace(x, filter_chains=tuple(chain(c) for c in x.filter_chains)) if x.name == VIRTUAL_INBOUND else x
        for x in b.listeners
    )
    return replace(b, listeners=listeners)


def with_inbound(b: Bootstrap, inbound: Inbound) -> Bootstrap:
    listeners = tuple(
        replace(x, filter_chains=x.filter_chains + inbound.chains) if x.name == VIRTUAL_INBOUND else x
        for x in b.listeners
    )
    return replace(b, listeners=listeners, clusters=b.clusters + inbound.clusters)
