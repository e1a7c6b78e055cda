"""VirtualService http routes → Envoy route configuration, as istiod's route translation does.

Promises:
- `route_configuration(port, ...)` builds the route config named by the port ("80"): one
  virtual host `<host>:<port>` per HTTP service on that port, domains the host and `host:port`
  (plus the short names of `<name>.<ns>.svc.cluster.local` hosts, `<name>` itself only for a
  proxy in `<ns>`, and the VIPs), then the catch-all `allow_any` (PassthroughCluster,
  timeout 0) or `block_all` (direct response 502).
- A service without a VirtualService gets istiod's default route: name `default`, prefix `/`,
  timeout 0, Istio's default retry policy, decorator `<host>:<port>/*`.
- VirtualService routes keep istiod's translation: route name `<http.name>[.<match.name>]`,
  match → path/prefix/safe_regex + header/query matchers (sorted by name), timeout 0 unless
  set, retries → RetryPolicy (numeric retryOn entries → retriable_status_codes), header ops
  (set → overwrite, add → append, Host/:authority → host rewrite), decorator
  `<host>:<port><path>` for a single destination else `<vs name>:<port><path>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pysidecar.config.istio import virtual_service as vs
from pysidecar.config.istio.meta import DOMAIN_SUFFIX, ObjectMeta
from pysidecar.config.istio.registry import Service, outbound_cluster_name
from pysidecar.config.sidecar import istio_connection_manager
from pysidecar.model import PASSTHROUGH_CLUSTER, OutboundTrafficPolicy
from pysidecar.model.http import (
    ISTIO_DEFAULT_RETRY,
    ISTIO_DEFAULT_RETRY_ON,
    ClusterWeight,
    Decorator,
    DirectResponse,
    FaultInjection,
    HeaderAppendAction,
    HeaderMatcher,
    HeaderMutations,
    HeaderValueOption,
    HttpConnectionManager,
    HttpFilter,
    QueryParameterMatcher,
    RedirectAction,
    RegexRewrite,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)

ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
# istiod's DefaultRouteName and catch-all names.
DEFAULT_ROUTE = "default"
ALLOW_ANY = "allow_any"
BLOCK_ALL = "block_all"
# Istio's default HTTP retry policy (mesh defaultHttpRetryPolicy unset).
DEFAULT_RETRY_ON = ISTIO_DEFAULT_RETRY_ON
DEFAULT_RETRY = ISTIO_DEFAULT_RETRY


@dataclass(frozen=True, slots=True)
class HostRoutes:
    """What a virtual host is built from: a service (or a VirtualService host) and its routes."""

    hostname: str
    service: Service | None
    routes: tuple[Route, ...]


def retry_policy(r: vs.Retries | None, default: RetryPolicy | None = DEFAULT_RETRY) -> RetryPolicy | None:
    """istiod's retry.ConvertPolicy; `default` (the mesh's defaultHttpRetryPolicy, else Istio's)
    when the route sets no retries."""
    if r is None:
        return default
    if r.attempts == 0:
        return None
    on: list[str] = []
    codes: list[int] = []
    for item in (x.strip() for x in r.retry_on.split(",") if x.strip()):
        if item.isdigit():
            codes.append(int(item))
        else:
            on.append(item)
    if codes and "retriable-status-codes" not in on:
        on.append("retriable-status-codes")
    policy = RetryPolicy(
        retry_on=tuple(on) if on else DEFAULT_RETRY_ON,
        num_retries=r.attempts,
        per_try_timeout=r.per_try_timeout,
        retriable_status_codes=tuple(codes),
        previous_hosts=True,
        host_selection_max_attempts=5,
    )
    # istiod: backoff is the retry_back_off base_interval (max_interval stays Envoy's 10x).
    return replace(policy, base_interval=r.backoff) if r.backoff is not None else policy


def _header_matcher(name: str, m: vs.StringMatch | None, invert: bool = False) -> HeaderMatcher:
    if m is None:
        return HeaderMatcher(name, present_match=True, invert_match=invert)
    return HeaderMatcher(
        name,
        exact=m.value if m.kind == "exact" else None,
        prefix=m.value if m.kind == "prefix" else None,
        safe_regex=m.value if m.kind == "regex" else None,
        invert_match=invert,
    )


def _query_matcher(name: str, m: vs.StringMatch | None) -> QueryParameterMatcher:
    if m is None:
        return QueryParameterMatcher(name, present_match=True)
    return QueryParameterMatcher(
        name,
        exact=m.value if m.kind == "exact" else None,
        prefix=m.value if m.kind == "prefix" else None,
        safe_regex=m.value if m.kind == "regex" else None,
    )


def route_match(m: vs.HTTPMatch | None) -> RouteMatch:
    """istiod's TranslateRouteMatch."""
    if m is None:
        return RouteMatch(prefix="/")
    headers = sorted(
        [_header_matcher(n, s) for n, s in m.headers] + [_header_matcher(n, s, True) for n, s in m.without_headers],
        key=lambda h: h.name,
    )
    for name, s in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
        if s is not None:
            headers.append(_header_matcher(name, s))
    uri = m.uri
    return RouteMatch(
        prefix=uri.value if uri is not None and uri.kind == "prefix" else (None if uri is not None else "/"),
        path=uri.value if uri is not None and uri.kind == "exact" else None,
        safe_regex=uri.value if uri is not None and uri.kind == "regex" else None,
        headers=tuple(headers),
        case_sensitive=not m.ignore_uri_case,
        query_parameters=tuple(_query_matcher(n, s) for n, s in m.query_params),
    )


