"""The cluster manager: each configured cluster's live hosts, balancer and stats, per worker.

Promises:
- STATIC clusters use their endpoints as given; STRICT_DNS resolves every endpoint name and
  uses the addresses its dns_lookup_family keeps (`pick_family`: AUTO, Envoy's default, takes
  the IPv6 ones when there are any); LOGICAL_DNS uses the first address of its one name; both re-resolve
  every `dns_refresh_rate` in the background and keep the last good answer on failure.
  Names resolve through the system resolver, so /etc/hosts (and a lab's /etc/netns/<ns>/hosts)
  applies.
- ORIGINAL_DST clusters have no hosts of their own: the connection's original destination is the
  host (Envoy's CLUSTER_PROVIDED balancing).
- `choose_host` returns the live `Host`; whoever uses it for a request (a tcp_proxy connection,
  an HTTP attempt) counts it in `Host.active` until done, which is what LEAST_REQUEST reads and
  admin /clusters prints as rq_active. A re-resolve keeps the Host objects of addresses it
  finds again, so their counts survive it.
- Each runtime carries the cluster's circuit breaker and, when configured, its outlier
  detector (both per worker: see `proxy.circuit_breaker`); the balancer picks from
  `lb_hosts`, the hosts outlier detection has not ejected (or all of them in panic).
- Upstream TLS: `upstream_tls(host)` is the host's UpstreamTls (Envoy's transport socket
  match on the endpoint's metadata; hosts found by DNS take the first endpoint's), None for
  plaintext. The contexts are built per config by `update` (from the identity's snapshot), so
  a rotated certificate reaches kept runtimes too.
- `update(clusters)` keeps the runtime (hosts, balancer state, DNS task) of every cluster whose
  definition did not change, so a reload does not disturb traffic to unchanged clusters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from pysidecar.model import Cluster, ClusterType, DnsLookupFamily, SocketAddress
from pysidecar.model.tls import UpstreamTlsContext
from pysidecar.observe.stats import (
    ClusterHttpStats,
    ClusterStats,
    StatsStore,
    outlier_detection_stats,
)
from pysidecar.proxy.circuit_breaker import CircuitBreaker
from pysidecar.proxy.lb import Host, LoadBalancer, load_balancer
from pysidecar.proxy.outlier import OutlierDetector, lb_hosts
from pysidecar.proxy.upstream_tls import UpstreamTls, client_contexts

log = logging.getLogger(__name__)


class ClusterRuntime:
    __slots__ = (
        "_dns_task",
        "_http_stats",
        "_sweep",
        "balancer",
        "breaker",
        "config",
        "hosts",
        "lb_hosts",
        "outlier",
        "stats",
        "tls_by_host",
        "tls_default",
        "tls_table",
    )

    def __init__(
        self, config: Cluster, stats: ClusterStats, store: StatsStore | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.stats = stats
        self.balancer: LoadBalancer = load_balancer(config.lb_policy)
        self.hosts: list[Host] = []
        self.lb_hosts: Sequence[Host] = self.hosts
        self.breaker = CircuitBreaker(config.circuit_breakers)
        self.outlier: OutlierDetector | None = None
        if config.outlier_detection is not None:
            self.outlier = OutlierDetector(
                config.outlier_detection,
                outlier_detection_stats(store or StatsStore(), config.stat_name),
                clock,
                self._rebalance,
            )
        self._sweep: asyncio.TimerHandle | None = None
        self._http_stats: tuple[StatsStore, ClusterHttpStats] | None = None
        self._dns_task: asyncio.Task[None] | None = None
        # Transport socket per endpoint address (STATIC), else the first endpoint's.
        self.tls_by_host: dict[tuple[str, int], UpstreamTlsContext | None] = {
            (e.address.address, e.address.port): config.upstream_tls(e.transport_socket_match) for e in config.endpoints
        }
        first = config.endpoints[0].transport_socket_match if config.endpoints else ()
        self.tls_default = config.upstream_tls(first)
        self.tls_table: Mapping[UpstreamTlsContext, UpstreamTls] = {}
        if config.type is ClusterType.STATIC:
            self._set_hosts(
                Host(e.address.address, e.address.port, e.load_balancing_weight) for e in config.endpoints
            )

    @property
    def original_dst(self) -> bool:
        return self.config.type is ClusterType.ORIGINAL_DST

    def choose_host(self, original_dst: SocketAddress | None) -> Host | None:
        if self.config.type is ClusterType.ORIGINAL_DST:
            return Host(original_dst.address, original_dst.port) if original_dst is not None else None
        return self.balancer.choose(self.lb_hosts)

    def http_stats(self, store: StatsStore) -> ClusterHttpStats:
        """The cluster's `upstream_rq_*` block in `store` (the worker's): looked up once, not
        per request (the store keeps its blocks across reloads)."""
        cached = self._http_stats
        if cached is None or cached[0] is not store:
            cached = self._http_stats = (store, store.cluster_http(self.config.stat_name))
        return cached[1]

    def upstream_tls(self, host: tuple[str, int]) -> UpstreamTls | None:
        ctx = self.tls_by_host.get(host, self.tls_default)
        return None if ctx is None else self.tls_table[ctx]

    def bind_address_for(self, upstream_ip: str) -> str | None:
        """The upstream_bind_config source address of the upstream's address family, if any."""
        if not self.config.upstream_bind_addresses:
            return None
        v6 = ":" in upstream_ip
        for addr in self.config.upstream_bind_addresses:
            if (":" in addr) == v6:
                return addr
        return None

    def _set_hosts(self, hosts: Iterable[Host]) -> None:
        known = {h.key: h for h in self.hosts}
        fresh: list[Host] = []
        for h in hosts:
            same = known.get(h.key)
            if same is not None:
                same.weight = h.weight
            fresh.append(same or h)
        self.hosts = fresh
        self.stats.membership_total = len(self.hosts)
        if self.outlier is not None:
            self.outlier.set_hosts(h.key for h in self.hosts)
        self._rebalance()

    def _rebalance(self) -> None:
        """Recompute the balancing set after hosts or ejections changed (never per request)."""
        od = self.outlier
        if od is None:
            self.lb_hosts = self.hosts
            self.stats.membership_healthy = len(self.hosts)
            return
        healthy = [h for h in self.hosts if not od.is_ejected(h.key)]
        self.stats.membership_healthy = len(healthy)
        self.lb_hosts = lb_hosts(self.hosts, healthy, self.config.healthy_panic_threshold)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.config.type in (ClusterType.STRICT_DNS, ClusterType.LOGICAL_DNS):
            self._dns_task = loop.create_task(self._resolve_forever(loop))
        od = self.outlier
        if od is not None:
            interval = od.config.interval

            def sweep() -> None:
                od.sweep()
                self._sweep = loop.call_later(interval, sweep)

            self._sweep = loop.call_later(interval, sweep)

    def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._dns_task is not None:
            self._dns_task.cancel()
            self._dns_task = None

    async def resolve_once(self, loop: asyncio.AbstractEventLoop) -> None:
        found: list[Host] = []
        endpoints = self.config.endpoints
        if self.config.type is ClusterType.LOGICAL_DNS:
            endpoints = endpoints[:1]
        for ep in endpoints:
            addrs = await _resolve(loop, ep.address.address, ep.address.port, self.config.dns_lookup_family)
            if self.config.type is ClusterType.LOGICAL_DNS:
                addrs = addrs[:1]
            found.extend(Host(a, ep.address.port, ep.load_balancing_weight) for a in addrs)
        if found or not self.hosts:
            self._set_hosts(found)

    async def _resolve_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                await self.resolve_once(loop)
            except Exception:  # a resolver failure keeps the last good hosts
                log.exception("cluster %s: DNS resolution failed", self.config.name)
            await asyncio.sleep(self.config.dns_refresh_rate)


