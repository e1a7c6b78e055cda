"""The proxy's decisions for one connection or request, as a list of steps a learner reads.

Promises:
- `explain(bootstrap, q, nat)` follows the path of one connection through the loaded config
  with the proxy's own decision functions, never a copy of them: the listener table's
  use_original_dst hand-off (`ListenerTable.handoff`), Envoy's filter chain match
  (`select_filter_chain`), the connection manager's route choice (`resolve_route` over the
  compiled route table), the cluster's hosts (`ClusterRuntime.choose_host` for ORIGINAL_DST
  clusters, the configured endpoints otherwise), the forwarding-loop check. Each step says what
  was decided and why (the chain's match fields, the virtual host's domains, the route's
  match), ending in the endpoint, its TLS mode, or the local reply the proxy gives instead.
- `nat` is the iptables walk (iptables_trace.NatTrace) when the pod's rules were given: the
  accepting listener is the one bound to the REDIRECT port (15001 / 15006); without rules, the
  listener bound to the destination itself, else the sidecar's capture port is assumed (said so).
- Pure: no sockets; the bootstrap and the question are inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pysidecar.explain.iptables_trace import NatTrace
from pysidecar.model import (
    Bootstrap,
    Cluster,
    ClusterType,
    FilterChain,
    Listener,
    SocketAddress,
    TcpProxy,
)
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy.http.compiled import CompiledHcm
from pysidecar.proxy.http.route_table import resolve_route
from pysidecar.proxy.listener_table import ConnectionInfo, ListenerTable, select_filter_chain
from pysidecar.proxy.loop_detect import forwarding_loop, own_sockets


@dataclass(frozen=True, slots=True)
class Question:
    destination: SocketAddress
    host: str | None = None  # an HTTP request's Host; None: plain TCP unless path/headers given
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    sni: str | None = None  # a TLS ClientHello's server name (TLS is then assumed)
    alpn: tuple[str, ...] = ()
    inbound: bool = False  # arriving at the pod (PREROUTING → 15006) rather than leaving it

    @property
    def http(self) -> bool:
        return self.host is not None


@dataclass(slots=True)
class Trace:
    steps: list[tuple[str, str]] = field(default_factory=list)  # (what, decision and why)

    def add(self, what: str, text: str) -> None:
        self.steps.append((what, text))


def _accepting(b: Bootstrap, q: Question, nat: NatTrace | None, t: Trace) -> Listener | None:
    bound = [x for x in b.listeners if x.bind_to_port]
    if nat is not None and nat.redirect_port is not None:
        port = nat.redirect_port
        how = "the port iptables redirected to"
    elif nat is not None:
        port = q.destination.port
        how = "not captured by iptables: a listener binds the destination itself"
        if not any(
            a.port == port and a.address in ("0.0.0.0", "::", q.destination.address)
            for x in bound for a in (x.address, *x.additional_addresses)
        ):
            t.add("proxy", f"not involved: the connection goes straight to {q.destination}")
            return None
    else:
        direct = [x for x in bound if x.address.port == q.destination.port]
        if direct:
            port, how = q.destination.port, "no pod rules given; a listener binds the destination port"
        else:
            port = 15006 if q.inbound else 15001
            how = f"no pod rules given; assumed Istio's capture to {port}"
    for x in bound:
        addrs = (x.address, *x.additional_addresses)
        if any(a.port == port and a.address in ("0.0.0.0", "::", q.destination.address) for a in addrs):
            t.add("accepting listener", f"{x.name} ({x.address}), {how}")
            return x
    t.add("accepting listener", f"none binds port {port} ({how}): the connection is refused")
    return None


def _chain_why(chain: FilterChain) -> str:
    m = chain.filter_chain_match
    parts = []
    if m.destination_port is not None:
        parts.append(f"destination_port {m.destination_port}")
    if m.prefix_ranges:
        parts.append("prefix_ranges " + ",".join(str(r) for r in m.prefix_ranges))
    if m.server_names:
        parts.append("server_names " + ",".join(m.server_names))
    if m.transport_protocol:
        parts.append(f"transport_protocol {m.transport_protocol}")
    if m.application_protocols:
        parts.append("application_protocols " + ",".join(m.application_protocols))
    return "matches " + "; ".join(parts) if parts else "matches everything (no filter_chain_match)"


def _cluster(b: Bootstrap, name: str, q: Question, t: Trace) -> None:
    cluster = b.cluster(name)
    if cluster is None:
        t.add("cluster", f"{name}: not defined: local reply 503 NC (cluster_not_found)")
        return
    t.add("cluster", f"{name} ({cluster.type.value}, lb {cluster.lb_policy.value})")
    hosts = _hosts(cluster, q)
    if not hosts:
        t.add("endpoint", "none: 503 UH (no healthy upstream), TCP closed")
        return
    own = own_sockets(b.listeners)
    loop = [h for h in hosts if forwarding_loop(h.address, h.port, own, q.destination.address) is not None]
    listed = ", ".join(str(h) for h in hosts)
    t.add("endpoint", listed + (" (the original destination)" if cluster.type is ClusterType.ORIGINAL_DST else ""))
    if loop:
        t.add("local reply", f"508 forwarding loop: {loop[0]} is this proxy's own listener")
    bind = ", ".join(cluster.upstream_bind_addresses)
    tls = "TLS (transport_socket)" if cluster.transport_socket is not None else "plaintext"
    if cluster.transport_socket_matches:
        tls = "per endpoint (transport_socket_matches: mTLS to tlsMode istio endpoints, else plaintext)"
    t.add("upstream TLS", tls + (f"; connects from {bind}" if bind else ""))


def _hosts(cluster: Cluster, q: Question) -> list[SocketAddress]:
    if cluster.type is ClusterType.ORIGINAL_DST:
        return [q.destination]
    return [e.address for e in cluster.endpoints]


def _tcp(b: Bootstrap, proxy: TcpProxy, q: Question, t: Trace) -> None:
    if proxy.cluster is not None:
        t.add("tcp_proxy", f"stat_prefix {proxy.stat_prefix}: cluster {proxy.cluster}")
        _cluster(b, proxy.cluster, q, t)
        return
    weights = ", ".join(f"{w.name} ({w.weight})" for w in proxy.weighted_clusters)
    t.add("tcp_proxy", f"stat_prefix {proxy.stat_prefix}: weighted clusters {weights}")
    for w in proxy.weighted_clusters:
        _cluster(b, w.name, q, t)


def _http(b: Bootstrap, hcm: HttpConnectionManager, listener: Listener, q: Question, t: Trace) -> None:
    cfg = CompiledHcm(hcm, listener.traffic_direction)
    host = q.host or str(q.destination)
    headers = [(b"host", host.encode("latin-1"))] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in q.headers]
    scheme = b"https" if q.sni is not None else b"http"
    vh, route, tls_redirect = resolve_route(cfg.table, host, q.path, headers, scheme)
    t.add("http_connection_manager", f"stat_prefix {hcm.stat_prefix}, route config {hcm.route_config.name or '(inline)'}")
    if vh is None:
        t.add("virtual host", f"none of the domains matches {host!r}")
        t.add("local reply", "404 NR (route_not_found)")
        return
    t.add("virtual host", f"{vh.vhost.name} (domains {', '.join(vh.vhost.domains)}) for host {host!r}")
    if tls_redirect:
        t.add("local reply", "301 to https (require_tls ALL)")
        return
    if route is None:
        t.add("route", f"none of {len(vh.vhost.routes)} routes matches path {q.path!r} and the headers")
        t.add("local reply", "404 NR (route_not_found)")
        return
    m = route.route.match
    kind = "prefix" if m.prefix is not None else "path" if m.path is not None else "safe_regex"
    value = m.prefix if m.prefix is not None else m.path if m.path is not None else m.safe_regex
    extra = f" and {len(m.headers)} header matchers" if m.headers else ""
    t.add("route", f"{route.route.name or '(unnamed)'}: the first whose {kind} {value!r}{extra} matches {q.path!r}")
    if route.route.direct_response is not None:
        d = route.route.direct_response
        t.add("local reply", f"{d.status} direct_response ({len(d.body)} bytes)")
        return
    if route.route.redirect is not None:
        t.add("local reply", f"{route.route.redirect.response_code} redirect")
        return
    action = route.action
    assert action is not None
    names = action.cluster_names
    if len(names) > 1:
        t.add("weighted clusters", ", ".join(f"{w.name} ({w.weight})" for w in action.weighted_clusters))
    timeout = f"timeout {action.timeout:g}s" if action.timeout else "no timeout"
    t.add("route action", f"cluster {', '.join(names)}; {timeout}" + (f"; retries {action.retry_policy.num_retries}" if action.retry_policy else ""))
    for name in names:
        _cluster(b, name, q, t)


def explain(b: Bootstrap, q: Question, nat: NatTrace | None = None) -> Trace:
    t = Trace()
    if nat is not None:
        for step in nat.steps:
            t.add("iptables", step)
        t.add("interception", nat.verdict)
    t.add("original destination", str(q.destination) + (" (SO_ORIGINAL_DST)" if nat is not None and nat.redirect_port else ""))
    accepting = _accepting(b, q, nat, t)
    if accepting is None:
        return t
    table = ListenerTable.build(b)
    use_orig = accepting.use_original_dst or (nat is not None and nat.redirect_port is not None)
    listener = table.handoff(accepting, q.destination if use_orig else None)
    if listener is not accepting:
        t.add("listener", f"{listener.name}: use_original_dst hands the connection to the listener of {q.destination}")
    else:
        t.add("listener", f"{listener.name} keeps it (no listener named for {q.destination})" if use_orig else listener.name)
    transport = "tls" if q.sni is not None else "raw_buffer"
    alpn = q.alpn or (("http/1.1",) if q.http and q.sni is None else ())
    info = ConnectionInfo(q.destination, transport, q.sni or "", alpn)
    sniffed = f"transport {transport}" + (f", SNI {q.sni}" if q.sni else "") + (f", ALPN {','.join(alpn)}" if alpn else "")
    t.add("listener filters", sniffed)
    chain = select_filter_chain(listener, info)
    if chain is None:
        t.add("filter chain", "none matches: the connection is closed (no_filter_chain_match)")
        return t
    t.add("filter chain", f"{chain.name or '(unnamed)'}: {_chain_why(chain)}")
    if chain.transport_socket is not None:
        t.add("downstream TLS", "terminated here (the chain's transport_socket)")
    nf = chain.terminal_filter
    if isinstance(nf, TcpProxy):
        _tcp(b, nf, q, t)
    elif isinstance(nf, HttpConnectionManager):
        if not q.http:
            t.add("note", "an HTTP chain: give --host (and --path / -H) to follow the request")
            return t
        _http(b, nf, listener, q, t)
    return t

