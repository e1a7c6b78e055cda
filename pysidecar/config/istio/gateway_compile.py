"""istiod's gateway config generator in miniature (`pilot-agent proxy router`): `IstioConfig` →
`Bootstrap` for a gateway workload.

Promises:
- Only the Gateways whose `selector` matches the workload's labels count. Per server port one
  listener `0.0.0.0_<port>` that binds the port itself (bind_to_port, no original_dst, no
  iptables), traffic direction OUTBOUND, `tls_inspector` when a chain is chosen by SNI. As
  istiod does, a Kubernetes Service selecting the gateway workload translates a server port to
  its targetPort (istio-ingressgateway and istio-egressgateway: 80 → 8080, so `0.0.0.0_8080`,
  route config `http.8080`, virtual hosts and VirtualService `port` matches still the server's
  80); a named targetPort is the number the Service's endpoints give that name.
- HTTP servers share one chain: HCM (server `istio-envoy`, use_remote_address as an edge
  proxy) with route config `http.<listener port>`.
  HTTPS servers that terminate TLS (SIMPLE / MUTUAL) get a chain each, `server_names` = the
  server's hosts, the TLS transport socket from `credentialName` (a Secret in the -c YAML) or
  the file-mounted serverCertificate / privateKey / caCertificates, and route config
  `https.<port>.<port name>.<gateway>.<namespace>`. MUTUAL requires and verifies the client
  certificate. PASSTHROUGH servers get a chain per VirtualService `tls` route, by its
  `sniHosts`, to tcp_proxy; TCP servers a tcp_proxy chain from the VirtualService `tcp` route.
- Virtual hosts `<host>:<port>` (domains `host`, `host:*`; `*` alone for `*`) come from the
  VirtualServices bound to the gateway (`gateways: [name]` or `ns/name`) whose hosts intersect
  the server's (`*`, `*.suffix` wildcards both ways, the more specific host naming the virtual
  host; `ns/host` limits the VirtualService's namespace), with the sidecar's route translation
  (routes.py). A route config without any virtual host answers 404 (istiod's `blackhole`).
  Unmatched hosts and paths are Envoy's 404 NR. `tls.httpsRedirect` on an HTTP server sets
  the virtual hosts' require_tls: plain-text requests get a 301 to https.
- Clusters `outbound|<port>|<subset>|<fqdn>` for every service in the registry, plus
  BlackHoleCluster; admin, stats and readiness as on a sidecar.
- Certificates are loaded at compile time: an unknown credential is an error naming the
  Gateway and `tls.credentialName`; a bad PEM names the Secret's file and key (or the
  certificate file), before anything is bound.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pysidecar.common.tls_context import TlsContextError, server_context
from pysidecar.config.istio import routes as rt
from pysidecar.config.istio.clusters import ISTIO_CIRCUIT_BREAKERS, build_clusters
from pysidecar.config.istio.compile import (
    destination_rules,
    l4_routes,
    mesh_access_log,
    rule_for,
    tcp_proxy,
    validate,
    visible_services,
    with_access_log,
)
from pysidecar.config.istio.documents import IstioConfig
from pysidecar.config.istio.gateway import Gateway, Server
from pysidecar.config.istio.registry import Protocol, Service, ServicePort
from pysidecar.config.istio.secrets import Credential, CredentialError, Pem, credential
from pysidecar.config.istio.sidecar_scope import host_matches
from pysidecar.config.istio.tracing import with_mesh_tracing
from pysidecar.config.istio.virtual_service import VirtualService
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    Bootstrap,
    FilterChain,
    FilterChainMatch,
    Listener,
    ListenerFilter,
    MeshConfig,
    SocketAddress,
    TrafficDirection,
)
from pysidecar.model.http import (
    DirectResponse,
    RetryPolicy,
    Route,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.model.tls import DataSource, DownstreamTlsContext, TlsCertificate

log = logging.getLogger(__name__)

GATEWAY_SERVER_NAME = "istio-envoy"
BLACKHOLE_VHOST = "blackhole"
HTTPS_ALPN = ("h2", "http/1.1")  # as istiod sets on HTTPS gateway servers


@dataclass(frozen=True, slots=True)
class _Bound:
    """A server and the Gateway it belongs to."""

    gateway: Gateway
    server: Server


# -- hosts -----------------------------------------------------------------------------------


def intersect(server_host: str, vs_host: str) -> str | None:
    """The host both name (the more specific of the two), or None: istiod's host intersection."""
    if host_matches(server_host, vs_host):
        return vs_host
    if host_matches(vs_host, server_host):
        return server_host
    return None


