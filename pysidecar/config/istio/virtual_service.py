"""VirtualService (networking.istio.io v1alpha3 / v1beta1 / v1) → checked frozen dataclasses.

Promises:
- http routes: match (uri/headers/withoutHeaders/queryParams exact|prefix|regex, port, method,
  authority, scheme, ignoreUriCase, gateways, name), route destinations (host, subset, port,
  weight, headers), timeout, retries, rewrite (uri, uriRegexRewrite, authority), headers,
  fault (delay, abort, percentage), redirect, directResponse; tcp routes; tls routes by
  sniHosts.
- Refused at load, with the resource and the field named: a negative weight, a regex RE2 does
  not compile (as istiod checks it: backreferences, lookarounds are refused), a route with none
  or several of route/redirect/directResponse, an abort status outside 200..599. Subsets are
  checked against DestinationRules when the whole config is known (`compile.validate`).
- Fields that only matter to gateways or to istiod's delegation (`delegate`, `mirror`,
  `corsPolicy`, `sourceLabels`) are refused or ignored explicitly, never silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pysidecar.config.istio.meta import ObjectMeta, envelope, ip_or_cidr, located, resolve_host
from pysidecar.config.node import Fields, Node

log = logging.getLogger(__name__)

MESH_GATEWAY = "mesh"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: str  # "exact" | "prefix" | "regex"
    value: str


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    name: str = ""
    uri: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch | None], ...] = ()
    without_headers: tuple[tuple[str, StringMatch | None], ...] = ()
    query_params: tuple[tuple[str, StringMatch | None], ...] = ()
    method: StringMatch | None = None
    authority: StringMatch | None = None
    scheme: StringMatch | None = None
    port: int = 0
    ignore_uri_case: bool = False
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    subset: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class RouteDestination:
    destination: Destination
    weight: int = 0
    headers: Headers | None = None
    path: str = ""  # YAML path, for errors found when the whole config is known


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    per_try_timeout: float = 0.0
    retry_on: str = ""
    backoff: float | None = None  # the base interval between attempts (Envoy's 25 ms if unset)


@dataclass(frozen=True, slots=True)
class Fault:
    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str = ""
    authority: str = ""
    port: int = 0
    derive_port_from_request: bool = False
    scheme: str = ""
    code: int = 301


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str = ""
    authority: str = ""
    regex_match: str = ""
    regex_rewrite: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatch, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: tuple[int, str] | None = None  # (status, body)
    rewrite: Rewrite | None = None
    timeout: float | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class L4Match:
    port: int = 0
    sni_hosts: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class L4Route:
    """A tcp or tls route: match conditions and weighted destinations."""

    match: tuple[L4Match, ...]
    route: tuple[RouteDestination, ...]


@dataclass(frozen=True, slots=True)
class VirtualService:
    meta: ObjectMeta
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[L4Route, ...] = ()
    tls: tuple[L4Route, ...] = ()

    @property
    def for_mesh(self) -> bool:
        """Bound to the sidecars (gateway `mesh`, the default when no gateway is named)."""
        return not self.gateways or MESH_GATEWAY in self.gateways

    def bound_to(self, gateway: str) -> bool:
        """Bound to `gateway`: `mesh`, or a Gateway's `<namespace>/<name>` key."""
        if gateway == MESH_GATEWAY:
            return self.for_mesh
        return names_gateway(self.gateways, gateway, self.meta.namespace)


def names_gateway(gateways: tuple[str, ...], gateway: str, namespace: str) -> bool:
    """Whether a `gateways` list names `gateway` (`mesh` or `<ns>/<name>`); a name without a
    namespace is in `namespace`, the VirtualService's, as istiod resolves it."""
    return any((g if g == MESH_GATEWAY or "/" in g else f"{namespace}/{g}") == gateway for g in gateways)


# -- pieces ----------------------------------------------------------------------------------


def string_match(node: Node) -> StringMatch | None:
    """Istio's StringMatch; `{}` (or regex `*`) means "present", returned as None."""
    f = node.fields("exact", "prefix", "regex")
    given = [k for k in ("exact", "prefix", "regex") if k in f]
    if len(given) > 1:
        node.fail("expected at most one of exact, prefix, regex")
    if not given:
        return None
    kind = given[0]
    value = f.require(kind).string()
    if kind == "regex":
        if value == "*":
            return None
        f.require(kind).regex()
    return StringMatch(kind, value)


def _match_map(node: Node | None) -> tuple[tuple[str, StringMatch | None], ...]:
    if node is None or node.value is None:
        return ()
    if not isinstance(node.value, dict):
        node.fail("expected a mapping of name to string match")
    return tuple((str(k).lower(), string_match(node.child(str(k), v))) for k, v in node.value.items())


def _gateways(nodes: list[Node]) -> tuple[str, ...]:
    return tuple(n.string() for n in nodes)


def _warn_source_match(f: Fields) -> None:
    for unsupported in ("source_labels", "source_namespace"):
        if (n := f.get(unsupported)) is not None:
            log.warning("%s: %s: match by source is ignored (one sidecar is its own source)", n.file, n.path)


