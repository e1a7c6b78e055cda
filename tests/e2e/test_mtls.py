"""Mutual TLS between sidecars in lab pods, each with its own identity from the lab CA.

sleep (sa sleep) → web (sa web): the sleep sidecar's outbound cluster for web has Istio's
auto-mTLS transport socket match (the web Pod is labelled security.istio.io/tlsMode: istio),
the web sidecar's virtualInbound has PERMISSIVE chains; `openssl s_client` sees web's SPIFFE
certificate and the ALPN; STRICT refuses a plaintext client while the meshed client works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from pysidecar.lab import Lab, Pod
from pysidecar.lab.ca import MeshCA, WorkloadCert
from tests.e2e.sidecar import connect, start_sidecar, stats

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


def _mesh(lab: Lab, workdir: str, strict: bool = False) -> tuple[Pod, Pod, Pod, MeshCA, str]:
    """sleep and web with sidecars and identities, peer without; returns (sleep, web, peer, ca, web cert dir)."""
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
    web_certs = _certs(workdir, "web", ca.issue("default", "web"))
    sleep_certs = _certs(workdir, "sleep", ca.issue("default", "sleep"))
    start_sidecar(web, conf, extra=["--workload-labels", "app=web", "--cert-dir", web_certs])
    start_sidecar(sleep, conf, extra=["--workload-labels", "app=sleep", "--cert-dir", sleep_certs])
    return sleep, web, peer, ca, web_certs


def _curl(pod: Pod, url: str, *args: str) -> tuple[str, str]:
    r = pod.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args, url], timeout=15)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def test_sidecars_talk_mutual_tls_http_and_tcp(lab: Lab, workdir: str) -> None:
    sleep, web, peer, _, _ = _mesh(lab, workdir)
    code, body = _curl(sleep, f"http://{VIP}/headers")
    assert code == "200", body
    s_web, s_sleep = stats(web), stats(sleep)
    assert s_web["listener.0.0.0.0_15006.ssl.handshake"] >= 1
    assert s_web["http.inbound_0.0.0.0_8080.downstream_rq_2xx"] >= 1
    assert s_sleep["cluster.outbound|80||web.default.svc.cluster.local.upstream_cx_total"] >= 1
    # TCP through the mTLS chain: the bytes come back unchanged.
    s = connect(sleep, VIP, 9000)
    s.sendall(b"hello over mtls\n")
    got = b""
    while len(got) < 16:
        chunk = s.recv(100)
        assert chunk, got
        got += chunk
    assert got == b"hello over mtls\n"
    s.close()
    assert stats(web)["listener.0.0.0.0_15006.ssl.handshake"] >= 2
    # PERMISSIVE: a plaintext client without a sidecar is served too.
    code, _ = _curl(peer, f"http://{web.ip}:8080/ip")
    assert code == "200"


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
