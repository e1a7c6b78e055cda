"""Tracing as istiod configures it from MeshConfig: every HTTP connection manager's `tracing`,
and the `zipkin` cluster of Istio's bootstrap.

Promises:
- `with_mesh_tracing(bootstrap)` reads `bootstrap.mesh`: with `enableTracing: false` the
  connection managers have no tracing (no decorator header, no trace decision); otherwise
  each one istiod traces gets istiod's sampling (client 100 %, random
  `defaultConfig.tracing.sampling`, overall 100 %) and, when
  `defaultConfig.tracing.zipkin.address` is given, Istio's zipkin tracer (`collector_cluster:
  zipkin`, `/api/v2/spans`, HTTP_JSON, 128-bit trace ids, no shared span context) with the
  `zipkin` cluster (STRICT_DNS to that address, 1 s connect timeout, IPv4, re-resolved every
  30 s), as Istio's bootstrap has it.
- Pure: the bootstrap in, a bootstrap out.
"""

from __future__ import annotations

from dataclasses import replace

from pysidecar.model import (
    Bootstrap,
    Cluster,
    ClusterType,
    DnsLookupFamily,
    FilterChain,
    LbEndpoint,
    Listener,
    SocketAddress,
)
from pysidecar.model.http import HttpConnectionManager, Tracing, ZipkinProvider

ZIPKIN_CLUSTER = "zipkin"
ISTIO_ZIPKIN = ZipkinProvider(ZIPKIN_CLUSTER, "/api/v2/spans", trace_id_128bit=True, shared_span_context=False)


def _chain(chain: FilterChain, tracing: Tracing | None) -> FilterChain:
    filters = tuple(
        replace(f, tracing=tracing) if isinstance(f, HttpConnectionManager) and f.tracing is not None else f
        for f in chain.filters
    )
    return replace(chain, filters=filters)


def _listener(x: Listener, tracing: Tracing | None) -> Listener:
    default = x.default_filter_chain
    return replace(
        x,
        filter_chains=tuple(_chain(c, tracing) for c in x.filter_chains),
        default_filter_chain=_chain(default, tracing) if default is not None else None,
    )


def with_mesh_tracing(b: Bootstrap) -> Bootstrap:
    mesh = b.mesh
    if not mesh.enable_tracing:
        return replace(b, listeners=tuple(_listener(x, None) for x in b.listeners))
    address = mesh.zipkin_address
    tracing = Tracing(random_sampling=mesh.tracing_sampling, provider=ISTIO_ZIPKIN if address else None)
    out = replace(b, listeners=tuple(_listener(x, tracing) for x in b.listeners))
    if not address or b.cluster(ZIPKIN_CLUSTER) is not None:
        return out
    host, _, port = address.rpartition(":")
    zipkin = Cluster(
        ZIPKIN_CLUSTER, ClusterType.STRICT_DNS, 1.0, endpoints=(LbEndpoint(SocketAddress(host, int(port))),),
        dns_refresh_rate=30.0, dns_lookup_family=DnsLookupFamily.V4_ONLY,
    )  # fmt: skip
    return replace(out, clusters=(*out.clusters, zipkin))
