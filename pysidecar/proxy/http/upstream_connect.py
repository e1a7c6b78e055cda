"""Opening one upstream connection for an HTTP pool (Envoy's ConnPoolImplBase connecting state),
whatever the pool's protocol.

Promises:
- `connect(...)` starts the connect through `upstream_tls.open_connection` (plaintext, or the
  cluster's TLS for this host with the ALPN the protocol calls for) from the cluster's bind
  address, bounded by the cluster's connect_timeout, and calls `settled(reason, failure)` once:
  `(None, None)` when connected, else `CONNECT_TIMEOUT` / `CONNECT_FAILURE` with Envoy's
  transport failure reason (`delayed connect error: 111`).
- The connect's own stats are counted here, once per connect: upstream_cx_connect_ms when it
  connects, upstream_cx_connect_timeout, upstream_cx_connect_fail; a failure is reported to the
  cluster's outlier detector (as 503, Envoy's local-origin mapping). What a failure means for
  the pool's waiting requests is the pool's business.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from typing import TypeVar

from pysidecar.observe.stats import ClusterStats
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.retry import CONNECT_FAILURE, CONNECT_TIMEOUT
from pysidecar.proxy.upstream_tls import open_connection

P = TypeVar("P", bound=asyncio.BaseProtocol)

# (reason, transport failure): (None, None) when the connection is up.
Settled = Callable[[str | None, str | None], None]


def connect(
    loop: asyncio.AbstractEventLoop,
    cluster: ClusterRuntime,
    cx_stats: ClusterStats,
    host: tuple[str, int],
    conn: P,
    http: str,
    settled: Settled,
) -> None:
    bind = cluster.bind_address_for(host[0])
    started = loop.time()
    fut = asyncio.ensure_future(
        open_connection(loop, lambda: conn, host, bind, cluster.upstream_tls(host), http=http)
    )
    timer = loop.call_later(cluster.config.connect_timeout, fut.cancel)

    def done(fut: asyncio.Future[tuple[asyncio.Transport, P]]) -> None:
        timer.cancel()
        failure: str | None = None
        if fut.cancelled():
            cx_stats.upstream_cx_connect_timeout += 1
            reason = CONNECT_TIMEOUT
        elif (exc := fut.exception()) is not None:
            reason, failure = CONNECT_FAILURE, transport_failure(exc)
        else:
            cx_stats.upstream_cx_connect_ms.record((loop.time() - started) * 1000.0)
            settled(None, None)
            return
        cx_stats.upstream_cx_connect_fail += 1
        if cluster.outlier is not None:
            cluster.outlier.put_result(host, 503)
        settled(reason, failure)

    fut.add_done_callback(done)


def transport_failure(exc: BaseException) -> str | None:
    """Envoy's transport failure reason for a failed connect: `delayed connect error: 111`."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"delayed connect error: {exc.errno}"
    if isinstance(exc, OSError):
        # uvloop reports some failures without errno; the message still names the cause.
        for code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            if os.strerror(code).lower() in str(exc).lower():
                return f"delayed connect error: {code}"
    return None
