"""The model in Envoy's own JSON shape (proto field names), for export and for /config_dump.

Promises:
- Pure functions from model objects to the dicts Envoy's v3 API reads and its admin writes:
  `listener`, `cluster`, `route_configuration` and what they are made of. Real Envoy accepts
  what they produce (`envoy --mode validate` in the tests) and behaves as pysidecar does on it.
- One renderer per message, shared by `pysidecar envoy-config` (config/export.py) and the
  admin's /config_dump (observe/config_dump.py), so the two can never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from pysidecar.common.access_format import ISTIO_JSON_FIELDS, ISTIO_TEXT_FORMAT
from pysidecar.common.envoy_json_rbac import http_rbac, network_rbac
from pysidecar.common.envoy_json_tls import cluster_tls, endpoint_metadata
from pysidecar.model import (
    DEFAULT_LISTENER_FILTERS_TIMEOUT,
    DEFAULT_PANIC_THRESHOLD,
    DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT,
    AccessLogConfig,
    Bootstrap,
    CircuitBreakers,
    Cluster,
    ClusterType,
    DnsLookupFamily,
    FilterChain,
    FilterChainMatch,
    LbEndpoint,
    Listener,
    NetworkFilter,
    SocketAddress,
    TcpProxy,
    UpstreamHttpProtocol,
)
from pysidecar.model.http import (
    FaultInjection,
    HeaderMatcher,
    HeaderMutations,
    Http2Options,
    HttpConnectionManager,
    HttpFilter,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteConfiguration,
    RouteMatch,
    Tracing,
    VirtualHost,
)
from pysidecar.model.tls import (
    DOWNSTREAM_TLS_CONTEXT,
    TLS_TRANSPORT_SOCKET,
    DataSource,
    DownstreamTlsContext,
)

T = "type.googleapis.com/"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
LUA = "envoy.extensions.filters.http.lua.v3.Lua"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PREVIOUS_HOSTS = T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
LISTENER_FILTER_TYPES = {
    "envoy.filters.listener.original_dst": T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.filters.listener.tls_inspector": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.filters.listener.http_inspector": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
}

def socket_address(a: SocketAddress) -> dict[str, Any]:
    return {"socket_address": {"address": a.address, "port_value": a.port}}



def filter_chain_match(m: FilterChainMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.destination_port is not None:
        out["destination_port"] = m.destination_port
    if m.prefix_ranges:
        out["prefix_ranges"] = [{"address_prefix": r.address_prefix, "prefix_len": r.prefix_len} for r in m.prefix_ranges]
    if m.server_names:
        out["server_names"] = list(m.server_names)
    if m.transport_protocol:
        out["transport_protocol"] = m.transport_protocol
    if m.application_protocols:
        out["application_protocols"] = list(m.application_protocols)
    return out



def duration(seconds: float) -> str:
    """protobuf's canonical JSON Duration, as Envoy's admin prints it: `10s`, `0.250s`."""
    whole, nanos = divmod(round(seconds * 1e9), 10**9)
    if nanos == 0:
        return f"{whole}s"
    if nanos % 10**6 == 0:
        return f"{whole}.{nanos // 10**6:03d}s"
    if nanos % 10**3 == 0:
        return f"{whole}.{nanos // 10**3:06d}s"
    return f"{whole}.{nanos:09d}s"


# -- routes ----------------------------------------------------------------------------------


def _string_match(exact: str | None, prefix: str | None, regex: str | None, suffix: str | None = None, contains: str | None = None) -> dict[str, Any]:
    for key, value in (("exact", exact), ("prefix", prefix), ("suffix", suffix), ("contains", contains)):
        if value is not None:
            return {key: value}
    return {"safe_regex": {"regex": regex}} if regex is not None else {}


def header_matcher(h: HeaderMatcher) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name}
    if h.present_match is not None:
        out["present_match"] = h.present_match
    else:
        out["string_match"] = _string_match(h.exact, h.prefix, h.safe_regex, h.suffix, h.contains)
    if h.invert_match:
        out["invert_match"] = True
    return out


def query_matcher(q: QueryParameterMatcher) -> dict[str, Any]:
    if q.present_match is not None:
        return {"name": q.name, "present_match": q.present_match}
    return {"name": q.name, "string_match": _string_match(q.exact, q.prefix, q.safe_regex)}


def route_match(m: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.path is not None:
        out["path"] = m.path
    elif m.safe_regex is not None:
        out["safe_regex"] = {"regex": m.safe_regex}
    elif m.path_separated_prefix is not None:
        out["path_separated_prefix"] = m.path_separated_prefix
    else:
        out["prefix"] = m.prefix if m.prefix is not None else "/"
    if not m.case_sensitive:
        out["case_sensitive"] = False
    if m.headers:
        out["headers"] = [header_matcher(h) for h in m.headers]
    if m.query_parameters:
        out["query_parameters"] = [query_matcher(q) for q in m.query_parameters]
    return out


def mutations(m: HeaderMutations) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, adds in (("request_headers_to_add", m.request_headers_to_add), ("response_headers_to_add", m.response_headers_to_add)):
        if adds:
            out[key] = [{"header": {"key": h.key, "value": h.value}, "append_action": h.append_action.value} for h in adds]
    if m.request_headers_to_remove:
        out["request_headers_to_remove"] = list(m.request_headers_to_remove)
    if m.response_headers_to_remove:
        out["response_headers_to_remove"] = list(m.response_headers_to_remove)
    return out


def retry_policy(r: RetryPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {
        "retry_on": ",".join(r.retry_on),
        "num_retries": r.num_retries,
        "host_selection_retry_max_attempts": r.host_selection_max_attempts,
        "retry_back_off": {"base_interval": duration(r.base_interval), "max_interval": duration(r.max_backoff)},
    }
    if r.previous_hosts:  # Istio always sets it: never retry on the host that just failed
        out["retry_host_predicate"] = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": PREVIOUS_HOSTS}}]
    if r.per_try_timeout:
        out["per_try_timeout"] = duration(r.per_try_timeout)
    if r.retriable_status_codes:
        out["retriable_status_codes"] = list(r.retriable_status_codes)
    return out


def _percent(value: float) -> dict[str, Any]:
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def fault(f: FaultInjection) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": FAULT}
    if f.delay is not None:
        out["delay"] = {"fixed_delay": duration(f.delay), "percentage": _percent(f.delay_percent)}
    if f.abort_status is not None:
        out["abort"] = {"http_status": f.abort_status, "percentage": _percent(f.abort_percent)}
    return out


def route(r: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"match": route_match(r.match)}
    if r.name:
        out["name"] = r.name
    if r.route is not None:
        a = r.route
        action: dict[str, Any] = {"timeout": duration(a.timeout)}
        if a.cluster is not None:
            action["cluster"] = a.cluster
        else:
            action["weighted_clusters"] = {
                "clusters": [{"name": w.name, "weight": w.weight, **mutations(w.mutations)} for w in a.weighted_clusters]
            }
        if a.idle_timeout is not None:
            action["idle_timeout"] = duration(a.idle_timeout)
        msd: dict[str, Any] = {}
        if a.max_stream_duration:
            msd["max_stream_duration"] = duration(a.max_stream_duration)
        if a.grpc_timeout_header_max is not None:
            msd["grpc_timeout_header_max"] = duration(a.grpc_timeout_header_max)
        if msd:
            action["max_stream_duration"] = msd
        if a.retry_policy is not None:
            action["retry_policy"] = retry_policy(a.retry_policy)
        if a.prefix_rewrite is not None:
            action["prefix_rewrite"] = a.prefix_rewrite
        if a.regex_rewrite is not None:
            action["regex_rewrite"] = {"pattern": {"regex": a.regex_rewrite.pattern}, "substitution": a.regex_rewrite.substitution}
        if a.host_rewrite_literal is not None:
            action["host_rewrite_literal"] = a.host_rewrite_literal
        if a.cluster_not_found_response_code != 503:
            action["cluster_not_found_response_code"] = "NOT_FOUND" if a.cluster_not_found_response_code == 404 else "INTERNAL_SERVER_ERROR"
        out["route"] = action
    elif r.redirect is not None:
        rd = r.redirect
        red: dict[str, Any] = {}
        for key, value in (("host_redirect", rd.host_redirect), ("path_redirect", rd.path_redirect), ("scheme_redirect", rd.scheme_redirect)):
            if value:
                red[key] = value
        if rd.port_redirect:
            red["port_redirect"] = rd.port_redirect
        if rd.https_redirect:
            red["https_redirect"] = True
        if rd.prefix_rewrite is not None:
            red["prefix_rewrite"] = rd.prefix_rewrite
        if rd.strip_query:
            red["strip_query"] = True
        red["response_code"] = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}[rd.response_code]
        out["redirect"] = red
    elif r.direct_response is not None:
        dr: dict[str, Any] = {"status": r.direct_response.status}
        if r.direct_response.body:
            dr["body"] = {"inline_string": r.direct_response.body}
        out["direct_response"] = dr
    if r.decorator is not None:
        out["decorator"] = {"operation": r.decorator.operation}
    if r.fault is not None:
        out["typed_per_filter_config"] = {"envoy.filters.http.fault": fault(r.fault)}
    if r.istio_config is not None:
        out["metadata"] = {"filter_metadata": {"istio": {"config": r.istio_config}}}
    out.update(mutations(r.mutations))
    return out


def virtual_host(v: VirtualHost) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name, "domains": list(v.domains), "routes": [route(r) for r in v.routes]}
    if v.retry_policy is not None:
        out["retry_policy"] = retry_policy(v.retry_policy)
    if v.include_request_attempt_count:
        out["include_request_attempt_count"] = True
    if v.require_tls:
        out["require_tls"] = "ALL"
    out.update(mutations(v.mutations))
    return out


def route_configuration(rc: RouteConfiguration) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": rc.name,
        "virtual_hosts": [virtual_host(v) for v in rc.virtual_hosts],
        "validate_clusters": rc.validate_clusters,
    }
    if rc.ignore_port_in_host_matching:
        out["ignore_port_in_host_matching"] = True
    out.update(mutations(rc.mutations))
    return out


def http_filter(f: HttpFilter) -> dict[str, Any]:
    if f.rbac is not None:
        return {"name": f.name, "typed_config": http_rbac(f.rbac)}
    if f.type_url == LUA and f.lua is not None:
        config: dict[str, Any] = {"@type": T + LUA}
        if f.lua.code:
            config["default_source_code"] = {"inline_string": f.lua.code}
        if f.lua.source_codes:
            config["source_codes"] = {name: {"inline_string": code} for name, code in f.lua.source_codes}
        return {"name": f.name, "typed_config": config}
    return {"name": f.name, "typed_config": {"@type": T + f.type_url}}


def tracing(t: Tracing) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (("client_sampling", t.client_sampling), ("random_sampling", t.random_sampling),
                        ("overall_sampling", t.overall_sampling)):  # fmt: skip
        if value != 100.0:
            out[name] = {"value": value}
    if t.custom_tags:
        out["custom_tags"] = [{"tag": k, "literal": {"value": v}} for k, v in t.custom_tags]
    if t.max_path_tag_length != 256:
        out["max_path_tag_length"] = t.max_path_tag_length
    if (z := t.provider) is not None:
        config: dict[str, Any] = {
            "@type": T + "envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": z.collector_cluster,
            "collector_endpoint": z.collector_endpoint,
            "collector_endpoint_version": "HTTP_JSON",
            "trace_id_128bit": z.trace_id_128bit,
            "shared_span_context": z.shared_span_context,
        }
        if z.collector_hostname:
            config["collector_hostname"] = z.collector_hostname
        out["provider"] = {"name": "envoy.tracers.zipkin", "typed_config": config}
    return out


def _http2_options(h: HttpConnectionManager) -> dict[str, Any]:
    return {} if h.http2 is None else {"http2_protocol_options": _h2(h.http2)}


def http_connection_manager(h: HttpConnectionManager) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": h.stat_prefix,
        "codec_type": h.codec_type.value,
        "route_config": route_configuration(h.route_config),
        "http_filters": [http_filter(f) for f in h.http_filters] or [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "server_name": h.server_name,
        "request_headers_timeout": duration(h.request_headers_timeout),
        "stream_idle_timeout": duration(h.stream_idle_timeout),
        "common_http_protocol_options": {
            "idle_timeout": duration(h.idle_timeout),
            "max_headers_count": h.max_headers_count,
            "headers_with_underscores_action": h.headers_with_underscores_action,
        },
        "max_request_headers_kb": h.max_request_headers_kb,
        "http_protocol_options": {"accept_http_10": h.accept_http_10},
        **_http2_options(h),
        "delayed_close_timeout": duration(h.delayed_close_timeout),
        "proxy_100_continue": h.proxy_100_continue,
    }
    if h.tracing is not None:
        out["tracing"] = tracing(h.tracing)
    if h.upgrade_types:
        out["upgrade_configs"] = [{"upgrade_type": u} for u in h.upgrade_types]
    if h.access_log:
        out["access_log"] = [access_log(a) for a in h.access_log]
    if h.use_remote_address:
        out["use_remote_address"] = True
    if h.forward_client_cert_details != "SANITIZE":
        out["forward_client_cert_details"] = h.forward_client_cert_details
    if h.set_current_client_cert_details:
        out["set_current_client_cert_details"] = {d: True for d in h.set_current_client_cert_details}
    return out


FILE_ACCESS_LOG = T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"


def access_log(a: AccessLogConfig) -> dict[str, Any]:
    cfg: dict[str, Any] = {"@type": FILE_ACCESS_LOG, "path": a.path}
    if a.encoding == "JSON":
        # Without a format, Istio's JSON keys; Envoy needs them spelled out.
        fields = json.loads(a.format) if a.format else ISTIO_JSON_FIELDS
        cfg["log_format"] = {"json_format": fields}
    elif a.format:
        # pysidecar ends every text line with a newline; Envoy writes only what the format says.
        text = a.format if a.format.endswith("\n") else a.format + "\n"
        cfg["log_format"] = {"text_format_source": {"inline_string": text}}
    else:
        cfg["log_format"] = {"text_format_source": {"inline_string": ISTIO_TEXT_FORMAT}}
    return {"name": "envoy.access_loggers.file", "typed_config": cfg}


# -- listeners and clusters ------------------------------------------------------------------


def network_filter(f: NetworkFilter) -> dict[str, Any]:
    if isinstance(f, TcpProxy):
        cfg: dict[str, Any] = {"@type": TCP_PROXY, "stat_prefix": f.stat_prefix, "idle_timeout": duration(f.idle_timeout)}
        if f.cluster is not None:
            cfg["cluster"] = f.cluster
        else:
            cfg["weighted_clusters"] = {"clusters": [{"name": w.name, "weight": w.weight} for w in f.weighted_clusters]}
        if f.access_log:
            cfg["access_log"] = [access_log(a) for a in f.access_log]
        return {"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": http_connection_manager(f)}


DOWNSTREAM_TLS = T + DOWNSTREAM_TLS_CONTEXT
# What Envoy's admin prints in place of a private key (and what /config_dump shows here).
REDACTED = "[redacted]"


def data_source(d: DataSource, redact: bool = False) -> dict[str, Any]:
    if d.filename is not None:
        return {"filename": d.filename}
    return {"inline_string": REDACTED if redact else d.inline_string}


def transport_socket(t: DownstreamTlsContext, redact: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificates": [
            {"certificate_chain": data_source(c.certificate_chain), "private_key": data_source(c.private_key, redact)}
            for c in t.tls_certificates
        ]
    }
    if t.trusted_ca is not None:
        common["validation_context"] = {"trusted_ca": data_source(t.trusted_ca)}
    if t.alpn_protocols:
        common["alpn_protocols"] = list(t.alpn_protocols)
    cfg: dict[str, Any] = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if t.require_client_certificate:
        cfg["require_client_certificate"] = True
    return {"name": TLS_TRANSPORT_SOCKET, "typed_config": cfg}


def filter_chain(c: FilterChain, redact: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "filters": [*map(network_rbac, c.rbac), *(network_filter(f) for f in c.filters)]}
    if match := filter_chain_match(c.filter_chain_match):
        out["filter_chain_match"] = match
    if c.transport_socket is not None:
        out["transport_socket"] = transport_socket(c.transport_socket, redact)
    return out


def listener(lis: Listener, redact: bool = False) -> dict[str, Any]:
    """`redact`: private keys given inline are left out, as Envoy's admin leaves them out."""
    out: dict[str, Any] = {
        "name": lis.name,
        "address": socket_address(lis.address),
        "filter_chains": [filter_chain(c, redact) for c in lis.filter_chains],
        "traffic_direction": lis.traffic_direction.value,
        "per_connection_buffer_limit_bytes": lis.per_connection_buffer_limit_bytes,
    }
    if lis.additional_addresses:
        out["additional_addresses"] = [{"address": socket_address(a)} for a in lis.additional_addresses]
    if lis.default_filter_chain is not None:
        out["default_filter_chain"] = filter_chain(lis.default_filter_chain, redact)
    if lis.use_original_dst:
        out["use_original_dst"] = True
    if not lis.bind_to_port:
        out["bind_to_port"] = False
    if lis.transparent:
        out["transparent"] = True
    if lis.freebind:
        out["freebind"] = True
    if lis.listener_filters:
        out["listener_filters"] = [
            {"name": f.value, "typed_config": {"@type": LISTENER_FILTER_TYPES[f.value]}} for f in lis.listener_filters
        ]
    if lis.listener_filters_timeout != DEFAULT_LISTENER_FILTERS_TIMEOUT:
        out["listener_filters_timeout"] = duration(lis.listener_filters_timeout)
    if lis.continue_on_listener_filters_timeout:
        out["continue_on_listener_filters_timeout"] = True
    return out


