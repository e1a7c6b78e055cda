"""Envoy YAML → `TcpProxy`: envoy.filters.network.tcp_proxy's parser.

Promises: accepts stat_prefix, cluster or weighted_clusters (weights above 0), idle_timeout,
max_connect_attempts (1: the one connect attempt we make, as Envoy's default) and access_log;
any other field is a ConfigError naming the YAML path.
"""

from __future__ import annotations

from pysidecar.config.access_log import access_logs
from pysidecar.config.node import Node
from pysidecar.model import DEFAULT_TCP_IDLE_TIMEOUT, TcpProxy, WeightedCluster

TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def tcp_proxy(node: Node) -> TcpProxy:
    f = node.fields(
        "@type", "stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts",
        "access_log",
    )
    if (attempts := f.get("max_connect_attempts")) is not None:
        attempts.integer(1, 1)  # we make one connect attempt, as Envoy's default does
    stat_prefix = f.require("stat_prefix").nonempty()
    cluster = f.get("cluster")
    weighted = f.get("weighted_clusters")
    if (cluster is None) == (weighted is None):
        node.fail("expected exactly one of 'cluster' or 'weighted_clusters'")
    weights: list[WeightedCluster] = []
    if weighted is not None:
        for c in weighted.fields("clusters").require("clusters").items():
            cf = c.fields("name", "weight")
            weights.append(WeightedCluster(cf.require("name").nonempty(), cf.require("weight").integer(1)))
        if not weights or sum(w.weight for w in weights) == 0:
            weighted.fail("expected at least one cluster with a weight above 0")
    idle = f.get("idle_timeout")
    return TcpProxy(
        stat_prefix=stat_prefix,
        cluster=cluster.string() if cluster is not None else None,
        weighted_clusters=tuple(weights),
        idle_timeout=idle.duration() if idle is not None else DEFAULT_TCP_IDLE_TIMEOUT,
        access_log=access_logs(f.get("access_log")),
    )
