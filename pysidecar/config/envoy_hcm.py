"""Envoy YAML → `HttpConnectionManager`: the HTTP connection manager's parser and checks.

Promises:
- `http_connection_manager` is envoy.filters.network.http_connection_manager's parser, named in
  `envoy_filters.NETWORK_FILTERS`; `check_route_clusters` one of its BOOTSTRAP_CHECKS.
- Accepts the fields listed in each parser below (snake_case or camelCase); any other field,
  an HTTP filter other than the router, Lua (any script LuaJIT compiles, config/envoy_lua.py)
  and the fault filter with its faults given per route, a router that is missing or not last, or a regex that does not
  compile is a `ConfigError` naming the file and YAML path.
- Routes may redirect (`redirect`), match query parameters (`query_parameters`) and inject
  faults (`typed_per_filter_config` for envoy.filters.http.fault, which then must be in the
  HTTP filter chain, as Envoy only runs per-route faults through that filter).
- A static `route_config` whose routes name a cluster the bootstrap does not define is refused
  at load, as Envoy's `validate_clusters` (default true for inline route configs) does.
"""

from __future__ import annotations

from pysidecar.config.access_log import access_logs
from pysidecar.config.envoy_lua import lua_filter
from pysidecar.config.envoy_tracing import tracing
from pysidecar.config.envoy_upstream_http import http2_options
from pysidecar.config.node import Fields, Node
from pysidecar.config.typed_config import filter_type
from pysidecar.model import Bootstrap
from pysidecar.model.http import (
    XFCC_DETAILS,
    XFCC_MODES,
    ClusterWeight,
    CodecType,
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

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
LUA_TYPE = "envoy.extensions.filters.http.lua.v3.Lua"
FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
PREVIOUS_HOSTS_NAME = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
HTTP_FILTER_NAMES = {
    "envoy.filters.http.fault": FAULT_TYPE,
    "envoy.fault": FAULT_TYPE,
    "envoy.filters.http.router": ROUTER_TYPE,
    "envoy.router": ROUTER_TYPE,
    "envoy.filters.http.lua": LUA_TYPE,
    "envoy.lua": LUA_TYPE,
}

# The retry_on conditions Envoy knows for HTTP routes; the router acts on all of them.
RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        # gRPC conditions: meaningful only with HTTP/2 upstreams; accepted as Istio sends them.
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


# -- small shapes ----------------------------------------------------------------------------


def regex(node: Node) -> str:
    """A RegexMatcher: `{google_re2: {...}, regex: "..."}`, checked to compile."""
    f = node.fields("google_re2", "regex")
    if (g := f.get("google_re2")) is not None:
        g.fields("max_program_size")
    f.require("regex").nonempty()  # RegexMatcher: min_len 1
    return f.require("regex").regex()


def header_value_option(node: Node) -> HeaderValueOption:
    f = node.fields("header", "append", "append_action", "keep_empty_value")
    hf = f.require("header").fields("key", "value", "raw_value")
    key = hf.require("key").header_name().lower()
    if key.startswith(":") or key == "host":
        hf.require("key").fail(
            f"cannot add header {key!r}: pseudo headers and host are not mutable"
        )
    value = hf.get("value") or hf.get("raw_value")
    action = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
    if (append := f.get("append")) is not None:
        action = (
            HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
            if append.boolean()
            else HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        )
    if (aa := f.get("append_action")) is not None:
        if "append" in f:
            aa.fail("set either 'append' or 'append_action', not both")
        action = HeaderAppendAction(aa.enum([a.value for a in HeaderAppendAction]))
    f.opt("keep_empty_value", Node.boolean, False)
    return HeaderValueOption(key, value.header_value() if value is not None else "", action)


MUTATION_FIELDS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)


