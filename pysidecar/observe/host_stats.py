"""Per-host counters for admin /clusters, kept per worker from finished streams.

Promises:
- `HostStats.record(info)` counts a finished stream against its (cluster, upstream host):
  a TCP session is one upstream connection (cx_total, cx_connect_fail on UF), an HTTP request
  is one request (rq_total, rq_success / rq_error by 5xx, rq_timeout on UT), as Envoy's host
  stats count them. Streams that never picked a host are not counted (Envoy has no host then).
- `snapshot(configured)` is {cluster: {host: {counter: value}}} including the configured hosts
  that saw no traffic; `configured` gives each host's live active request count (rq_active,
  what LEAST_REQUEST balances on). Snapshots of several workers add up with `merge_hosts`.
- Host counts are bounded per cluster (MAX_HOSTS_PER_CLUSTER): an ORIGINAL_DST cluster sees
  one host per destination, and Envoy too forgets idle ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pysidecar.common.stream_info import StreamInfo

# Envoy's host stats, in the order its /clusters prints them. rq_active is the live count the
# worker passes in; cx_active and rq_pending_active stay 0 (a finished stream is all we see).
COUNTERS = ("cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error",
            "rq_pending_active", "rq_success", "rq_timeout", "rq_total")  # fmt: skip
MAX_HOSTS_PER_CLUSTER = 1000
HostSnapshot = dict[str, dict[str, dict[str, int]]]


class HostCounters:
    __slots__ = COUNTERS
    cx_active: int
    cx_connect_fail: int
    cx_total: int
    rq_active: int
    rq_error: int
    rq_pending_active: int
    rq_success: int
    rq_timeout: int
    rq_total: int

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class HostStats:
    def __init__(self) -> None:
        self._hosts: dict[str, dict[str, HostCounters]] = {}

    def record(self, info: StreamInfo) -> None:
        cluster, host = info.upstream_cluster, info.upstream_host
        if cluster is None or host is None:
            return
        hosts = self._hosts.get(cluster)
        if hosts is None:
            hosts = self._hosts[cluster] = {}
        c = hosts.get(host)
        if c is None:
            if len(hosts) >= MAX_HOSTS_PER_CLUSTER:
                hosts.pop(next(iter(hosts)))
            c = hosts[host] = HostCounters()
        flags = info.response_flags
        if info.protocol is None:
            c.cx_total += 1
            if "UF" in flags:
                c.cx_connect_fail += 1
            return
        c.rq_total += 1
        if info.response_code >= 500:
            c.rq_error += 1
        else:
            c.rq_success += 1
        if "UT" in flags:
            c.rq_timeout += 1

    def snapshot(self, configured: Mapping[str, Mapping[str, int]]) -> HostSnapshot:
        """Counters per cluster and host; `configured` maps each cluster's known hosts to their
        active requests."""
        out: HostSnapshot = {name: {h: {} for h in hosts} for name, hosts in configured.items()}
        for cluster, hosts in self._hosts.items():
            entry = out.setdefault(cluster, {})
            for host, c in hosts.items():
                entry[host] = c.as_dict()
        for name, entry in out.items():
            active = configured.get(name, {})
            for host, counters in entry.items():
                if not counters:
                    counters = entry[host] = HostCounters().as_dict()
                counters["rq_active"] = active.get(host, 0)
        return out

    def reset(self) -> None:
        self._hosts.clear()


def merge_hosts(snapshots: Iterable[HostSnapshot]) -> HostSnapshot:
    out: HostSnapshot = {}
    for snap in snapshots:
        for cluster, hosts in snap.items():
            entry = out.setdefault(cluster, {})
            for host, counters in hosts.items():
                prev = entry.get(host)
                entry[host] = counters if prev is None else {k: prev[k] + counters[k] for k in prev}
    return out