def _namespace_ok(ns: str, gateway_ns: str, vs_ns: str) -> bool:
    return ns == "*" or ns == vs_ns or (ns == "." and vs_ns == gateway_ns)


def matching_hosts(b: _Bound, vs_ns: str, vs_hosts: tuple[str, ...]) -> list[str]:
    """The hosts a VirtualService (in `vs_ns`, naming `vs_hosts`) serves on a server."""
    out: list[str] = []
    for ns, sh in b.server.hosts:
        if not _namespace_ok(ns, b.gateway.meta.namespace, vs_ns):
            continue
        for vh in vs_hosts:
            found = intersect(sh, vh)
            if found is not None and found not in out:
                out.append(found)
    return out


def gateway_domains(host: str) -> tuple[str, ...]:
    return ("*",) if host == "*" else (host, f"{host}:*")


# -- HTTP ------------------------------------------------------------------------------------


def virtual_hosts(
    servers: list[_Bound], vss: list[VirtualService], services: dict[str, Service], default_retry: RetryPolicy | None
) -> tuple[VirtualHost, ...]:
    out: dict[str, VirtualHost] = {}
    for b in servers:
        port = b.server.number
        for v in vss:
            if not v.http or not v.bound_to(b.gateway.key):
                continue
            hosts = matching_hosts(b, v.meta.namespace, v.hosts)
            routes = rt.virtual_service_routes(v, services, port, default_retry, b.gateway.key) if hosts else ()
            for h in hosts if routes else ():
                name = f"{h}:{port}"
                if name in out:
                    log.warning("%s: %s: virtual host %s already comes from an earlier VirtualService", v.meta.file, v.meta.ref, name)
                    continue
                redirect = b.server.tls is not None and b.server.tls.https_redirect
                out[name] = VirtualHost(
                    name, gateway_domains(h), routes, include_request_attempt_count=True, require_tls=redirect
                )
    if not out:
        # istiod's answer when nothing is bound: every request 404s.
        nothing = Route(match=RouteMatch(prefix="/"), name="default", direct_response=DirectResponse(404))
        return (VirtualHost(BLACKHOLE_VHOST, ("*",), (nothing,)),)
    return tuple(out.values())


def _hcm_chain(name: str, route_name: str, listener: str, vhosts: tuple[VirtualHost, ...]) -> FilterChain:
    rc = RouteConfiguration(name=route_name, virtual_hosts=vhosts, validate_clusters=False)
    hcm = rt.connection_manager(f"outbound_{listener}", rc, GATEWAY_SERVER_NAME)
    # istiod's gateways are edge proxies: use_remote_address (x-forwarded-for, -proto, ...).
    return FilterChain(name=name, filters=(replace(hcm, use_remote_address=True),))


# -- TLS -------------------------------------------------------------------------------------


def _sni(server: Server) -> tuple[str, ...]:
    return tuple(h for _, h in server.hosts if h != "*")


def _from_credential(b: _Bound, mutual: bool, alpn: tuple[str, ...], cfg: IstioConfig) -> DownstreamTlsContext:
    tls = b.server.tls
    assert tls is not None
    gw = b.gateway
    try:
        cred: Credential = credential(cfg.secrets, tls.credential_name, gw.meta.namespace, mutual)
    except CredentialError as e:
        raise ConfigError(gw.meta.file, f"{tls.path}.credentialName", f"{gw.meta.ref}: {e}") from e
    ctx = DownstreamTlsContext(
        tls_certificates=(TlsCertificate(DataSource(inline_string=cred.cert.text), DataSource(inline_string=cred.key.text)),),
        trusted_ca=DataSource(inline_string=cred.ca.text) if cred.ca is not None else None,
        require_client_certificate=mutual,
        alpn_protocols=alpn,
    )
    try:
        server_context(ctx)
    except TlsContextError as e:
        pem: Pem | None = {"certificate_chain": cred.cert, "private_key": cred.key, "trusted_ca": cred.ca}.get(e.part)
        where = pem or Pem("", gw.meta.file, f"{tls.path}.credentialName")
        raise ConfigError(where.file, where.path, f"{gw.meta.ref}: credential {tls.credential_name!r}: {e.message}") from e
    return ctx