def mutations(f: Fields) -> HeaderMutations:
    return HeaderMutations(
        request_headers_to_add=tuple(
            header_value_option(n) for n in f.list("request_headers_to_add")
        ),
        request_headers_to_remove=tuple(
            n.header_name().lower() for n in f.list("request_headers_to_remove")
        ),
        response_headers_to_add=tuple(
            header_value_option(n) for n in f.list("response_headers_to_add")
        ),
        response_headers_to_remove=tuple(
            n.header_name().lower() for n in f.list("response_headers_to_remove")
        ),
    )


def header_matcher(node: Node) -> HeaderMatcher:
    f = node.fields(
        "name", "exact_match", "prefix_match", "suffix_match", "contains_match",
        "safe_regex_match", "present_match", "invert_match", "string_match",
    )  # fmt: skip
    name = f.require("name").header_name().lower()
    kinds: dict[str, str | bool | None] = {}
    if (sm := f.get("string_match")) is not None:
        sf = sm.fields("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case")
        if sf.opt("ignore_case", Node.boolean, False):
            sm.fail("ignore_case is not supported")
        for k in ("exact", "prefix", "suffix", "contains"):
            if (v := sf.get(k)) is not None:
                kinds[k] = v.string() if k == "exact" else v.nonempty()  # StringMatcher: min_len 1
        if (rx := sf.get("safe_regex")) is not None:
            kinds["safe_regex"] = regex(rx)
    for k in ("exact", "prefix", "suffix", "contains"):
        if (v := f.get(f"{k}_match")) is not None:
            kinds[k] = v.string()
    if (rx := f.get("safe_regex_match")) is not None:
        kinds["safe_regex"] = regex(rx)
    if (pm := f.get("present_match")) is not None:
        kinds["present_match"] = pm.boolean()
    if len(kinds) > 1:
        node.fail("expected at most one match kind")
    return HeaderMatcher(
        name=name,
        exact=_str(kinds.get("exact")),
        prefix=_str(kinds.get("prefix")),
        suffix=_str(kinds.get("suffix")),
        contains=_str(kinds.get("contains")),
        safe_regex=_str(kinds.get("safe_regex")),
        # No match kind at all means "present" in Envoy.
        present_match=bool(kinds["present_match"])
        if "present_match" in kinds
        else (None if kinds else True),
        invert_match=f.opt("invert_match", Node.boolean, False),
    )


def _str(v: str | bool | None) -> str | None:
    return v if isinstance(v, str) else None


def query_parameter_matcher(node: Node) -> QueryParameterMatcher:
    f = node.fields("name", "string_match", "present_match")
    name = f.require("name").nonempty()
    if (sm := f.get("string_match")) is not None:
        if "present_match" in f:
            node.fail("expected one of string_match, present_match")
        sf = sm.fields("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case")
        if sf.opt("ignore_case", Node.boolean, False):
            sm.fail("ignore_case is not supported")
        if "suffix" in sf or "contains" in sf:
            sm.fail("only exact, prefix and safe_regex query parameter matches are supported")
        kinds = [k for k in ("exact", "prefix", "safe_regex") if k in sf]
        if len(kinds) != 1:
            sm.fail("expected exactly one of exact, prefix, safe_regex")
        return QueryParameterMatcher(
            name,
            exact=sf.opt("exact", Node.string, None),
            prefix=sf.opt("prefix", Node.nonempty, None),
            safe_regex=sf.opt("safe_regex", regex, None),
        )
    # present_match (true or false) and no match kind at all both mean "present" in Envoy.
    return QueryParameterMatcher(name, present_match=f.opt("present_match", Node.boolean, True))


