"""`istioctl proxy-config`-shaped views of an Envoy config dump. Pure functions over JSON.

Promises:
- `listener_rows(dump, port)`: one row per filter chain, columns ADDRESS PORT MATCH DESTINATION,
  with istioctl's wording: MATCH `ALL`, or `SNI: a,b; Trans: tls; App: http/1.1,h2c;
  Addr: 10.0.0.0/8:80` (`Addr: *:15001` for a port alone); DESTINATION `Route: <name>`,
  `Inline Route: /*` (an unnamed inline route config; a named one reads as istiod's RDS
  `Route: <name>` unless it is a catch-all to one cluster, which reads as that cluster, as
  istioctl prints Istio's inline `inbound|8080||`), `Cluster: outbound|...`, a catch-all cluster by its bare name
  (`PassthroughCluster`), or `Non-HTTP/Non-TCP` (which is also what istioctl prints for a
  tcp_proxy to BlackHoleCluster); a listener's rows ordered by DESTINATION, descending.
- `route_rows`, `cluster_rows`, `endpoint_rows`: istioctl's routes, clusters and endpoints
  tables (NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE / SERVICE FQDN PORT SUBSET DIRECTION
  TYPE DESTINATION RULE / ENDPOINT STATUS OUTLIER CHECK CLUSTER).
- `table(header, rows)` aligns columns as Go's tabwriter does for istioctl (one space between
  columns, no trailing padding). `resources(dump, kind)` and `camel(value)` give `-o json|yaml`
  the raw resources with istioctl's camelCase keys.
- Listeners and clusters are read from both static and dynamic (`active_state`) sections, so a
  real Envoy's dump reads the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]
Row = tuple[str, ...]
ADMIN_TYPE = "type.googleapis.com/envoy.admin.v3."

LISTENER_HEADER: Row = ("ADDRESS", "PORT", "MATCH", "DESTINATION")
ROUTE_HEADER: Row = ("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE")
CLUSTER_HEADER: Row = ("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE")
ENDPOINT_HEADER: Row = ("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER")


def _section(dump: Json, kind: str) -> Json:
    for config in dump.get("configs", []):
        if config.get("@type") == ADMIN_TYPE + kind:
            return dict(config)
    return {}


def resources(dump: Json, kind: str) -> list[Json]:
    """The listeners / clusters / route configs of a dump, dynamic ones first, as istioctl reads them."""
    key, static, dynamic = {
        "listeners": ("listener", "static_listeners", "dynamic_listeners"),
        "clusters": ("cluster", "static_clusters", "dynamic_active_clusters"),
        "routes": ("route_config", "static_route_configs", "dynamic_route_configs"),
    }[kind]
    section = _section(dump, {"listeners": "ListenersConfigDump", "clusters": "ClustersConfigDump",
                              "routes": "RoutesConfigDump"}[kind])  # fmt: skip
    out: list[Json] = []
    for entry in [*section.get(dynamic, []), *section.get(static, [])]:
        holder = entry.get("active_state", entry)
        if key in holder:
            out.append(holder[key])
    return out


# -- listeners --------------------------------------------------------------------------------


# istioctl's names for the ALPN lists istiod uses (listener.go's protDescrs); others are listed.
_APP_DESCRIPTIONS = {
    ("http/1.0", "http/1.1", "h2c", "istio-http/1.0", "istio-http/1.1", "istio-h2"): "App: HTTP TLS",
    ("istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"): "App: Istio HTTP Plain",
    ("istio-peer-exchange", "istio"): "App: TCP TLS",
    ("http/1.0", "http/1.1", "h2c"): "App: HTTP",
}


def describe_match(match: Json | None) -> str:
    if not match:
        return "ALL"
    conds: list[str] = []
    if match.get("server_names"):
        conds.append("SNI: " + ",".join(match["server_names"]))
    if match.get("transport_protocol"):
        conds.append("Trans: " + match["transport_protocol"])
    if match.get("application_protocols"):
        alpn = tuple(match["application_protocols"])
        conds.append(_APP_DESCRIPTIONS.get(alpn) or "App: " + ",".join(alpn))
    port = f":{match['destination_port']}" if "destination_port" in match else ""
    ranges = [f"{r['address_prefix']}/{r.get('prefix_len', 0)}" for r in match.get("prefix_ranges", [])]
    if ranges:
        conds.append(f"Addr: {','.join(ranges)}{port}")
    elif port:
        conds.append(f"Addr: *{port}")
    return "; ".join(conds) or "ALL"


def _cluster_name(cluster: str) -> str:
    # istioctl prints the catch-alls (PassthroughCluster, BlackHoleCluster, ...) bare.
    return cluster if "Cluster" in cluster else f"Cluster: {cluster}"


def match_summary(match: Json) -> str:
    if match.get("prefix"):
        return f"{match['prefix']}*"
    if match.get("path"):
        return str(match["path"])
    regex = match.get("safe_regex")
    if regex:
        return f"regex {regex.get('regex', regex) if isinstance(regex, dict) else regex}"
    return "/*"


def _inline_route(rc: Json) -> str:
    vhosts = rc.get("virtual_hosts", [])
    if len(vhosts) == 1 and vhosts[0].get("domains") == ["*"] and len(vhosts[0].get("routes", [])) == 1:
        route = vhosts[0]["routes"][0]
        cluster = (route.get("route") or {}).get("cluster")
        if cluster and route.get("match", {}).get("prefix") == "/":  # istioctl: exactly prefix "/"
            return _cluster_name(cluster)
    parts = []
    for vh in vhosts:
        routes = ", ".join(match_summary(r.get("match", {})) for r in vh.get("routes", []))
        domains = vh.get("domains", [])
        parts.append(routes if domains == ["*"] else f"{'/'.join(domains)} {routes}")
    return "Inline Route: " + "; ".join(parts)


def describe_destination(filters: Sequence[Json]) -> str:
    for f in filters:
        cfg = f.get("typed_config", {})
        if f.get("name") == "envoy.filters.network.http_connection_manager":
            if "rds" in cfg:
                return f"Route: {cfg['rds'].get('route_config_name', '')}"
            rc = cfg.get("route_config")
            if rc is None:
                return "HTTP"
            # A catch-all to one cluster is that cluster (istioctl's getMatchAllCluster: Istio's
            # inline `inbound|8080||`); other named route configs are what istiod sends by RDS
            # (`Route: 80`, `Route: http.8080`), so they read as istioctl prints those.
            inline = _inline_route(rc)
            if rc.get("name") and inline.startswith("Inline Route: "):
                return f"Route: {rc['name']}"
            return inline
        if f.get("name") == "envoy.filters.network.tcp_proxy":
            if cfg.get("cluster") == "BlackHoleCluster":
                continue  # istioctl skips a tcp_proxy to BlackHoleCluster: Non-HTTP/Non-TCP
            if "cluster" in cfg:
                return _cluster_name(cfg["cluster"])
            weighted = cfg.get("weighted_clusters", {}).get("clusters", [])
            if weighted:
                return "WeightedCluster: " + ",".join(w["name"] for w in weighted)
    return "Non-HTTP/Non-TCP"


def listener_type(x: Json) -> str:
    """istioctl's TYPE: HTTP, TCP, HTTP+TCP or UNKNOWN (a tcp_proxy to BlackHoleCluster does not count)."""
    chains = [*x.get("filter_chains", []), *([x["default_filter_chain"]] if "default_filter_chain" in x else [])]
    names = [f.get("name") for c in chains for f in c.get("filters", []) if f.get("typed_config", {}).get("cluster") != "BlackHoleCluster"]
    http, tcp = "envoy.filters.network.http_connection_manager" in names, "envoy.filters.network.tcp_proxy" in names
    return "HTTP+TCP" if http and tcp else "HTTP" if http else "TCP" if tcp else "UNKNOWN"


