"""The standard Istio sidecar skeleton: virtualOutbound 15001, virtualInbound 15006, catch-alls.

Promises:
- `standard_sidecar(mesh)` returns what istiod always sends a sidecar, with istiod's names:
  listeners `virtualOutbound` (0.0.0.0:15001, use_original_dst, chains
  `virtualOutbound-blackhole` for destination port 15001 and `virtualOutbound-catchall-tcp`)
  and `virtualInbound` (0.0.0.0:15006 and [::]:15006; chain `virtualInbound-blackhole` for
  destination port 15006, then per IP family istiod's passthrough chains, matching
  `0.0.0.0/0` / `::/0`: `virtualInbound-catchall-http` for what the HTTP inspector recognised
  (raw_buffer, ALPN http/1.1 | h2c: an HTTP connection manager, server `istio-envoy`, its
  inline route config named after the cluster, one route to it) and `virtualInbound` for the
  rest (tcp_proxy)); clusters `PassthroughCluster`, `InboundPassthroughClusterIpv4` (from
  127.0.0.6), `InboundPassthroughClusterIpv6` (from ::6), `BlackHoleCluster`; admin
  127.0.0.1:15000, stats :15090, readiness :15021.
- Plaintext chains only: istiod's shape under PeerAuthentication DISABLE (there is no mTLS
  here; istiod's default PERMISSIVE adds `tls` chains with Istio's ALPNs).
- The outbound catch-all follows `mesh.outbound_traffic_policy`: PassthroughCluster for
  ALLOW_ANY, BlackHoleCluster for REGISTRY_ONLY.
- `with_resources` merges extra listeners and clusters (from Envoy YAML or compiled Istio
  resources) into the skeleton; a later definition of a name replaces the skeleton's.
- `with_interception_mode(bootstrap, mode)` is what istiod does for a proxy whose node metadata
  says INTERCEPTION_MODE TPROXY: virtualInbound becomes `transparent: true` (the init's mangle
  TPROXY rules deliver to it; its original destination is the accepted socket's local
  address). The inbound passthrough still connects from 127.0.0.6 / ::6 (Istio would add
  original_src here; we don't).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace

from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER_IPV4,
    INBOUND_PASSTHROUGH_CLUSTER_IPV6,
    PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND,
    VIRTUAL_OUTBOUND,
    Admin,
    Bootstrap,
    CidrRange,
    Cluster,
    ClusterType,
    FilterChain,
    FilterChainMatch,
    LbPolicy,
    Listener,
    ListenerFilter,
    MeshConfig,
    OutboundTrafficPolicy,
    SocketAddress,
    TcpProxy,
    TrafficDirection,
)
from pysidecar.model.http import (
    CodecType,
    HttpConnectionManager,
    HttpFilter,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    Tracing,
    VirtualHost,
)

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
ADMIN_PORT = 15000
STATS_PORT = 15090
READINESS_PORT = 15021
# Source 127.0.0.6 (::6) is what ISTIO_OUTPUT's first rule exempts from capture: how the proxy
# reaches the app on the pod's own IP without being captured again.
INBOUND_PASSTHROUGH_BIND = ("127.0.0.6", "::6")
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
# istiod's ProxyHeaders ServerName for every listener class but sidecar outbound ("envoy").
INBOUND_SERVER_NAME = "istio-envoy"
HTTP_ALPNS = ("http/1.1", "h2c")
# istiod (1.24+, EnableInboundRetryPolicy) on the inbound default route: retry a request the
# app reset before it was sent (an app restarting), never one it may have seen.
INBOUND_RETRY = RetryPolicy(retry_on=("reset-before-request",), num_retries=2)
# (cluster, the family's all-addresses range, its bind address)
_PASSTHROUGH_FAMILIES = (
    (INBOUND_PASSTHROUGH_CLUSTER_IPV4, CidrRange("0.0.0.0", 0), "127.0.0.6"),
    (INBOUND_PASSTHROUGH_CLUSTER_IPV6, CidrRange("::", 0), "::6"),
)


def istio_connection_manager(stat_prefix: str, rc: RouteConfiguration, server_name: str = "envoy") -> HttpConnectionManager:
    """The HCM shape istiod writes for a sidecar: tracing on (decorators), no stream idle
    timeout, websocket upgrades, the router."""
    return HttpConnectionManager(
        stat_prefix=stat_prefix,
        route_config=rc,
        codec_type=CodecType.AUTO,
        http_filters=(HttpFilter("envoy.filters.http.router", ROUTER_TYPE),),
        server_name=server_name,
        tracing=Tracing(),
        stream_idle_timeout=0.0,
        upgrade_types=("websocket",),
    )


def _inbound_passthrough_chains() -> tuple[FilterChain, ...]:
    """istiod's buildInboundPassthroughChains (plaintext): per family, HTTP then TCP."""
    chains: list[FilterChain] = []
    for cluster, everything, _ in _PASSTHROUGH_FAMILIES:
        action = RouteAction(cluster=cluster, timeout=0.0, retry_policy=INBOUND_RETRY)
        route = Route(match=RouteMatch(prefix="/"), name="default", route=action)
        vhost = VirtualHost(name="inbound|http|0", domains=("*",), routes=(route,))
        rc = RouteConfiguration(name=cluster, virtual_hosts=(vhost,), validate_clusters=False)
        http_match = FilterChainMatch(prefix_ranges=(everything,), transport_protocol="raw_buffer", application_protocols=HTTP_ALPNS)
        hcm = istio_connection_manager("inbound_0.0.0.0_0", rc, INBOUND_SERVER_NAME)
        chains.append(FilterChain(f"{VIRTUAL_INBOUND}-catchall-http", (hcm,), http_match))
        tcp_match = FilterChainMatch(prefix_ranges=(everything,), transport_protocol="raw_buffer")
        chains.append(FilterChain(VIRTUAL_INBOUND, (TcpProxy(stat_prefix=cluster, cluster=cluster),), tcp_match))
    return tuple(chains)


