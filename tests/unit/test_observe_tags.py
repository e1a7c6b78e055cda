"""Istio's tag extraction: stat name → Prometheus name and labels (pure function)."""

from __future__ import annotations

import pytest

from pysidecar.observe.tags import extract


@pytest.mark.parametrize(
    ("stat", "name", "labels"),
    [
        (
            "cluster.outbound|80||httpbin.org;.upstream_rq_200",
            "envoy_cluster_upstream_rq",
            (("response_code", "200"), ("cluster_name", "outbound|80||httpbin.org")),
        ),
        (
            "cluster.outbound|80||httpbin.org;.upstream_rq_5xx",
            "envoy_cluster_upstream_rq",
            (("response_code_class", "5xx"), ("cluster_name", "outbound|80||httpbin.org")),
        ),
        (
            "http.outbound_0.0.0.0_80;.downstream_rq_2xx",
            "envoy_http_downstream_rq",
            (("response_code_class", "2xx"), ("http_conn_manager_prefix", "outbound_0.0.0.0_80")),
        ),
        (
            "listener.0.0.0.0_15001.downstream_cx_total",
            "envoy_listener_downstream_cx_total",
            (("listener_address", "0.0.0.0_15001"),),
        ),
        (
            "listener.[__]_15006.downstream_cx_active",
            "envoy_listener_downstream_cx_active",
            (("listener_address", "[__]_15006"),),
        ),
        (
            "tcp.PassthroughCluster.downstream_cx_rx_bytes_total",
            "envoy_tcp_downstream_cx_rx_bytes_total",
            (("tcp_prefix", "PassthroughCluster"),),
        ),
        # a tcp stat prefix with dots: the last segment is the stat
        (
            "tcp.outbound|3306||db.lab.downstream_cx_total",
            "envoy_tcp_downstream_cx_total",
            (("tcp_prefix", "outbound|3306||db.lab"),),
        ),
        (
            "tcp.outbound|3306||db.lab;.downstream_cx_total",
            "envoy_tcp_downstream_cx_total",
            (("tcp_prefix", "outbound|3306||db.lab"),),
        ),
        # no delimiter: Envoy's default cluster extractor, the name up to the first dot
        (
            "cluster.PassthroughCluster.upstream_cx_total",
            "envoy_cluster_upstream_cx_total",
            (("cluster_name", "PassthroughCluster"),),
        ),
        (
            "cluster.BlackHoleCluster.upstream_cx_none_healthy",
            "envoy_cluster_upstream_cx_none_healthy",
            (("cluster_name", "BlackHoleCluster"),),
        ),
        (
            "cluster.InboundPassthroughCluster.upstream_cx_connect_ms",
            "envoy_cluster_upstream_cx_connect_ms",
            (("cluster_name", "InboundPassthroughCluster"),),
        ),
        # Istio's bootstrap regex keeps a Kubernetes host whole (no alt_stat_name delimiter)
        (
            "cluster.outbound|8000||httpbin.demo.svc.cluster.local.upstream_rq_200",
            "envoy_cluster_upstream_rq",
            (("response_code", "200"), ("cluster_name", "outbound|8000||httpbin.demo.svc.cluster.local")),
        ),
        ("server.live", "envoy_server_live", ()),
        (
            "listener.0.0.0.0_80.http.outbound_0.0.0.0_80;.downstream_rq_4xx",
            "envoy_listener_http_downstream_rq",
            (
                ("response_code_class", "4xx"),
                ("http_conn_manager_listener_prefix", "outbound_0.0.0.0_80"),
                ("listener_address", "0.0.0.0_80"),
            ),
        ),
        # Istio's own metrics: labels in the name, in order; no envoy_ prefix
        (
            "reporter=.=source;.;source_workload=.=app;.;response_code=.=200;.;istio_requests_total",
            "istio_requests_total",
            (("reporter", "source"), ("source_workload", "app"), ("response_code", "200")),
        ),
    ],
)
def test_extract(stat: str, name: str, labels: tuple[tuple[str, str], ...]) -> None:
    assert extract(stat) == (name, labels)


def test_unsafe_characters_become_underscores() -> None:
    name, labels = extract("cluster.a;.circuit_breakers.default.cx_open")
    assert name == "envoy_cluster_circuit_breakers_default_cx_open"
    assert labels == (("cluster_name", "a"),)


def test_rq_total_is_not_a_response_code() -> None:
    assert extract("cluster.a;.upstream_rq_total") == ("envoy_cluster_upstream_rq_total", (("cluster_name", "a"),))
