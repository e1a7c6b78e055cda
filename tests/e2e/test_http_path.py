"""The HTTP path in lab pods: seed 002 under `pysidecar run -c`, and Istio's sniffing port
listener behind 15001 with REGISTRY_ONLY's block_all virtual host.

Upstreams are the lab's http servers in their own pods; the sidecar runs as uid 1337.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from pysidecar.lab import Lab, Pod
from tests.conformance.harness import read_response
from tests.e2e.sidecar import BLOCK_ALL_VHOST, connect, recv_all, start_sidecar, stats, write_config

pytestmark = pytest.mark.e2e

SEED = Path(__file__).resolve().parents[1] / "conformance" / "scenarios" / "seed002.yaml"


def seed_config(lab: Lab) -> str:
    values = {
        "ADMIN_ADDR": "127.0.0.1", "ADMIN_PORT": 15000, "LISTEN_ADDR": "0.0.0.0", "LISTEN_PORT": 8080,
        "V1_ADDR": "198.19.0.11", "V1_PORT": 80, "V2_ADDR": "198.19.0.12", "V2_PORT": 80,
        "DEAD_ADDR": "198.19.0.11", "DEAD_PORT": 81, "LAB_ADDR": "198.19.0.11", "LAB_PORT": 80,
    }  # fmt: skip
    text = SEED.read_text()
    for k, v in values.items():
        text = text.replace("${" + k + "}", str(v))
    return write_config(lab, "seed002.yaml", text)


def curl(pod: Pod, *args: str) -> tuple[str, str]:
    """(status code, body) of a curl from `pod`."""
    r = pod.run(["curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args])
    body, _, code = r.stdout.rpartition("\n")
    return code, body


@pytest.fixture
def seed(lab: Lab) -> Pod:
    for name, addr in (("v1", "198.19.0.11"), ("v2", "198.19.0.12")):
        pod = lab.add_pod(name, address=addr)
        pod.spawn_server("http", 80, "--body", f"{name}\n", "--name", name)
    proxy = lab.add_pod("proxy", address="198.19.0.20")
    start_sidecar(proxy, seed_config(lab), concurrency=1, intercept=False, ready_port=8080)
    return lab.add_pod("client")


def test_seed_routes_headers_and_split(seed: Pod) -> None:
    base = "http://198.19.0.20:8080"
    code, body = curl(seed, "-H", "Host: abc.com", f"{base}/abc/anything/x")
    assert code == "200"
    echo = json.loads(body)  # the lab server's /anything echo: what reached the upstream
    assert echo["path"] == "/anything/x.html"  # regex_rewrite ^/abc/(.*?)$ -> /\1.html
    assert ["x-envoy-original-path", "/abc/anything/x"] in echo["headers"]
    r = seed.run(["curl", "-si", "-H", "Host: abc.com", f"{base}/"]).stdout.lower()
    assert "server: envoy" in r and "myname: chengzw" in r and "location: china" in r
    counts = {"v1\n": 0, "v2\n": 0}
    urls = [f"{base}/"] * 500
    out = seed.run(["curl", "-s", "-H", "Host: abc.com", *urls]).stdout
    counts["v1\n"] = out.count("v1\n")
    counts["v2\n"] = out.count("v2\n")
    assert sum(counts.values()) == 500
    assert abs(counts["v2\n"] - 300) <= 50, counts
    assert curl(seed, "-H", "Host: nowhere", f"{base}/")[0] == "404"
    assert curl(seed, "-H", "Host: x.example.com", f"{base}/exact")[0] == "200"


def test_seed_timeout_and_refused(seed: Pod) -> None:
    base = "http://198.19.0.20:8080"
    start = time.monotonic()
    code, body = curl(seed, "-H", "Host: abc.com", f"{base}/slow")
    elapsed = time.monotonic() - start
    assert (code, body) == ("504", "upstream request timeout")
    assert 2.7 <= elapsed <= 3.3, elapsed
    code, body = curl(seed, "-H", "Host: abc.com", f"{base}/refused")
    assert code == "503"
    assert body == (
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    )


def test_bad_input_does_not_disturb_other_connections(seed: Pod) -> None:
    keep = connect(seed, "198.19.0.20", 8080)
    for raw, status in (
        (b"GARBAGE\r\n\r\n", b"400"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
        ),
        (b"GET / HTTP/1.1\r\nx: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ):
        keep.sendall(b"GET / HTTP/1.1\r\nHost: abc.com\r\n\r\n")
        assert (r := read_response(keep)) is not None and r.status == 200
        bad = connect(seed, "198.19.0.20", 8080)
        bad.sendall(raw)
        assert recv_all(bad).startswith(b"HTTP/1.1 " + status)
        bad.close()
    # A client that sends headers too slowly is cut off (request_headers_timeout 10 s default).
    slow = connect(seed, "198.19.0.20", 8080, timeout=20)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: abc.com\r\n")
    start = time.monotonic()
    assert recv_all(slow).startswith(b"HTTP/1.1 408")
    assert 9 <= time.monotonic() - start <= 12
    keep.sendall(b"GET / HTTP/1.1\r\nHost: abc.com\r\n\r\n")
    assert (r := read_response(keep)) is not None and r.status == 200
    keep.close()


REGISTRY_ONLY_HTTP = (
    """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: BlackHoleCluster
          cluster: BlackHoleCluster
  - name: 0.0.0.0_80
    address: {socket_address: {address: 0.0.0.0, port_value: 80}}
    bind_to_port: false
    traffic_direction: OUTBOUND
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
    continue_on_listener_filters_timeout: true
    filter_chains:
    - filter_chain_match: {transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_80
          tracing: {}
          route_config:
            name: "80"
            validate_clusters: false
            virtual_hosts:
            - name: ext.lab:80
              domains: [ext.lab, 198.19.0.10]
              include_request_attempt_count: true
              routes:
              - name: default
                match: {prefix: /}
                decorator: {operation: "ext.lab:80/*"}
                route:
                  cluster: outbound|80||ext.lab
                  timeout: 0s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
                    retriable_status_codes: [503]
"""
    + BLOCK_ALL_VHOST
    + """          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  clusters:
  - {name: BlackHoleCluster, type: STATIC, connect_timeout: 10s}
  - {name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 10s}
  - name: outbound|80||ext.lab
    type: STRICT_DNS
    connect_timeout: 10s
    load_assignment:
      cluster_name: outbound|80||ext.lab
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: ext.lab, port_value: 80}}}}]}]
"""
)


def test_registry_only_http_502_and_sniffed_routes(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["ext.lab", "unknown.example"], address="198.19.0.10")
    ext.spawn_server("http", 80, "--name", "ext")
    start_sidecar(
        app, write_config(lab, "ro.yaml", REGISTRY_ONLY_HTTP), concurrency=1, ready_port=15000
    )

    head = app.run(["curl", "-sI", "http://unknown.example/"]).stdout
    assert head.startswith("HTTP/1.1 502 Bad Gateway"), head
    assert "server: envoy" in head.lower()

    got = app.run(["curl", "-s", "http://ext.lab/headers"]).stdout
    assert '"X-Envoy-Decorator-Operation": "ext.lab:80/*"' in got
    assert '"X-Envoy-Attempt-Count": "1"' in got
    assert "X-Envoy-Expected-Rq-Timeout-Ms" not in got  # timeout 0s: no header

    # Not HTTP on port 80: the inspectors say so and the default chain passes it through.
    s = connect(app, "198.19.0.10", 80)
    s.sendall(b"\x00\x01 not http\r\n\r\n")
    s.settimeout(5)
    assert s.recv(100).startswith(b"HTTP/1.1 400")  # the http server behind answers raw TCP
    s.close()
    st = stats(app)
    # Exactly: two curls, one raw connection, and nothing else went through the inspectors.
    assert st["http_inspector.http11_found"] == 2
    assert st["http_inspector.http_not_found"] == 1
    assert st["tls_inspector.tls_not_found"] == 3
    assert st["http.outbound_0.0.0.0_80.rq_direct_response"] == 1


def test_server_first_protocol_continues_after_listener_filters_timeout(lab: Lab) -> None:
    """A server-first protocol on a sniffed port waits for the listener filter timeout (15 s,
    as Envoy), then goes through the TCP chain."""
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["ext.lab"], address="198.19.0.10")
    ext.spawn_server("source", 80, "--bytes", "5")
    start_sidecar(
        app, write_config(lab, "ro.yaml", REGISTRY_ONLY_HTTP), concurrency=1, ready_port=15000
    )
    start = time.monotonic()
    s = connect(app, "198.19.0.10", 80, timeout=30)
    data = s.recv(100)
    assert len(data) == 5
    assert 14 <= time.monotonic() - start <= 17
    s.close()


def test_drain_keeps_a_sniffing_connection_and_closes_http_after_its_response(lab: Lab) -> None:
    """A connection still in the listener filters when SIGTERM comes is drained like any
    other: it can still send its request; the response says `connection: close`."""
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["ext.lab"], address="198.19.0.10")
    ext.spawn_server("http", 80, "--name", "ext")
    proxy = start_sidecar(app, write_config(lab, "ro.yaml", REGISTRY_ONLY_HTTP), concurrency=1,
                          ready_port=15000, extra=("--drain-time-s", "2"))
    s = connect(app, "198.19.0.10", 80)  # no bytes yet: the inspectors wait for them
    deadline = time.monotonic() + 5
    while stats(app).get("listener.0.0.0.0_80.downstream_cx_active", 0) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    signalled = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proxy.poll() is None  # the sniffing connection keeps the worker draining
    s.sendall(b"GET / HTTP/1.1\r\nhost: ext.lab\r\n\r\n")
    response = read_response(s)
    assert response is not None and response.status == 200
    assert ("connection", "close") in response.headers
    s.settimeout(5)
    assert recv_all(s) == b""  # closed after the response, not at the drain limit
    assert time.monotonic() - signalled < 1.5
    s.close()
    assert proxy.wait(3) == 0


@pytest.mark.parametrize("cont", [True, False], ids=["continue", "close"])
def test_listener_filters_timeout_and_continue_are_the_listeners(lab: Lab, cont: bool) -> None:
    """A short listener_filters_timeout; without continue_on_listener_filters_timeout (Envoy's
    default) a connection that sends nothing is closed when it passes."""
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["ext.lab"], address="198.19.0.10")
    ext.spawn_server("source", 80, "--bytes", "5")
    config = REGISTRY_ONLY_HTTP.replace(
        "    continue_on_listener_filters_timeout: true\n",
        f"    continue_on_listener_filters_timeout: {str(cont).lower()}\n    listener_filters_timeout: 0.5s\n",
    )
    start_sidecar(app, write_config(lab, "lft.yaml", config), concurrency=1, ready_port=15000)
    start = time.monotonic()
    s = connect(app, "198.19.0.10", 80, timeout=10)
    data = recv_all(s)
    elapsed = time.monotonic() - start
    s.close()
    assert 0.4 <= elapsed <= 3, elapsed
    st = stats(app)
    if cont:
        assert len(data) == 5  # proxied as TCP once sniffing gave up
        assert st.get("listener.0.0.0.0_80.downstream_pre_cx_timeout", 0) == 0
    else:
        assert data == b""
        assert st["listener.0.0.0.0_80.downstream_pre_cx_timeout"] == 1
