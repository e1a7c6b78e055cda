"""envoy.filters.network.rbac: Istio's AuthorizationPolicy on a TCP connection (proxy/rbac.py decides).

Promises:
- `authorized(worker, chain, transport, info, tls)` runs the chain's network RBAC filters in
  order on the connection's attributes (source ip, our address and port, SNI, the client
  certificate's URI SAN under mutual TLS; no HTTP attributes) and counts
  `<stat_prefix>rbac.allowed` / `.denied` (Istio's prefix `tcp.`), `logged` / `not_logged` for
  a LOG filter. False: the caller closes the connection.
- A deliberate difference from Envoy: the decision is made when the connection is handed to
  its network filter, before the upstream is connected; Envoy decides on the first byte the
  client sends (after tcp_proxy has connected upstream). A denied client sees the close at
  once instead of after its first write; an allowed one sees no difference.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pysidecar.model import FilterChain, SocketAddress
from pysidecar.observe.stats import RbacStats
from pysidecar.proxy.peer_tls import DownstreamTls
from pysidecar.proxy.rbac import Attributes, decide

if TYPE_CHECKING:
    from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)


def authorized(
    worker: Worker, chain: FilterChain, transport: asyncio.BaseTransport, destination: SocketAddress,
    sni: str, tls: DownstreamTls | None,
) -> bool:  # fmt: skip
    if not chain.rbac:
        return True
    peer = transport.get_extra_info("peername")
    attrs = Attributes(
        source_ip=str(peer[0]) if peer else "",
        destination_ip=destination.address,
        destination_port=destination.port,
        principal=tls.peer_uri if tls is not None and tls.mutual else None,
        sni=sni,
    )
    for f in chain.rbac:
        stats = worker.stats.block(RbacStats, f.stat_prefix + "rbac.")
        allowed, policy = decide(f.rules, attrs)
        if f.rules.action == "LOG":
            if policy is not None:
                stats.logged += 1
            else:
                stats.not_logged += 1
            continue
        if not allowed:
            stats.denied += 1
            log.debug("chain %s: connection from %s denied by RBAC (policy %s)", chain.name, attrs.source_ip, policy)
            return False
        stats.allowed += 1
    return True
