"""The loaded model as Envoy's admin /config_dump JSON (envoy.admin.v3.*ConfigDump messages).

Promises:
- `config_dump(bootstrap, last_updated)` is a pure function returning what Envoy's admin
  prints: `{"configs": [BootstrapConfigDump, ClustersConfigDump, ListenersConfigDump,
  RoutesConfigDump]}`, each resource under its `@type`, field names snake_case as Envoy's
  admin writes them (proto field names), durations as `"10s"`, enums by name, unset and empty
  fields left out as proto3 JSON leaves them out.
- Listeners and clusters are `static_listeners` / `static_clusters` (they come from a file, not
  xDS); inline route configurations of HTTP connection managers are `static_route_configs`.
- Model types it does not know get a generic rendering (dataclass fields by name), so a new
  model field shows up in the dump without a change here.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from pysidecar.model import (
    Bootstrap,
    Cluster,
    ClusterType,
    FilterChain,
    FilterChainMatch,
    Listener,
    ListenerFilter,
    SocketAddress,
    TcpProxy,
)
from pysidecar.observe.access_format import iso_time

Json = dict[str, Any]
ADMIN_TYPE = "type.googleapis.com/envoy.admin.v3."
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TCP_PROXY = ("envoy.filters.network.tcp_proxy", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
HCM = (
    "envoy.filters.network.http_connection_manager",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
)
LISTENER_FILTER_TYPES = {
    ListenerFilter.ORIGINAL_DST: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    ListenerFilter.TLS_INSPECTOR: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    ListenerFilter.HTTP_INSPECTOR: "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
}
# Float fields with these name endings are durations (google.protobuf.Duration in Envoy's API).
_DURATION_SUFFIXES = ("timeout", "interval", "rate", "_time")


def duration(seconds: float) -> str:
    """protobuf JSON Duration: `10s`, `0.250s`."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


def _empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == () or value == [] or value == {}