def _tcp_chain(name: str, cluster: str, port: int | None = None) -> FilterChain:
    return FilterChain(
        name=name,
        filters=(TcpProxy(stat_prefix=cluster, cluster=cluster),),
        filter_chain_match=FilterChainMatch(destination_port=port),
    )


def standard_sidecar(mesh: MeshConfig | None = None) -> Bootstrap:
    mesh = mesh or MeshConfig()
    catchall = (
        PASSTHROUGH_CLUSTER
        if mesh.outbound_traffic_policy is OutboundTrafficPolicy.ALLOW_ANY
        else BLACKHOLE_CLUSTER
    )
    outbound = Listener(
        name=VIRTUAL_OUTBOUND,
        address=SocketAddress("0.0.0.0", OUTBOUND_PORT),
        additional_addresses=(SocketAddress("::", OUTBOUND_PORT),),
        use_original_dst=True,
        traffic_direction=TrafficDirection.OUTBOUND,
        filter_chains=(
            # A connection whose original destination is 15001 itself would loop forever.
            _tcp_chain(f"{VIRTUAL_OUTBOUND}-blackhole", BLACKHOLE_CLUSTER, OUTBOUND_PORT),
            _tcp_chain(f"{VIRTUAL_OUTBOUND}-catchall-tcp", catchall),
        ),
    )
    inbound = Listener(
        name=VIRTUAL_INBOUND,
        address=SocketAddress("0.0.0.0", INBOUND_PORT),
        additional_addresses=(SocketAddress("::", INBOUND_PORT),),
        traffic_direction=TrafficDirection.INBOUND,
        listener_filters=(
            ListenerFilter.ORIGINAL_DST,
            ListenerFilter.TLS_INSPECTOR,
            ListenerFilter.HTTP_INSPECTOR,
        ),
        continue_on_listener_filters_timeout=True,  # istiod's: sniffing gives up, never closes
        filter_chains=(
            _tcp_chain(f"{VIRTUAL_INBOUND}-blackhole", BLACKHOLE_CLUSTER, INBOUND_PORT),
            *_inbound_passthrough_chains(),
        ),
    )
    clusters = (
        Cluster(
            name=PASSTHROUGH_CLUSTER,
            type=ClusterType.ORIGINAL_DST,
            lb_policy=LbPolicy.CLUSTER_PROVIDED,
            connect_timeout=mesh.connect_timeout,
        ),
        *(
            Cluster(
                name=cluster,
                type=ClusterType.ORIGINAL_DST,
                lb_policy=LbPolicy.CLUSTER_PROVIDED,
                connect_timeout=mesh.connect_timeout,
                upstream_bind_addresses=(bind,),
            )
            for cluster, _, bind in _PASSTHROUGH_FAMILIES
        ),
        Cluster(name=BLACKHOLE_CLUSTER, type=ClusterType.STATIC, connect_timeout=mesh.connect_timeout),
    )
    return Bootstrap(
        listeners=(outbound, inbound),
        clusters=clusters,
        admin=Admin(SocketAddress("127.0.0.1", ADMIN_PORT)),
        stats_address=SocketAddress("0.0.0.0", STATS_PORT),
        readiness_address=SocketAddress("0.0.0.0", READINESS_PORT),
        mesh=mesh,
        sources=("<embedded standard sidecar>",),
    )


# NONE: no interception at all (Istio's third mode); the proxy runs as under REDIRECT.
INTERCEPTION_MODES = ("REDIRECT", "TPROXY", "NONE")


def add_interception_mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interception-mode", choices=INTERCEPTION_MODES, default=None,
        help="how `pysidecar init` intercepts inbound traffic (TPROXY: virtualInbound is "
        "transparent, which needs CAP_NET_ADMIN); default $INTERCEPTION_MODE, else "
        "$ISTIO_META_INTERCEPTION_MODE (Istio's node metadata), else REDIRECT",
    )  # fmt: skip


def resolve_interception_mode(flag: str | None, environ: Mapping[str, str]) -> str:
    """The flag, else $INTERCEPTION_MODE, else $ISTIO_META_INTERCEPTION_MODE, else REDIRECT."""
    mode = flag or environ.get("INTERCEPTION_MODE") or environ.get("ISTIO_META_INTERCEPTION_MODE") or "REDIRECT"
    if mode not in INTERCEPTION_MODES:
        raise ValueError(f"interception mode {mode!r} (from the environment): expected one of "
                         f"{', '.join(INTERCEPTION_MODES)}")  # fmt: skip
    return mode


def with_interception_mode(base: Bootstrap, mode: str) -> Bootstrap:
    if mode != "TPROXY":
        return base
    return replace(
        base,
        listeners=tuple(replace(x, transparent=True) if x.name == VIRTUAL_INBOUND else x for x in base.listeners),
    )


def with_resources(
    base: Bootstrap, listeners: tuple[Listener, ...], clusters: tuple[Cluster, ...]
) -> Bootstrap:
    extra_l = {x.name for x in listeners}
    extra_c = {x.name for x in clusters}
    return replace(
        base,
        listeners=tuple(x for x in base.listeners if x.name not in extra_l) + listeners,
        clusters=tuple(x for x in base.clusters if x.name not in extra_c) + clusters,
    )
