"""The core TCP path in a lab pod with Istio's rules: 15001 outbound, 15006 inbound, catch-alls.

Each test builds pods as network namespaces, installs the injector's default iptables rules
with `pysidecar init`, runs `pysidecar run` as uid 1337 and checks what arrives and what the
proxy's own stats say about how it got there.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time

import pytest

from pysidecar.lab import Lab
from pysidecar.lab.pod import PROXY_CAPS
from pysidecar.lab.servers import source_bytes
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

REGISTRY_ONLY_ENVOY = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    traffic_direction: OUTBOUND
    filter_chains:
    - name: virtualOutbound-blackhole
      filter_chain_match: {destination_port: 15001}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: BlackHoleCluster
          cluster: BlackHoleCluster
    - name: virtualOutbound-catchall-tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: BlackHoleCluster
          cluster: BlackHoleCluster
__LISTENERS__
  clusters:
  - name: BlackHoleCluster
    type: STATIC
    connect_timeout: 10s
__CLUSTERS__
"""


def registry_only(listeners: str = "", clusters: str = "") -> str:
    """The virtualOutbound of a REGISTRY_ONLY sidecar, plus the given listeners and clusters."""
    return REGISTRY_ONLY_ENVOY.replace("__LISTENERS__", listeners).replace("__CLUSTERS__", clusters)


def _ext_pod(lab: Lab):  # type: ignore[no-untyped-def]
    ext = lab.add_pod("ext", hostnames=["ext.lab"], address="198.19.0.10")
    ext.spawn_server("sink", 9000)
    ext.spawn_server("source", 9001, "--bytes", str(100 * MiB))
    ext.spawn_server("echo", 9002)
    return ext


