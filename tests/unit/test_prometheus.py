"""Prometheus exposition of merged worker stats: Envoy's shape, valid for Prometheus' parsers."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pysidecar.common.stream_info import StreamInfo
from pysidecar.common.workload import WorkloadMetadata
from pysidecar.observe.istio_metrics import IstioRecorder
from pysidecar.observe.prometheus import render
from pysidecar.observe.stats import StatsStore, merge


def _worker(n_tcp: int, rq_200: int) -> StatsStore:
    store = StatsStore()
    store.listener("0.0.0.0_15001").downstream_cx_total += n_tcp
    tcp = store.tcp("PassthroughCluster")
    tcp.downstream_cx_total += n_tcp
    tcp.downstream_cx_rx_bytes_total += 100 * n_tcp
    c = store.cluster("outbound|80||httpbin.org;")
    c.upstream_cx_total += rq_200
    c.upstream_cx_connect_ms.record(3.0)
    c.upstream_cx_active = 1
    store.cluster("BlackHoleCluster").upstream_cx_none_healthy += 2
    recorder = IstioRecorder(store, WorkloadMetadata())
    for _ in range(n_tcp):
        info = StreamInfo(start_time=1.0, upstream_cluster="PassthroughCluster", bytes_received=100, bytes_sent=7)
        info.end_time = 1.5
        recorder.record(info, inbound=False)
    for _ in range(rq_200):
        info = StreamInfo(
            start_time=1.0, protocol="HTTP/1.1", response_code=200, authority="httpbin.org",
            upstream_cluster="outbound|80||httpbin.org", bytes_received=10, bytes_sent=20,
        )  # fmt: skip
        info.end_time = 1.004
        recorder.record(info, inbound=False)
    return store


def _text() -> str:
    return render(merge([_worker(3, 2).snapshot(), _worker(2, 1).snapshot()]))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_keep_envoy_names_and_sum_over_workers() -> None:
    text = _text()
    assert "# TYPE envoy_listener_downstream_cx_total counter\n" in text
    assert 'envoy_listener_downstream_cx_total{listener_address="0.0.0.0_15001"} 5\n' in text
    assert 'envoy_tcp_downstream_cx_rx_bytes_total{tcp_prefix="PassthroughCluster"} 500\n' in text
    assert 'envoy_cluster_upstream_cx_total{cluster_name="outbound|80||httpbin.org"} 3\n' in text
    assert 'envoy_cluster_upstream_cx_none_healthy{cluster_name="BlackHoleCluster"} 4\n' in text
    assert "# TYPE envoy_cluster_upstream_cx_active gauge\n" in text
    assert "_total_total" not in text


def test_histograms_are_cumulative_with_envoy_buckets() -> None:
    text = _text()
    assert "# TYPE envoy_cluster_upstream_cx_connect_ms histogram\n" in text
    name = "envoy_cluster_upstream_cx_connect_ms"
    assert f'{name}_bucket{{cluster_name="outbound|80||httpbin.org",le="1"}} 0\n' in text
    assert f'{name}_bucket{{cluster_name="outbound|80||httpbin.org",le="5"}} 2\n' in text
    assert f'{name}_bucket{{cluster_name="outbound|80||httpbin.org",le="3.6e+06"}} 2\n' in text
    assert f'{name}_bucket{{cluster_name="outbound|80||httpbin.org",le="+Inf"}} 2\n' in text
    assert f'{name}_count{{cluster_name="outbound|80||httpbin.org"}} 2\n' in text


def test_istio_standard_metrics_have_istios_labels_in_order() -> None:
    text = _text()
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
    keys = [kv.split("=", 1)[0] for kv in line[line.index("{") + 1 : line.rindex("}")].split('",')]
    assert keys[0] == "reporter" and keys[-1] == "connection_security_policy"
    assert len(keys) == 25
    samples = _samples(text)
    req = {k[1]: v for k, v in samples.items() if k[0] == "istio_requests_total"}
    (labels, value), = req.items()
    assert value == 3
    d = dict(labels)
    assert d["reporter"] == "source" and d["response_code"] == "200" and d["response_flags"] == "-"
    assert d["destination_service"] == "httpbin.org" and d["source_workload"] == "unknown"
    assert d["request_protocol"] == "http"
    tcp = {k[1]: v for k, v in samples.items() if k[0] == "istio_tcp_connections_opened_total"}
    (labels, value), = tcp.items()
    assert value == 5
    assert dict(labels)["destination_service_name"] == "PassthroughCluster"
    assert "response_code" not in dict(labels)
    received = [v for k, v in samples.items() if k[0] == "istio_tcp_received_bytes_total"]
    assert received == [500]
    assert "# TYPE istio_request_duration_milliseconds histogram" in text
    assert 'le="0.5"' in text and 'le="3.6e+06"' in text


def test_parses_without_duplicate_series() -> None:
    text = _text()
    lines = [x for x in text.splitlines() if not x.startswith("#")]
    assert len(lines) == len(set(x.rsplit(" ", 1)[0] for x in lines))
    assert len(_samples(text)) == len(lines)


def test_label_values_are_escaped() -> None:
    store = StatsStore()
    store.cluster('we"ird\\name;').upstream_cx_total += 1
    samples = _samples(render(store.snapshot()))
    assert (("envoy_cluster_upstream_cx_total", (("cluster_name", 'we"ird\\name'),))) in samples


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    # promtool comes with Debian's prometheus package; install it once if we may.
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        capture_output=True, timeout=300, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )  # fmt: skip
    return shutil.which("promtool")


def test_promtool_accepts_the_exposition() -> None:
    promtool_check(_text())


def promtool_check(text: str) -> None:
    """`promtool check metrics` on an exposition: no parse error, only the lint advice that
    Envoy's own output draws too (also run on a live proxy's :15090 by tests/e2e)."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    # Exit 1 is a parse error. Exit 3 is lint advice, which Envoy's and Istio's own output
    # draws too: their names (`_total` or not, `_ms`, `_milliseconds`), no HELP text.
    assert r.returncode in (0, 3), r.stdout + r.stderr
    allowed = (
        'counter metrics should have "_total" suffix',
        'non-counter metrics should not have "_total" suffix',  # membership_total is a gauge
        "no help text",
        "metric names should not contain abbreviated units",
        'use base unit "seconds" instead of "milliseconds"',
    )
    problems = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert all(x.endswith(allowed) for x in problems), problems
