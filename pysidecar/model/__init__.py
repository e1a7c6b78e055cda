"""The xDS-shaped model every part of pysidecar reads: listeners, filter chains, clusters.

Promises:
- Plain frozen dataclasses, no I/O, no asyncio: a config front end (Envoy YAML, Istio YAML)
  builds a `Bootstrap`; the proxy, the admin dump, the Envoy exporter and `proxy-config` only
  read it. A reload builds a new `Bootstrap` and swaps it whole.
- Names and defaults are Envoy's (and Istio's where a sidecar differs), so that a field here
  can be looked up in Envoy's API reference under the same name.
- Durations are float seconds; 0 means "disabled" exactly where Envoy says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pysidecar.model.access_log import AccessLogConfig as AccessLogConfig
from pysidecar.model.http import (
    ISTIO_DEFAULT_RETRY,
    Http2Options,
    HttpConnectionManager,
    RetryPolicy,
)
from pysidecar.model.rbac import RbacFilter
from pysidecar.model.tls import (
    DownstreamTlsContext,
    TransportSocketMatch,
    UpstreamTlsContext,
    WorkloadIdentity,
)

# Envoy's cluster connect_timeout default is 5s; Istio's sidecar sets 10s (MeshConfig.connectTimeout).
DEFAULT_CONNECT_TIMEOUT = 10.0
# tcp_proxy idle_timeout: Envoy's and Istio's default is one hour.
DEFAULT_TCP_IDLE_TIMEOUT = 3600.0
# Upstream HTTP connections idle (no request) this long are closed: Envoy's default for a
# cluster's common_http_protocol_options.idle_timeout, one hour.
DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT = 3600.0
# Envoy's per_connection_buffer_limit_bytes default: 1 MiB. The watermark reading pauses at.
DEFAULT_BUFFER_LIMIT = 1024 * 1024
# Envoy's listener_filters_timeout default: how long listener filters may wait for bytes.
DEFAULT_LISTENER_FILTERS_TIMEOUT = 15.0

PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
# istiod's names since 1.8: one inbound passthrough cluster per IP family.
INBOUND_PASSTHROUGH_CLUSTER_IPV4 = "InboundPassthroughClusterIpv4"
INBOUND_PASSTHROUGH_CLUSTER_IPV6 = "InboundPassthroughClusterIpv6"

VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"


@dataclass(frozen=True, slots=True)
class SocketAddress:
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def listener_name(self) -> str:
        """Istio's listener naming: `<ip>_<port>`."""
        return f"{self.address}_{self.port}"


class TrafficDirection(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


class DnsLookupFamily(enum.Enum):
    """Which addresses a DNS cluster uses (Envoy's cluster dns_lookup_family)."""

    AUTO = "AUTO"  # IPv6 when the name has any, else IPv4 (Envoy's default)
    V4_ONLY = "V4_ONLY"
    V6_ONLY = "V6_ONLY"
    V4_PREFERRED = "V4_PREFERRED"  # IPv4 when the name has any, else IPv6
    ALL = "ALL"  # both


class ClusterType(enum.Enum):
    STATIC = "STATIC"
    STRICT_DNS = "STRICT_DNS"
    LOGICAL_DNS = "LOGICAL_DNS"
    ORIGINAL_DST = "ORIGINAL_DST"


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"
    # ORIGINAL_DST clusters use CLUSTER_PROVIDED: the connection's destination is the host.
    CLUSTER_PROVIDED = "CLUSTER_PROVIDED"


class OutboundTrafficPolicy(enum.Enum):
    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True, slots=True)
class LbEndpoint:
    address: SocketAddress
    load_balancing_weight: int = 1
    # metadata.filter_metadata["envoy.transport_socket_match"]: picks the cluster's
    # transport_socket_matches entry (Istio: tlsMode=istio for a pod with a sidecar).
    transport_socket_match: tuple[tuple[str, str], ...] = ()


