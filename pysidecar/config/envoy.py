"""Envoy v3 bootstrap YAML → `Bootstrap`: the subset of Envoy's API pysidecar runs.

Promises:
- Accepts `static_resources.listeners` / `clusters`, `admin`, `node`, with the fields listed in
  each parser below, in snake_case or camelCase. Any other field is a `ConfigError` naming the
  file and the YAML path: a field we would not act on is never silently dropped.
- Network filters are looked up by their `typed_config` `@type` (or, without one, by name) in
  `envoy_filters.NETWORK_FILTERS`, an explicit table: each filter's parser lives beside the
  filter's other code (`envoy_tcp_proxy`, `envoy_hcm`).
- Cross references are checked at load: listener and cluster names are unique, and no two
  listeners bind the same address.
"""

from __future__ import annotations

import ipaddress

from pysidecar.config.envoy_filters import BOOTSTRAP_CHECKS, network_filter
from pysidecar.config.envoy_tls import transport_socket
from pysidecar.config.envoy_upstream_http import cluster_http_options
from pysidecar.config.node import ConfigError, Node, load_documents
from pysidecar.model import (
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_LISTENER_FILTERS_TIMEOUT,
    DEFAULT_PANIC_THRESHOLD,
    Admin,
    Bootstrap,
    CidrRange,
    CircuitBreakers,
    Cluster,
    ClusterType,
    DnsLookupFamily,
    FilterChain,
    FilterChainMatch,
    LbEndpoint,
    LbPolicy,
    Listener,
    ListenerFilter,
    OutlierDetection,
    SocketAddress,
    TrafficDirection,
)

TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

LISTENER_FILTER_TYPES: dict[str, ListenerFilter] = {
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst": ListenerFilter.ORIGINAL_DST,
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": ListenerFilter.TLS_INSPECTOR,
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": ListenerFilter.HTTP_INSPECTOR,
}
LISTENER_FILTER_NAMES: dict[str, ListenerFilter] = {f.value: f for f in ListenerFilter} | {
    "envoy.listener.original_dst": ListenerFilter.ORIGINAL_DST,
    "envoy.listener.tls_inspector": ListenerFilter.TLS_INSPECTOR,
    "envoy.listener.http_inspector": ListenerFilter.HTTP_INSPECTOR,
}


def socket_address(node: Node) -> SocketAddress:
    """An `address` message: only `socket_address` over TCP is supported."""
    sa = node.fields("socket_address").require("socket_address")
    f = sa.fields("address", "port_value", "protocol", "ipv4_compat")
    if (proto := f.get("protocol")) is not None:
        proto.enum(["TCP"])
    if f.opt("ipv4_compat", Node.boolean, False):
        f.require("ipv4_compat").fail("ipv4_compat: true is not supported: IPv6 sockets are IPv6-only; "
                                      "add an IPv4 address (additional_addresses) instead")  # fmt: skip
    host = f.require("address").nonempty()
    port = f.get("port_value")
    return SocketAddress(host, port.port() if port is not None else 0)


# -- listeners -------------------------------------------------------------------------------


def cidr_range(node: Node) -> CidrRange:
    f = node.fields("address_prefix", "prefix_len")
    prefix = f.require("address_prefix").string()
    plen = f.get("prefix_len")
    length = plen.integer(0, 128) if plen is not None else (128 if ":" in prefix else 32)
    try:
        ipaddress.ip_network(f"{prefix}/{length}", strict=False)
    except ValueError as e:
        node.fail(f"expected an IP prefix: {e}")
    return CidrRange(prefix, length)


def filter_chain_match(node: Node) -> FilterChainMatch:
    f = node.fields(
        "destination_port",
        "prefix_ranges",
        "server_names",
        "transport_protocol",
        "application_protocols",
    )
    return FilterChainMatch(
        destination_port=f.opt("destination_port", lambda n: n.integer(1, 65535), None),
        prefix_ranges=tuple(cidr_range(n) for n in f.list("prefix_ranges")),
        server_names=tuple(n.string() for n in f.list("server_names")),
        transport_protocol=f.opt("transport_protocol", lambda n: n.enum(["raw_buffer", "tls"]), ""),
        application_protocols=tuple(n.string() for n in f.list("application_protocols")),
    )