def _internal(key: str) -> bool:
    return key.startswith(":") or key == "host"


def header_ops(h: vs.Headers | None) -> tuple[HeaderMutations, str]:
    """istiod's TranslateHeadersOperations: the mutations and an authority rewrite, if any."""
    if h is None:
        return HeaderMutations(), ""

    def adds(ops: vs.HeaderOps) -> tuple[HeaderValueOption, ...]:
        sets = sorted((k, v) for k, v in ops.set if not _internal(k))
        appends = sorted((k, v) for k, v in ops.add if not _internal(k))
        return tuple(HeaderValueOption(k, v, HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD) for k, v in sets) + tuple(
            HeaderValueOption(k, v, HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD) for k, v in appends
        )

    authority = ""
    for k, v in (*h.request.add, *h.request.set):  # `set` wins over `add`
        if k in (":authority", "host"):
            authority = v
    return (
        HeaderMutations(
            request_headers_to_add=adds(h.request),
            request_headers_to_remove=tuple(k for k in h.request.remove if not _internal(k)),
            response_headers_to_add=adds(h.response),
            response_headers_to_remove=tuple(k for k in h.response.remove if not _internal(k)),
        ),
        authority,
    )


def _merge(a: HeaderMutations, b: HeaderMutations) -> HeaderMutations:
    return HeaderMutations(
        a.request_headers_to_add + b.request_headers_to_add,
        a.request_headers_to_remove + b.request_headers_to_remove,
        a.response_headers_to_add + b.response_headers_to_add,
        a.response_headers_to_remove + b.response_headers_to_remove,
    )


def destination_cluster(d: vs.Destination, services: dict[str, Service], port: int) -> str:
    """istiod's GetDestinationCluster: the destination's port, else the service's only port,
    else the listener's port."""
    number = d.port
    svc = services.get(d.host)
    if not number and svc is not None and len(svc.ports) == 1:
        number = svc.ports[0].number
    return outbound_cluster_name(number or port, d.host, d.subset)


def operation(r: Route, vs_name: str, port: int) -> str:
    """istiod's GetRouteOperation: readable route description for traces and the decorator header."""
    m = r.match
    path = "/*"
    if m.prefix is not None:
        path = m.prefix + "*"
    elif m.path is not None:
        path = m.path
    elif m.safe_regex is not None:
        path = m.safe_regex
    cluster = r.route.cluster if r.route is not None else None
    if cluster is not None and cluster.count("|") == 3:
        _, p, _, host = cluster.split("|")
        return f"{host}:{p}{path}"
    return f"{vs_name}:{port}{path}"


def _fault(f: vs.Fault | None) -> FaultInjection | None:
    if f is None:
        return None
    return FaultInjection(f.delay, f.delay_percent, f.abort_status, f.abort_percent)


