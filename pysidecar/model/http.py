"""The HTTP part of the model: envoy.filters.network.http_connection_manager and its routes.

Promises:
- Frozen dataclasses named after Envoy's v3 API messages and fields (HttpConnectionManager,
  RouteConfiguration, VirtualHost, Route, RouteMatch, RouteAction, RetryPolicy, ...), so each
  field can be looked up in Envoy's reference under the same name. No I/O.
- Defaults are plain Envoy's (route timeout 15 s, one retry when a retry_policy is present,
  backoff 25 ms / 250 ms); Istio's front end sets Istio's values explicitly.
- Regexes are kept as source text; the router compiles them once per config
  (`proxy.http.route_table`), and the front end has already checked they compile.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pysidecar.model.access_log import AccessLogConfig
from pysidecar.model.rbac import RbacFilter

# Plain Envoy's route timeout when a route does not set one (Istio always sets 0s).
DEFAULT_ROUTE_TIMEOUT = 15.0
# Envoy's retry backoff: base_interval 25 ms, max_interval 10x base.
DEFAULT_RETRY_BASE_INTERVAL = 0.025
# HCM request_headers_timeout: Envoy's default is 0 (off); a sidecar facing untrusted clients
# needs a bound on slow header senders, so ours defaults to 10 s (configurable by the field).
DEFAULT_REQUEST_HEADERS_TIMEOUT = 10.0
# max_request_headers_kb: Envoy's default 60 KiB, answered with 431 when exceeded.
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
# common_http_protocol_options.max_headers_count: Envoy's default 100 (431 past it; Host counts).
DEFAULT_MAX_HEADERS_COUNT = 100
# common_http_protocol_options.idle_timeout: Envoy's default one hour.
DEFAULT_HTTP_IDLE_TIMEOUT = 3600.0


class HeaderAppendAction(enum.Enum):
    APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
    ADD_IF_ABSENT = "ADD_IF_ABSENT"
    OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
    OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """One header to add; `key` is kept lower-case (HTTP/1 header names are case-insensitive)."""

    key: str
    value: str
    append_action: HeaderAppendAction = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """The four header lists a route, a virtual host and a route configuration each carry."""

    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.request_headers_to_add
            or self.request_headers_to_remove
            or self.response_headers_to_add
            or self.response_headers_to_remove
        )


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """config.route.v3.HeaderMatcher: exactly one of the match kinds, or present_match."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: str | None = None
    present_match: bool | None = None
    invert_match: bool = False


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    """config.route.v3.QueryParameterMatcher: one of exact / prefix / safe_regex, or present."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    safe_regex: str | None = None
    present_match: bool | None = None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Exactly one of prefix / path / safe_regex (path_separated_prefix is a prefix that must
    end at a `/` or the end of the path)."""

    prefix: str | None = None
    path: str | None = None
    safe_regex: str | None = None
    path_separated_prefix: str | None = None
    headers: tuple[HeaderMatcher, ...] = ()
    case_sensitive: bool = True
    # Added by the Istio front end (VirtualService match.queryParams); empty matches anything.
    query_parameters: tuple[QueryParameterMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: tuple[str, ...] = ()
    num_retries: int = 1
    per_try_timeout: float = 0.0
    retriable_status_codes: tuple[int, ...] = ()
    base_interval: float = DEFAULT_RETRY_BASE_INTERVAL
    max_interval: float | None = None  # None: 10x base_interval, as Envoy
    # retry_host_predicate envoy.retry_host_predicates.previous_hosts (Istio always sets it):
    # a retry picks a host not tried yet, up to host_selection_retry_max_attempts picks.
    previous_hosts: bool = False
    host_selection_max_attempts: int = 1

    @property
    def max_backoff(self) -> float:
        return self.max_interval if self.max_interval is not None else 10 * self.base_interval


# Istio's default HTTP retry policy (istiod's retry.DefaultPolicy; MeshConfig
# defaultHttpRetryPolicy replaces it).
ISTIO_DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
# istiod adds the previous_hosts predicate with 5 host selection attempts to every policy.
ISTIO_DEFAULT_RETRY = RetryPolicy(
    retry_on=ISTIO_DEFAULT_RETRY_ON, num_retries=2, previous_hosts=True, host_selection_max_attempts=5
)


@dataclass(frozen=True, slots=True)
class ClusterWeight:
    name: str
    weight: int
    mutations: HeaderMutations = field(default_factory=HeaderMutations)


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    pattern: str
    substitution: str


@dataclass(frozen=True, slots=True)
class RouteAction:
    cluster: str | None = None
    weighted_clusters: tuple[ClusterWeight, ...] = ()
    timeout: float = DEFAULT_ROUTE_TIMEOUT
    # The route's stream idle timeout; None: the connection manager's stream_idle_timeout.
    idle_timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str | None = None
    # Envoy's cluster_not_found_response_code: SERVICE_UNAVAILABLE (503) by default.
    cluster_not_found_response_code: int = 503
    # max_stream_duration: max_stream_duration (0: none) and grpc_timeout_header_max (None:
    # the grpc-timeout header is not used; 0: used uncapped; else its cap).
    max_stream_duration: float = 0.0
    grpc_timeout_header_max: float | None = None

    @property
    def cluster_names(self) -> tuple[str, ...]:
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(w.name for w in self.weighted_clusters)


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class RedirectAction:
    """config.route.v3.RedirectAction (VirtualService `redirect`); empty fields keep the
    request's value."""

    host_redirect: str = ""
    path_redirect: str = ""
    port_redirect: int = 0
    scheme_redirect: str = ""
    response_code: int = 301
    # Envoy's other RedirectAction fields (not produced by Istio, accepted from Envoy YAML).
    https_redirect: bool = False
    prefix_rewrite: str | None = None
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class FaultInjection:
    """envoy.filters.http.fault per-route config (VirtualService `fault`): a fixed delay and/or
    an abort, each applied to the given percentage of requests."""

    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Decorator:
    operation: str


@dataclass(frozen=True, slots=True)
class Route:
    match: RouteMatch
    name: str = ""
    route: RouteAction | None = None
    direct_response: DirectResponse | None = None
    decorator: Decorator | None = None
    mutations: HeaderMutations = field(default_factory=HeaderMutations)
    # Added by the Istio front end: VirtualService redirect and fault injection.
    redirect: RedirectAction | None = None
    fault: FaultInjection | None = None
    # metadata.filter_metadata.istio.config: the Istio resource a route came from
    # (`/apis/networking.istio.io/v1alpha3/namespaces/<ns>/virtual-service/<name>`);
    # istioctl's VIRTUAL SERVICE column reads it. No effect on traffic.
    istio_config: str | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    mutations: HeaderMutations = field(default_factory=HeaderMutations)
    retry_policy: RetryPolicy | None = None
    include_request_attempt_count: bool = False
    # require_tls ALL: a request that did not come over TLS gets a 301 to https (Istio's
    # Gateway httpsRedirect). Envoy's EXTERNAL_ONLY is not modelled.
    require_tls: bool = False


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str = ""
    virtual_hosts: tuple[VirtualHost, ...] = ()
    mutations: HeaderMutations = field(default_factory=HeaderMutations)
    validate_clusters: bool = True
    ignore_port_in_host_matching: bool = False


@dataclass(frozen=True, slots=True)
class Http2Options:
    """http2_protocol_options: max_concurrent_streams, initial_stream_window_size,
    initial_connection_window_size (None: not given)."""

    max_concurrent_streams: int | None = None
    initial_stream_window_size: int | None = None
    initial_connection_window_size: int | None = None


class CodecType(enum.Enum):
    AUTO = "AUTO"
    HTTP1 = "HTTP1"
    HTTP2 = "HTTP2"


@dataclass(frozen=True, slots=True)
class LuaConfig:
    """envoy.extensions.filters.http.lua.v3.Lua: the script every stream runs
    (`default_source_code`, or the deprecated `inline_code`), and the named `source_codes`."""

    code: str
    source_codes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HttpFilter:
    """An HTTP filter of the chain. `router` is always last; `lua` holds a Lua filter's scripts."""

    name: str
    type_url: str
    lua: LuaConfig | None = None
    rbac: RbacFilter | None = None  # envoy.filters.http.rbac's rules


@dataclass(frozen=True, slots=True)
class ZipkinProvider:
    """envoy.tracers.zipkin (ZipkinConfig), HTTP_JSON only: Zipkin v2 spans POSTed to a cluster."""

    collector_cluster: str
    collector_endpoint: str = "/api/v2/spans"
    trace_id_128bit: bool = False
    # Envoy's default: the server span reuses the client's span id (Istio sets false).
    shared_span_context: bool = True
    collector_hostname: str = ""


@dataclass(frozen=True, slots=True)
class Tracing:
    """The HCM's `tracing`: sampling percentages (Envoy's defaults: 100 each), literal custom
    tags, and the provider (None: decisions and x-request-id marks only, no spans)."""

    client_sampling: float = 100.0
    random_sampling: float = 100.0
    overall_sampling: float = 100.0
    custom_tags: tuple[tuple[str, str], ...] = ()
    max_path_tag_length: int = 256
    provider: ZipkinProvider | None = None


# forward_client_cert_details and set_current_client_cert_details (Envoy's enum and fields).
XFCC_MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")
XFCC_DETAILS = ("subject", "cert", "chain", "dns", "uri")


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    """envoy.filters.network.http_connection_manager."""

    stat_prefix: str
    route_config: RouteConfiguration
    codec_type: CodecType = CodecType.AUTO
    http_filters: tuple[HttpFilter, ...] = ()
    server_name: str = "envoy"
    # `tracing` present (even `{}`): enables x-envoy-decorator-operation on outbound listeners,
    # the trace decision (x-request-id) and, with a provider, spans and B3 headers.
    tracing: Tracing | None = None
    request_headers_timeout: float = DEFAULT_REQUEST_HEADERS_TIMEOUT
    stream_idle_timeout: float = 300.0
    idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT
    max_request_headers_kb: int = DEFAULT_MAX_REQUEST_HEADERS_KB
    max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT
    # common_http_protocol_options.headers_with_underscores_action: ALLOW (Envoy's default),
    # REJECT_REQUEST (400) or DROP_HEADER.
    headers_with_underscores_action: str = "ALLOW"
    # http_protocol_options.accept_http_10: Envoy's default false answers HTTP/1.0 with 426.
    accept_http_10: bool = False
    # After a reply that closes the connection, how long the client may take to close first
    # (what it still sends is read and dropped, so our close does not reset the reply).
    delayed_close_timeout: float = 1.0
    upgrade_types: tuple[str, ...] = ()  # upgrade_configs[].upgrade_type, lower-case
    # Envoy's proxy_100_continue: false → Envoy answers `100 Continue` itself.
    proxy_100_continue: bool = False
    access_log: tuple[AccessLogConfig, ...] = ()
    # An edge proxy (Istio's gateways): x-forwarded-for gets the peer, x-forwarded-proto the
    # connection's scheme, external peers a fresh x-request-id (proxy/http/edge.py).
    use_remote_address: bool = False
    # http2_protocol_options, the subset supported. The windows are not Envoy's defaults
    # (256 MiB each): a client may send a whole window that the proxy must then hold, so
    # pysidecar's defaults stay small; None is exported as "Envoy's default".
    http2: Http2Options | None = None
    # x-forwarded-client-cert (proxy/http/xfcc.py): Envoy's default SANITIZE; Istio's sidecar
    # inbound APPEND_FORWARD with set_current_client_cert_details subject, uri, dns.
    forward_client_cert_details: str = "SANITIZE"
    set_current_client_cert_details: tuple[str, ...] = ()

    @property
    def cluster_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for vh in self.route_config.virtual_hosts:
            for r in vh.routes:
                if r.route is not None:
                    names.extend(r.route.cluster_names)
        return tuple(dict.fromkeys(names))