def route_match(node: Node) -> RouteMatch:
    f = node.fields(
        "prefix", "path", "safe_regex", "path_separated_prefix", "headers", "case_sensitive",
        "query_parameters",
    )  # fmt: skip
    kinds = [k for k in ("prefix", "path", "safe_regex", "path_separated_prefix") if k in f]
    if len(kinds) != 1:
        node.fail("expected exactly one of prefix, path, safe_regex, path_separated_prefix")
    sep = f.get("path_separated_prefix")
    if sep is not None and (not sep.string().startswith("/") or sep.string().endswith("/")):
        sep.fail("expected a prefix starting with '/' and not ending with '/'")
    return RouteMatch(
        prefix=f.opt("prefix", Node.string, None),
        path=f.opt("path", Node.string, None),
        safe_regex=f.opt("safe_regex", regex, None),
        path_separated_prefix=sep.string() if sep is not None else None,
        headers=tuple(header_matcher(n) for n in f.list("headers")),
        case_sensitive=f.opt("case_sensitive", Node.boolean, True),
        query_parameters=tuple(query_parameter_matcher(n) for n in f.list("query_parameters")),
    )


def retry_policy(node: Node) -> RetryPolicy:
    f = node.fields(
        "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
        "retry_host_predicate", "host_selection_retry_max_attempts", "per_try_idle_timeout",
    )  # fmt: skip
    on: tuple[str, ...] = ()
    if (ro := f.get("retry_on")) is not None:
        on = tuple(p.strip() for p in ro.string().split(",") if p.strip())
        for cond in on:
            if cond not in RETRY_ON:
                ro.fail(
                    f"unknown retry_on condition {cond!r}; expected some of: {', '.join(sorted(RETRY_ON))}"
                )
    previous_hosts = False
    for pred in f.list("retry_host_predicate"):
        pf = pred.fields("name", "typed_config")
        name = pf.opt("name", Node.string, "")
        tc = pf.get("typed_config")
        if name != PREVIOUS_HOSTS_NAME and (tc is None or tc.type_url() != PREVIOUS_HOSTS_TYPE):
            pred.fail(f"only the {PREVIOUS_HOSTS_NAME} retry host predicate is supported")
        previous_hosts = True
    attempts = f.opt("host_selection_retry_max_attempts", lambda n: n.integer(1), 1)
    base, cap = 0.025, None
    if (bo := f.get("retry_back_off")) is not None:
        bf = bo.fields("base_interval", "max_interval")
        base = bf.require("base_interval").positive_duration()
        cap = bf.opt("max_interval", Node.positive_duration, None)
        if cap is not None and cap < base:
            bf.require("max_interval").fail("expected max_interval >= base_interval")
    if (pti := f.get("per_try_idle_timeout")) is not None and pti.duration() > 0:
        pti.fail("per_try_idle_timeout is not supported (per_try_timeout is)")
    return RetryPolicy(
        retry_on=on,
        num_retries=f.opt("num_retries", lambda n: n.integer(0), 1),
        per_try_timeout=f.opt("per_try_timeout", Node.duration, 0.0),
        retriable_status_codes=tuple(n.integer(100, 599) for n in f.list("retriable_status_codes")),
        base_interval=base,
        max_interval=cap,
        previous_hosts=previous_hosts,
        host_selection_max_attempts=attempts,
    )