def _redirect(r: vs.Redirect, port: int) -> RedirectAction:
    redirect_port = port if r.derive_port_from_request else r.port
    scheme = r.scheme or "http"
    if (redirect_port, scheme) in ((80, "http"), (443, "https")):
        redirect_port = 0  # istiod leaves the default port out
    return RedirectAction(r.authority, r.uri, redirect_port, r.scheme, r.code)


def translate_route(
    h: vs.HTTPRoute,
    m: vs.HTTPMatch | None,
    v: vs.VirtualService,
    services: dict[str, Service],
    port: int,
    default_retry: RetryPolicy | None = DEFAULT_RETRY,
    gateway: str = vs.MESH_GATEWAY,
) -> Route | None:
    """istiod's translateRoute; None when the match is for another port or another gateway
    (`gateway`: `mesh` for sidecars, else the Gateway's `<namespace>/<name>`)."""
    if m is not None and m.port and m.port != port:
        return None
    if m is not None and m.gateways and not vs.names_gateway(m.gateways, gateway, v.meta.namespace):
        return None
    name = h.name + (f".{m.name}" if m is not None and m.name else "")
    mutations, authority = header_ops(h.headers)
    action: RouteAction | None = None
    direct: DirectResponse | None = None
    redirect: RedirectAction | None = None
    if h.redirect is not None:
        redirect = _redirect(h.redirect, port)
    elif h.direct_response is not None:
        direct = DirectResponse(*h.direct_response)
    else:
        rw = h.rewrite or vs.Rewrite()
        weighted: list[ClusterWeight] = []
        cluster: str | None = None
        if len(h.route) == 1:
            dst = h.route[0]
            cluster = destination_cluster(dst.destination, services, port)
            dm, da = header_ops(dst.headers)
            mutations = _merge(mutations, dm)
            authority = authority or da
        else:
            for dst in h.route:
                if dst.weight == 0:
                    continue
                dm, _ = header_ops(dst.headers)
                weighted.append(ClusterWeight(destination_cluster(dst.destination, services, port), dst.weight, dm))
        action = RouteAction(
            cluster=cluster,
            weighted_clusters=tuple(weighted),
            timeout=h.timeout if h.timeout is not None else 0.0,
            retry_policy=retry_policy(h.retries, default_retry),
            prefix_rewrite=rw.uri or None,
            regex_rewrite=RegexRewrite(rw.regex_match, rw.regex_rewrite) if rw.regex_match else None,
            host_rewrite_literal=rw.authority or authority or None,
        )
    out = Route(
        match=route_match(m),
        name=name,
        route=action,
        direct_response=direct,
        mutations=mutations,
        redirect=redirect,
        fault=_fault(h.fault),
    )
    return Route(
        out.match, out.name, out.route, out.direct_response,
        Decorator(operation(out, v.meta.name, port)), out.mutations, out.redirect, out.fault,
        istio_config=config_path(v.meta),
    )  # fmt: skip


def config_path(meta: ObjectMeta) -> str:
    """Where istiod says a route came from (route metadata `istio.config`)."""
    return f"/apis/networking.istio.io/v1alpha3/namespaces/{meta.namespace}/virtual-service/{meta.name}"


def _catch_all(r: Route) -> bool:
    m = r.match
    return m.prefix == "/" and not m.headers and not m.query_parameters


def virtual_service_routes(
    v: vs.VirtualService,
    services: dict[str, Service],
    port: int,
    default_retry: RetryPolicy | None = DEFAULT_RETRY,
    gateway: str = vs.MESH_GATEWAY,
) -> tuple[Route, ...]:
    """istiod's BuildHTTPRoutesForVirtualService: routes in order, stopping after a catch-all."""
    out: list[Route] = []
    for h in v.http:
        matches: Sequence[vs.HTTPMatch | None] = h.match or (None,)
        done = not h.match
        for m in matches:
            r = translate_route(h, m, v, services, port, default_retry, gateway)
            if r is None:
                continue
            out.append(r)
            if _catch_all(r):
                done = True
                break
        if done:
            break
    return tuple(out)


def default_route(hostname: str, port: int, retry: RetryPolicy | None = DEFAULT_RETRY) -> Route:
    """istiod's BuildDefaultHTTPOutboundRoute (`retry`: the mesh's defaultHttpRetryPolicy)."""
    return Route(
        match=RouteMatch(prefix="/"),
        name=DEFAULT_ROUTE,
        route=RouteAction(cluster=outbound_cluster_name(port, hostname), timeout=0.0, retry_policy=retry),
        decorator=Decorator(f"{hostname}:{port}/*"),
    )


