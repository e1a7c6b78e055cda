"""gRPC in the mesh from Istio YAML: a Kubernetes Service whose port is named `grpc` (HTTP/2 to
the upstream, as istiod configures it), a grpcio server in one lab pod and a grpcio client in
another behind the sidecar (iptables interception), on pysidecar and on real Envoy 1.40 running
`pysidecar envoy-config` of the same YAML: the same outcomes and upstream HTTP/2 counters."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import stats
from tests.e2e.test_istio_egress import PROXIES, _config_dir, start

pytestmark = pytest.mark.e2e

PORT = 50051
HOST = "greeter.default.svc.cluster.local"
CLUSTER = f"outbound|{PORT}||{HOST}"


def _greeter(ip: str) -> str:
    """The Service's cluster IP is the server pod's own address: lab pods route to each other
    but have no service CIDR; interception and the listener `<ip>_50051` work the same."""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{name: grpc, port: {PORT}}}]
  selector: {{app: greeter}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: greeter, namespace: default}}
subsets: [{{addresses: [{{ip: {ip}}}], ports: [{{name: grpc, port: {PORT}}}]}}]
"""


def _call(pod: Pod, vip: str, method: str = "Unary", data: str = "hello") -> dict[str, Any]:
    r = pod.run(
        [sys.executable, "-m", "tests.grpc_app", "call", "--host", vip, "--port", str(PORT),
         "--authority", f"{HOST}:{PORT}", "--method", method, "--data", data],
        timeout=30,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("proxy", PROXIES)
def test_grpc_service_port_through_the_sidecar(lab: Lab, proxy: str) -> None:
    app = lab.add_pod("app")
    greeter = lab.add_pod("greeter")
    srv = greeter.spawn([sys.executable, "-m", "tests.grpc_app", "serve", "--host", "0.0.0.0", "--port", str(PORT), "--name", "greeter"])
    greeter.wait_port(PORT, timeout=20, proc=srv)
    start(proxy, app, _config_dir(lab, {"greeter.yaml": _greeter(greeter.ip)}))
    got = _call(app, greeter.ip)
    assert got.get("code") == "OK" and got["sizes"] == [5], got
    assert got["initial"]["x-served-by"] == "greeter" and got["trailing"] == {"x-trailer": "done"}
    assert _call(app, greeter.ip, "ServerStream", "3x70000")["sizes"] == [70000] * 3
    failed = _call(app, greeter.ip, data="status:14")
    assert failed == {"code": "UNAVAILABLE", "details": "asked for 14"}
    s = stats(app)
    assert s[f"cluster.{CLUSTER}.upstream_cx_http2_total"] >= 1
    assert s.get(f"cluster.{CLUSTER}.upstream_cx_http1_total", 0) == 0
