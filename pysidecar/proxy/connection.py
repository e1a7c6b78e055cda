"""An accepted connection, from accept to the network filter that takes it over.

Promises:
- On accept it recovers the original destination (when the listener uses original_dst), hands
  the connection to the listener that owns that destination (use_original_dst), picks the
  filter chain, and switches the transport's protocol to the chain's network filter. The
  listener's stats (downstream_cx_total / _active / _destroy, no_filter_chain_match) count it
  on the listener that finally handles it, as Envoy does.
- The decision is made on the config snapshot current at accept time; the connection keeps
  it until it closes, whatever reloads happen meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from pysidecar.model import Listener, ListenerFilter, SocketAddress, TcpProxy
from pysidecar.observe.stats import ListenerStats
from pysidecar.proxy.listener_table import ConnectionInfo, select_filter_chain
from pysidecar.proxy.original_dst import original_dst
from pysidecar.proxy.tcp_proxy import TcpProxySession

if TYPE_CHECKING:
    from pysidecar.proxy.worker import Snapshot, Worker

log = logging.getLogger(__name__)


class ActiveConnection(asyncio.Protocol):
    """The protocol every listener socket starts a connection with."""

    __slots__ = ("bound", "listener", "stats", "transport", "worker")

    def __init__(self, worker: Worker, bound: Listener) -> None:
        self.worker = worker
        self.bound = bound
        self.listener = bound
        self.stats: ListenerStats | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        snapshot = self.worker.snapshot
        bound = snapshot.bound.get(self.bound.name, self.bound)
        local = transport.get_extra_info("sockname")
        orig: SocketAddress | None = None
        if bound.use_original_dst or ListenerFilter.ORIGINAL_DST in bound.listener_filters:
            orig = original_dst(transport.get_extra_info("socket"))
        destination = orig or SocketAddress(str(local[0]), int(local[1]))
        listener = snapshot.table.handoff(bound, orig)
        self.listener = listener
        stats = self.worker.stats.listener(listener.address.listener_name)
        self.stats = stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        self.dispatch(snapshot, ConnectionInfo(destination), b"")

    def dispatch(self, snapshot: Snapshot, info: ConnectionInfo, initial: bytes) -> None:
        transport = self.transport
        assert transport is not None and self.stats is not None
        chain = select_filter_chain(self.listener, info)
        if chain is None:
            self.stats.no_filter_chain_match += 1
            transport.close()  # connection_lost does the accounting
            return
        network_filter = chain.terminal_filter
        if isinstance(network_filter, TcpProxy):
            session = TcpProxySession(
                self.worker.loop,
                network_filter,
                self.worker.stats.tcp(network_filter.stat_prefix),
                info.destination,
                self.listener.per_connection_buffer_limit_bytes,
                self.closed,
            )
            record = session.info
            record.listener_name = self.listener.name
            record.downstream_local_address = str(info.destination)
            peer = transport.get_extra_info("peername")
            if peer:
                record.downstream_remote_address = str(SocketAddress(str(peer[0]), int(peer[1])))
            self.worker.connections.add(session)
            transport.set_protocol(session)
            session.start(transport, initial, self.worker.clusters, self.worker.rng)
            return
        raise AssertionError(f"no data path for network filter {type(network_filter).__name__}")

    def closed(self, session: object) -> None:
        if self.stats is not None:
            self.stats.downstream_cx_active -= 1
            self.stats.downstream_cx_destroy += 1
        self.worker.connections.discard(session)
        if isinstance(session, TcpProxySession):
            info = session.info
            if info.upstream_cluster is None and session.cluster is not None:
                # tcp_proxy names the cluster once it has a host; BlackHoleCluster never has one,
                # yet Istio's log line and metrics name it.
                info.upstream_cluster = session.cluster.config.name
            self.worker.stream_complete(info)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced at dispatch
        raise AssertionError("data before dispatch")

    def connection_lost(self, exc: Exception | None) -> None:
        # Only reached when the connection ends before a network filter took it over.
        self.closed(None)