def generic(value: Any, name: str = "") -> Any:
    """Any model value as proto-shaped JSON: dataclass fields by name, empties dropped."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: Json = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if not _empty(v):
                out[f.name] = generic(v, f.name)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [generic(v, name) for v in value]
    if isinstance(value, float) and name.endswith(_DURATION_SUFFIXES):
        return duration(value)
    return value


def socket_address(a: SocketAddress) -> Json:
    return {"socket_address": {"address": a.address, "port_value": a.port}}


def _typed(name: str, type_name: str, config: Json) -> Json:
    return {"name": name, "typed_config": {"@type": "type.googleapis.com/" + type_name, **config}}


def network_filter(f: Any) -> Json:
    if isinstance(f, TcpProxy):
        cfg: Json = {"stat_prefix": f.stat_prefix}
        if f.cluster is not None:
            cfg["cluster"] = f.cluster
        else:
            cfg["weighted_clusters"] = {"clusters": [{"name": w.name, "weight": w.weight} for w in f.weighted_clusters]}
        cfg["idle_timeout"] = duration(f.idle_timeout)
        return _typed(*TCP_PROXY, cfg)
    if type(f).__name__ == "HttpConnectionManager":
        cfg = generic(f)
        cfg["http_filters"] = [
            {"name": h.name, "typed_config": {"@type": "type.googleapis.com/" + h.type_url.rsplit("/", 1)[-1]}}
            for h in getattr(f, "http_filters", ())
        ]
        return _typed(*HCM, cfg)
    return {"name": type(f).__name__, "typed_config": generic(f)}


def filter_chain_match(m: FilterChainMatch) -> Json:
    out: Json = {}
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


def filter_chain(c: FilterChain) -> Json:
    out: Json = {}
    match = filter_chain_match(c.filter_chain_match)
    if match:
        out["filter_chain_match"] = match
    out["filters"] = [network_filter(f) for f in c.filters]
    if c.name:
        out["name"] = c.name
    return out


def listener(x: Listener) -> Json:
    out: Json = {"@type": LISTENER_TYPE, "name": x.name, "address": socket_address(x.address)}
    if x.additional_addresses:
        out["additional_addresses"] = [{"address": socket_address(a)} for a in x.additional_addresses]
    out["filter_chains"] = [filter_chain(c) for c in x.filter_chains]
    if x.default_filter_chain is not None:
        out["default_filter_chain"] = filter_chain(x.default_filter_chain)
    if x.use_original_dst:
        out["use_original_dst"] = True
    if not x.bind_to_port:
        out["bind_to_port"] = False
    if x.listener_filters:
        out["listener_filters"] = [
            {"name": f.value, "typed_config": {"@type": "type.googleapis.com/" + LISTENER_FILTER_TYPES[f]}}
            for f in x.listener_filters
        ]
    if x.traffic_direction.value != "UNSPECIFIED":
        out["traffic_direction"] = x.traffic_direction.value
    out["per_connection_buffer_limit_bytes"] = x.per_connection_buffer_limit_bytes
    return out


def cluster(c: Cluster) -> Json:
    out: Json = {"@type": CLUSTER_TYPE, "name": c.name, "type": c.type.value}
    out["connect_timeout"] = duration(c.connect_timeout)
    if c.lb_policy.value != "ROUND_ROBIN":
        out["lb_policy"] = c.lb_policy.value
    if c.alt_stat_name:
        out["alt_stat_name"] = c.alt_stat_name
    if c.type in (ClusterType.STRICT_DNS, ClusterType.LOGICAL_DNS):
        out["dns_refresh_rate"] = duration(c.dns_refresh_rate)
    if c.endpoints:
        out["load_assignment"] = {
            "cluster_name": c.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address(e.address)}, "load_balancing_weight": e.load_balancing_weight}
                        for e in c.endpoints
                    ]
                }
            ],
        }
    if c.upstream_bind_addresses:
        first, *extra = c.upstream_bind_addresses
        bind: Json = {"source_address": {"address": first, "port_value": 0}}
        if extra:
            bind["extra_source_addresses"] = [{"address": {"address": a, "port_value": 0}} for a in extra]
        out["upstream_bind_config"] = bind
    return out


def route_configs(b: Bootstrap) -> list[Json]:
    """The inline route configurations of every HTTP connection manager, once each."""
    seen: dict[str, Json] = {}
    for x in b.listeners:
        chains = [*x.filter_chains, *([x.default_filter_chain] if x.default_filter_chain else [])]
        for c in chains:
            for f in c.filters:
                rc = getattr(f, "route_config", None)
                if rc is not None:
                    seen.setdefault(rc.name, {"@type": ROUTE_TYPE, **generic(rc)})
    return list(seen.values())


def config_dump(b: Bootstrap, last_updated: float) -> Json:
    stamp = iso_time(last_updated)
    listeners = [listener(x) for x in b.listeners]
    clusters = [cluster(c) for c in b.clusters]
    static_resources: Json = {
        "listeners": [{k: v for k, v in x.items() if k != "@type"} for x in listeners],
        "clusters": [{k: v for k, v in c.items() if k != "@type"} for c in clusters],
    }
    boot: Json = {
        "node": {"id": "sidecar~pysidecar", "user_agent_name": "pysidecar"},
        "static_resources": static_resources,
    }
    if b.admin is not None:
        boot["admin"] = {"address": socket_address(b.admin.address)}
    return {
        "configs": [
            {"@type": ADMIN_TYPE + "BootstrapConfigDump", "bootstrap": boot, "last_updated": stamp},
            {
                "@type": ADMIN_TYPE + "ClustersConfigDump",
                "static_clusters": [{"cluster": c, "last_updated": stamp} for c in clusters],
            },
            {
                "@type": ADMIN_TYPE + "ListenersConfigDump",
                "static_listeners": [{"listener": x, "last_updated": stamp} for x in listeners],
            },
            {
                "@type": ADMIN_TYPE + "RoutesConfigDump",
                "static_route_configs": [{"route_config": r, "last_updated": stamp} for r in route_configs(b)],
            },
        ]
    }
