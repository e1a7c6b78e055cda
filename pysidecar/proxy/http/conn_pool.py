"""A worker's upstream connection pools, one per (cluster, host), of the kind the cluster's
protocol calls for (Envoy's ClusterManager::httpConnPoolForCluster).

Promises:
- `PoolManager.pool(cluster, stats, host, limit)` returns the host's pool (`codec.ConnPool`),
  made on first use; a changed cluster (a reload) gets fresh pools.
- `upstream_protocol(cluster, downstream_http2)` says which protocol the cluster's upstreams
  speak and `POOL_KINDS` which pool class serves it (see `codec.py`): "http2" for explicit
  HTTP/2 (http2/conn_pool.py), and for use_downstream_protocol_config when the request came
  over HTTP/2; "http1" otherwise. A host has one pool per protocol.
- `pools_for(worker, loop)` is the worker's one PoolManager (pools live as long as it).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from pysidecar.model import UpstreamHttpProtocol
from pysidecar.proxy.http.http1.conn_pool import HostPool
from pysidecar.proxy.http.http2.conn_pool import Http2HostPool

if TYPE_CHECKING:
    from pysidecar.model import Cluster
    from pysidecar.observe.stats import ClusterHttpStats
    from pysidecar.proxy.cluster_manager import ClusterRuntime
    from pysidecar.proxy.http.codec import ConnPool


# A pool class: made per (cluster, host) with the loop, the cluster, its request stats, the
# host and the listener's buffer limit.
PoolKind = Callable[
    [asyncio.AbstractEventLoop, "ClusterRuntime", "ClusterHttpStats", tuple[str, int], int], "ConnPool"
]
POOL_KINDS: dict[str, PoolKind] = {"http1": HostPool, "http2": Http2HostPool}


def upstream_protocol(cluster: Cluster, downstream_http2: bool = False) -> str:
    """The protocol a cluster's upstream connections speak (a key of POOL_KINDS)."""
    kind = cluster.upstream_http_protocol
    if kind is UpstreamHttpProtocol.HTTP2 or (kind is UpstreamHttpProtocol.USE_DOWNSTREAM and downstream_http2):
        return "http2"
    return "http1"


class PoolManager:
    """A worker's pools, keyed by (cluster name, host, protocol); a changed cluster gets
    fresh pools."""

    __slots__ = ("clusters", "loop", "pools")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[tuple[str, tuple[str, int], str], ConnPool] = {}
        # The cluster each key's pool was made for: a reloaded cluster gets fresh pools.
        self.clusters: dict[tuple[str, tuple[str, int], str], ClusterRuntime] = {}

    def pool(
        self,
        cluster: ClusterRuntime,
        rq_stats: ClusterHttpStats,
        host: tuple[str, int],
        limit: int,
        downstream_http2: bool = False,
    ) -> ConnPool:
        protocol = upstream_protocol(cluster.config, downstream_http2)
        key = (cluster.config.name, host, protocol)
        p = self.pools.get(key)
        if p is None or self.clusters[key] is not cluster:
            kind = POOL_KINDS[protocol]
            p = self.pools[key] = kind(self.loop, cluster, rq_stats, host, limit)
            self.clusters[key] = cluster
        return p


_managers: weakref.WeakKeyDictionary[object, PoolManager] = weakref.WeakKeyDictionary()


def pools_for(worker: object, loop: asyncio.AbstractEventLoop) -> PoolManager:
    """The worker's pool manager, made on first use (pools live as long as the worker)."""
    found = _managers.get(worker)
    if found is None:
        found = _managers[worker] = PoolManager(loop)
    return found
