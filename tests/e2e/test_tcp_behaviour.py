"""tcp_proxy's promises under stress: IPv6, timeouts, backpressure, worker loss."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import (
    closed_without_data,
    connect,
    recv_all,
    send_pattern,
    start_sidecar,
    stats,
    write_config,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def one_listener(port: int, cluster_yaml: str, idle: str = "3600s") -> str:
    """A bootstrap with a plain listener on `port` doing tcp_proxy to cluster `up`."""
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
    per_connection_buffer_limit_bytes: 65536
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: front
          cluster: up
          idle_timeout: {idle}
  clusters:
{cluster_yaml}
"""


def static_cluster(ip: str, port: int, connect_timeout: str = "5s") -> str:
    return f"""
  - name: up
    type: STATIC
    connect_timeout: {connect_timeout}
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"""


def two_hosts(lb_policy: str) -> str:
    """Cluster `up` over a (198.19.0.10:80) and b (198.19.0.11:80)."""
    return f"""
  - name: up
    type: STATIC
    lb_policy: {lb_policy}
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 198.19.0.10, port_value: 80}}}}}}
        - endpoint: {{address: {{socket_address: {{address: 198.19.0.11, port_value: 80}}}}}}
"""


def test_ipv6_outbound_and_inbound(lab: Lab) -> None:
    app = lab.add_pod("app", ipv6=True)
    ext = lab.add_pod("ext", ipv6=True)
    peer = lab.add_pod("peer", ipv6=True)
    ext.spawn_server("sink", 9000)
    app.spawn_server("http", 8080)
    start_sidecar(app)
    assert "ISTIO_REDIRECT" in app.run(["ip6tables-save", "-t", "nat"], check=True).stdout
    assert ext.ip6 is not None and app.ip6 is not None

    s = connect(app, ext.ip6, 9000)
    sent = send_pattern(s, 4 * MiB)
    assert recv_all(s).decode() == f"{4 * MiB} {sent}\n"
    s.close()
    st = stats(app)
    assert st["cluster.PassthroughCluster.upstream_cx_total"] == 1
    assert st["listener.0.0.0.0_15001.downstream_cx_total"] == 1  # handled on [::]:15001 too

    r = peer.run(["curl", "-sf", "-g", f"http://[{app.ip6}]:8080/ip"], check=True)
    assert json.loads(r.stdout)["origin"] == "::6"