def route_action(node: Node) -> RouteAction:
    f = node.fields(
        "cluster", "weighted_clusters", "timeout", "idle_timeout", "retry_policy", "prefix_rewrite",
        "regex_rewrite", "host_rewrite_literal", "cluster_not_found_response_code",
        "max_grpc_timeout", "max_stream_duration",
    )  # fmt: skip
    cluster = f.get("cluster")
    weighted = f.get("weighted_clusters")
    if (cluster is None) == (weighted is None):
        node.fail("expected exactly one of 'cluster' or 'weighted_clusters'")
    weights: list[ClusterWeight] = []
    if weighted is not None:
        wf = weighted.fields("clusters", "total_weight", "runtime_key_prefix")
        for c in wf.list("clusters"):
            cf = c.fields("name", "weight", *MUTATION_FIELDS)
            weights.append(
                ClusterWeight(
                    cf.require("name").nonempty(), cf.require("weight").integer(0), mutations(cf)
                )
            )
        if not weights or sum(w.weight for w in weights) == 0:
            weighted.fail("expected at least one cluster with a weight above 0")
        if (tw := wf.get("total_weight")) is not None and tw.integer(1) != sum(
            w.weight for w in weights
        ):
            tw.fail(
                f"total_weight {tw.value} is not the sum of the weights ({sum(w.weight for w in weights)})"
            )
    if (mgt := f.get("max_grpc_timeout")) is not None:
        mgt.fail("max_grpc_timeout (deprecated) is not supported; use max_stream_duration.grpc_timeout_header_max")
    stream_duration, grpc_max = 0.0, None
    if (msd := f.get("max_stream_duration")) is not None:
        mf = msd.fields("max_stream_duration", "grpc_timeout_header_max")
        stream_duration = mf.opt("max_stream_duration", Node.duration, 0.0)
        grpc_max = mf.opt("grpc_timeout_header_max", Node.duration, None)
    rewrite: RegexRewrite | None = None
    if (rr := f.get("regex_rewrite")) is not None:
        rf = rr.fields("pattern", "substitution")
        rewrite = RegexRewrite(regex(rf.require("pattern")), rf.require("substitution").string())
    if rewrite is not None and "prefix_rewrite" in f:
        node.fail("set either 'prefix_rewrite' or 'regex_rewrite', not both")
    cnf = f.get("cluster_not_found_response_code")
    return RouteAction(
        cluster=cluster.nonempty() if cluster is not None else None,
        weighted_clusters=tuple(weights),
        timeout=f.opt("timeout", Node.duration, 15.0),
        idle_timeout=f.opt("idle_timeout", Node.duration, None),
        max_stream_duration=stream_duration,
        grpc_timeout_header_max=grpc_max,
        retry_policy=f.opt("retry_policy", retry_policy, None),
        prefix_rewrite=f.opt("prefix_rewrite", Node.header_value, None),
        regex_rewrite=rewrite,
        host_rewrite_literal=f.opt("host_rewrite_literal", Node.header_value, None),
        cluster_not_found_response_code=(
            {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}[
                cnf.enum(["SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR"])
            ]
            if cnf is not None
            else 503
        ),
    )


def direct_response(node: Node) -> DirectResponse:
    f = node.fields("status", "body")
    body = ""
    if (b := f.get("body")) is not None:
        bf = b.fields("inline_string", "inline_bytes", "filename")
        if "filename" in bf:
            bf.require("filename").fail("a body from a file is not supported; use inline_string")
        body = bf.opt("inline_string", Node.string, "") or bf.opt("inline_bytes", Node.string, "")
    return DirectResponse(f.require("status").integer(200, 599), body)


REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def redirect_action(node: Node) -> RedirectAction:
    f = node.fields(
        "host_redirect", "path_redirect", "port_redirect", "scheme_redirect", "https_redirect",
        "prefix_rewrite", "regex_rewrite", "response_code", "strip_query",
    )  # fmt: skip
    if (rr := f.get("regex_rewrite")) is not None:
        rr.fail("regex_rewrite in a redirect is not supported; use path_redirect or prefix_rewrite")
    if "https_redirect" in f and "scheme_redirect" in f:
        node.fail("set either 'https_redirect' or 'scheme_redirect', not both")
    if "path_redirect" in f and "prefix_rewrite" in f:
        node.fail("set either 'path_redirect' or 'prefix_rewrite', not both")
    code = f.opt("response_code", lambda n: n.enum(list(REDIRECT_CODES)), "MOVED_PERMANENTLY")
    return RedirectAction(
        host_redirect=f.opt("host_redirect", Node.header_value, ""),
        path_redirect=f.opt("path_redirect", Node.string, ""),
        port_redirect=f.opt("port_redirect", lambda n: n.integer(0, 65535), 0),
        scheme_redirect=f.opt("scheme_redirect", Node.string, ""),
        response_code=REDIRECT_CODES[code],
        https_redirect=f.opt("https_redirect", Node.boolean, False),
        prefix_rewrite=f.opt("prefix_rewrite", Node.string, None),
        strip_query=f.opt("strip_query", Node.boolean, False),
    )