async def _resolve(
    loop: asyncio.AbstractEventLoop, name: str, port: int, family: DnsLookupFamily
) -> list[str]:
    try:
        ipaddress.ip_address(name)
        return [name]
    except ValueError:
        pass
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as e:
        log.warning("DNS lookup of %s failed: %s", name, e)
        return []
    found: list[str] = []
    for af, *_rest, sockaddr in infos:
        ip = str(sockaddr[0])
        if af in (socket.AF_INET, socket.AF_INET6) and ip not in found:
            found.append(ip)
    return pick_family(found, family)


def pick_family(addresses: list[str], family: DnsLookupFamily) -> list[str]:
    """The addresses Envoy's dns_lookup_family keeps of a name's answers (in resolver order)."""
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    if family is DnsLookupFamily.V4_ONLY:
        return v4
    if family is DnsLookupFamily.V6_ONLY:
        return v6
    if family is DnsLookupFamily.AUTO:
        return v6 or v4
    if family is DnsLookupFamily.V4_PREFERRED:
        return v4 or v6
    return addresses


class ClusterManager:
    def __init__(self, stats: StatsStore, loop: asyncio.AbstractEventLoop) -> None:
        self._stats = stats
        self._loop = loop
        self.clusters: dict[str, ClusterRuntime] = {}

    def get(self, name: str) -> ClusterRuntime | None:
        return self.clusters.get(name)

    def update(self, clusters: Iterable[Cluster], files: Mapping[str, str] | None = None) -> None:
        """`files`: the workload identity's texts (file name → PEM) the contexts are built from."""
        clusters = list(clusters)
        wanted = [
            t for c in clusters for t in (c.transport_socket, *(m.transport_socket for m in c.transport_socket_matches))
            if t is not None
        ]  # fmt: skip
        table = client_contexts(wanted, files or {})
        fresh: dict[str, ClusterRuntime] = {}
        for c in clusters:
            old = self.clusters.get(c.name)
            if old is not None and old.config == c:
                fresh[c.name] = old
                continue
            runtime = ClusterRuntime(c, self._stats.cluster(c.stat_name), self._stats, self._loop.time)
            runtime.start(self._loop)
            fresh[c.name] = runtime
        for runtime in fresh.values():
            runtime.tls_table = table
        for name, old in self.clusters.items():
            if fresh.get(name) is not old:
                old.stop()
        self.clusters = fresh

    async def warm(self) -> None:
        """Resolve DNS clusters once before serving, as Envoy's cluster warming does."""
        pending = [
            c.resolve_once(self._loop)
            for c in self.clusters.values()
            if c.config.type in (ClusterType.STRICT_DNS, ClusterType.LOGICAL_DNS)
        ]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        for c in self.clusters.values():
            c.stop()