def test_idle_timeout_closes_a_quiet_connection(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10")
    ext.spawn_server("echo", 9002)
    config = write_config(lab, "idle.yaml", one_listener(7000, static_cluster("198.19.0.10", 9002), idle="1s"))
    start_sidecar(app, config=config, intercept=False, ready_port=7000)
    s = connect(app, "127.0.0.1", 7000)
    s.sendall(b"still here\n")
    assert s.recv(100) == b"still here\n"
    started = time.monotonic()
    assert closed_without_data(s)
    assert time.monotonic() - started < 10
    s.close()
    assert stats(app)["tcp.front.idle_timeout"] == 1


def test_connect_timeout_closes_downstream_and_counts(lab: Lab) -> None:
    app = lab.add_pod("app")
    # Nobody has 198.19.0.99: the SYN goes unanswered until the connect timeout fires.
    config = write_config(
        lab, "ct.yaml", one_listener(7000, static_cluster("198.19.0.99", 80, connect_timeout="0.5s"))
    )
    start_sidecar(app, config=config, intercept=False, ready_port=7000)
    s = connect(app, "127.0.0.1", 7000)
    s.sendall(b"hello")
    assert closed_without_data(s)
    s.close()
    st = stats(app)
    assert st["cluster.up.upstream_cx_connect_timeout"] == 1
    assert st["cluster.up.upstream_cx_connect_fail"] == 1


def test_backpressure_bounds_what_the_proxy_buffers(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10")
    config = write_config(lab, "bp.yaml", one_listener(7000, static_cluster("198.19.0.10", 9009)))
    # An upstream that never reads: the kernel completes the handshake, nobody drains the data.
    with ext.netns():
        stuck = socket.create_server(("0.0.0.0", 9009))
    start_sidecar(app, config=config, intercept=False, ready_port=7000)
    s = connect(app, "127.0.0.1", 7000)
    s.settimeout(2.0)
    sent = 0
    block = b"x" * 65536
    try:
        while sent < 512 * MiB:
            sent += s.send(block)
    except TimeoutError:
        pass
    # Kernel buffers on both legs plus the proxy's 64 KiB watermark: far below what we offered.
    assert sent < 64 * MiB, f"the proxy kept reading: {sent} bytes accepted"
    st = stats(app)
    assert st["tcp.front.downstream_flow_control_paused_reading_total"] >= 1
    s.close()
    stuck.close()


def test_a_killed_worker_is_replaced(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10")
    ext.spawn_server("echo", 9002)
    proxy = start_sidecar(app)
    workers = _descendants(proxy.pid)
    assert len(workers) >= 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = app.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15021/healthz/ready"])
        if r.stdout == "200" and len(_descendants(proxy.pid)) >= 2 and workers[-1] not in _descendants(proxy.pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no replacement worker became ready")
    for _ in range(4):  # both workers serve
        s = connect(app, "198.19.0.10", 9002)
        s.sendall(b"ok\n")
        assert s.recv(10) == b"ok\n"
        s.close()
    assert proxy.poll() is None


def _descendants(pid: int) -> list[int]:
    """Worker processes: descendants of `pid` named `wrk:worker_N` (Envoy's worker thread name)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            todo.append(k)
            try:
                name = Path(f"/proc/{k}/comm").read_bytes()
            except OSError:
                continue
            if name.startswith(b"wrk:worker_"):
                out.append(k)
    return sorted(out)


@pytest.mark.parametrize("kind", ["STRICT_DNS", "LOGICAL_DNS"])
def test_dns_clusters_resolve_lab_names(lab: Lab, kind: str) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["echo.lab"], address="198.19.0.10")
    ext.spawn_server("echo", 9002)
    cluster = f"""
  - name: up
    type: {kind}
    connect_timeout: 2s
    dns_refresh_rate: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: echo.lab, port_value: 9002}}}}}}
"""
    config = write_config(lab, "dns.yaml", one_listener(7000, cluster))
    start_sidecar(app, config=config, intercept=False, ready_port=7000)
    for _ in range(3):
        s = connect(app, "127.0.0.1", 7000)
        s.sendall(b"via dns\n")
        assert s.recv(100) == b"via dns\n"
        s.close()
    st = stats(app)
    assert st["cluster.up.membership_total"] == 1  # each worker's copy, not their sum
    assert st["cluster.up.upstream_cx_total"] == 3


def test_round_robin_spreads_over_endpoints(lab: Lab) -> None:
    app = lab.add_pod("app")
    a = lab.add_pod("a", address="198.19.0.10")
    b = lab.add_pod("b", address="198.19.0.11")
    a.spawn_server("http", 80, "--name", "a")
    b.spawn_server("http", 80, "--name", "b")
    config = write_config(lab, "rr.yaml", one_listener(7000, two_hosts("ROUND_ROBIN")))
    start_sidecar(app, config=config, intercept=False, ready_port=7000, concurrency=1)
    seen = []
    for _ in range(6):
        r = app.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "http://127.0.0.1:7000/"], check=True)
        seen.append(next(x.split(":")[1].strip() for x in r.stdout.splitlines() if x.lower().startswith("x-served-by")))
    assert seen.count("a") == 3 and seen.count("b") == 3


def test_tcp_proxy_access_log_writes_a_line_per_connection(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10")
    ext.spawn_server("echo", 9002)
    log = Path(lab.logdir) / "tcp-access.log"
    log.touch()
    log.chmod(0o666)  # the proxy runs as uid 1337
    config = one_listener(7000, static_cluster("198.19.0.10", 9002)).replace(
        "          idle_timeout: 3600s",
        f"""          idle_timeout: 3600s
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "%UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT%\\n"}}}}""",
    )
    start_sidecar(app, config=write_config(lab, "log.yaml", config), intercept=False, ready_port=7000)
    for payload in (b"one\n", b"three\n"):
        s = connect(app, "127.0.0.1", 7000)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == payload
        s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the log is flushed once a second
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) == 2:
            break
        time.sleep(0.1)
    assert sorted(lines) == ["198.19.0.10:9002 4 4", "198.19.0.10:9002 6 6"]


HCM_LISTENER = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 0.0.0.0, port_value: 7000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: up, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
"""