def http_match(node: Node) -> HTTPMatch:
    f = node.fields(
        "name", "uri", "headers", "without_headers", "query_params", "method", "authority",
        "scheme", "port", "ignore_uri_case", "gateways", "source_labels", "source_namespace",
        "stat_prefix",
    )  # fmt: skip
    _warn_source_match(f)
    return HTTPMatch(
        name=f.opt("name", Node.string, ""),
        uri=f.opt("uri", string_match, None),
        headers=_match_map(f.get("headers")),
        without_headers=_match_map(f.get("without_headers")),
        query_params=_match_map(f.get("query_params")),
        method=f.opt("method", string_match, None),
        authority=f.opt("authority", string_match, None),
        scheme=f.opt("scheme", string_match, None),
        port=f.opt("port", lambda n: n.integer(1, 65535), 0),
        ignore_uri_case=f.opt("ignore_uri_case", Node.boolean, False),
        gateways=_gateways(f.list("gateways")),
    )


def _header_ops(node: Node) -> HeaderOps:
    f = node.fields("set", "add", "remove")

    def pairs(n: Node | None) -> tuple[tuple[str, str], ...]:
        if n is None or n.value is None:
            return ()
        if not isinstance(n.value, dict):
            n.fail("expected a mapping of header name to value")
        return tuple((str(k).lower(), n.child(str(k), v).string()) for k, v in n.value.items())

    return HeaderOps(
        set=pairs(f.get("set")),
        add=pairs(f.get("add")),
        remove=tuple(n.string().lower() for n in f.list("remove")),
    )


def headers(node: Node) -> Headers:
    f = node.fields("request", "response")
    return Headers(
        request=f.opt("request", _header_ops, HeaderOps()),
        response=f.opt("response", _header_ops, HeaderOps()),
    )


def destination(node: Node) -> Destination:
    f = node.fields("host", "subset", "port")
    port = 0
    if (p := f.get("port")) is not None:
        port = p.fields("number").require("number").integer(1, 65535)
    host = f.require("host").string()
    if not host:
        f.require("host").fail("a destination host is required")
    return Destination(host=host, subset=f.opt("subset", Node.string, ""), port=port)


def route_destination(node: Node) -> RouteDestination:
    f = node.fields("destination", "weight", "headers")
    weight = 0
    if (w := f.get("weight")) is not None:
        weight = w.integer()
        if weight < 0:
            w.fail(f"weight must not be negative, got {weight}")
    return RouteDestination(
        destination=destination(f.require("destination")),
        weight=weight,
        headers=f.opt("headers", headers, None),
        path=node.path,
    )


def _percent(node: Node | None) -> float:
    if node is None:
        return 100.0
    v = node.fields("value").opt("value", lambda n: n.value, 100.0)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
        node.fail(f"expected a percentage between 0 and 100, got {v!r}")
    return float(v)


def fault(node: Node) -> Fault:
    f = node.fields("delay", "abort")
    out = Fault()
    if (d := f.get("delay")) is not None:
        df = d.fields("fixed_delay", "exponential_delay", "percentage", "percent")
        if "exponential_delay" in df:
            d.fail("exponentialDelay is not supported (Istio does not implement it either)")
        pct = _percent(df.get("percentage")) if "percent" not in df else float(df.require("percent").integer(0, 100))
        out = Fault(delay=df.require("fixed_delay").duration(), delay_percent=pct)
    if (a := f.get("abort")) is not None:
        af = a.fields("http_status", "grpc_status", "http2_error", "percentage")
        if "http_status" not in af:
            a.fail("only httpStatus aborts are supported")
        status = af.require("http_status").integer(200, 599)
        out = Fault(out.delay, out.delay_percent, status, _percent(af.get("percentage")))
    return out


def redirect(node: Node) -> Redirect:
    f = node.fields("uri", "authority", "port", "derive_port", "scheme", "redirect_code")
    code = f.opt("redirect_code", lambda n: n.integer(), 301)
    if code not in (301, 302, 303, 307, 308):
        f.require("redirect_code").fail(f"expected one of 301, 302, 303, 307, 308, got {code}")
    derive = f.opt("derive_port", lambda n: n.enum(["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"]), "")
    return Redirect(
        uri=f.opt("uri", Node.string, ""),
        authority=f.opt("authority", Node.string, ""),
        port=f.opt("port", lambda n: n.integer(1, 65535), 0),
        derive_port_from_request=derive == "FROM_REQUEST_PORT",
        scheme=f.opt("scheme", Node.string, ""),
        code=code,
    )


def rewrite(node: Node) -> Rewrite:
    f = node.fields("uri", "authority", "uri_regex_rewrite")
    match = sub = ""
    if (rr := f.get("uri_regex_rewrite")) is not None:
        rf = rr.fields("match", "rewrite")
        match = rf.require("match").regex()
        sub = rf.require("rewrite").string()
        if "uri" in f:
            node.fail("expected only one of uri and uriRegexRewrite")
    return Rewrite(
        uri=f.opt("uri", Node.string, ""),
        authority=f.opt("authority", Node.string, ""),
        regex_match=match,
        regex_rewrite=sub,
    )