def filter_chain(node: Node, default_name: str) -> FilterChain:
    f = node.fields("name", "filter_chain_match", "filters", "transport_socket")
    filters_node = f.require("filters")
    filters = tuple(network_filter(n) for n in filters_node.items())
    if not filters:
        filters_node.fail("expected at least one network filter")
    match = f.get("filter_chain_match")
    name = f.get("name")
    return FilterChain(
        name=name.string() if name is not None else default_name,
        filters=filters,
        filter_chain_match=filter_chain_match(match) if match is not None else FilterChainMatch(),
        transport_socket=f.opt("transport_socket", transport_socket, None),
    )


def listener_filter(node: Node) -> ListenerFilter:
    f = node.fields("name", "typed_config")
    tc = f.get("typed_config")
    if tc is not None:
        type_name = tc.type_url()
        known = LISTENER_FILTER_TYPES.get(type_name)
        if known is None:
            tc.fail(f"unsupported listener filter type {type_name!r}")
        return known
    name = f.require("name").string()
    if name not in LISTENER_FILTER_NAMES:
        node.fail(f"unsupported listener filter {name!r}")
    return LISTENER_FILTER_NAMES[name]


def listener(node: Node, index: int) -> Listener:
    f = node.fields(
        "name",
        "address",
        "filter_chains",
        "default_filter_chain",
        "use_original_dst",
        "bind_to_port",
        "listener_filters",
        "traffic_direction",
        "per_connection_buffer_limit_bytes",
        "continue_on_listener_filters_timeout",
        "listener_filters_timeout",
        "additional_addresses",
        "transparent",
        "freebind",
    )
    address = socket_address(f.require("address"))
    additional = tuple(
        socket_address(n.fields("address").require("address")) for n in f.list("additional_addresses")
    )
    name_node = f.get("name")
    name = name_node.string() if name_node is not None else address.listener_name
    chains = tuple(filter_chain(n, f"{name}-chain-{i}") for i, n in enumerate(f.list("filter_chains")))
    default = f.get("default_filter_chain")
    default_chain = filter_chain(default, f"{name}-default") if default is not None else None
    if not chains and default_chain is None:
        node.fail("expected at least one of 'filter_chains' or 'default_filter_chain'")
    return Listener(
        name=name,
        address=address,
        filter_chains=chains,
        default_filter_chain=default_chain,
        additional_addresses=additional,
        use_original_dst=f.opt("use_original_dst", Node.boolean, False),
        bind_to_port=f.opt("bind_to_port", Node.boolean, True),
        listener_filters=tuple(listener_filter(n) for n in f.list("listener_filters")),
        traffic_direction=f.opt(
            "traffic_direction",
            lambda n: TrafficDirection(n.enum([d.value for d in TrafficDirection])),
            TrafficDirection.UNSPECIFIED,
        ),
        per_connection_buffer_limit_bytes=f.opt(
            "per_connection_buffer_limit_bytes",
            lambda n: n.integer(1024),
            DEFAULT_BUFFER_LIMIT,
        ),
        transparent=f.opt("transparent", Node.boolean, False),
        freebind=f.opt("freebind", Node.boolean, False),
        listener_filters_timeout=f.opt("listener_filters_timeout", Node.duration, DEFAULT_LISTENER_FILTERS_TIMEOUT),
        continue_on_listener_filters_timeout=f.opt("continue_on_listener_filters_timeout", Node.boolean, False),
    )


# -- clusters --------------------------------------------------------------------------------


