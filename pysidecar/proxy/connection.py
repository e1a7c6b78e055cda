"""An accepted connection, from accept to the network filter that takes it over.

Promises:
- On accept it recovers the original destination (when the listener uses original_dst:
  SO_ORIGINAL_DST after a REDIRECT, the socket's local address on a transparent listener,
  which is how TPROXY delivers), hands
  the connection to the listener that owns that destination (use_original_dst), picks the
  filter chain, and switches the transport's protocol to the chain's network filter. The
  listener's stats (downstream_cx_total / _active / _destroy, no_filter_chain_match) count it
  on the listener that finally handles it, as Envoy does.
- Sniffing (listener filters tls_inspector / http_inspector) runs on every connection of a
  listener that has those filters, as Envoy runs every configured listener filter: their
  counters (`http_inspector.http11_found`, ...) count each inspected connection even when no
  chain matches on what they find. A listener without them chooses its chain at accept,
  without waiting for a byte. Sniffing reads until
  the inspectors can decide, the peer closes, or the handling listener's
  listener_filters_timeout (Envoy's 15 s default; 0: no limit) passes. Then, with
  continue_on_listener_filters_timeout (Istio's listeners set it), it continues with what it
  has: a server-first protocol waits that long, as on Envoy, and is proxied as TCP; without it
  (Envoy's default) the connection is closed and counted in the listener's
  downstream_pre_cx_timeout.
- The h2c preface is reported to chain matching as ALPN `h2c` (Istio's HTTP chains match
  `http/1.1` and `h2c`). The HCM's codec_type picks the codec: HTTP1, HTTP2, or AUTO as
  Envoy's: HTTP/2 when TLS negotiated ALPN `h2` or the first bytes are the HTTP/2 preface
  (read until they can tell, `CodecSniff`), else HTTP/1.
- A chain with a TLS transport socket terminates TLS first (proxy/tls_terminate.py, the
  chain's SSLContext from the snapshot): its network filter runs on the clear text, the HCM
  says `x-forwarded-proto: https`, tcp_proxy never splices, and handshakes are counted in
  `listener.<address>.ssl.*` (a failed one closes the connection).
- The decision is made on the config snapshot current at accept time; the connection keeps
  it until it closes, whatever reloads happen meanwhile.
- A connection still sniffing is one of the worker's open connections (`worker.connections`)
  until a network filter takes it over or it closes: a drain waits for it like any other and
  closes it at the drain deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, cast

from pysidecar.model import (
    FilterChain,
    Listener,
    ListenerFilter,
    NetworkFilter,
    SocketAddress,
    TcpProxy,
)
from pysidecar.model.http import CodecType, HttpConnectionManager
from pysidecar.observe.stats import ListenerStats
from pysidecar.proxy.http.compiled import compiled
from pysidecar.proxy.http.conn_pool import pools_for
from pysidecar.proxy.http.http1.server_codec import HttpConnection
from pysidecar.proxy.http.http2.server_codec import PREFACE, Http2Connection
from pysidecar.proxy.inspect import MAX_CLIENT_HELLO, TOO_LARGE, Inspection, TlsHello, decide
from pysidecar.proxy.listener_table import ConnectionInfo, select_filter_chain
from pysidecar.proxy.network_rbac import authorized
from pysidecar.proxy.original_dst import original_dst
from pysidecar.proxy.peer_tls import DownstreamTls
from pysidecar.proxy.tcp_proxy import TcpProxySession
from pysidecar.proxy.tls_terminate import HandshakeFailed, terminate

if TYPE_CHECKING:
    from pysidecar.proxy.worker import Snapshot, Worker

log = logging.getLogger(__name__)



class ActiveConnection(asyncio.Protocol):
    """The protocol every listener socket starts a connection with."""

    __slots__ = (
        "bound",
        "destination",
        "handshake",
        "listener",
        "peer_tls",
        "snapshot",
        "sniff_buf",
        "sniff_timer",
        "stats",
        "transport",
        "worker",
    )

    def __init__(self, worker: Worker, bound: Listener) -> None:
        self.worker = worker
        self.bound = bound
        self.listener = bound
        self.stats: ListenerStats | None = None
        self.transport: asyncio.Transport | None = None
        self.snapshot: Snapshot | None = None
        self.destination: SocketAddress | None = None
        self.sniff_buf = b""
        self.sniff_timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Task[None] | None = None
        self.peer_tls: DownstreamTls | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        snapshot = self.worker.snapshot
        bound = snapshot.bound.get(self.bound.name, self.bound)
        local = transport.get_extra_info("sockname")
        orig: SocketAddress | None = None
        local_address = SocketAddress(str(local[0]), int(local[1]))
        if bound.use_original_dst or ListenerFilter.ORIGINAL_DST in bound.listener_filters:
            # TPROXY (a transparent listener) changes no address: the local one is the original.
            orig = local_address if bound.transparent else original_dst(transport.get_extra_info("socket"))
        destination = orig or local_address
        listener = snapshot.table.handoff(bound, orig)
        self.listener = listener
        stats = self.worker.stats.listener(listener.address.listener_name)
        self.stats = stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        filters = listener.listener_filters
        sniff_tls = ListenerFilter.TLS_INSPECTOR in filters
        sniff_http = ListenerFilter.HTTP_INSPECTOR in filters
        if sniff_tls or sniff_http:
            self.snapshot = snapshot
            self.destination = destination
            if listener.listener_filters_timeout > 0:
                self.sniff_timer = self.worker.loop.call_later(
                    listener.listener_filters_timeout, self._sniff_timeout
                )
            self.worker.connections.add(self)
            return
        self.dispatch(snapshot, ConnectionInfo(destination), b"")

    # -- sniffing (listener filters) ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.sniff_buf += data
        self._inspect(eof=len(self.sniff_buf) >= MAX_CLIENT_HELLO)

    def eof_received(self) -> bool:
        proto = self._inspect(eof=True)
        eof = getattr(proto, "eof_received", None)
        return bool(eof()) if eof is not None else False

    def _sniff_timeout(self) -> None:
        self.sniff_timer = None
        if self.listener.continue_on_listener_filters_timeout:
            self._inspect(eof=True)
            return
        if self.stats is not None:
            self.stats.downstream_pre_cx_timeout += 1
        if self.transport is not None:
            self.transport.close()  # connection_lost does the rest of the accounting

    def _inspect(self, eof: bool) -> asyncio.BaseProtocol | None:
        """Decide when the inspectors can; returns the protocol that took the connection over."""
        filters = self.listener.listener_filters
        found = decide(
            self.sniff_buf,
            ListenerFilter.TLS_INSPECTOR in filters,
            ListenerFilter.HTTP_INSPECTOR in filters,
            eof,
        )
        if found is None or self.transport is None or self.snapshot is None:
            return None
        if self.sniff_timer is not None:
            self.sniff_timer.cancel()
            self.sniff_timer = None
        if self.sniff_buf:
            # A peer that closes (or a timeout that passes) before its first byte is counted by
            # neither of Envoy's inspectors: they count what they read.
            self._count(found)
        protocols = found.application_protocols
        assert self.destination is not None
        info = ConnectionInfo(self.destination, found.transport_protocol, found.server_name, protocols)
        initial, self.sniff_buf = self.sniff_buf, b""
        self.dispatch(self.snapshot, info, initial)
        return self.transport.get_protocol()

    def _count(self, found: Inspection) -> None:
        filters = self.listener.listener_filters
        if ListenerFilter.TLS_INSPECTOR in filters:
            t = self.worker.stats.tls_inspector()
            if isinstance(found.tls, TlsHello):
                t.tls_found += 1
                if found.tls.server_name:
                    t.sni_found += 1
                else:
                    t.sni_not_found += 1
                if found.tls.alpn:
                    t.alpn_found += 1
                else:
                    t.alpn_not_found += 1
            else:
                t.tls_not_found += 1
                if found.tls == TOO_LARGE:
                    t.client_hello_too_large += 1
        if ListenerFilter.HTTP_INSPECTOR in filters and found.transport_protocol != "tls":
            h = self.worker.stats.http_inspector()
            if found.http == "http/1.1":
                h.http11_found += 1
            elif found.http == "http/1.0":
                h.http10_found += 1
            elif found.http == "h2c":
                h.http2_found += 1
            else:
                h.http_not_found += 1

    def dispatch(self, snapshot: Snapshot, info: ConnectionInfo, initial: bytes) -> None:
        transport = self.transport
        assert transport is not None and self.stats is not None
        self.worker.connections.discard(self)  # the network filter's object takes its place
        chain = select_filter_chain(self.listener, info)
        if chain is None:
            self.stats.no_filter_chain_match += 1
            transport.close()  # connection_lost does the accounting
            return
        if chain.transport_socket is not None:
            context = snapshot.tls_contexts[chain.transport_socket]
            # Nothing more for the inspectors: the TLS protocol reads from here on.
            transport.pause_reading()
            # Tracked like a session while it shakes hands, so a drain can close it.
            self.worker.connections.add(self)
            self.handshake = self.worker.loop.create_task(self._terminate(snapshot, context, chain, info, initial))
            return
        if not authorized(self.worker, chain, transport, info.destination, info.server_name, None):
            transport.close()  # connection_lost does the accounting
            return
        self._attach(chain.terminal_filter, info, transport, initial, secure=False)

    async def _terminate(self, snapshot: Snapshot, context: ssl.SSLContext, chain: FilterChain, info: ConnectionInfo, initial: bytes) -> None:
        """TLS first (transport_socket), then the chain's network filter on the clear text."""
        assert self.transport is not None
        stats = self.worker.stats.listener_ssl(self.listener.address.listener_name)
        try:
            tls, held = await terminate(self.worker.loop, self.transport, context, initial)
        except HandshakeFailed as e:
            stats.connection_error += 1
            if e.stat != "connection_error":
                setattr(stats, e.stat, getattr(stats, e.stat) + 1)
            log.debug("listener %s: %s", self.listener.name, e)
            self.worker.connections.discard(self)
            self.closed(None)
            return
        finally:
            self.handshake = None
        self.worker.connections.discard(self)
        stats.handshake += 1
        if not tls.get_extra_info("peercert"):
            stats.no_certificate += 1
        identity = snapshot.bootstrap.identity
        ts = chain.transport_socket
        own = ts is not None and identity is not None and any(
            c.certificate_chain.filename == identity.cert_chain_file for c in ts.tls_certificates
        )
        self.peer_tls = DownstreamTls.of(tls, identity.spiffe_id if own and identity else None)
        if held.lost:
            self.closed(None)
            return
        if not authorized(self.worker, chain, tls, info.destination, info.server_name, self.peer_tls):
            tls.close()
            self.closed(None)
            return
        proto = self._attach(chain.terminal_filter, info, tls, b"".join(held.data), secure=True)
        if held.eof and not proto.eof_received():
            tls.close()

    def _attach(
        self, network_filter: NetworkFilter, info: ConnectionInfo, transport: asyncio.Transport, initial: bytes, secure: bool
    ) -> TcpProxySession | HttpConnection | Http2Connection | CodecSniff:
        """Hand the connection (clear text, or the TLS transport when `secure`) to its filter."""
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
            record.requested_server_name = info.server_name or None
            record.downstream_tls = self.peer_tls
            peer = transport.get_extra_info("peername")
            if peer:
                record.downstream_remote_address = str(SocketAddress(str(peer[0]), int(peer[1])))
            self.worker.connections.add(session)
            transport.set_protocol(session)
            # splice(2) would move ciphertext: a TLS transport always takes the Protocol path.
            session.start(
                transport, initial, self.worker.clusters, self.worker.rng, splice=not secure, own=self.worker.snapshot.own
            )
            return session
        if isinstance(network_filter, HttpConnectionManager):
            return self._attach_http(network_filter, info, transport, initial, secure)
        raise AssertionError(f"no data path for network filter {type(network_filter).__name__}")

    def _attach_http(
        self, hcm: HttpConnectionManager, info: ConnectionInfo, transport: asyncio.Transport, initial: bytes, secure: bool
    ) -> HttpConnection | Http2Connection | CodecSniff:
        codec = hcm.codec_type
        h2 = codec is CodecType.HTTP2
        if codec is CodecType.AUTO:
            ssl_object = transport.get_extra_info("ssl_object") if secure else None
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if alpn == "h2" or initial.startswith(PREFACE):
                h2 = True
            elif PREFACE.startswith(initial):  # too few bytes to tell (none, without sniffing)
                sniff = CodecSniff(self, hcm, info, transport, secure, initial)
                self.worker.connections.add(sniff)
                transport.set_protocol(sniff)
                return sniff
        return self.start_http(hcm, info, transport, initial, secure, h2)

    def start_http(
        self, hcm: HttpConnectionManager, info: ConnectionInfo, transport: asyncio.Transport, initial: bytes,
        secure: bool, h2: bool,
    ) -> HttpConnection | Http2Connection:  # fmt: skip
        kind = Http2Connection if h2 else HttpConnection
        conn = kind(
            self.worker,
            pools_for(self.worker, self.worker.loop),
            compiled(hcm, self.listener.traffic_direction),
            info.destination,
            self.listener.per_connection_buffer_limit_bytes,
            self.closed,
        )
        conn.listener_name = self.listener.name
        conn.local_address = str(info.destination)
        conn.server_name = info.server_name or None
        conn.tls = self.peer_tls
        if secure:
            conn.scheme = b"https"
        peer = transport.get_extra_info("peername")
        if peer:
            conn.peer = str(SocketAddress(str(peer[0]), int(peer[1])))
            conn.peer_ip = str(peer[0])
        self.worker.connections.add(conn)
        transport.set_protocol(conn)
        conn.start(transport, initial)
        return conn

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

    def close(self) -> None:
        """Drain's end for a connection still sniffing or in its TLS handshake."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # Only reached when the connection ends before a network filter took it over.
        if self.sniff_timer is not None:
            self.sniff_timer.cancel()
            self.sniff_timer = None
        self.closed(self)


class CodecSniff(asyncio.Protocol):
    """codec_type AUTO before the first bytes tell: the HTTP/2 preface, or HTTP/1."""

    __slots__ = ("buf", "hcm", "info", "owner", "secure", "transport")

    def __init__(
        self, owner: ActiveConnection, hcm: HttpConnectionManager, info: ConnectionInfo,
        transport: asyncio.Transport, secure: bool, initial: bytes,
    ) -> None:  # fmt: skip
        self.owner = owner
        self.hcm = hcm
        self.info = info
        self.transport = transport
        self.secure = secure
        self.buf = initial

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if PREFACE.startswith(self.buf) and len(self.buf) < len(PREFACE):
            return
        self.owner.worker.connections.discard(self)
        h2 = self.buf.startswith(PREFACE)
        self.owner.start_http(self.hcm, self.info, self.transport, self.buf, self.secure, h2)

    def eof_received(self) -> bool:
        return False

    def close(self) -> None:
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.worker.connections.discard(self)
        self.owner.closed(self)
