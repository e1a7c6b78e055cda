"""Real pods: the images built with podman from deploy/Containerfile and init/Containerfile, the
sample pods injected by `pysidecar inject` and run by `podman kube play` (real init container,
real iptables in the pod's network namespace, real sidecars as uid 1337), and the ingress
gateway of deploy/manifests/40-ingressgateway.yaml with seed 001's Gateway, HTTP and SIMPLE TLS.

The run is deploy/pods/pods.py's (scripts/pods.sh); these tests assert its facts themselves.
Marked `pods`: `-m "not pods"` or PYSIDECAR_SKIP_PODS=<reason> skips it, with that reason shown;
without podman it fails (scripts/bootstrap.sh installs podman), it never skips silently.
A first run builds the Debian base with mmdebstrap and both images (minutes); later runs reuse
the base image (and its cache tar) and the build cache."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_pods() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pysidecar_pods_run", ROOT / "deploy" / "pods" / "pods.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pods = _load_pods()
pytestmark = [pytest.mark.e2e, pytest.mark.pods, pytest.mark.timeout(1500)]


@dataclass
class Run:
    podman: object
    since: str
    base: str
    sizes: dict[str, int]
    build_s: float
    up_s: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = os.environ.get("PYSIDECAR_SKIP_PODS")
    if reason:
        pytest.skip(f"PYSIDECAR_SKIP_PODS: {reason}")
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/bootstrap.sh installs it); to skip: -m 'not pods'")
    with pods.exclusive():
        yield from _run(pods.Podman(tmp_path_factory.mktemp("pods")))


def _run(podman: object) -> Iterator[Run]:
    started = time.monotonic()
    base = pods.ensure_base(podman)
    sizes = pods.build_images(podman)
    built = time.monotonic()
    pods.down(podman)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    try:
        pods.up(podman)
        up_s = time.monotonic() - built
        print(f"\npods: base {base}; images built in {built - started:.0f} s, pods up in {up_s:.0f} s")
        yield Run(podman, since, base, sizes, built - started, up_s)
    finally:
        for pod in pods.PODS:
            print(f"=== {pod.name} istio-proxy log (tail) ===")
            print(podman.run("logs", "--tail", "15", f"{pod.name}-istio-proxy", check=False))
        pods.down(podman)


def test_images_debian_python_venv_and_users(run: Run) -> None:
    podman = run.podman
    assert set(run.sizes) == {pods.INIT_IMAGE, pods.PROXY_IMAGE, pods.APP_IMAGE}
    assert podman.run("image", "inspect", "--format", "{{.Config.User}}", pods.PROXY_IMAGE).strip() == "1337:1337"
    assert podman.run("image", "inspect", "--format", "{{.Config.User}}", pods.INIT_IMAGE).strip() == "0:0"
    # Debian's Python (the venv's interpreter is /usr/bin/python3.11 from the python3.11 package) and
    # both iptables backends in the init image; no pip left in either image.
    out = podman.run("run", "--rm", "--entrypoint", "sh", pods.INIT_IMAGE, "-c",
                     "readlink -f /opt/pysidecar/bin/python3; dpkg -S /usr/bin/python3.11; "
                     ". /etc/os-release; echo $VERSION_CODENAME; iptables-legacy -V; iptables-nft -V; "
                     "ls /opt/pysidecar/bin/pip 2>&1 || true; pysidecar init --help >/dev/null && echo init-ok")  # fmt: skip
    assert "/usr/bin/python3.11" in out and "python3.11" in out.split("\n")[1]
    assert "bookworm" in out
    assert "(legacy)" in out and "(nf_tables)" in out
    assert "No such file" in out and "init-ok" in out
    out = podman.run("run", "--rm", pods.PROXY_IMAGE, "--help")
    assert "usage: pysidecar run" in out


def test_init_container_exited_0_and_its_rules_are_in_the_pod_netns(run: Run) -> None:
    for pod in (pods.HTTPBIN, pods.SLEEP):
        assert pods.init_exit_codes(run.podman, pod, run.since) == [0], pod.name
        nat = pods.pod_iptables(run.podman, pod)
        assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in nat["nft"]
        assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in nat["nft"]
        assert "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" in nat["nft"]
        assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN" in nat["nft"]
        assert "ISTIO" not in nat["legacy"]  # one backend, the one the namespace uses
    # The gateway intercepts nothing: no init container, no rules.
    assert pods.init_exit_codes(run.podman, pods.GATEWAY, run.since) == []
    assert "ISTIO" not in pods.pod_iptables(run.podman, pods.GATEWAY)["nft"]


def test_sidecars_run_as_1337_and_apps_do_not(run: Run) -> None:
    for pod in pods.PODS:
        assert pods.proxy_users(run.podman, pod) == {1337}, pod.name
        assert run.podman.run("inspect", "--format", "{{.Config.User}}", f"{pod.name}-istio-proxy").strip() == "1337:1337"
    ps = run.podman.run("ps", "--format", "{{.Names}}").split()
    assert {f"{p.name}-istio-proxy" for p in pods.PODS} <= set(ps)
    for name in (f"{pods.HTTPBIN.name}-httpbin", f"{pods.SLEEP.name}-sleep"):
        assert pods.uids(run.podman, name) == {1000}


def test_readiness_200_and_prometheus_scrape(run: Run) -> None:
    for pod in pods.PODS:
        assert pods.readiness(run.podman, pod) == 200, pod.name
        stats = pods.scrape(run.podman, pod)
        assert any(s.startswith("envoy_server_live") for s in stats) or len(stats) > 50, pod.name


def test_client_curl_crosses_both_sidecars(run: Run) -> None:
    podman = run.podman
    before = {p: pods.scrape(podman, p) for p in (pods.HTTPBIN, pods.SLEEP)}
    head, body = pods.client_curl(podman, "http://httpbin:8000/headers")
    assert head.startswith("HTTP/1.1 200") and "x-served-by: httpbin" in head
    # The client's sidecar: its router's headers, on the ConfigMap's route for the ServiceEntry host.
    assert "x-envoy-upstream-service-time" in head
    assert {"X-Request-Id", "X-Envoy-Attempt-Count"} <= set(body["headers"])
    assert body["headers"]["X-Envoy-Decorator-Operation"] == "httpbin.pysidecar-demo.svc.cluster.local:8000/*"
    # httpbin's sidecar: inbound capture, passed to the app from 127.0.0.6 (Istio's passthrough).
    head, body = pods.client_curl(podman, "http://httpbin.pysidecar-demo.svc.cluster.local:8000/ip")
    assert body["origin"] == "127.0.0.6" and body["local"] == [pods.HTTPBIN.ip, 8000]
    after = {p: pods.scrape(podman, p) for p in (pods.HTTPBIN, pods.SLEEP)}
    cluster = "outbound|8000||httpbin"
    assert pods.upstream_rq_200(after[pods.SLEEP], cluster) - pods.upstream_rq_200(before[pods.SLEEP], cluster) == 2
    inbound = "InboundPassthroughCluster"  # istiod's HTTP passthrough chain: an HCM per IP family
    assert pods.upstream_rq_200(after[pods.HTTPBIN], inbound) - pods.upstream_rq_200(before[pods.HTTPBIN], inbound) == 2


def test_client_without_its_sidecar_is_not_served(run: Run) -> None:
    # The capture is real: stopping the client's sidecar leaves the app's connection nowhere to go
    # (15001 is closed), where a pod without rules would have reached httpbin directly.
    podman = run.podman
    podman.run("stop", "-t", "0", f"{pods.SLEEP.name}-istio-proxy")
    try:
        out = podman.run("exec", f"{pods.SLEEP.name}-sleep", "curl", "-s", "-o", "/dev/null", "-w",
                         "%{http_code}", "--max-time", "5", "http://httpbin:8000/ip", check=False)  # fmt: skip
        assert out.strip() == "000"
    finally:
        podman.run("start", f"{pods.SLEEP.name}-istio-proxy")
        pods.wait_ready(podman, pods.SLEEP)


def test_ingress_gateway_host_routing_and_simple_tls_from_outside(run: Run) -> None:
    gw = pods.GATEWAY.ip
    host = ("-H", "Host: httpbin.example.com")
    head = pods.gateway_curl(run.podman, *host, f"http://{gw}:8080/status/200")
    assert head.startswith("HTTP/1.1 200") and "x-served-by: httpbin" in head
    assert pods.gateway_curl(run.podman, *host, f"http://{gw}:8080/delay/0").startswith("HTTP/1.1 200")
    assert pods.gateway_curl(run.podman, *host, f"http://{gw}:8080/headers").startswith("HTTP/1.1 404")
    other = pods.gateway_curl(run.podman, "-H", "Host: other.example.com", f"http://{gw}:8080/status/200")
    assert other.startswith("HTTP/1.1 404")
    tls = ("--cacert", "/certs/example.com.crt", "--resolve", f"httpbin.example.com:8443:{gw}")
    head = pods.gateway_curl(run.podman, *tls, "https://httpbin.example.com:8443/status/418")
    assert head.startswith(("HTTP/1.1 418", "HTTP/2 418")), head
    # The certificate is the credential's: without the CA, curl refuses it.
    out = run.podman.run("exec", pods.NODE, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         "--resolve", f"httpbin.example.com:8443:{gw}",
                         "https://httpbin.example.com:8443/status/418", check=False)  # fmt: skip
    assert out.strip() == "000"
    # mesh.yaml's accessLogFile /dev/stdout: the line is written once the stream ends (poll).
    lines = ('"GET /status/418 HTTP/2" 418', '"GET /status/418 HTTP/1.1" 418')
    deadline = time.monotonic() + 10
    while not any(x in (log := run.podman.run("logs", f"{pods.GATEWAY.name}-istio-proxy")) for x in lines):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.5)


def test_down_removes_everything(run: Run) -> None:
    podman = run.podman
    assert pods.down(podman) == []
    assert not set(podman.run("pod", "ls", "--format", "{{.Name}}").split()) & {p.name for p in pods.PODS}
    names = podman.run("ps", "-a", "--format", "{{.Names}}").split()
    assert not [n for n in names if n == pods.NODE or any(n.startswith(p.name) for p in pods.PODS)]
    assert not podman.ok("network", "exists", pods.NETWORK)