def load_assignment(node: Node) -> tuple[LbEndpoint, ...]:
    f = node.fields("cluster_name", "endpoints")
    f.require("cluster_name").nonempty()  # Envoy's ClusterLoadAssignment: min_len 1
    out: list[LbEndpoint] = []
    for locality in f.list("endpoints"):
        lf = locality.fields("lb_endpoints", "locality", "load_balancing_weight", "priority")
        if lf.opt("priority", _count, 0) != 0:
            lf.require("priority").fail("priority levels are not supported: every endpoint is priority 0")
        # Envoy itself ignores locality weights unless common_lb_config has
        # locality_weighted_lb_config, which is refused there: accepting them changes nothing.
        lf.opt("load_balancing_weight", lambda n: n.integer(1), 1)
        for lb in lf.list("lb_endpoints"):
            ef = lb.fields("endpoint", "load_balancing_weight")
            ep = ef.require("endpoint").fields("address", "hostname")
            weight = ef.get("load_balancing_weight")
            out.append(
                LbEndpoint(
                    socket_address(ep.require("address")),
                    weight.integer(1) if weight is not None else 1,
                )
            )
    return tuple(out)


def circuit_breakers(node: Node) -> CircuitBreakers:
    """circuit_breakers.thresholds: the DEFAULT priority's limits (HIGH is accepted and unused:
    every route here is default priority)."""
    default = CircuitBreakers()
    found = default
    for t in node.fields("thresholds", "per_host_thresholds").list("thresholds"):
        tf = t.fields(
            "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries",
            "track_remaining", "max_connection_pools", "retry_budget",
        )  # fmt: skip
        if (rb := tf.get("retry_budget")) is not None:
            rb.fail("retry_budget is not supported; use max_retries")
        tf.opt("track_remaining", Node.boolean, False)
        tf.opt("max_connection_pools", _count, 0)
        limits = CircuitBreakers(
            max_connections=tf.opt("max_connections", _count, default.max_connections),
            max_pending_requests=tf.opt("max_pending_requests", _count, default.max_pending_requests),
            max_requests=tf.opt("max_requests", _count, default.max_requests),
            max_retries=tf.opt("max_retries", _count, default.max_retries),
        )
        if tf.opt("priority", lambda n: n.enum(["DEFAULT", "HIGH"]), "DEFAULT") == "DEFAULT":
            found = limits
    return found


def _dns_refresh_rate(n: Node) -> float:
    rate = n.duration()
    if rate <= 0.001:  # Envoy's validation: gt 1ms
        n.fail(f"expected a duration above 1ms (Envoy's validation), got {n.value!r}")
    return rate


def _count(n: Node) -> int:
    return n.integer(0)


def _percent(n: Node) -> int:
    return n.integer(0, 100)


def outlier_detection(node: Node) -> OutlierDetection:
    d = OutlierDetection()
    f = node.fields(
        "consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_5xx",
        "enforcing_consecutive_gateway_failure", "interval", "base_ejection_time",
        "max_ejection_time", "max_ejection_percent", "enforcing_success_rate",
        "split_external_local_origin_errors", "enforcing_local_origin_success_rate",
        "success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor",
    )  # fmt: skip
    if f.opt("split_external_local_origin_errors", Node.boolean, False):
        f.require("split_external_local_origin_errors").fail("split_external_local_origin_errors is not supported")
    for rate in ("enforcing_success_rate", "enforcing_local_origin_success_rate"):
        # Success-rate ejection is not implemented: accepted only when switched off (as Istio does).
        if f.opt(rate, _percent, 0) != 0:
            f.require(rate).fail(f"{rate} above 0 (success-rate ejection) is not supported; set it to 0")
    for ignored in ("success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor"):
        f.opt(ignored, _count, 0)
    return OutlierDetection(
        consecutive_5xx=f.opt("consecutive_5xx", _count, d.consecutive_5xx),
        consecutive_gateway_failure=f.opt("consecutive_gateway_failure", _count, d.consecutive_gateway_failure),
        enforcing_consecutive_5xx=f.opt("enforcing_consecutive_5xx", _percent, d.enforcing_consecutive_5xx),
        enforcing_consecutive_gateway_failure=f.opt(
            "enforcing_consecutive_gateway_failure", _percent, d.enforcing_consecutive_gateway_failure
        ),
        interval=f.opt("interval", Node.positive_duration, d.interval),
        base_ejection_time=f.opt("base_ejection_time", Node.positive_duration, d.base_ejection_time),
        max_ejection_time=f.opt("max_ejection_time", Node.positive_duration, d.max_ejection_time),
        max_ejection_percent=f.opt("max_ejection_percent", _percent, d.max_ejection_percent),
    )


