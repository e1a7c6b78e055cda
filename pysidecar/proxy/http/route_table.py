"""Which route, which cluster: route matching as pure functions over a table compiled once per
route configuration.

Promises:
- `RouteTable.build(route_config)` compiles domains, path matchers, regexes, header matchers,
  weights and header mutations once; `RouteTable.select(host, path, headers)` does no
  compiling and no allocation beyond its result.
- Virtual host choice is Envoy's: exact domain, then the longest `*.suffix` / `*suffix`
  wildcard, then the longest `prefix.*` / `prefix*` wildcard, then `*`; matching is
  case-insensitive, and the port in Host counts unless ignore_port_in_host_matching is set.
  A wildcard never matches an empty part.
- Routes are tried in order; the first whose path matcher and every header matcher accept
  wins. prefix matches the whole :path (query included), path and safe_regex match the path
  without its query string (safe_regex must match all of it, with RE2 as Envoy does).
- Rewrites keep the query string: prefix_rewrite swaps the matched prefix, regex_rewrite
  substitutes over the path part only.
- Query parameter matchers (Envoy's QueryParameterMatcher) see the first value of each name in
  the raw (not percent-decoded) query string; a name without `=` has the value "". No matcher
  kind (or present_match) means "present". Routes without them never parse the query.
- `resolve_route` is the connection manager's route for a request (require_tls included);
  `CompiledRoute.pick_cluster` the router's cluster (weighted clusters drawn).
- `redirect_location` builds a redirect's Location as Envoy's Utility::newUri does.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass

from pysidecar.model.http import (
    HeaderMatcher,
    QueryParameterMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.proxy.http.headers import HeaderOps, Headers, as_dict, compile_ops, strip_request
from pysidecar.regex import Regex

_PREFIX, _PATH, _REGEX, _SEPARATED = 0, 1, 2, 3


class CompiledHeaderMatcher:
    __slots__ = ("invert", "kind", "name", "pattern", "value")

    def __init__(self, m: HeaderMatcher) -> None:
        self.name = m.name
        self.invert = m.invert_match
        self.pattern: Regex | None = None
        self.value = ""
        if m.exact is not None:
            self.kind, self.value = "exact", m.exact
        elif m.prefix is not None:
            self.kind, self.value = "prefix", m.prefix
        elif m.suffix is not None:
            self.kind, self.value = "suffix", m.suffix
        elif m.contains is not None:
            self.kind, self.value = "contains", m.contains
        elif m.safe_regex is not None:
            self.kind, self.pattern = "regex", Regex(m.safe_regex)
        else:
            self.kind = "present" if m.present_match is not False else "absent"

    def matches(self, headers: Mapping[str, str]) -> bool:
        v = headers.get(self.name)
        kind = self.kind
        if kind == "present":
            ok = v is not None
        elif kind == "absent":
            ok = v is None
        elif v is None:
            # Envoy: a missing header never matches a value matcher, inverted or not.
            return False
        elif kind == "exact":
            ok = v == self.value
        elif kind == "prefix":
            ok = v.startswith(self.value)
        elif kind == "suffix":
            ok = v.endswith(self.value)
        elif kind == "contains":
            ok = self.value in v
        else:
            assert self.pattern is not None
            ok = self.pattern.fullmatch(v)
        return ok != self.invert


class CompiledQueryMatcher:
    __slots__ = ("kind", "name", "pattern", "value")

    def __init__(self, m: QueryParameterMatcher) -> None:
        self.name = m.name
        self.value = ""
        self.pattern: Regex | None = None
        if m.exact is not None:
            self.kind, self.value = "exact", m.exact
        elif m.prefix is not None:
            self.kind, self.value = "prefix", m.prefix
        elif m.safe_regex is not None:
            self.kind, self.pattern = "regex", Regex(m.safe_regex)
        else:
            self.kind = "present"  # Envoy: present_match true or false, or no kind at all

    def matches(self, params: Mapping[str, str]) -> bool:
        v = params.get(self.name)
        if v is None:
            return False
        kind = self.kind
        if kind == "exact":
            return v == self.value
        if kind == "prefix":
            return v.startswith(self.value)
        if kind == "regex":
            assert self.pattern is not None
            return self.pattern.fullmatch(v)
        return True


def query_params(path: str) -> dict[str, str]:
    """The first value of each query parameter, undecoded (Envoy's parseQueryString)."""
    out: dict[str, str] = {}
    q = path.find("?")
    if q < 0:
        return out
    for part in path[q + 1 :].split("#", 1)[0].split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(name, value)
    return out


def redirect_location(
    r: RedirectAction, host: str, path: str, request_scheme: str = "http", rewritten: str | None = None
) -> str:
    """Envoy's Utility::newUri: scheme, host (dropping a port the new scheme or port makes
    wrong), port, then path_redirect (keeping the request's query unless it has its own or
    strip_query) or the request path, after prefix_rewrite when the route has one."""
    scheme = r.scheme_redirect or ("https" if r.https_redirect else request_scheme)
    port = f":{r.port_redirect}" if r.port_redirect else ""
    if r.host_redirect:
        final_host = r.host_redirect
    else:
        final_host = host
        end = host.rfind("]:") + 1 if host.startswith("[") else host.rfind(":")
        if end > 0:
            request_port = host[end:]
            drop = bool(port) or (
                scheme != request_scheme
                and ((request_scheme == "https" and request_port == ":443") or (request_scheme == "http" and request_port == ":80"))
            )
            if drop:
                final_host = host[:end]
    current = rewritten if rewritten is not None else path
    if r.path_redirect:
        final_path = r.path_redirect
        q = current.find("?")
        if "?" not in r.path_redirect and not r.strip_query and q >= 0:
            final_path += current[q:]
    else:
        final_path = current.split("?", 1)[0] if r.strip_query else current
    return f"{scheme}://{final_host}{port}{final_path}"


class CompiledRoute:
    """One route, its matcher ready to run and its header operations flattened."""

    __slots__ = (
        "action",
        "cum_weights",
        "headers",
        "intercepts",
        "kind",
        "lower",
        "query",
        "regex",
        "request_ops",
        "response_ops",
        "rewrite",
        "route",
        "total_weight",
        "value",
        "vhost",
        "weighted_ops",
    )

    def __init__(
        self, route: Route, vhost: CompiledVirtualHost, config: RouteConfiguration
    ) -> None:
        self.route = route
        self.vhost = vhost
        self.action: RouteAction | None = route.route
        m: RouteMatch = route.match
        self.lower = not m.case_sensitive
        self.regex: Regex | None = None
        if m.prefix is not None:
            self.kind, self.value = _PREFIX, m.prefix
        elif m.path is not None:
            self.kind, self.value = _PATH, m.path
        elif m.path_separated_prefix is not None:
            self.kind, self.value = _SEPARATED, m.path_separated_prefix
        else:
            assert m.safe_regex is not None
            self.kind, self.value = _REGEX, ""
            self.regex = Regex(m.safe_regex)
        if self.lower:
            self.value = self.value.lower()
        self.headers = tuple(CompiledHeaderMatcher(h) for h in m.headers)
        self.query = tuple(CompiledQueryMatcher(q) for q in m.query_parameters)
        # The stream's one check for the rare route kinds: fault injection, redirect.
        self.intercepts = route.fault is not None or route.redirect is not None
        # Envoy applies header mutations most specific first: route, virtual host, global.
        levels = (route.mutations, vhost.vhost.mutations, config.mutations)
        self.request_ops, self.response_ops = compile_ops(levels)
        self.rewrite: Regex | None = None
        a = self.action
        if a is not None and a.regex_rewrite is not None:
            self.rewrite = Regex(a.regex_rewrite.pattern)
        self.cum_weights: list[int] = []
        self.weighted_ops: list[tuple[HeaderOps, HeaderOps]] = []
        if a is not None and a.weighted_clusters:
            total = 0
            for w in a.weighted_clusters:
                total += w.weight
                self.cum_weights.append(total)
                self.weighted_ops.append(compile_ops((w.mutations, *levels)))
        self.total_weight = self.cum_weights[-1] if self.cum_weights else 0

    def matches(self, path: str, headers: Mapping[str, str] | None) -> bool:
        raw = path  # query parameters match case-sensitively, whatever case_sensitive says
        if self.lower:
            path = path.lower()
        kind = self.kind
        if kind == _PREFIX:
            if not path.startswith(self.value):
                return False
        else:
            bare = path.split("?", 1)[0] if "?" in path else path
            if kind == _PATH:
                if bare != self.value:
                    return False
            elif kind == _SEPARATED:
                v = self.value
                if not (bare == v or (bare.startswith(v) and bare[len(v)] == "/")):
                    return False
            else:
                assert self.regex is not None
                if not self.regex.fullmatch(bare):
                    return False
        if self.headers:
            assert headers is not None
            if not all(h.matches(headers) for h in self.headers):
                return False
        if self.query:
            params = query_params(raw)
            return all(q.matches(params) for q in self.query)
        return True

    def pick_cluster(self, rng: random.Random) -> tuple[str, int]:
        """The cluster name and its index in weighted_clusters (-1 for a single cluster)."""
        a = self.action
        assert a is not None
        if a.cluster is not None:
            return a.cluster, -1
        i = bisect.bisect_right(self.cum_weights, rng.randrange(self.total_weight))
        return a.weighted_clusters[i].name, i

    def rewrite_path(self, path: str) -> str | None:
        """The upstream path after prefix_rewrite / regex_rewrite, or None when unchanged."""
        a = self.action
        if a is None:
            r = self.route.redirect
            if r is not None and r.prefix_rewrite is not None and self.kind in (_PREFIX, _SEPARATED, _PATH):
                return r.prefix_rewrite + path[len(self.value) :]
            return None
        if a.prefix_rewrite is not None:
            if self.kind in (_PREFIX, _SEPARATED, _PATH):
                return a.prefix_rewrite + path[len(self.value) :]
            return None
        if self.rewrite is not None and a.regex_rewrite is not None:
            bare, sep, query = path.partition("?")
            # RE2 GlobalReplace: every match replaced, \\1 for groups.
            return self.rewrite.sub(a.regex_rewrite.substitution, bare) + sep + query
        return None


class CompiledVirtualHost:
    __slots__ = ("needs_headers", "routes", "vhost")

    def __init__(self, vhost: VirtualHost, config: RouteConfiguration) -> None:
        self.vhost = vhost
        self.routes = tuple(CompiledRoute(r, self, config) for r in vhost.routes)
        self.needs_headers = any(r.headers for r in self.routes)

    def select(self, path: str, headers: Mapping[str, str] | None) -> CompiledRoute | None:
        for r in self.routes:
            if r.matches(path, headers):
                return r
        return None


@dataclass(frozen=True, slots=True)
class RouteTable:
    exact: dict[str, CompiledVirtualHost]
    # (suffix, vhost) longest first; a `*.foo.com` domain is stored as suffix ".foo.com".
    suffixes: tuple[tuple[str, CompiledVirtualHost], ...]
    prefixes: tuple[tuple[str, CompiledVirtualHost], ...]
    default: CompiledVirtualHost | None
    ignore_port: bool
    config: RouteConfiguration

    @classmethod
    def build(cls, config: RouteConfiguration) -> RouteTable:
        exact: dict[str, CompiledVirtualHost] = {}
        suffixes: list[tuple[str, CompiledVirtualHost]] = []
        prefixes: list[tuple[str, CompiledVirtualHost]] = []
        default: CompiledVirtualHost | None = None
        for vh in config.virtual_hosts:
            cvh = CompiledVirtualHost(vh, config)
            for d in vh.domains:
                d = d.lower()
                if d == "*":
                    default = cvh
                elif d.startswith("*"):
                    suffixes.append((d[1:], cvh))
                elif d.endswith("*"):
                    prefixes.append((d[:-1], cvh))
                else:
                    exact.setdefault(d, cvh)
        suffixes.sort(key=lambda x: -len(x[0]))
        prefixes.sort(key=lambda x: -len(x[0]))
        return cls(
            exact,
            tuple(suffixes),
            tuple(prefixes),
            default,
            config.ignore_port_in_host_matching,
            config,
        )

    def virtual_host(self, host: str) -> CompiledVirtualHost | None:
        host = host.lower()
        if self.ignore_port:
            host = strip_port(host)
        found = self.exact.get(host)
        if found is not None:
            return found
        n = len(host)
        for suffix, vh in self.suffixes:
            if n > len(suffix) and host.endswith(suffix):
                return vh
        for prefix, vh in self.prefixes:
            if n > len(prefix) and host.startswith(prefix):
                return vh
        return self.default

    def select(
        self, host: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[CompiledVirtualHost | None, CompiledRoute | None]:
        vh = self.virtual_host(host)
        if vh is None:
            return None, None
        return vh, vh.select(path, headers)


def strip_port(host: str) -> str:
    """`example.com:80` → `example.com`; `[::1]:80` → `[::1]`; a bare IPv6 stays whole."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


# require_tls ALL's answer: the same request over https, 301 (Envoy's SslRedirectRoute).
HTTPS_REDIRECT = RedirectAction(https_redirect=True, response_code=301)


def resolve_route(
    table: RouteTable, host: str, path: str, headers: Headers, scheme: bytes
) -> tuple[CompiledVirtualHost | None, CompiledRoute | None, bool]:
    """Which route a request takes (the connection manager's cached route): (virtual host,
    route or None, whether require_tls answers it with a redirect instead). As Envoy's
    SslRedirectRoute, an unmet require_tls hides the route: no filter sees its config."""
    vh = table.virtual_host(host)
    if vh is None:
        return None, None, False
    if vh.vhost.require_tls and scheme != b"https":
        return vh, None, True
    return vh, vh.select(path, as_dict(strip_request(headers)) if vh.needs_headers else None), False