def fractional_percent(node: Node | None) -> float:
    """A FractionalPercent ({numerator, denominator: HUNDRED | TEN_THOUSAND | MILLION}) as a
    percentage; absent means 100 % for a fault that is configured."""
    if node is None:
        return 100.0
    f = node.fields("numerator", "denominator")
    denominator = DENOMINATORS[f.opt("denominator", lambda n: n.enum(list(DENOMINATORS)), "HUNDRED")]
    return min(100.0, f.opt("numerator", lambda n: n.integer(0), 0) * 100.0 / denominator)


def fault(node: Node) -> FaultInjection:
    """envoy.extensions.filters.http.fault.v3.HTTPFault: fixed delays and HTTP status aborts."""
    f = node.fields(
        "@type", "delay", "abort", "max_active_faults", "upstream_cluster", "headers",
        "downstream_nodes", "delay_percent_runtime", "abort_percent_runtime",
    )  # fmt: skip
    for unsupported in ("upstream_cluster", "headers", "downstream_nodes"):
        if (n := f.get(unsupported)) is not None and n.value:
            n.fail(f"fault {unsupported} is not supported")
    f.opt("max_active_faults", lambda n: n.integer(0), 0)
    out = FaultInjection()
    if (d := f.get("delay")) is not None:
        df = d.fields("fixed_delay", "header_delay", "percentage")
        if "header_delay" in df:
            d.fail("header_delay is not supported; use fixed_delay")
        out = FaultInjection(delay=df.require("fixed_delay").positive_duration(), delay_percent=fractional_percent(df.get("percentage")))
    if (a := f.get("abort")) is not None:
        af = a.fields("http_status", "grpc_status", "header_abort", "percentage")
        if "http_status" not in af:
            a.fail("only http_status aborts are supported")
        out = FaultInjection(
            out.delay, out.delay_percent, af.require("http_status").integer(200, 599), fractional_percent(af.get("percentage"))
        )
    return out


def route_fault(node: Node) -> FaultInjection | None:
    """typed_per_filter_config: only the fault filter's HTTPFault (by filter name or @type)."""
    found: FaultInjection | None = None
    for key, value in (node.value or {}).items():
        cfg = node.child(str(key), value)
        if key in ("envoy.filters.http.fault", "envoy.fault") or (isinstance(value, dict) and str(value.get("@type", "")).endswith(FAULT_TYPE)):
            if cfg.type_url() != FAULT_TYPE:
                cfg.fail(f"expected a {FAULT_TYPE}")
            found = fault(cfg)
        else:
            cfg.fail("per-filter route config is supported for envoy.filters.http.fault only")
    return found


def route(node: Node, index: int) -> Route:
    f = node.fields(
        "name", "match", "route", "direct_response", "decorator", "typed_per_filter_config",
        "redirect", "metadata", *MUTATION_FIELDS,
    )  # fmt: skip
    if sum(k in f for k in ("route", "direct_response", "redirect")) != 1:
        node.fail("expected exactly one of 'route', 'redirect' or 'direct_response'")
    dec = f.get("decorator")
    return Route(
        match=route_match(f.require("match")),
        name=f.opt("name", Node.string, ""),
        route=f.opt("route", route_action, None),
        direct_response=f.opt("direct_response", direct_response, None),
        decorator=Decorator(dec.fields("operation", "propagate").require("operation").nonempty())
        if dec is not None
        else None,
        mutations=mutations(f),
        redirect=f.opt("redirect", redirect_action, None),
        fault=f.opt("typed_per_filter_config", route_fault, None),
        istio_config=f.opt("metadata", istio_config, None),
    )


