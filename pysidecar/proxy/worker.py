"""A worker process: its own uvloop, its own listening sockets (SO_REUSEPORT), its own stats.

Promises:
- Every listener with bind_to_port (and its additional_addresses) is bound in every worker with
  SO_REUSEPORT, so the kernel spreads accepted connections over the workers, as Envoy's
  workers do. An additional IPv6 address on a host without IPv6 is skipped with a warning; any
  other bind failure stops the worker with exit status 1 before it reports ready.
- `apply(bootstrap)` swaps the config: a new snapshot for new connections, sockets bound and
  closed to match the new listener set, clusters updated in place. Open connections keep
  the snapshot they started with.
- SIGTERM (or a "drain" request) stops accepting, lets open connections finish for up to the
  drain time, closes what is left and exits 0.
- The main process talks to the worker over the control channel: "stats", "clusters" (per-host
  counters), "reset_counters", "config", "drain", "ping".
- What start-up built (the snapshot, stats blocks, listeners) is frozen out of the collector
  (gc.freeze) before the worker reports ready: it lives as long as the worker, and a full
  collection then walks only what traffic made (the main process froze the rest before fork).
- `stream_complete(info)` is called once per finished TCP connection / HTTP request: Istio's
  standard metrics and the per-host counters, then the access log line when the log is on
  (off, it costs one attribute test).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import random
import signal
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from pysidecar.common import workload
from pysidecar.common.stream_info import StreamInfo
from pysidecar.common.tls_context import contexts_for
from pysidecar.explain.recent import RECENT, record
from pysidecar.model import (
    AccessLogConfig,
    Bootstrap,
    Listener,
    ListenerFilter,
    SocketAddress,
    TcpProxy,
    TrafficDirection,
)
from pysidecar.model.http import HttpConnectionManager, ZipkinProvider
from pysidecar.model.tls import DownstreamTlsContext
from pysidecar.observe.access_log import AccessLog
from pysidecar.observe.host_stats import HostSnapshot, HostStats
from pysidecar.observe.istio_metrics import IstioRecorder
from pysidecar.observe.stats import StatsStore
from pysidecar.proxy.cluster_manager import ClusterManager
from pysidecar.proxy.connection import ActiveConnection
from pysidecar.proxy.control import ControlProtocol, Message
from pysidecar.proxy.http.http1.server_codec import HttpConnection
from pysidecar.proxy.http.http2.server_codec import Http2Connection
from pysidecar.proxy.lb import Host
from pysidecar.proxy.listener_table import ListenerTable
from pysidecar.proxy.loop_detect import own_sockets
from pysidecar.proxy.tracing.reporter import ZipkinReporter, local_ipv4

log = logging.getLogger(__name__)

# Listen backlog: the kernel caps it at net.core.somaxconn.
BACKLOG = 4096


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The config a connection is accepted under."""

    bootstrap: Bootstrap
    table: ListenerTable
    bound: dict[str, Listener]
    # Listener names whose traffic is inbound: Istio's metrics report them as "destination".
    inbound: frozenset[str]
    # The filter chains' TLS transport sockets, each built once when the config is loaded.
    tls_contexts: dict[DownstreamTlsContext, ssl.SSLContext]
    # The addresses our bound listeners accept on: an upstream among them is a forwarding loop.
    own: frozenset[SocketAddress] = frozenset()

    @classmethod
    def of(cls, bootstrap: Bootstrap) -> Snapshot:
        inbound = frozenset(
            x.name for x in bootstrap.listeners if x.traffic_direction is TrafficDirection.INBOUND
        )
        chains = [c for x in bootstrap.listeners for c in (*x.filter_chains, x.default_filter_chain) if c is not None]
        return cls(
            bootstrap, ListenerTable.build(bootstrap), {x.name: x for x in bootstrap.listeners}, inbound,
            contexts_for(chains, bootstrap.identity.snapshot() if bootstrap.identity else {}),
            own_sockets(bootstrap.listeners),
        )  # fmt: skip


# Linux socket options without a name in Python's socket module (linux/in.h, linux/in6.h).
IP_FREEBIND = 15
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78


