"""Envoy's zipkin reporter: finished, sampled spans buffered per worker and POSTed as one JSON
array to the collector cluster.

Promises:
- `report(span)` buffers a span; the buffer is sent when it holds `MIN_FLUSH_SPANS` (Envoy's
  runtime default 5) or `FLUSH_INTERVAL` (5 s) after the first buffered span, whichever comes
  first; at most `MAX_BUFFERED` spans wait (more are dropped, counted, as Envoy's buffer does).
- A send is `POST <collector_endpoint>` HTTP/1.1 with `content-type: application/json` and
  `host: <collector_hostname or cluster name>` to a host the collector cluster chooses, on a
  connection of its own that is closed afterwards. A failure (no host, refused, timeout) drops
  that batch with a debug log: tracing never disturbs the data path.
- `drain()` sends what is buffered and waits for it (bounded): a stopping worker loses none.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Final

from pysidecar.model.http import ZipkinProvider
from pysidecar.proxy.cluster_manager import ClusterRuntime

log = logging.getLogger(__name__)

SIOCGIFADDR: Final = 0x8915  # linux/sockios.h: an interface's IPv4 address
MIN_FLUSH_SPANS: Final = 5
FLUSH_INTERVAL: Final = 5.0
MAX_BUFFERED: Final = 1000
SEND_TIMEOUT: Final = 5.0


class ZipkinReporter:
    __slots__ = ("_buffer", "_cluster", "_loop", "_tasks", "_timer", "dropped", "provider", "sent")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, provider: ZipkinProvider, cluster: Callable[[str], ClusterRuntime | None]
    ) -> None:
        self._loop = loop
        self.provider = provider
        self._cluster = cluster
        self._buffer: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.dropped = 0

    def report(self, span: dict[str, Any]) -> None:
        if len(self._buffer) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._buffer.append(span)
        if len(self._buffer) >= MIN_FLUSH_SPANS:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        task = self._loop.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        z = self.provider
        cluster = self._cluster(z.collector_cluster)
        host = cluster.choose_host(None) if cluster is not None else None
        if host is None:
            log.debug("zipkin: no host in cluster %s; %d spans dropped", z.collector_cluster, len(batch))
            self.dropped += len(batch)
            return
        body = json.dumps(batch, separators=(",", ":")).encode()
        head = (
            f"POST {z.collector_endpoint} HTTP/1.1\r\nhost: {z.collector_hostname or z.collector_cluster}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                reader, writer = await asyncio.open_connection(host.address, host.port)
                writer.write(head + body)
                await writer.drain()
                await reader.read(65536)  # the collector's answer; its status is not ours to act on
                writer.close()
        except (OSError, TimeoutError) as e:
            log.debug("zipkin: report to %s:%d failed: %s", host.address, host.port, e)
            self.dropped += len(batch)
            return
        self.sent += len(batch)

    async def drain(self) -> None:
        """Send what is buffered and wait (bounded) for the sends in flight: a stopping worker's
        last spans are not lost."""
        self.flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SEND_TIMEOUT)


def local_ipv4() -> str:
    """Envoy's local_info address: the first non-loopback IPv4 address of this host (network
    namespace), else 127.0.0.1; a span's localEndpoint.ipv4."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                return address
    return "127.0.0.1"