def listener_rows(dump: Json, port: int | None = None) -> list[Row]:
    rows: list[tuple[int, str, str, int, Row]] = []
    for x in resources(dump, "listeners"):
        sa = x.get("address", {}).get("socket_address", {})
        address, lport = str(sa.get("address", "")), int(sa.get("port_value", 0))
        if port is not None and lport != port:
            continue
        chains = [*x.get("filter_chains", []), *([x["default_filter_chain"]] if "default_filter_chain" in x else [])]
        mine = [
            (address, str(lport), describe_match(chain.get("filter_chain_match")),
             describe_destination(chain.get("filters", [])))
            for chain in chains
        ]  # fmt: skip
        # istioctl orders a listener's chains by DESTINATION, descending (Route before
        # PassthroughCluster before Non-HTTP/Non-TCP before Cluster: ...); ties keep their order.
        mine.sort(key=lambda r: r[3], reverse=True)
        # istioctl sorts listeners by port, address, then type.
        rows.extend((lport, address, listener_type(x), i, row) for i, row in enumerate(mine))
    return [r for *_key, r in sorted(rows)]


# -- routes, clusters, endpoints --------------------------------------------------------------


def _best_domain(domains: Sequence[str]) -> str:
    """istioctl's pick: the shortest name that is not an IP address."""
    names = [d for d in domains if d and not d[0].isdigit()]
    return min(names, key=len) if names else (domains[0] if domains else "")