def _from_files(b: _Bound, mutual: bool, alpn: tuple[str, ...]) -> DownstreamTlsContext:
    tls = b.server.tls
    assert tls is not None
    gw = b.gateway
    if mutual and not tls.ca_certificates:
        raise ConfigError(gw.meta.file, tls.path, f"{gw.meta.ref}: MUTUAL needs caCertificates (or a credentialName)")
    ctx = DownstreamTlsContext(
        tls_certificates=(TlsCertificate(DataSource(filename=tls.server_certificate), DataSource(filename=tls.private_key)),),
        trusted_ca=DataSource(filename=tls.ca_certificates) if mutual else None,
        require_client_certificate=mutual,
        alpn_protocols=alpn,
    )
    try:
        server_context(ctx)
    except TlsContextError as e:
        field = {"certificate_chain": "serverCertificate", "private_key": "privateKey"}.get(e.part, "caCertificates")
        raise ConfigError(gw.meta.file, f"{tls.path}.{field}", f"{gw.meta.ref}: {e.source}: {e.message}") from e
    return ctx


def tls_context(b: _Bound, cfg: IstioConfig) -> DownstreamTlsContext:
    tls = b.server.tls
    assert tls is not None
    mutual = tls.mode == "MUTUAL"
    alpn = HTTPS_ALPN if b.server.protocol is not Protocol.TLS else ()
    return _from_credential(b, mutual, alpn, cfg) if tls.credential_name else _from_files(b, mutual, alpn)


# -- listeners -------------------------------------------------------------------------------


def _https_route_name(b: _Bound) -> str:
    return f"https.{b.server.number}.{b.server.port_name}.{b.gateway.meta.name}.{b.gateway.meta.namespace}"


def _tcp_chain(b: _Bound, vss: list[VirtualService], services: dict[str, Service], name: str) -> FilterChain | None:
    """A TCP server (or TLS terminated to TCP): the first bound VirtualService tcp route."""
    port = b.server.number
    for v in vss:
        if v.bound_to(b.gateway.key) and matching_hosts(b, v.meta.namespace, v.hosts):
            for r in l4_routes(v.tcp, port, b.gateway.key, v.meta.namespace):
                return FilterChain(name=name, filters=(tcp_proxy(r.route, services, port),))
    return None


def _passthrough_chains(b: _Bound, vss: list[VirtualService], services: dict[str, Service], listener: str) -> list[FilterChain]:
    port = b.server.number
    out: list[FilterChain] = []
    for v in vss:
        if not v.bound_to(b.gateway.key):
            continue
        for r in l4_routes(v.tls, port, b.gateway.key, v.meta.namespace):
            sni = matching_hosts(b, v.meta.namespace, tuple(h for m in r.match for h in m.sni_hosts))
            if sni:
                out.append(FilterChain(
                    name=f"{listener}-{'-'.join(sni)}",
                    filters=(tcp_proxy(r.route, services, port),),
                    filter_chain_match=FilterChainMatch(server_names=tuple(sni)),
                ))  # fmt: skip
    return out


def _first_per_match(listener: str, chains: list[FilterChain]) -> list[FilterChain]:
    """Envoy refuses two chains with the same match; istiod keeps the first server's."""
    seen: dict[FilterChainMatch, FilterChain] = {}
    for c in chains:
        first = seen.setdefault(c.filter_chain_match, c)
        if first is not c:
            log.warning("listener %s: chain %s matches what %s matches; ignored", listener, c.name, first.name)
    return list(seen.values())