def test_outbound_through_15001_is_byte_exact_both_ways(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext_pod(lab)
    start_sidecar(app)

    for size in (1 * MiB, 100 * MiB):
        s = connect(app, "198.19.0.10", 9000)
        sent = send_pattern(s, size)
        assert recv_all(s).decode() == f"{size} {sent}\n"
        s.close()

    s = connect(app, "198.19.0.10", 9001)
    s.shutdown(socket.SHUT_WR)  # half-close: the source must still send everything
    got = recv_all(s)
    s.close()
    assert len(got) == 100 * MiB
    assert hashlib.sha256(got).digest() == hashlib.sha256(source_bytes(100 * MiB)).digest()

    # echo with a 1 MiB request: the reply direction stays open after our FIN
    s = connect(app, "198.19.0.10", 9002)
    payload = hashlib.sha256(b"x").digest() * (MiB // 32)
    reader = threading.Thread(target=lambda: result.append(recv_all(s)))
    result: list[bytes] = []
    reader.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    reader.join(30)
    s.close()
    assert result == [payload]

    st = stats(app)
    assert st["tcp.PassthroughCluster.downstream_cx_total"] == 4
    assert st["listener.0.0.0.0_15001.downstream_cx_total"] == 4
    assert st["cluster.PassthroughCluster.upstream_cx_total"] == 4
    sent_total = 101 * MiB + MiB
    assert st["tcp.PassthroughCluster.downstream_cx_rx_bytes_total"] == sent_total
    # sink answers ~80 bytes per connection; source sends 100 MiB; echo 1 MiB back
    received = st["tcp.PassthroughCluster.downstream_cx_tx_bytes_total"]
    assert 101 * MiB <= received <= 101 * MiB + 400


def test_registry_only_closes_without_data(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext_pod(lab)
    config = write_config(
        lab, "registry-only.yaml", registry_only()
    )
    start_sidecar(app, config=config, ready_port=15001)
    for port in (9000, 9002, 80):
        s = connect(app, "198.19.0.10", port)
        try:
            s.sendall(b"hello\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed before we could even send: also "without data"
        else:
            assert closed_without_data(s)
        s.close()
    st = stats(app)
    assert st["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == 3
    assert st["cluster.BlackHoleCluster.upstream_cx_total"] == 0


def test_specific_listener_beats_wildcard_beats_catch_all(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", address="198.19.0.10")
    other = lab.add_pod("other", address="198.19.0.20")
    ext.spawn_server("http", 9100, "--name", "specific")
    other.spawn_server("http", 9200, "--name", "wildcard")
    listener = """
  - name: {name}
    address: {{socket_address: {{address: {ip}, port_value: 9000}}}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}
"""
    cluster = """
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"""
    text = registry_only(
        listeners=listener.format(name="198.19.0.10_9000", ip="198.19.0.10", cluster="specific")
        + listener.format(name="0.0.0.0_9000", ip="0.0.0.0", cluster="wildcard"),
        clusters=cluster.format(name="specific", ip="198.19.0.10", port=9100)
        + cluster.format(name="wildcard", ip="198.19.0.20", port=9200),
    )
    start_sidecar(app, config=write_config(lab, "listeners.yaml", text), ready_port=15001)

    def served_by(ip: str) -> str:
        r = app.run(["curl", "-s", "-D", "-", "-o", "/dev/null", f"http://{ip}:9000/"], check=True)
        return next(
            line.split(":", 1)[1].strip()
            for line in r.stdout.splitlines()
            if line.lower().startswith("x-served-by:")
        )

    assert served_by("198.19.0.10") == "specific"
    assert served_by("198.19.0.20") == "wildcard"
    assert served_by("198.19.0.30") == "wildcard"  # no host there: the wildcard listener owns :9000
    r = app.run(["curl", "-s", "-m", "5", "http://198.19.0.10:9100/"])
    assert r.returncode != 0 and r.stdout == ""  # port 9100 has no listener: BlackHole
    st = stats(app)
    assert st["tcp.specific.downstream_cx_total"] == 1
    assert st["tcp.wildcard.downstream_cx_total"] == 2
    assert st["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == 1


def test_inbound_through_15006_reaches_app_from_127_0_0_6(lab: Lab) -> None:
    app = lab.add_pod("app")
    client = lab.add_pod("client")
    app.spawn_server("http", 8080, "--name", "app")
    start_sidecar(app)
    r = client.run(["curl", "-sf", "http://app:8080/ip"], check=True)
    seen = json.loads(r.stdout)
    assert seen["origin"] == "127.0.0.6"  # InboundPassthroughClusterIpv4's source address
    assert seen["local"] == [app.ip, 8080]
    st = stats(app)
    assert st["cluster.InboundPassthroughClusterIpv4.upstream_cx_total"] == 1
    assert st["listener.0.0.0.0_15006.downstream_cx_total"] == 1
    # the app talking to itself over loopback is never captured
    r = app.run(["curl", "-sf", "http://127.0.0.1:8080/ip"], check=True)
    assert json.loads(r.stdout)["origin"] == "127.0.0.1"


def test_no_redirect_loop_through_15001(lab: Lab) -> None:
    app = lab.add_pod("app")
    proxy = start_sidecar(app)
    before = stats(app)["cluster.BlackHoleCluster.upstream_cx_none_healthy"]
    # The app dialling the proxy's own outbound port (by pod IP: not captured, lands on 15001
    # with original destination :15001) must hit the loop guard, not recurse.
    s = connect(app, app.ip, 15001)
    s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert closed_without_data(s)
    s.close()
    st = stats(app)
    assert st["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == before + 1
    assert st["cluster.PassthroughCluster.upstream_cx_total"] == 0
    assert proxy.poll() is None


def test_sigterm_drains_open_connections_and_exits_zero(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext_pod(lab)
    proxy = start_sidecar(app)
    s = connect(app, "198.19.0.10", 9002)
    s.sendall(b"before\n")
    assert s.recv(100) == b"before\n"
    proxy.send_signal(signal.SIGTERM)
    # The open connection keeps working during the drain...
    s.sendall(b"during\n")
    assert s.recv(100) == b"during\n"
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()
    # ...and the proxy exits 0 once it is gone.
    assert proxy.wait(15) == 0


def test_sigterm_refuses_new_connections_and_bounds_the_drain(lab: Lab) -> None:
    app = lab.add_pod("app")
    _ext_pod(lab)
    proxy = start_sidecar(app, extra=("--drain-time-s", "1"))
    held = connect(app, "198.19.0.10", 9002)
    held.sendall(b"before\n")
    assert held.recv(100) == b"before\n"
    signalled = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    # New connections are refused at once: 15001 is no longer listening in any worker.
    while True:
        try:
            connect(app, "198.19.0.10", 9002, timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() - signalled < 0.5, "still accepting after SIGTERM"
        time.sleep(0.02)
    refused_after = time.monotonic() - signalled
    # The held connection works during the drain, then is closed at the drain limit...
    held.sendall(b"during\n")
    assert held.recv(100) == b"during\n"
    held.settimeout(5)
    assert closed_without_data(held)
    closed_after = time.monotonic() - signalled
    held.close()
    # ...and the proxy exits 0 soon after.
    assert proxy.wait(3) == 0
    exited_after = time.monotonic() - signalled
    assert refused_after < 0.5
    assert 0.9 <= closed_after <= 2.0, closed_after
    assert exited_after <= 3.0, exited_after


TPROXY_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
               "-b", "*", "-d", "15090,15021,15020"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_tproxy_inbound_through_15006_reaches_app_from_127_0_0_6(lab: Lab, how: str) -> None:
    """Init with -m TPROXY (mangle TPROXY to 15006, fwmark routing), the proxy as 1337 with
    NET_ADMIN (IP_TRANSPARENT, as Istio's injector grants for TPROXY): no NAT on the way in."""
    app = lab.add_pod("app")
    client = lab.add_pod("client")
    _ext_pod(lab)
    app.spawn_server("http", 8080, "--name", "app")
    app.install_interception(TPROXY_ARGS)
    assert "TPROXY" in app.run(["iptables-save", "-t", "mangle"], check=True).stdout
    if how == "flag":
        proxy = start_sidecar(app, intercept=False, extra=("--interception-mode", "TPROXY"),
                              caps=(*PROXY_CAPS, "net_admin"))
    else:
        proc = app.spawn_proxy(["run"], env={"ISTIO_META_INTERCEPTION_MODE": "TPROXY"},
                               caps=(*PROXY_CAPS, "net_admin"))
        app.wait_port(15021, timeout=20, proc=proc)
        proxy = proc
    dump = app.run(["curl", "-sf", "http://127.0.0.1:15000/config_dump"], check=True).stdout
    assert '"transparent": true' in dump
    deadline = time.monotonic() + 10
    while True:  # every worker bound (readiness on 15021 says so for the flag case)
        r = client.run(["curl", "-s", "-m", "5", "http://app:8080/ip"])
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.returncode == 0, r
    seen = json.loads(r.stdout)
    assert seen["origin"] == "127.0.0.6"  # InboundPassthroughClusterIpv4's source address
    assert seen["local"] == [app.ip, 8080]  # the original destination: the socket's local one
    st = stats(app)
    assert st["listener.0.0.0.0_15006.downstream_cx_total"] >= 1
    assert st["cluster.InboundPassthroughClusterIpv4.upstream_cx_total"] >= 1
    assert st.get("cluster.BlackHoleCluster.upstream_cx_none_healthy", 0) == 0
    # Outbound is still nat REDIRECT to 15001, and works alongside.
    s = connect(app, "198.19.0.10", 9002)
    s.sendall(b"out\n")
    assert s.recv(100) == b"out\n"
    s.close()
    assert stats(app)["cluster.PassthroughCluster.upstream_cx_total"] >= 1
    proxy.terminate()
    assert proxy.wait(15) == 0


def test_tproxy_without_net_admin_fails_at_start_and_names_the_capability(lab: Lab) -> None:
    app = lab.add_pod("app")
    proc = app.spawn_proxy(["run", "--interception-mode", "TPROXY"])
    assert proc.wait(20) != 0
    assert "CAP_NET_ADMIN" in lab.logs()