def retries(node: Node) -> Retries:
    f = node.fields("attempts", "per_try_timeout", "retry_on", "retry_remote_localities", "retry_ignore_previous_hosts", "backoff")
    if (b := f.get("backoff")) is not None and b.duration() <= 0:
        b.fail("backoff must be above 0")
    return Retries(
        attempts=f.opt("attempts", lambda n: n.integer(0), 0),
        per_try_timeout=f.opt("per_try_timeout", Node.duration, 0.0),
        retry_on=f.opt("retry_on", Node.string, ""),
        backoff=f.opt("backoff", Node.duration, None),
    )


def direct_response(node: Node) -> tuple[int, str]:
    f = node.fields("status", "body")
    body = ""
    if (b := f.get("body")) is not None:
        bf = b.fields("string", "bytes")
        body = bf.opt("string", Node.string, "")
        if "bytes" in bf:
            import base64
            import binascii

            try:
                body = base64.b64decode(bf.require("bytes").string(), validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                bf.require("bytes").fail("expected base64 bytes")
    return f.require("status").integer(200, 599), body


def http_route(node: Node) -> HTTPRoute:
    f = node.fields(
        "name", "match", "route", "redirect", "direct_response", "delegate", "rewrite", "timeout",
        "retries", "fault", "mirror", "mirrors", "mirror_percent", "mirror_percentage",
        "cors_policy", "headers",
    )  # fmt: skip
    for unsupported in ("delegate", "mirror", "mirrors", "cors_policy"):
        if (n := f.get(unsupported)) is not None:
            n.fail(f"{unsupported} is not supported by pysidecar")
    routes = tuple(route_destination(n) for n in f.list("route"))
    actions = [k for k in ("route", "redirect", "direct_response") if k in f and (k != "route" or routes)]
    if len(actions) != 1:
        node.fail("expected exactly one of route, redirect, directResponse")
    if len(routes) > 1 and sum(r.weight for r in routes) == 0:
        node.child("route", None).fail("several destinations need weights (their total must be above 0)")
    return HTTPRoute(
        name=f.opt("name", Node.string, ""),
        match=tuple(http_match(n) for n in f.list("match")),
        route=routes,
        redirect=f.opt("redirect", redirect, None),
        direct_response=f.opt("direct_response", direct_response, None),
        rewrite=f.opt("rewrite", rewrite, None),
        timeout=f.opt("timeout", Node.duration, None),
        retries=f.opt("retries", retries, None),
        fault=f.opt("fault", fault, None),
        headers=f.opt("headers", headers, None),
    )


def _l4_match(node: Node, tls: bool) -> L4Match:
    f = node.fields("port", "sni_hosts", "destination_subnets", "gateways", "source_labels", "source_namespace")
    _warn_source_match(f)
    sni = tuple(n.string() for n in f.list("sni_hosts"))
    if tls and not sni:
        node.fail("a tls match needs sniHosts")
    return L4Match(
        port=f.opt("port", lambda n: n.integer(1, 65535), 0),
        sni_hosts=sni,
        destination_subnets=tuple(ip_or_cidr(n) for n in f.list("destination_subnets")),
        gateways=_gateways(f.list("gateways")),
    )


def l4_route(node: Node, tls: bool) -> L4Route:
    f = node.fields("match", "route")
    routes = tuple(route_destination(n) for n in f.list("route"))
    if not routes:
        node.fail("expected at least one route destination")
    matches = tuple(_l4_match(n, tls) for n in f.list("match"))
    if tls and not matches:
        node.fail("a tls route needs a match with sniHosts")
    return L4Route(matches, routes)


def virtual_service(doc: Node) -> VirtualService:
    meta, top = envelope(doc, "spec")
    with located(meta):
        spec = top.require("spec")
        f = spec.fields("hosts", "gateways", "http", "tcp", "tls", "export_to")
        hosts = tuple(n.string() for n in f.list("hosts"))
        if not hosts:
            spec.fail("spec.hosts: at least one host is required")
        f.list("export_to")
        return _resolved(VirtualService(
            meta=meta,
            hosts=tuple(resolve_host(h, meta.namespace) for h in hosts),
            gateways=_gateways(f.list("gateways")),
            http=tuple(http_route(n) for n in f.list("http")),
            tcp=tuple(l4_route(n, tls=False) for n in f.list("tcp")),
            tls=tuple(l4_route(n, tls=True) for n in f.list("tls")),
        ))  # fmt: skip


def _resolved(v: VirtualService) -> VirtualService:
    """Short destination hosts (`reviews`) made FQDNs in the VirtualService's namespace."""

    def dst(r: RouteDestination) -> RouteDestination:
        d = r.destination
        return replace(r, destination=replace(d, host=resolve_host(d.host, v.meta.namespace)))

    return replace(
        v,
        http=tuple(replace(h, route=tuple(map(dst, h.route))) for h in v.http),
        tcp=tuple(replace(t, route=tuple(map(dst, t.route))) for t in v.tcp),
        tls=tuple(replace(t, route=tuple(map(dst, t.route))) for t in v.tls),
    )
