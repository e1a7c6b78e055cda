"""Observability end to end: a scripted mix of traffic through a lab pod's sidecar (2 workers),
then :15090 counters, the access log and readiness must tell exactly what happened."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import (
    BLOCK_ALL_VHOST,
    closed_without_data,
    connect,
    recv_all,
    send_pattern,
    write_config,
)
from tests.e2e.test_tcp_path import registry_only
from tests.unit.test_prometheus import promtool_check

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _code(pod: Pod, url: str) -> str:
    return pod.run(["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", url]).stdout


def _access_log(lab: Lab) -> str:
    path = os.path.join(lab.logdir, "access.log")
    with open(path, "w"):
        pass
    os.chmod(path, 0o666)  # the proxy runs as uid 1337
    return path


def _lines(path: str, want: int, timeout: float = 10) -> list[str]:
    """The log's lines once `want` are there (lines are flushed once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            lines = f.read().splitlines()
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _scrape(pod: Pod, url: str) -> Samples:
    text = pod.run(["curl", "-sf", url], check=True).stdout
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over the series whose labels include `labels`. (prometheus-client's parser
    spells a counter's samples with `_total`, whether the exposition had it or not.)"""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n in (name, name + "_total") and want <= ls)


def _ext(lab: Lab) -> Pod:
    ext = lab.add_pod("ext", address="198.19.0.10")
    ext.spawn_server("sink", 9000)
    ext.spawn_server("echo", 9002)
    return ext


def test_passthrough_counters_access_log_and_readiness(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext(lab)
    log = _access_log(lab)
    app.install_interception()
    proxy = app.spawn_proxy(["run", "--concurrency", "2", "--access-log", log])

    # While the workers start: readiness answers 503 (or nothing yet), then 200 for good. The
    # workers are forked and ready within tens of ms of admin binding, often quicker than one
    # curl: the 503 in between is not always seen (the gate itself: test_observe_admin's
    # test_main_process_state_as_envoys); polled from inside the pod, as fast as curl goes.
    probe = "curl -s -o /dev/null -m 2 -w '%{http_code}'"
    script = (
        f"for i in $(seq 3000); do a=$({probe} http://127.0.0.1:15021/healthz/ready);"
        f" b=$({probe} http://127.0.0.1:15000/ready); echo $a $b;"
        ' [ "$a $b" = "200 200" ] && break; done'
    )
    polled = app.run(["sh", "-c", script], timeout=60).stdout.splitlines()
    seen = [(a, b) for a, b in (line.split() for line in polled)]
    assert proxy.poll() is None, lab.logs()
    assert seen[-1] == ("200", "200"), seen
    for codes in zip(*seen, strict=True):
        # nothing listening, then 503 while the workers start (admin binds first), then 200
        assert re.fullmatch("(000)*(503)*(200)+", "".join(codes)), seen

    # Scripted TCP traffic through 15001 → PassthroughCluster.
    sizes = [1000, 5000, 64 * 1024, 3, 250_000]
    for size in sizes:
        s = connect(app, "198.19.0.10", 9000)
        digest = send_pattern(s, size)
        assert recv_all(s).decode() == f"{size} {digest}\n"
        s.close()
    echoed = 0
    for payload in (b"hello\n", b"x" * 10_000):
        s = connect(app, "198.19.0.10", 9002)
        s.sendall(payload)
        s.shutdown(1)
        assert recv_all(s) == payload
        echoed += len(payload)
        s.close()
    n = len(sizes) + 2
    sent = sum(sizes) + echoed

    lines = _lines(log, n)
    promtool_check(app.run(["curl", "-sf", "http://127.0.0.1:15090/stats/prometheus"], check=True).stdout)
    prom = _scrape(app, "http://127.0.0.1:15090/stats/prometheus")
    assert _value(prom, "envoy_listener_downstream_cx_total", listener_address="0.0.0.0_15001") == n
    assert _value(prom, "envoy_tcp_downstream_cx_total", tcp_prefix="PassthroughCluster") == n
    assert _value(prom, "envoy_tcp_downstream_cx_rx_bytes_total", tcp_prefix="PassthroughCluster") == sent
    received = _value(prom, "envoy_tcp_downstream_cx_tx_bytes_total", tcp_prefix="PassthroughCluster")
    assert echoed <= received <= echoed + 100 * len(sizes)  # the sink answers a line each
    assert _value(prom, "envoy_cluster_upstream_cx_total", cluster_name="PassthroughCluster") == n
    istio = {"reporter": "source", "destination_service_name": "PassthroughCluster"}
    assert _value(prom, "istio_tcp_connections_opened_total", **istio) == n
    assert _value(prom, "istio_tcp_connections_closed_total", **istio) == n
    assert _value(prom, "istio_tcp_received_bytes_total", **istio) == sent
    assert _value(prom, "istio_tcp_sent_bytes_total", **istio) == received
    assert _value(prom, "envoy_server_concurrency") == 2

    # One line per connection, Istio's TCP shape, no flags.
    assert len(lines) == n, lines
    for line in lines:
        assert '"- - -" 0 - - - "-" ' in line, line
        assert " PassthroughCluster " in line and '"198.19.0.10:900' in line
    assert sorted(int(x.split('"-" ', 1)[1].split()[0]) for x in lines) == sorted([*sizes, 6, 10_000])

    # The same numbers on the admin port, which also has the per-host view.
    admin = _scrape(app, "http://127.0.0.1:15000/stats/prometheus")
    assert _value(admin, "envoy_tcp_downstream_cx_total", tcp_prefix="PassthroughCluster") == n
    clusters = app.run(["curl", "-sf", "http://127.0.0.1:15000/clusters"], check=True).stdout
    assert "PassthroughCluster::198.19.0.10:9000::cx_total::5" in clusters.splitlines()
    assert "PassthroughCluster::198.19.0.10:9002::cx_total::2" in clusters.splitlines()
    assert _code(app, "http://127.0.0.1:15000/quitquitquit") == "405"  # GET on a POST-only path, as Envoy 1.40
    r = app.run([sys.executable, "-m", "pysidecar", "proxy-config", "listeners", "--port", "15001"], check=True)
    assert [x.split() for x in r.stdout.splitlines()[1:]] == [
        ["0.0.0.0", "15001", "ALL", "PassthroughCluster"],  # istioctl's order and words
        ["0.0.0.0", "15001", "Addr:", "*:15001", "Non-HTTP/Non-TCP"],
    ]


def test_registry_only_blocks_are_counted_and_logged(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext(lab)
    log = _access_log(lab)
    config = write_config(lab, "registry-only.yaml", registry_only())
    app.install_interception()
    proxy = app.spawn_proxy(["run", "--concurrency", "2", "-c", config, "--access-log", log, "--access-log-format", "json"])
    app.wait_port(15000, timeout=20, proc=proxy)
    deadline = time.monotonic() + 20
    while _code(app, "http://127.0.0.1:15000/ready") != "200":
        assert time.monotonic() < deadline and proxy.poll() is None, lab.logs()
        time.sleep(0.05)

    blocked = [9000, 9002, 80, 443]
    for port in blocked:
        s = connect(app, "198.19.0.10", port)
        try:
            s.sendall(b"hello\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            assert closed_without_data(s)
        s.close()

    records = [json.loads(x) for x in _lines(log, len(blocked))]
    assert len(records) == len(blocked)
    assert {r["response_flags"] for r in records} == {"UH"}
    assert {r["upstream_cluster"] for r in records} == {"BlackHoleCluster"}
    assert sorted(r["downstream_local_address"] for r in records) == sorted(f"198.19.0.10:{p}" for p in blocked)
    assert all(r["upstream_host"] is None and r["bytes_sent"] == 0 for r in records)
    prom = _scrape(app, "http://127.0.0.1:15000/stats/prometheus")
    assert _value(prom, "envoy_cluster_upstream_cx_none_healthy", cluster_name="BlackHoleCluster") == len(blocked)
    assert _value(prom, "envoy_cluster_upstream_cx_total", cluster_name="BlackHoleCluster") == 0
    assert _value(prom, "envoy_tcp_downstream_cx_total", tcp_prefix="BlackHoleCluster") == len(blocked)
    flags = {"destination_service_name": "BlackHoleCluster", "response_flags": "UH"}
    assert _value(prom, "istio_tcp_connections_closed_total", **flags) == len(blocked)


HTTP_LISTENER = (
    """
  - name: 0.0.0.0_80
    address: {socket_address: {address: 0.0.0.0, port_value: 80}}
    bind_to_port: false
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: "outbound_0.0.0.0_80;"
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: "80"
            virtual_hosts:
            - name: ext.lab:80
              domains: ["ext.lab", "198.19.0.10"]
              routes:
              - match: {prefix: /status}
                route: {cluster: "outbound|80||ext.lab", timeout: 0s}
            - name: dead.lab:80
              domains: ["dead.lab"]
              routes:
              - match: {prefix: /}
                route: {cluster: "outbound|80||dead.lab", timeout: 0s}
"""
    + BLOCK_ALL_VHOST
)
HTTP_CLUSTERS = """
  - name: "outbound|80||ext.lab"
    alt_stat_name: "outbound|80||ext.lab;"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "outbound|80||ext.lab"
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.19.0.10, port_value: 80}}}
  - name: "outbound|80||dead.lab"
    alt_stat_name: "outbound|80||dead.lab;"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "outbound|80||dead.lab"
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.19.0.10, port_value: 81}}}
"""


def test_http_requests_by_code_class_across_workers(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10", hostnames=["ext.lab", "dead.lab", "other.lab"])
    ext.spawn_server("http", 80)
    log = _access_log(lab)
    config = write_config(lab, "http.yaml", registry_only(HTTP_LISTENER, HTTP_CLUSTERS))
    app.install_interception()
    proxy = app.spawn_proxy(["run", "--concurrency", "2", "-c", config, "--access-log", log])
    app.wait_port(15000, timeout=20, proc=proxy)
    deadline = time.monotonic() + 20
    while _code(app, "http://127.0.0.1:15000/ready") != "200":
        assert time.monotonic() < deadline and proxy.poll() is None, lab.logs()
        time.sleep(0.05)

    script = {"http://ext.lab/status/200": 6, "http://ext.lab/status/404": 3, "http://ext.lab/nothing-here": 2,
              "http://dead.lab/": 2, "http://other.lab/": 2}  # fmt: skip
    got: dict[str, list[str]] = {}
    for url, times in script.items():
        for _ in range(times):
            # a new connection per request, so both workers take some
            got.setdefault(url, []).append(_code(app, url))
    assert got == {
        "http://ext.lab/status/200": ["200"] * 6,
        "http://ext.lab/status/404": ["404"] * 3,
        "http://ext.lab/nothing-here": ["404"] * 2,  # no route: NR
        "http://dead.lab/": ["503"] * 2,  # connection refused: UF
        "http://other.lab/": ["502"] * 2,  # REGISTRY_ONLY: block_all
    }
    n = sum(script.values())
    # Both workers took requests: each keeps its own idle connection to ext.lab.
    ss = app.run(["ss", "-tnpH", "state", "established", "dst", "198.19.0.10:80"], check=True).stdout
    assert len(set(re.findall(r"pid=(\d+)", ss))) == 2, ss
    # The live exposition (admin's: a -c Envoy config names no :15090), not a synthetic one.
    promtool_check(app.run(["curl", "-sf", "http://127.0.0.1:15000/stats/prometheus"], check=True).stdout)
    prom = _scrape(app, "http://127.0.0.1:15000/stats/prometheus")
    hcm = {"http_conn_manager_prefix": "outbound_0.0.0.0_80"}
    assert _value(prom, "envoy_http_downstream_cx_total", **hcm) == n  # a connection each
    # (No downstream_rq_total check here: the parser names the per-class counter
    # envoy_http_downstream_rq "..._total" too, so the two would add up.)
    assert _value(prom, "envoy_http_downstream_rq", response_code_class="2xx", **hcm) == 6
    assert _value(prom, "envoy_http_downstream_rq", response_code_class="4xx", **hcm) == 5
    assert _value(prom, "envoy_http_downstream_rq", response_code_class="5xx", **hcm) == 4
    assert _value(prom, "envoy_http_rq_direct_response", **hcm) == 2
    # Bytes: what curl sent, exactly; what came back, the bodies plus a head each.
    version = app.run(["curl", "--version"], check=True).stdout.split()[1]
    sent = sum(
        len(f"GET /{u.split('/', 3)[3]} HTTP/1.1\r\nHost: {u.split('/')[2]}\r\nUser-Agent: curl/{version}\r\nAccept: */*\r\n\r\n")
        * times
        for u, times in script.items()
    )
    assert _value(prom, "envoy_http_downstream_cx_rx_bytes_total", **hcm) == sent
    uf_body = len(b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
    tx = _value(prom, "envoy_http_downstream_cx_tx_bytes_total", **hcm)
    assert 2 * uf_body + 100 * n <= tx <= 2 * uf_body + 300 * n, tx
    assert _value(prom, "istio_request_bytes_count") == n
    assert _value(prom, "istio_request_bytes_sum") == 0  # no request bodies
    assert _value(prom, "istio_response_bytes_count") == n
    assert _value(prom, "istio_response_bytes_sum") == 2 * uf_body  # only the 503s had one
    assert _value(prom, "istio_requests_total", response_code="502", response_flags="-") == 2
    assert _value(prom, "envoy_cluster_upstream_rq", response_code="200", cluster_name="outbound|80||ext.lab") == 6
    assert _value(prom, "envoy_cluster_upstream_rq", response_code="404", cluster_name="outbound|80||ext.lab") == 3
    requests = {"reporter": "source", "destination_service": "ext.lab"}
    assert _value(prom, "istio_requests_total", response_code="200", **requests) == 6
    assert _value(prom, "istio_requests_total", response_code="404", response_flags="-", **requests) == 3
    assert _value(prom, "istio_requests_total", response_code="503", response_flags="UF") == 2
    assert _value(prom, "istio_requests_total", response_code="404", response_flags="NR") == 2
    assert _value(prom, "istio_request_duration_milliseconds_count", **requests) == 9

    lines = _lines(log, n)
    assert len(lines) == n, lines
    assert sum('"GET /status/200 HTTP/1.1" 200 - via_upstream' in x for x in lines) == 6
    assert sum('"GET /nothing-here HTTP/1.1" 404 NR route_not_found' in x for x in lines) == 2
    assert sum('"GET / HTTP/1.1" 503 UF' in x and "outbound|80||dead.lab" in x for x in lines) == 2