def port_listener(port: int, servers: list[_Bound], cfg: IstioConfig, vss: list[VirtualService], services: dict[str, Service]) -> Listener | None:
    """The listener on `port` (the servers' port, or the gateway Service's targetPort for it)."""
    name = f"0.0.0.0_{port}"
    retry = (cfg.mesh or MeshConfig()).default_http_retry_policy
    chains: list[FilterChain] = []
    http = [b for b in servers if b.server.protocol.is_http and not b.server.terminates_tls]
    if http:
        chains.append(_hcm_chain(name, f"http.{port}", name, virtual_hosts(http, vss, services, retry)))
    for b in servers:
        s = b.server
        if s.terminates_tls:
            chain_name = _https_route_name(b)
            if s.protocol is Protocol.TLS:
                found = _tcp_chain(b, vss, services, chain_name)
                if found is None:
                    continue
                chain = found
            else:
                chain = _hcm_chain(chain_name, chain_name, name, virtual_hosts([b], vss, services, retry))
            match = FilterChainMatch(server_names=_sni(s))
            chains.append(replace(chain, filter_chain_match=match, transport_socket=tls_context(b, cfg)))
        elif s.passthrough:
            chains.extend(_passthrough_chains(b, vss, services, name))
        elif s.protocol in (Protocol.TCP, Protocol.MONGO, Protocol.MYSQL, Protocol.REDIS):
            found = _tcp_chain(b, vss, services, f"{name}-tcp")
            if found is not None:
                chains.append(found)
    chains = _first_per_match(name, chains)
    if not chains:
        return None
    sniffed = any(c.filter_chain_match.needs_inspection for c in chains)
    return Listener(
        name=name,
        address=SocketAddress("0.0.0.0", port),
        filter_chains=tuple(chains),
        traffic_direction=TrafficDirection.OUTBOUND,
        listener_filters=(ListenerFilter.TLS_INSPECTOR,) if sniffed else (),
    )


def _target_port(svc: Service, port: ServicePort) -> int | None:
    """A Service port's targetPort; a named one is the number the Service's endpoints give
    that name (istiod reads it off the gateway's own endpoint), None when none does."""
    if port.target_port_name is None:
        return port.target_port
    for e in svc.endpoints:
        found = dict(e.ports).get(port.target_port_name)
        if found is not None:
            return found
    log.warning("%s: port %d: no endpoint names targetPort %r; the gateway binds %d",
                svc.ref, port.number, port.target_port_name, port.number)  # fmt: skip
    return None


def target_ports(services: list[Service], labels: Mapping[str, str]) -> dict[int, int]:
    """istiod's gateway port translation: a Service selecting the gateway workload (as
    istio-ingressgateway's and istio-egressgateway's do, 80 → 8080, 443 → 8443; a named
    targetPort through the endpoints' port names) maps a server port to the port the listener
    binds."""
    out: dict[int, int] = {}
    for svc in services:
        if svc.selector and all(labels.get(k) == v for k, v in svc.selector):
            for p in svc.ports:
                target = _target_port(svc, p)
                if target and target != p.number:
                    out.setdefault(p.number, target)
    return out


def router_skeleton(mesh: MeshConfig) -> Bootstrap:
    """What istiod sends every gateway before its Gateways: admin, stats, readiness,
    BlackHoleCluster; no virtualOutbound / virtualInbound (a gateway intercepts nothing)."""
    base = standard_sidecar(mesh)
    clusters = tuple(replace(c, circuit_breakers=ISTIO_CIRCUIT_BREAKERS) for c in base.clusters if c.name == BLACKHOLE_CLUSTER)
    return replace(base, listeners=(), clusters=clusters, sources=("<embedded router>",))


def compile_gateway(
    cfg: IstioConfig, workload_labels: Mapping[str, str] | None = None, mesh_access_log_on: bool = True
) -> Bootstrap:
    labels = dict(workload_labels or {})
    rules = destination_rules(cfg)
    validate(cfg, rules)
    mesh = cfg.mesh or MeshConfig()
    services = visible_services(cfg, None)
    by_host = {s.hostname: s for s in services}
    gateways = [g for g in cfg.gateways if g.selects(labels)]
    for g in cfg.gateways:
        if g not in gateways:
            log.info("%s: %s does not select this workload (%s)", g.meta.file, g.meta.ref, labels or "no labels")
    targets = target_ports(services, labels)
    by_port: dict[int, list[_Bound]] = {}
    for g in gateways:
        for s in g.servers:
            by_port.setdefault(targets.get(s.number, s.number), []).append(_Bound(g, s))
    vss = [v for v in cfg.virtual_services if any(v.bound_to(g.key) for g in gateways)]
    listeners = [x for p in sorted(by_port) if (x := port_listener(p, by_port[p], cfg, vss, by_host)) is not None]
    resolved = {s.hostname: dr for s in services if (dr := rule_for(s.hostname, rules)) is not None}
    base = router_skeleton(mesh)
    clusters = base.clusters + tuple(c for c in build_clusters(services, resolved, mesh) if c.name != BLACKHOLE_CLUSTER)
    out = with_mesh_tracing(replace(base, listeners=tuple(listeners), clusters=clusters, sources=cfg.files or base.sources))
    access_log = mesh_access_log(mesh) if mesh_access_log_on else None
    return with_access_log(out, access_log) if access_log is not None else out