def istio_config(node: Node) -> str | None:
    """Route metadata: inert data for Envoy's filters; we keep istio.config for proxy-config."""
    by_filter = node.fields("filter_metadata").get("filter_metadata")
    if by_filter is None or not isinstance(by_filter.value, dict):
        return None
    istio = by_filter.value.get("istio")
    if not isinstance(istio, dict) or "config" not in istio:
        return None
    return by_filter.child("istio", istio).child("config", istio["config"]).string()


def virtual_host(node: Node) -> VirtualHost:
    f = node.fields(
        "name", "domains", "routes", "retry_policy", "include_request_attempt_count",
        "include_attempt_count_in_response", "require_tls", *MUTATION_FIELDS,
    )  # fmt: skip
    domains_node = f.require("domains")
    domains = tuple(n.header_value().lower() for n in domains_node.items())
    if not domains:
        domains_node.fail("expected at least one domain")
    for i, d in enumerate(domains):
        if ("*" in d and not (d == "*" or d.startswith("*") or d.endswith("*"))) or d.count(
            "*"
        ) > 1:
            domains_node.child(i, d).fail(
                f"a wildcard must be the whole domain, its start or its end: {d!r}"
            )
    f.opt("include_attempt_count_in_response", Node.boolean, False)
    return VirtualHost(
        name=f.require("name").nonempty(),
        domains=domains,
        routes=tuple(route(n, i) for i, n in enumerate(f.list("routes"))),
        mutations=mutations(f),
        retry_policy=f.opt("retry_policy", retry_policy, None),
        include_request_attempt_count=f.opt("include_request_attempt_count", Node.boolean, False),
        require_tls=f.opt("require_tls", lambda n: n.enum(["NONE", "ALL"]), "NONE") == "ALL",
    )


def route_configuration(node: Node) -> RouteConfiguration:
    f = node.fields(
        "name", "virtual_hosts", "validate_clusters", "ignore_port_in_host_matching",
        "max_direct_response_body_size_bytes", *MUTATION_FIELDS,
    )  # fmt: skip
    hosts = tuple(virtual_host(n) for n in f.list("virtual_hosts"))
    seen: dict[str, str] = {}
    for i, vh in enumerate(hosts):
        for d in vh.domains:
            if d in seen:
                f.require("virtual_hosts").child(i, None).fail(
                    f"domain {d!r} is already in virtual host {seen[d]!r}"
                )
            seen[d] = vh.name
    f.opt("max_direct_response_body_size_bytes", lambda n: n.integer(0), 4096)
    return RouteConfiguration(
        name=f.opt("name", Node.string, ""),
        virtual_hosts=hosts,
        mutations=mutations(f),
        validate_clusters=f.opt("validate_clusters", Node.boolean, True),
        ignore_port_in_host_matching=f.opt("ignore_port_in_host_matching", Node.boolean, False),
    )


# -- HTTP filters ----------------------------------------------------------------------------

def http_filter(node: Node) -> HttpFilter:
    type_name, config = filter_type(node, HTTP_FILTER_NAMES)
    name = node.fields("name", "typed_config").require("name").nonempty()
    if type_name == ROUTER_TYPE:
        rf = config.fields("@type", "suppress_envoy_headers", "start_child_span", "dynamic_stats")
        if rf.opt("suppress_envoy_headers", Node.boolean, False):
            rf.require("suppress_envoy_headers").fail("suppress_envoy_headers is not supported")
        return HttpFilter(name, type_name)
    if type_name == LUA_TYPE:
        return HttpFilter(name, type_name, lua=lua_filter(config))
    if type_name == FAULT_TYPE:
        # Faults for every route are not supported; per-route ones (typed_per_filter_config) are.
        if fault(config) != FaultInjection():
            config.fail("give faults per route (typed_per_filter_config), not on the filter")
        return HttpFilter(name, type_name)
    node.fail(
        f"unsupported HTTP filter type {type_name!r}; supported: {ROUTER_TYPE}, {LUA_TYPE}, {FAULT_TYPE}"
    )