def _least_request_pods(lab: Lab) -> Pod:
    app = lab.add_pod("app")
    for name, ip in (("a", "198.19.0.10"), ("b", "198.19.0.11")):
        lab.add_pod(name, address=ip).spawn_server("http", 80, "--name", name)
    return app


def _served_by(response_head: str) -> str:
    return next(x.split(":", 1)[1].strip() for x in response_head.splitlines()
                if x.lower().startswith("x-served-by"))


def _host_rq_active(app: Pod) -> dict[str, int]:
    text = app.run(["curl", "-sf", "http://127.0.0.1:15000/clusters"], check=True).stdout
    out = {}
    for line in text.splitlines():
        cluster, *host, key, value = line.split("::")
        if cluster == "up" and key == "rq_active":
            out["::".join(host)] = int(value)
    return out


def _wait_stat(app: Pod, name: str, want: int) -> None:
    deadline = time.monotonic() + 5
    while stats(app).get(name, 0) != want:
        assert time.monotonic() < deadline, f"{name} never reached {want}"
        time.sleep(0.02)


def test_least_request_sends_new_connections_away_from_a_busy_host(lab: Lab) -> None:
    # tcp_proxy: an open connection is one active request on its host (as Envoy's TCP pool).
    app = _least_request_pods(lab)
    config = write_config(lab, "lr.yaml", one_listener(7000, two_hosts("LEAST_REQUEST")))
    start_sidecar(app, config=config, intercept=False, ready_port=7000, concurrency=1)
    held = connect(app, "127.0.0.1", 7000)
    held.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # keep-alive: the connection stays open
    head = b""
    while b"\r\n\r\n" not in head:
        head += held.recv(4096)
    busy = _served_by(head.decode())
    idle = "b" if busy == "a" else "a"
    seen = []
    for _ in range(10):
        r = app.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "http://127.0.0.1:7000/"], check=True)
        seen.append(_served_by(r.stdout))
        # The curl connection is over for the proxy too before the next pick.
        _wait_stat(app, "listener.0.0.0.0_7000.downstream_cx_active", 1)
    assert seen == [idle] * 10  # without the count: each pick is a coin toss between a and b
    busy_ip = "198.19.0.10:80" if busy == "a" else "198.19.0.11:80"
    assert _host_rq_active(app) == {busy_ip: 1, ("198.19.0.11:80" if busy == "a" else "198.19.0.10:80"): 0}
    held.close()
    _wait_stat(app, "listener.0.0.0.0_7000.downstream_cx_active", 0)
    assert set(_host_rq_active(app).values()) == {0}


def test_least_request_sends_new_http_requests_away_from_a_busy_host(lab: Lab) -> None:
    # HCM: each request in flight counts on its host until its response is complete.
    app = _least_request_pods(lab)
    config = write_config(lab, "lr-http.yaml", HCM_LISTENER + two_hosts("LEAST_REQUEST"))
    start_sidecar(app, config=config, intercept=False, ready_port=7000, concurrency=1)
    slow = app.spawn(["curl", "-s", "-D", "-", "-o", "/dev/null", "http://127.0.0.1:7000/delay/4"],
                     stdout=subprocess.PIPE)
    _wait_stat(app, "cluster.up.upstream_rq_active", 1)
    active = _host_rq_active(app)
    seen = []
    for _ in range(10):
        r = app.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "http://127.0.0.1:7000/"], check=True)
        seen.append(_served_by(r.stdout))
    out, _ = slow.communicate(timeout=15)
    busy = _served_by(out.decode())
    assert seen == ["b" if busy == "a" else "a"] * 10
    busy_ip = "198.19.0.10:80" if busy == "a" else "198.19.0.11:80"
    assert active[busy_ip] == 1 and sum(active.values()) == 1
    assert set(_host_rq_active(app).values()) == {0}
