"""Admin /listeners and /clusters bodies, in Envoy's text and JSON shapes. Pure functions.

Promises:
- `/listeners`: one `name::address` line per listener (`virtualOutbound::0.0.0.0:15001`);
  JSON `{"listener_statuses": [{"name", "local_address", "additional_local_addresses"}]}`.
- `/clusters`: Envoy's `cluster::...` lines: observability_name, the circuit breaker
  thresholds (unbounded here, as Istio sets them), added_via_api, then per host
  `cluster::host:port::counter::value` and the host's health, weight and locality lines;
  JSON `{"cluster_statuses": [...]}` with `host_statuses[].stats`.
- `stats_lines` / `used_only`: the /stats text body and Envoy's `?usedonly` filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from pysidecar.common.envoy_json import socket_address
from pysidecar.model import Bootstrap, SocketAddress
from pysidecar.observe.host_stats import HostSnapshot
from pysidecar.observe.stats import HistogramState, Kind

# Istio sets every circuit breaker threshold to this; pysidecar enforces none.
UNBOUNDED = 4294967295
_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
_HOST_TAIL = (("hostname", ""), ("health_flags", "healthy"), ("weight", "1"), ("region", ""),
              ("zone", ""), ("sub_zone", ""), ("canary", "false"), ("priority", "0"),
              ("success_rate", "-1"), ("local_origin_success_rate", "-1"))  # fmt: skip


def listeners_text(b: Bootstrap) -> str:
    return "".join(f"{x.name}::{x.address}\n" for x in b.listeners)


def listeners_json(b: Bootstrap) -> dict[str, Any]:
    statuses = []
    for x in b.listeners:
        status: dict[str, Any] = {"name": x.name, "local_address": socket_address(x.address)}
        if x.additional_addresses:
            status["additional_local_addresses"] = [socket_address(a) for a in x.additional_addresses]
        statuses.append(status)
    return {"listener_statuses": statuses}


def _split_host(host: str) -> SocketAddress:
    address, _, port = host.rpartition(":")
    return SocketAddress(address.strip("[]"), int(port))


def clusters_text(b: Bootstrap, hosts: HostSnapshot) -> str:
    lines: list[str] = []
    for c in b.clusters:
        n = c.name
        lines.append(f"{n}::observability_name::{c.stat_name}")
        for priority in ("default_priority", "high_priority"):
            lines.extend(f"{n}::{priority}::{t}::{UNBOUNDED}" for t in _THRESHOLDS)
        lines.append(f"{n}::added_via_api::false")
        for host, counters in sorted(hosts.get(n, {}).items()):
            lines.extend(f"{n}::{host}::{k}::{v}" for k, v in counters.items())
            lines.extend(f"{n}::{host}::{k}::{v}" for k, v in _HOST_TAIL)
    return "".join(line + "\n" for line in lines)


def clusters_json(b: Bootstrap, hosts: HostSnapshot) -> dict[str, Any]:
    statuses = []
    for c in b.clusters:
        host_statuses = [
            {
                "address": socket_address(_split_host(host)),
                "stats": [{"name": k, "value": str(v)} for k, v in counters.items()],
                "health_status": {"eds_health_status": "HEALTHY"},
                "weight": 1,
            }
            for host, counters in sorted(hosts.get(c.name, {}).items())
        ]
        statuses.append(
            {"name": c.name, "observability_name": c.stat_name, "added_via_api": False, "host_statuses": host_statuses}
        )
    return {"cluster_statuses": statuses}


def stat_value(kind: Kind, value: object) -> object:
    """A stat for /stats: its number, or a histogram's count, sum and per-bucket counts."""
    if kind == "histogram":
        buckets, counts, n, total = cast(HistogramState, value)
        return {"count": n, "sum": total, "buckets": dict(zip([*map(str, buckets), "+Inf"], counts, strict=True))}
    return value


def used_only(merged: Mapping[str, tuple[Kind, object]]) -> dict[str, tuple[Kind, object]]:
    """Envoy's ?usedonly: stats that were ever written; with plain integers, the non-zero ones."""
    out: dict[str, tuple[Kind, object]] = {}
    for name, (kind, value) in merged.items():
        used = cast(HistogramState, value)[2] > 0 if kind == "histogram" else value != 0
        if used:
            out[name] = (kind, value)
    return out


def stats_lines(names: Iterable[str], merged: Mapping[str, tuple[Kind, object]]) -> str:
    return "".join(f"{n}: {stat_value(*merged[n])}\n" for n in names)