def http_filters(node: Node) -> tuple[HttpFilter, ...]:
    items = node.items()
    filters = tuple(http_filter(n) for n in items)
    routers = [i for i, f in enumerate(filters) if f.type_url == ROUTER_TYPE]
    if not routers:
        node.fail("expected the router filter (envoy.filters.http.router) as the last HTTP filter")
    if routers != [len(filters) - 1]:
        items[routers[0]].fail("the router filter must be the last HTTP filter, and only once")
    return filters


# -- the connection manager ------------------------------------------------------------------


def http_connection_manager(node: Node) -> HttpConnectionManager:
    f = node.fields(
        "@type", "stat_prefix", "codec_type", "route_config", "http_filters", "server_name",
        "tracing", "request_headers_timeout", "stream_idle_timeout", "request_timeout",
        "common_http_protocol_options", "max_request_headers_kb", "upgrade_configs",
        "use_remote_address", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
        "request_id_extension", "generate_request_id", "proxy_100_continue", "http_protocol_options",
        "server_header_transformation", "delayed_close_timeout", "drain_timeout", "access_log",
        "http2_protocol_options", "forward_client_cert_details", "set_current_client_cert_details",
    )  # fmt: skip
    if "rds" in (node.value or {}):
        node.fail("rds is not supported: give an inline route_config")
    route_node = f.require("route_config")
    if (gri := f.get("generate_request_id")) is not None and not gri.boolean():
        gri.fail("generate_request_id: false is not supported")
    if (sht := f.get("server_header_transformation")) is not None:
        sht.enum(["OVERWRITE"])
    if (pe := f.get("path_with_escaped_slashes_action")) is not None:
        pe.enum(["KEEP_UNCHANGED", "IMPLEMENTATION_SPECIFIC_DEFAULT"])
    for flag in ("normalize_path", "merge_slashes"):
        if (n := f.get(flag)) is not None and n.boolean():
            n.fail(f"{flag}: true is not supported (paths are routed as received)")
    if (rid := f.get("request_id_extension")) is not None:
        tc = rid.fields("typed_config").require("typed_config")
        if tc.type_url() != "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig":
            tc.fail("only the uuid request id extension is supported")
    idle, max_headers, underscores = 3600.0, 100, "ALLOW"
    if (cpo := f.get("common_http_protocol_options")) is not None:
        cf = cpo.fields("idle_timeout", "max_headers_count", "headers_with_underscores_action")
        idle = cf.opt("idle_timeout", Node.duration, 3600.0)
        max_headers = cf.opt("max_headers_count", lambda n: n.integer(1), 100)
        underscores = cf.opt(
            "headers_with_underscores_action",
            lambda n: n.enum(["ALLOW", "REJECT_REQUEST", "DROP_HEADER"]),
            "ALLOW",
        )
    accept_http_10 = False
    if (hpo := f.get("http_protocol_options")) is not None:
        accept_http_10 = hpo.fields("accept_http_10").opt("accept_http_10", Node.boolean, False)
    if (rt := f.get("request_timeout")) is not None and rt.duration() > 0:
        rt.fail("request_timeout is not supported (use the route's timeout)")
    if (dt := f.get("drain_timeout")) is not None and dt.duration() != 5.0:
        dt.fail("drain_timeout other than Envoy's 5s is not supported (drains use --drain-time-s)")
    upgrades: list[str] = []
    for u in f.list("upgrade_configs"):
        uf = u.fields("upgrade_type", "enabled")
        if uf.opt("enabled", Node.boolean, True):
            upgrades.append(uf.require("upgrade_type").string().lower())
    codec = f.opt(
        "codec_type", lambda n: CodecType(n.enum([c.value for c in CodecType])), CodecType.AUTO
    )
    http2 = None
    if (h2o := f.get("http2_protocol_options")) is not None:
        http2 = http2_options(h2o)
    rc = route_configuration(route_node)
    filters = http_filters(f.require("http_filters"))
    faulty = any(r.fault is not None for vh in rc.virtual_hosts for r in vh.routes)
    if faulty and not any(x.type_url == FAULT_TYPE for x in filters):
        route_node.fail("routes inject faults but envoy.filters.http.fault is not in http_filters")
    return HttpConnectionManager(
        stat_prefix=f.require("stat_prefix").nonempty(),
        route_config=rc,
        codec_type=codec,
        http_filters=filters,
        server_name=f.opt("server_name", Node.header_value, "envoy"),
        tracing=tracing(f.require("tracing")) if "tracing" in f else None,
        request_headers_timeout=f.opt("request_headers_timeout", Node.duration, 10.0),
        stream_idle_timeout=f.opt("stream_idle_timeout", Node.duration, 300.0),
        idle_timeout=idle,
        max_request_headers_kb=f.opt("max_request_headers_kb", lambda n: n.integer(1, 8192), 60),
        max_headers_count=max_headers,
        headers_with_underscores_action=underscores,
        accept_http_10=accept_http_10,
        delayed_close_timeout=f.opt("delayed_close_timeout", Node.duration, 1.0),
        upgrade_types=tuple(upgrades),
        proxy_100_continue=f.opt("proxy_100_continue", Node.boolean, False),
        access_log=access_logs(f.get("access_log")),
        use_remote_address=f.opt("use_remote_address", Node.boolean, False),
        http2=http2,
        forward_client_cert_details=f.opt("forward_client_cert_details", lambda n: n.enum(XFCC_MODES), "SANITIZE"),
        set_current_client_cert_details=f.opt("set_current_client_cert_details", _cert_details, ()),
    )