def _virtual_service(route: Json) -> str:
    """istioctl's VIRTUAL SERVICE column: `name.namespace` from the route's istio metadata."""
    if (route.get("direct_response") or {}).get("status") == 404:
        return "404"
    config = str(((route.get("metadata") or {}).get("filter_metadata") or {}).get("istio", {}).get("config", ""))
    parts = config.strip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "virtual-service" and "namespaces" in parts:
        return f"{parts[-1]}.{parts[parts.index('namespaces') + 1]}"
    return ""


def route_rows(dump: Json, name: str | None = None) -> list[Row]:
    rows: list[Row] = []
    for rc in resources(dump, "routes"):
        if name is not None and rc.get("name") != name:
            continue
        for vh in rc.get("virtual_hosts", []):
            domains = vh.get("domains", [])
            domain = _best_domain(domains)
            if len(domains) > 1:
                domain += f" + {len(domains) - 1} more..."
            for r in vh.get("routes", []):
                vs = _virtual_service(r)
                rows.append((str(rc.get("name", "")), str(vh.get("name", "")), domain,
                             match_summary(r.get("match", {})), vs))  # fmt: skip
    return rows


_ISTIO_CLUSTER = re.compile(r"^(inbound|outbound)\|(\d*)\|([^|]*)\|(.*)$")


def cluster_rows(dump: Json, fqdn: str | None = None) -> list[Row]:
    """istioctl's order: by FQDN, subset, port, direction (names without `|` sort by name)."""
    keyed: list[tuple[tuple[str, str, int, str], Row]] = []
    for c in resources(dump, "clusters"):
        name = str(c.get("name", ""))
        kind = str(c.get("type", "EDS"))
        m = _ISTIO_CLUSTER.match(name)
        if m:
            port = int(m.group(2) or 0)  # istioctl parses the port: an empty one prints 0
            row = (m.group(4), str(port), m.group(3) or "-", m.group(1), kind, "")
            key = (m.group(4), m.group(3), port, m.group(1))
        else:
            row, key = (name, "-", "-", "-", kind, ""), (name, "", 0, "")
        if fqdn is None or fqdn in name:  # istioctl's --fqdn is a substring filter
            keyed.append((key, row))
    return [row for _, row in sorted(keyed, key=lambda kr: kr[0])]


def endpoint_rows(clusters_json: Json, cluster: str | None = None) -> list[Row]:
    """From admin /clusters?format=json (endpoints live there, not in the config dump)."""
    keyed: list[tuple[tuple[str, int, str], Row]] = []
    for c in clusters_json.get("cluster_statuses", []):
        name = str(c.get("name"))
        if cluster is not None and name.lower() != cluster.lower():
            continue
        for h in c.get("host_statuses", []):
            sa = h.get("address", {}).get("socket_address", {})
            address, port = str(sa.get("address", "")), int(sa.get("port_value", 0))
            host = f"{address}:{port}" if port else address
            health = h.get("health_status", {})
            status = str(health.get("eds_health_status", "UNKNOWN"))  # the proto enum's zero value
            outlier = "FAILED" if health.get("failed_outlier_check") else "OK"
            keyed.append(((address, port, name), (host, status, outlier, name)))
    return [row for _, row in sorted(keyed, key=lambda kr: kr[0])]


# -- output -----------------------------------------------------------------------------------


# istioctl's tabwriter padding: 1 for the listener table, 5 for routes, clusters, endpoints.
PADDING = {LISTENER_HEADER: 1, ROUTE_HEADER: 5, CLUSTER_HEADER: 5, ENDPOINT_HEADER: 5}


def table(header: Row, rows: Sequence[Row]) -> str:
    """Go's tabwriter as istioctl sets it up: each cell but a line's last is padded to its
    column's width plus the padding (so an empty last cell leaves the padding, as istioctl's
    output does); the last cell is written as it is."""
    pad = PADDING.get(header, 1)
    widths = [max(len(r[i]) for r in [header, *rows]) + pad for i in range(len(header) - 1)]
    lines = ["".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + row[-1] for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _camel_key(key: str) -> str:
    if key.startswith("@") or "_" not in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camel(value: Any) -> Any:
    """istioctl's -o json|yaml spelling: camelCase keys (`use_original_dst` → `useOriginalDst`)."""
    if isinstance(value, dict):
        return {_camel_key(str(k)): camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value