def short_names(hostname: str, namespace: str) -> list[str]:
    """istiod's generateAltVirtualHostsForKubernetesService: a host `<name>.<ns>.svc.<domain>`
    (a Kubernetes Service or a ServiceEntry host of that shape) is also `<name>.<ns>` and
    `<name>.<ns>.svc`, and plain `<name>` for a proxy in namespace `<ns>`."""
    base, sep, domain = hostname.partition(".svc.")
    if not sep or domain != DOMAIN_SUFFIX or base.count(".") != 1:
        return []
    short, ns = base.split(".")
    return [*([short] if ns == namespace else []), base, f"{base}.svc"]


def domains(hostname: str, port: int, svc: Service | None, namespace: str) -> tuple[str, ...]:
    names = [hostname, *short_names(hostname, namespace)]
    if svc is not None:
        names += [a for a in svc.addresses if "/" not in a]
    out: list[str] = []
    for n in names:
        host = f"[{n}]" if ":" in n else n
        out += [host, f"{host}:{port}"]
    return tuple(out)


def virtual_host(h: HostRoutes, port: int, namespace: str) -> VirtualHost:
    return VirtualHost(
        name=f"{h.hostname}:{port}",
        domains=domains(h.hostname, port, h.service, namespace),
        routes=h.routes,
        include_request_attempt_count=True,
    )


def catch_all_host(policy: OutboundTrafficPolicy) -> VirtualHost:
    """istiod's buildCatchAllVirtualHost."""
    if policy is OutboundTrafficPolicy.ALLOW_ANY:
        route = Route(
            match=RouteMatch(prefix="/"),
            name=ALLOW_ANY,
            route=RouteAction(cluster=PASSTHROUGH_CLUSTER, timeout=0.0),
        )
        return VirtualHost(ALLOW_ANY, ("*",), (route,), include_request_attempt_count=True)
    route = Route(match=RouteMatch(prefix="/"), name=BLOCK_ALL, direct_response=DirectResponse(502))
    return VirtualHost(BLOCK_ALL, ("*",), (route,), include_request_attempt_count=True)


def route_configuration(
    name: str, port: int, hosts: Sequence[HostRoutes], policy: OutboundTrafficPolicy | None, namespace: str
) -> RouteConfiguration:
    """A route config; `policy` adds the catch-all virtual host (route configs named by port);
    `namespace` is the proxy's, for the short host names."""
    vhosts: list[VirtualHost] = []
    seen: set[str] = set()
    for h in sorted(hosts, key=lambda x: x.hostname):
        vh = virtual_host(h, port, namespace)
        # istiod's dedupeDomains: a domain claimed by an earlier virtual host is dropped.
        kept = tuple(d for d in vh.domains if d.lower() not in seen)
        seen.update(d.lower() for d in kept)
        if kept and vh.name not in {v.name for v in vhosts}:
            vhosts.append(VirtualHost(vh.name, kept, vh.routes, include_request_attempt_count=True))
    if policy is not None:
        vhosts.append(catch_all_host(policy))
    else:
        # A sniffed VIP listener's route config serves just its service: any authority.
        vhosts = [VirtualHost(v.name, ("*",), v.routes, include_request_attempt_count=True) for v in vhosts]
    return RouteConfiguration(name=name, virtual_hosts=tuple(vhosts), validate_clusters=False)


def connection_manager(stat_prefix: str, rc: RouteConfiguration, server_name: str = "envoy") -> HttpConnectionManager:
    """The outbound HCM istiod writes for a sidecar: tracing on (decorators), no stream idle
    timeout, websocket upgrades; the fault filter before the router when a route injects faults
    (istiod always has it; leaving it out otherwise keeps the chain to what is used)."""
    hcm = istio_connection_manager(stat_prefix, rc, server_name)
    if any(r.fault is not None for vh in rc.virtual_hosts for r in vh.routes):
        hcm = replace(hcm, http_filters=(HttpFilter("envoy.filters.http.fault", FAULT_TYPE), *hcm.http_filters))
    return hcm