def _h2(o: Http2Options) -> dict[str, Any]:
    fields = {
        "max_concurrent_streams": o.max_concurrent_streams,
        "initial_stream_window_size": o.initial_stream_window_size,
        "initial_connection_window_size": o.initial_connection_window_size,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _http_protocol_options(c: Cluster) -> dict[str, Any] | None:
    """The cluster's HttpProtocolOptions as istiod writes them: present when the upstream is
    not plain HTTP/1.1 or a common option differs from Envoy's default."""
    common: dict[str, Any] = {}
    if c.http_idle_timeout != DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT:
        common["idle_timeout"] = duration(c.http_idle_timeout)
    if c.max_requests_per_connection:
        common["max_requests_per_connection"] = c.max_requests_per_connection
    if c.max_connection_duration:
        common["max_connection_duration"] = duration(c.max_connection_duration)
    kind = c.upstream_http_protocol
    if not common and kind is UpstreamHttpProtocol.HTTP1:
        return None
    out: dict[str, Any] = {"@type": T + HTTP_PROTOCOL_OPTIONS}
    if common:
        out["common_http_protocol_options"] = common
    if kind is UpstreamHttpProtocol.USE_DOWNSTREAM:
        out["use_downstream_protocol_config"] = {"http_protocol_options": {}, "http2_protocol_options": _h2(c.http2_options)}
    elif kind is UpstreamHttpProtocol.HTTP2:
        out["explicit_http_config"] = {"http2_protocol_options": _h2(c.http2_options)}
    else:
        out["explicit_http_config"] = {"http_protocol_options": {}}
    return out


def cluster(c: Cluster) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": c.name,
        "type": c.type.value,
        "connect_timeout": duration(c.connect_timeout),
        "lb_policy": c.lb_policy.value,
    }
    if c.type is not ClusterType.ORIGINAL_DST:
        out["load_assignment"] = {
            "cluster_name": c.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address(e.address)}, "load_balancing_weight": e.load_balancing_weight}
                        | endpoint_metadata(e)
                        for e in c.endpoints
                    ]
                }
            ]
            if c.endpoints
            else [],
        }
    dns = c.type in (ClusterType.STRICT_DNS, ClusterType.LOGICAL_DNS)
    if dns:
        out["dns_refresh_rate"] = duration(c.dns_refresh_rate)
    if dns or c.dns_lookup_family is not DnsLookupFamily.AUTO:
        out["dns_lookup_family"] = c.dns_lookup_family.value
    if c.upstream_bind_addresses:
        first, *extra = c.upstream_bind_addresses
        bind: dict[str, Any] = {"source_address": {"address": first, "port_value": 0}}
        if extra:
            bind["extra_source_addresses"] = [{"address": {"address": a, "port_value": 0}} for a in extra]
        out["upstream_bind_config"] = bind
    if c.alt_stat_name:
        out["alt_stat_name"] = c.alt_stat_name
    out |= cluster_tls(c)
    if c.circuit_breakers != CircuitBreakers():
        cb = c.circuit_breakers
        limits = {"max_connections": cb.max_connections, "max_pending_requests": cb.max_pending_requests}
        limits |= {"max_requests": cb.max_requests, "max_retries": cb.max_retries}
        out["circuit_breakers"] = {"thresholds": [limits]}
    if c.outlier_detection is not None:
        od = c.outlier_detection
        out["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_5xx,
            "consecutive_gateway_failure": od.consecutive_gateway_failure,
            "enforcing_consecutive_5xx": od.enforcing_consecutive_5xx,
            "enforcing_consecutive_gateway_failure": od.enforcing_consecutive_gateway_failure,
            "interval": duration(od.interval),
            "base_ejection_time": duration(od.base_ejection_time),
            "max_ejection_time": duration(od.max_ejection_time),
            "max_ejection_percent": od.max_ejection_percent,
            # Only consecutive-error ejection is modelled; Envoy's success-rate kind stays off.
            "enforcing_success_rate": 0,
        }
    if c.healthy_panic_threshold != DEFAULT_PANIC_THRESHOLD:
        out["common_lb_config"] = {"healthy_panic_threshold": {"value": c.healthy_panic_threshold}}
    if (http := _http_protocol_options(c)) is not None:
        out["typed_extension_protocol_options"] = {HTTP_PROTOCOL_OPTIONS: http}
    return out