# Envoy's circuit breaker thresholds when a cluster sets none; Istio always writes its own
# (4294967295 each, ISTIO_UNLIMITED below) unless a DestinationRule's connectionPool says less.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3
ISTIO_UNLIMITED = 4294967295
# common_lb_config.healthy_panic_threshold: below this % of healthy hosts, balance over all.
DEFAULT_PANIC_THRESHOLD = 50.0


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """circuit_breakers.thresholds[] at priority DEFAULT (the only priority our routes use).

    Envoy shares these counts across its worker threads; pysidecar's workers are processes, so
    each worker enforces the limits on its own traffic (N workers admit up to N x the limit)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Cluster outlier_detection, consecutive-error kinds only (no success-rate ejection).

    Defaults are Envoy's: 5 consecutive 5xx enforced at 100 %, consecutive gateway failures
    counted but not enforced (enforcing 0), 10 s sweeps, 30 s base ejection, 300 s cap, 10 %."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10


class UpstreamHttpProtocol(enum.Enum):
    """Which HTTP a cluster's upstream connections speak: the upstream_protocol_options of
    its `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` (or the older cluster-level
    `http2_protocol_options`, which means HTTP2)."""

    HTTP1 = "HTTP1"  # explicit_http_config.http_protocol_options, or none given (Envoy's default)
    HTTP2 = "HTTP2"  # explicit_http_config.http2_protocol_options: h2c (prior knowledge) or h2
    # use_downstream_protocol_config: HTTP/2 for a request that came over HTTP/2, else HTTP/1.1
    # (istiod's choice for sniffed ports and DestinationRule useClientProtocol).
    USE_DOWNSTREAM = "USE_DOWNSTREAM"


# istiod's http2ProtocolOptions(): Envoy's upstream default (2^31-1) is "too low for the data
# path" in an older istiod's words, so it writes 2^30 on every HTTP/2-capable cluster.
ISTIO_H2_MAX_CONCURRENT_STREAMS = 1073741824


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    type: ClusterType = ClusterType.STATIC
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    endpoints: tuple[LbEndpoint, ...] = ()
    # upstream_bind_config.source_address (+ extra_source_addresses): inbound clusters bind to
    # 127.0.0.6 for IPv4 upstreams and ::6 for IPv6; the one matching the family is used.
    upstream_bind_addresses: tuple[str, ...] = ()
    # DNS clusters re-resolve at this rate (Envoy's dns_refresh_rate, default 5s).
    dns_refresh_rate: float = 5.0
    dns_lookup_family: DnsLookupFamily = DnsLookupFamily.AUTO
    # Istio stamps alt_stat_name; stats use it when set.
    alt_stat_name: str | None = None
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    outlier_detection: OutlierDetection | None = None
    healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    # common_http_protocol_options of the upstream HTTP connections: idle_timeout (0: never),
    # max_requests_per_connection (0: unlimited), max_connection_duration (0: unlimited).
    http_idle_timeout: float = DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT
    max_requests_per_connection: int = 0
    max_connection_duration: float = 0.0
    # The upstream HTTP protocol and, when it may be HTTP/2, its http2_protocol_options (the
    # fields given; None in a field: Envoy's default).
    upstream_http_protocol: UpstreamHttpProtocol = UpstreamHttpProtocol.HTTP1
    http2_options: Http2Options = field(default_factory=Http2Options)
    # TLS origination: transport_socket for every endpoint, or transport_socket_matches chosen
    # by each endpoint's metadata (Istio's auto mTLS); neither: plaintext.
    transport_socket: UpstreamTlsContext | None = None
    transport_socket_matches: tuple[TransportSocketMatch, ...] = ()

    @property
    def stat_name(self) -> str:
        return self.alt_stat_name or self.name

    def upstream_tls(self, endpoint_metadata: tuple[tuple[str, str], ...]) -> UpstreamTlsContext | None:
        """The TLS context for an endpoint (Envoy's transport socket match), None: plaintext."""
        if self.transport_socket_matches:
            have = dict(endpoint_metadata)
            for m in self.transport_socket_matches:
                if all(have.get(k) == v for k, v in m.match):
                    return m.transport_socket
        return self.transport_socket


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """envoy.filters.network.tcp_proxy."""

    stat_prefix: str
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    access_log: tuple[AccessLogConfig, ...] = ()

    @property
    def cluster_names(self) -> tuple[str, ...]:
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(w.name for w in self.weighted_clusters)


# The network filters a filter chain can end in.
NetworkFilter = TcpProxy | HttpConnectionManager


@dataclass(frozen=True, slots=True)
class CidrRange:
    address_prefix: str
    prefix_len: int

    def __str__(self) -> str:
        return f"{self.address_prefix}/{self.prefix_len}"


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    """Envoy's filter_chain_match; an empty field matches anything."""

    destination_port: int | None = None
    prefix_ranges: tuple[CidrRange, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()

    @property
    def needs_inspection(self) -> bool:
        """Whether matching needs bytes from the connection (TLS / HTTP sniffing)."""
        return bool(self.server_names or self.transport_protocol or self.application_protocols)


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    filters: tuple[NetworkFilter, ...]
    filter_chain_match: FilterChainMatch = field(default_factory=FilterChainMatch)
    # transport_socket envoy.transport_sockets.tls: TLS is terminated before the filters run.
    transport_socket: DownstreamTlsContext | None = None
    # envoy.filters.network.rbac filters, in order, before `filters` (Istio's authorization
    # on inbound chains): a connection they deny is closed before the network filter runs.
    rbac: tuple[RbacFilter, ...] = ()

    @property
    def terminal_filter(self) -> NetworkFilter:
        return self.filters[-1]


class ListenerFilter(enum.Enum):
    ORIGINAL_DST = "envoy.filters.listener.original_dst"
    TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
    HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: SocketAddress
    filter_chains: tuple[FilterChain, ...] = ()
    default_filter_chain: FilterChain | None = None
    use_original_dst: bool = False
    bind_to_port: bool = True
    listener_filters: tuple[ListenerFilter, ...] = ()
    traffic_direction: TrafficDirection = TrafficDirection.UNSPECIFIED
    # Envoy's additional_addresses: Istio adds [::] to the wildcard listeners on dual-stack pods.
    additional_addresses: tuple[SocketAddress, ...] = ()
    per_connection_buffer_limit_bytes: int = DEFAULT_BUFFER_LIMIT
    # IP_TRANSPARENT on the listening socket: accepts what TPROXY diverts to it, the accepted
    # socket's local address being the original destination. IP_FREEBIND: bind a non-local
    # address.
    transparent: bool = False
    freebind: bool = False
    # Sniffing gives up after this long (0: never); then the connection continues with what was
    # read, or, Envoy's default, is closed (listener downstream_pre_cx_timeout). Istio continues.
    listener_filters_timeout: float = DEFAULT_LISTENER_FILTERS_TIMEOUT
    continue_on_listener_filters_timeout: bool = False


@dataclass(frozen=True, slots=True)
class Admin:
    address: SocketAddress = SocketAddress("127.0.0.1", 15000)
    access_log_path: str | None = None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The part of Istio's MeshConfig a sidecar's data plane acts on."""

    outbound_traffic_policy: OutboundTrafficPolicy = OutboundTrafficPolicy.ALLOW_ANY
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    hold_application_until_proxy_starts: bool = False
    # accessLogFile / accessLogEncoding / accessLogFormat: "" (Istio's default) means no log.
    access_log_file: str = ""
    access_log_encoding: str = "TEXT"
    access_log_format: str = ""
    # defaultHttpRetryPolicy: the retries of routes whose VirtualService sets none (None: none).
    default_http_retry_policy: RetryPolicy | None = ISTIO_DEFAULT_RETRY
    # enableTracing, defaultConfig.tracing.sampling (percent; istiod's default 1) and
    # defaultConfig.tracing.zipkin.address. istiod's default address is zipkin.istio-system:9411;
    # ours is none (no spans, no B3 headers) so that a config never makes the proxy resolve a
    # name it was not given.
    enable_tracing: bool = True
    tracing_sampling: float = 1.0
    zipkin_address: str = ""
    # h2UpgradePolicy: UPGRADE makes outbound clusters of HTTP ports speak HTTP/2 unless a
    # DestinationRule says DO_NOT_UPGRADE (istiod's shouldH2Upgrade); default DO_NOT_UPGRADE.
    h2_upgrade: bool = False
    # Workload identities are spiffe://<trust_domain>/ns/<ns>/sa/<sa>.
    trust_domain: str = "cluster.local"
    # PeerAuthentication in this namespace without a selector is mesh-wide.
    root_namespace: str = "istio-system"
    # enableAutoMtls: endpoints with a sidecar get mutual TLS unless a DestinationRule says.
    enable_auto_mtls: bool = True


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A whole configuration: what Envoy's bootstrap plus its xDS resources describe."""

    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    admin: Admin | None = None
    # Istio ports a sidecar serves besides the listeners: Prometheus stats and readiness.
    stats_address: SocketAddress | None = None
    readiness_address: SocketAddress | None = None
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Where this config came from (files), for error messages and /config_dump.
    sources: tuple[str, ...] = ()
    # The bootstrap's node: id and cluster (Envoy's --service-cluster; a zipkin span's
    # localEndpoint.serviceName, tag node_id).
    node_id: str = ""
    node_cluster: str = ""
    # The workload certificate (Istio's file-mounted SVID) the TLS contexts name, when loaded.
    identity: WorkloadIdentity | None = None

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None

    def listener(self, name: str) -> Listener | None:
        for lis in self.listeners:
            if lis.name == name:
                return lis
        return None
