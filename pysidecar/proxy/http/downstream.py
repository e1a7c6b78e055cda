"""What every downstream HTTP connection has, whatever its codec (HTTP/1 `http1.server_codec`,
HTTP/2 `http2.server_codec`): the HCM's config and stats, where it came from, and the one place a
finished request is accounted (`record_stream`).

Promises:
- A subclass calls `Downstream.__init__` and `begin(transport)` when it takes a connection
  over; `begin` counts downstream_cx_total / _active (the codec counts its own _http1_ / _http2_).
- `record_stream` is called once per request: HCM stats, its StreamInfo finished, and the
  worker's hook (access log, Istio metrics), whose failure never breaks the data path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pysidecar.common.stream_info import StreamInfo
from pysidecar.model import SocketAddress
from pysidecar.observe.stats import HttpConnManagerStats
from pysidecar.proxy.http.compiled import CompiledHcm
from pysidecar.proxy.http.conn_pool import PoolManager
from pysidecar.proxy.peer_tls import DownstreamTls

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)


class Downstream(asyncio.Protocol):
    __slots__ = (
        "_record_cb",
        "buffer_limit",
        "cfg",
        "closing",
        "destination",
        "draining",
        "idle_timer",
        "listener_name",
        "local_address",
        "loop",
        "on_close",
        "peer",
        "peer_ip",
        "pools",
        "scheme",
        "server_name",
        "started_at",
        "stats",
        "stream_idle_timer",
        "tls",
        "transport",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        pools: PoolManager,
        cfg: CompiledHcm,
        destination: SocketAddress,
        buffer_limit: int,
        on_close: Callable[[Any], None],
    ) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.pools = pools
        self.cfg = cfg
        self.stats: HttpConnManagerStats = worker.stats.http(cfg.config.stat_prefix)
        self.destination = destination
        self.buffer_limit = buffer_limit
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.draining = worker.draining  # set by the worker's drain (start_drain)
        self.idle_timer: asyncio.TimerHandle | None = None
        # The stream idle timeout: one lazy timer per connection.
        self.stream_idle_timer: asyncio.TimerHandle | None = None
        self.listener_name: str | None = None
        self.local_address: str | None = None
        self.peer: str | None = None
        self.peer_ip = ""  # the downstream address without port (x-forwarded-for on edge HCMs)
        # The downstream connection's scheme: x-forwarded-proto when the client sent none.
        self.scheme = b"http"
        self.server_name: str | None = None  # the TLS SNI, for %REQUESTED_SERVER_NAME%
        self.tls: DownstreamTls | None = None  # the terminated TLS session's peer, if any
        self.started_at = 0.0
        self._record_cb: Callable[[StreamInfo], Any] | None = getattr(worker, "stream_complete", None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        raise AssertionError("a downstream HTTP connection is attached with set_protocol")

    def begin(self, transport: asyncio.Transport) -> None:
        """Take over an accepted connection (its protocol was switched to this one)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=self.buffer_limit)
        self.started_at = self.loop.time()
        s = self.stats
        s.downstream_cx_total += 1
        s.downstream_cx_active += 1

    def close(self) -> None:
        """Close now (drain's end); open streams are reset by connection_lost."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def describe(self, info: StreamInfo) -> None:
        """What a new stream's record says about its connection, whatever the codec."""
        info.listener_name = self.listener_name
        info.downstream_local_address = self.local_address
        info.downstream_remote_address = self.peer
        info.requested_server_name = self.server_name
        info.downstream_tls = self.tls

    def record(self, st: ActiveStream) -> None:
        record_stream(self.stats, st, self._record_cb)


def record_stream(s: HttpConnManagerStats, st: ActiveStream, cb: Callable[[StreamInfo], Any] | None) -> None:
    """The one place a finished request is accounted, whatever its protocol: HCM stats, its
    StreamInfo finished, the worker hook (access log, Istio metrics)."""
    info = st.info
    info.finish()
    s.downstream_rq_active -= 1
    s.downstream_rq_completed += 1
    code = info.response_code // 100
    if code == 2:
        s.downstream_rq_2xx += 1
    elif code == 5:
        s.downstream_rq_5xx += 1
    elif code == 4:
        s.downstream_rq_4xx += 1
    elif code == 3:
        s.downstream_rq_3xx += 1
    elif code == 1:
        s.downstream_rq_1xx += 1
    assert info.end_time is not None
    s.downstream_rq_time.record((info.end_time - info.start_time) * 1000)
    if cb is not None:
        try:
            cb(info)
        except Exception:  # an access log bug must not break the data path
            log.exception("stream_complete failed")