def _cert_details(node: Node) -> tuple[str, ...]:
    """set_current_client_cert_details: which of subject, cert, chain, dns, uri are set."""
    f = node.fields(*XFCC_DETAILS)
    for part in ("cert", "chain"):
        if (n := f.get(part)) is not None and n.boolean():
            n.fail(f"{part}: true (the PEM in x-forwarded-client-cert) is not supported; subject, dns and uri are")
    return tuple(d for d in XFCC_DETAILS if f.opt(d, Node.boolean, False))


def check_route_clusters(b: Bootstrap, root: Node) -> None:
    """Envoy's validate_clusters: every cluster a static route names must exist."""
    known = {c.name for c in b.clusters}
    listeners = root.child("static_resources", None).child("listeners", None)
    for li, lis in enumerate(b.listeners):
        chains = [(f"filter_chains[{ci}]", c) for ci, c in enumerate(lis.filter_chains)]
        if lis.default_filter_chain is not None:
            chains.append(("default_filter_chain", lis.default_filter_chain))
        for where, chain in chains:
            for fi, nf in enumerate(chain.filters):
                if not isinstance(nf, HttpConnectionManager):
                    continue
                zipkin = nf.tracing.provider if nf.tracing is not None else None
                if zipkin is not None and zipkin.collector_cluster not in known:
                    listeners.child(li, None).child(f"{where}.filters[{fi}].typed_config.tracing.provider", None).fail(
                        f"unknown collector_cluster {zipkin.collector_cluster!r} (Envoy refuses it at load)"
                    )
                if not nf.route_config.validate_clusters:
                    continue
                for vi, vh in enumerate(nf.route_config.virtual_hosts):
                    for ri, r in enumerate(vh.routes):
                        for name in r.route.cluster_names if r.route is not None else ():
                            if name not in known:
                                listeners.child(li, None).child(
                                    f"{where}.filters[{fi}].typed_config.route_config."
                                    f"virtual_hosts[{vi}].routes[{ri}].route",
                                    None,
                                ).fail(f"unknown cluster {name!r} (validate_clusters)")