def bind_socket(address: SocketAddress, transparent: bool = False, freebind: bool = False) -> socket.socket:
    """A listening socket for `address`; `transparent` sets IP_TRANSPARENT (TPROXY: needs
    CAP_NET_ADMIN), `freebind` IP_FREEBIND, as Envoy's listener fields of those names do."""
    family = socket.AF_INET6 if ":" in address.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        v6 = family == socket.AF_INET6
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            try:
                if v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            except PermissionError as e:
                raise OSError(e.errno, f"{e.strerror} (transparent: IP_TRANSPARENT needs CAP_NET_ADMIN)") from e
        if freebind:
            sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP, IPV6_FREEBIND if v6 else IP_FREEBIND, 1)
        sock.bind((address.address, address.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _host_name(h: Host) -> str:
    return f"[{h.address}]:{h.port}" if ":" in h.address else f"{h.address}:{h.port}"
def declare_stats(store: StatsStore, bootstrap: Bootstrap) -> None:
    """Envoy creates a component's stats with the component, so they read 0 before any traffic
    (`http_inspector.http10_found 0`): the blocks of every listener, its listener filters and
    its connection managers and tcp proxies."""
    for lis in bootstrap.listeners:
        store.listener(lis.address.listener_name)
        if ListenerFilter.TLS_INSPECTOR in lis.listener_filters:
            store.tls_inspector()
        if ListenerFilter.HTTP_INSPECTOR in lis.listener_filters:
            store.http_inspector()
        chains = (*lis.filter_chains, *((lis.default_filter_chain,) if lis.default_filter_chain else ()))
        for chain in chains:
            for f in chain.filters:
                if isinstance(f, HttpConnectionManager):
                    store.http(f.stat_prefix)
                elif isinstance(f, TcpProxy):
                    store.tcp(f.stat_prefix)


class Worker:
    def __init__(
        self, bootstrap: Bootstrap, index: int, drain_time: float, access_log: AccessLogConfig | None = None
    ) -> None:
        self.index = index
        self.drain_time = drain_time
        self.loop = asyncio.get_running_loop()
        self.stats = StatsStore()
        self.istio = IstioRecorder(self.stats, workload.load())
        self.hosts = HostStats()
        self.access_log = (
            AccessLog(access_log, self.loop) if access_log is not None and access_log.path else None
        )
        self.filter_logs: dict[str | None, tuple[AccessLog, ...]] = {}
        self._filter_writers: dict[AccessLogConfig, AccessLog] = {}
        self.clusters = ClusterManager(self.stats, self.loop)
        self.rng = random.Random()
        self.connections: set[Any] = set()
        self.draining = False
        self.snapshot = Snapshot.of(bootstrap)
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._stopping = asyncio.Event()
        self.control: ControlProtocol | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Tracing: the reporters by provider, and what a span says about this proxy.
        self._zipkin: dict[ZipkinProvider, ZipkinReporter] = {}
        self.node_id = bootstrap.node_id
        self.service_cluster = bootstrap.node_cluster or "pysidecar"
        self.local_ip = local_ipv4()
        # The last finished streams, for the admin's /explain (a bounded deque: one append each).
        self.recent: deque[StreamInfo] = deque(maxlen=RECENT)

    def zipkin(self, provider: ZipkinProvider) -> ZipkinReporter:
        found = self._zipkin.get(provider)
        if found is None:
            found = self._zipkin[provider] = ZipkinReporter(self.loop, provider, self.clusters.get)
        return found

    # -- config ------------------------------------------------------------------------------
    async def apply(self, bootstrap: Bootstrap) -> None:
        self.clusters.update(bootstrap.clusters, bootstrap.identity.snapshot() if bootstrap.identity else None)
        self.istio.set_identity(bootstrap.identity.spiffe_id if bootstrap.identity else None)
        await self.clusters.warm()
        self.snapshot = Snapshot.of(bootstrap)
        self._drain_changed(bootstrap)
        self.node_id = bootstrap.node_id
        self.service_cluster = bootstrap.node_cluster or "pysidecar"
        declare_stats(self.stats, bootstrap)
        self._open_filter_logs(bootstrap)
        wanted: dict[tuple[str, int], tuple[Listener, bool]] = {}
        for lis in bootstrap.listeners:
            if not lis.bind_to_port:
                continue
            wanted[(lis.address.address, lis.address.port)] = (lis, True)
            for extra in lis.additional_addresses:
                wanted[(extra.address, extra.port)] = (lis, False)
        for key in list(self._servers):
            if key not in wanted:
                self._servers.pop(key).close()
        for key, (lis, required) in wanted.items():
            if key in self._servers:
                continue
            try:
                sock = bind_socket(SocketAddress(*key), lis.transparent, lis.freebind)
            except OSError as e:
                if not required and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("listener %s: skipping [%s]:%d: %s", lis.name, key[0], key[1], e.strerror)
                    continue
                raise OSError(e.errno, f"listener {lis.name}: cannot bind {key[0]}:{key[1]}: {e.strerror}") from e
            self._servers[key] = await self.loop.create_server(
                self._factory(lis.name), sock=sock, backlog=BACKLOG
            )

    def _factory(self, listener_name: str) -> Any:
        def make() -> ActiveConnection:
            snap = self.snapshot
            return ActiveConnection(self, snap.bound[listener_name])

        return make

    # -- observability -----------------------------------------------------------------------
    def _open_filter_logs(self, bootstrap: Bootstrap) -> None:
        """The `access_log` lists of each listener's network filters, one writer per setting.

        Keyed by listener name, which every StreamInfo carries: a listener whose chains log
        differently logs each stream to the union of its chains' logs (good enough for the
        one-HCM-per-listener configs Istio and the seeds write)."""
        writers: dict[AccessLogConfig, AccessLog] = {}
        unusable: set[AccessLogConfig] = set()
        by_listener: dict[str | None, tuple[AccessLog, ...]] = {}
        for lis in bootstrap.listeners:
            chains = [*lis.filter_chains, *([lis.default_filter_chain] if lis.default_filter_chain else [])]
            configs = dict.fromkeys(a for c in chains for f in c.filters for a in f.access_log)
            for a in configs:
                if a not in writers and a not in unusable:
                    try:
                        writers[a] = self._filter_writer(a)
                    except OSError as e:
                        # A log that cannot be opened must not stop the config (or the worker).
                        log.error("access log %s cannot be opened, not logging to it: %s", a.path, e.strerror)
                        unusable.add(a)
            if found := tuple(writers[a] for a in configs if a in writers):
                by_listener[lis.name] = found
        for config, old in self._filter_writers.items():
            if config not in writers:
                old.close()
        self._filter_writers = writers
        self.filter_logs = by_listener

    def _filter_writer(self, config: AccessLogConfig) -> AccessLog:
        return self._filter_writers.get(config) or AccessLog(config, self.loop)

    def stream_complete(self, info: StreamInfo) -> None:
        """A TCP connection or HTTP request is finished: metrics, host counters, access log."""
        self.istio.record(info, info.listener_name in self.snapshot.inbound)
        self.hosts.record(info)
        self.recent.append(info)
        log = self.access_log
        if log is not None:
            log.log(info)
        for filter_log in self.filter_logs.get(info.listener_name, ()):
            filter_log.log(info)

    def host_snapshot(self) -> HostSnapshot:
        configured = {
            name: {_host_name(h): h.active for h in c.hosts} for name, c in self.clusters.clusters.items()
        }
        return self.hosts.snapshot(configured)

    # -- control -----------------------------------------------------------------------------
    def handle(self, msg: Message) -> Any:
        op = msg.get("op")
        if op == "stats":
            return self.stats.snapshot()
        if op == "clusters":
            return self.host_snapshot()
        if op == "reset_counters":
            self.stats.reset_counters()
            self.hosts.reset()
            return True
        if op == "config":
            self._tasks.add(task := self.loop.create_task(self.apply(msg["bootstrap"])))
            task.add_done_callback(self._tasks.discard)
            return True
        if op == "drain":
            self.stop_accepting()
            return True
        if op == "logging":
            from pysidecar.proxy.logs import setup_logging

            setup_logging(str(msg["level"]))
            return True
        if op == "recent":
            return [record(i) for i in list(self.recent)[-int(msg.get("n", RECENT)) :]]
        if op == "ping":
            return {"worker": self.index, "connections": len(self.connections)}
        raise ValueError(f"unknown control op {op!r}")

    # -- lifecycle ---------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def _drain_changed(self, bootstrap: Bootstrap) -> None:
        """HTTP connections whose connection manager is not in the new config (a new
        AuthorizationPolicy, routes, ...) are drained, so the change reaches every request
        soon, never only new connections: HTTP/1 closes an idle keep-alive connection now and
        a busy one after its response (`connection: close`), HTTP/2 sends GOAWAY. Envoy drains
        a changed filter chain's connections gradually over its drain time; this is faster
        because a security policy should not wait for a client to reconnect. TCP sessions
        keep their config until they close."""
        live = [
            f for lis in bootstrap.listeners
            for c in (*lis.filter_chains, *((lis.default_filter_chain,) if lis.default_filter_chain else ()))
            for f in c.filters if isinstance(f, HttpConnectionManager)
        ]  # fmt: skip
        kept: dict[int, bool] = {}
        for conn in list(self.connections):
            if not isinstance(conn, (HttpConnection, Http2Connection)):
                continue
            old = conn.cfg.config
            if id(old) not in kept:
                kept[id(old)] = any(old is h or old == h for h in live)
            if kept[id(old)]:
                continue
            conn.start_drain()
            if isinstance(conn, HttpConnection) and conn.active is None and conn.parsing is None and conn.tunnel is None:
                conn.close()

    async def drain(self) -> None:
        """Stop accepting (new connects are refused at once), let open connections finish for
        up to drain_time (HTTP ones close after their current response), then close the rest."""
        self.stop_accepting()
        self.draining = True
        for conn in self.connections:
            if isinstance(conn, (HttpConnection, Http2Connection)):
                conn.start_drain()
        deadline = self.loop.time() + self.drain_time
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for reporter in self._zipkin.values():
            await reporter.drain()
        self.clusters.stop()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        for writer in self._filter_writers.values():
            writer.close()
        self._filter_writers = {}
        self.filter_logs = {}

    async def run(self, control_sock: socket.socket | None) -> int:
        self.loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        if control_sock is not None:
            _, proto = await self.loop.connect_accepted_socket(
                lambda: ControlProtocol(self.handle, self._stopping.set), sock=control_sock
            )
            self.control = proto
        try:
            await self.apply(self.snapshot.bootstrap)
        except OSError as e:
            log.error("worker %d: %s", self.index, e)
            return 1
        # What start-up built lives as long as the worker: out of the collector's walks.
        gc.collect()
        gc.freeze()
        if self.control is not None:
            self.control.send({"op": "ready", "worker": self.index, "pid": os.getpid()})
        log.info("worker %d ready (pid %d)", self.index, os.getpid())
        await self._stopping.wait()
        await self.drain()
        return 0