def panic_threshold(node: Node) -> float:
    """common_lb_config.healthy_panic_threshold (a Percent: {value: N})."""
    found = node.fields("healthy_panic_threshold").get("healthy_panic_threshold")
    if found is None:
        return DEFAULT_PANIC_THRESHOLD
    v = found.fields("value").require("value")
    if isinstance(v.value, bool) or not isinstance(v.value, int | float) or not 0 <= v.value <= 100:
        v.fail("expected a percentage between 0 and 100")
    return float(v.value)


def cluster(node: Node) -> Cluster:
    f = node.fields(
        "name",
        "type",
        "connect_timeout",
        "lb_policy",
        "load_assignment",
        "upstream_bind_config",
        "dns_refresh_rate",
        "dns_lookup_family",
        "alt_stat_name",
        "circuit_breakers",
        "outlier_detection",
        "common_lb_config",
        "typed_extension_protocol_options",
        "http2_protocol_options",
    )
    name = f.require("name").nonempty()
    ctype = f.opt("type", lambda n: ClusterType(n.enum([t.value for t in ClusterType])), ClusterType.STATIC)
    lb = f.get("lb_policy")
    policy = LbPolicy(lb.enum([p.value for p in LbPolicy])) if lb is not None else LbPolicy.ROUND_ROBIN
    if ctype is ClusterType.ORIGINAL_DST:
        if lb is not None and policy not in (LbPolicy.CLUSTER_PROVIDED,):
            lb.fail("an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED")
        policy = LbPolicy.CLUSTER_PROVIDED
    elif policy is LbPolicy.CLUSTER_PROVIDED:
        node.fail("lb_policy CLUSTER_PROVIDED is only for ORIGINAL_DST clusters")
    la = f.get("load_assignment")
    endpoints = load_assignment(la) if la is not None else ()
    if ctype is ClusterType.ORIGINAL_DST and endpoints:
        node.fail("an ORIGINAL_DST cluster takes no load_assignment")
    if ctype is ClusterType.LOGICAL_DNS and len(endpoints) > 1:
        node.fail("a LOGICAL_DNS cluster takes exactly one endpoint")
    if ctype is ClusterType.STATIC:
        for i, ep in enumerate(endpoints):
            try:
                ipaddress.ip_address(ep.address.address)
            except ValueError:
                node.child("load_assignment", None).fail(
                    f"endpoint {i}: a STATIC cluster needs IP addresses, got {ep.address.address!r}"
                    " (use STRICT_DNS or LOGICAL_DNS for names)"
                )
    bind: tuple[str, ...] = ()
    if (ub := f.get("upstream_bind_config")) is not None:
        uf = ub.fields("source_address", "extra_source_addresses")
        addrs = [uf.require("source_address")]
        for extra in uf.list("extra_source_addresses"):
            addrs.append(extra.fields("address").require("address"))
        for a in addrs:
            af = a.fields("address", "port_value", "protocol")
            if af.opt("port_value", lambda n: n.integer(0, 65535), 0) != 0:
                af.require("port_value").fail("a fixed source port is not supported; use 0 (any port)")
            if (proto := af.get("protocol")) is not None:
                proto.enum(["TCP"])
            bind += (af.require("address").string(),)
    http = cluster_http_options(f.get("typed_extension_protocol_options"), f.get("http2_protocol_options"))
    connect = f.get("connect_timeout")
    refresh = f.get("dns_refresh_rate")
    alt = f.get("alt_stat_name")
    return Cluster(
        name=name,
        type=ctype,
        # Plain Envoy's default connect_timeout is 5 s; Istio's sidecar always sets it.
        connect_timeout=connect.positive_duration() if connect is not None else 5.0,
        lb_policy=policy,
        endpoints=endpoints,
        upstream_bind_addresses=bind,
        dns_refresh_rate=_dns_refresh_rate(refresh) if refresh is not None else 5.0,
        dns_lookup_family=f.opt(
            "dns_lookup_family",
            lambda n: DnsLookupFamily(n.enum([d.value for d in DnsLookupFamily])),
            DnsLookupFamily.AUTO,
        ),
        alt_stat_name=alt.string() if alt is not None else None,
        circuit_breakers=f.opt("circuit_breakers", circuit_breakers, CircuitBreakers()),
        outlier_detection=f.opt("outlier_detection", outlier_detection, None),
        healthy_panic_threshold=f.opt("common_lb_config", panic_threshold, DEFAULT_PANIC_THRESHOLD),
        http_idle_timeout=http.http_idle_timeout,
        max_requests_per_connection=http.max_requests_per_connection,
        max_connection_duration=http.max_connection_duration,
        upstream_http_protocol=http.upstream_http_protocol,
        http2_options=http.http2_options,
    )