# -- the sidecar's own ports, as Istio's bootstrap serves them -----------------------------------

# Istio's bootstrap name for the admin-backed cluster behind :15090 (and here :15021 too).
STATS_CLUSTER = "prometheus_stats"


def _admin_listener(name: str, at: SocketAddress, prefix: str, rewrite: str | None) -> dict[str, Any]:
    """A listener answering one path from Envoy's admin, as Istio's bootstrap does for :15090."""
    action: dict[str, Any] = {"cluster": STATS_CLUSTER}
    if rewrite is not None:
        action["prefix_rewrite"] = rewrite
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [{"match": {"prefix": prefix}, "route": action}]}]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": name,
        "address": socket_address(at),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def admin_port_resources(b: Bootstrap) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The listeners for :15090 (/stats/prometheus) and :15021 (/healthz/ready, onto the
    admin's /ready) and their admin cluster: what pysidecar's main process serves on those
    ports, written as Istio's bootstrap gives them to Envoy (export) and as its dump shows them
    (`istioctl proxy-config listeners`: `Inline Route: /healthz/ready*`)."""
    if b.admin is None:
        return [], []
    listeners: list[dict[str, Any]] = []
    if b.stats_address is not None:
        listeners.append(_admin_listener("prometheus_stats_listener", b.stats_address, "/stats/prometheus", None))
    if b.readiness_address is not None:
        listeners.append(_admin_listener("readiness_listener", b.readiness_address, "/healthz/ready", "/ready"))
    if not listeners:
        return [], []
    admin_cluster = Cluster(STATS_CLUSTER, ClusterType.STATIC, 0.25, endpoints=(LbEndpoint(b.admin.address),))
    return listeners, [cluster(admin_cluster)]