# -- bootstrap -------------------------------------------------------------------------------


def admin(node: Node) -> Admin:
    f = node.fields("address", "access_log_path", "access_log", "profile_path")
    f.list("access_log")
    path = f.get("access_log_path")
    return Admin(
        address=socket_address(f.require("address")),
        access_log_path=path.string() if path is not None else None,
    )


def bootstrap(root: Node) -> Bootstrap:
    f = root.fields("static_resources", "admin", "node")
    node_id = node_cluster = ""
    if (node_info := f.get("node")) is not None:
        nf = node_info.fields("id", "cluster", "metadata", "locality")
        node_id, node_cluster = nf.opt("id", Node.string, ""), nf.opt("cluster", Node.string, "")
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    if (static := f.get("static_resources")) is not None:
        sf = static.fields("listeners", "clusters")
        listeners = [listener(n, i) for i, n in enumerate(sf.list("listeners"))]
        clusters = [cluster(n) for n in sf.list("clusters")]
    adm = f.get("admin")
    result = Bootstrap(
        listeners=tuple(listeners),
        clusters=tuple(clusters),
        admin=admin(adm) if adm is not None else None,
        sources=(root.file,),
        node_id=node_id,
        node_cluster=node_cluster,
    )
    check_references(result, root)
    for check in BOOTSTRAP_CHECKS:
        check(result, root)
    return result


def check_references(b: Bootstrap, root: Node) -> None:
    """Names unique, bound addresses unique: what Envoy refuses at load."""
    seen: dict[str, str] = {}
    bound: dict[tuple[str, int], str] = {}
    for i, lis in enumerate(b.listeners):
        where = root.child("static_resources", None).child("listeners", None).child(i, None)
        if lis.name in seen:
            where.fail(f"duplicate listener name {lis.name!r}")
        seen[lis.name] = lis.name
        if not lis.bind_to_port:
            continue
        for addr in (lis.address, *lis.additional_addresses):
            key = (addr.address, addr.port)
            if key in bound:
                where.fail(f"address {addr} is already bound by listener {bound[key]!r}")
            bound[key] = lis.name
    names: set[str] = set()
    for i, c in enumerate(b.clusters):
        if c.name in names:
            root.child("static_resources", None).child("clusters", None).child(i, None).fail(
                f"duplicate cluster name {c.name!r}"
            )
        names.add(c.name)


# Checks other modules add (the HTTP connection manager's validate_clusters), run after
# check_references on every loaded bootstrap.


def load_file(path: str) -> Bootstrap:
    docs = load_documents(path)
    if len(docs) != 1:
        raise ConfigError(path, "", f"expected one YAML document (an Envoy bootstrap), got {len(docs)}")
    return bootstrap(docs[0])

