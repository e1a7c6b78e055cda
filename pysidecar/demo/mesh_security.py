"""The demo's mesh-security steps: mutual TLS between two sidecars, PeerAuthentication
PERMISSIVE then STRICT, the caller's identity, and an AuthorizationPolicy.

Pods `sleep` and `web` are added to the demo's lab by the first step, each with its own
workload certificate from a lab CA (`pysidecar.lab.ca.MeshCA`, the files Istio mounts at
/etc/certs, here in a scratch directory given as `--cert-dir`), both sidecars on one config
directory (web's Service, Endpoints and Pod with the injector's `security.istio.io/tlsMode:
istio` label). nettool, which has no sidecar, is the plaintext client.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from pysidecar.demo.world import World, expect, start_mesh_sidecar
from pysidecar.lab.ca import MeshCA

Out = Callable[[str], None]

WEB_VIP = "198.19.251.1"
WEB = """apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: default}}
subsets: [{{addresses: [{{ip: {ip}}}], ports: [{{name: http, port: 8080}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: default, labels: {{app: web, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: web}}
status: {{podIP: {ip}}}
"""
STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
DENY_HEADERS = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep-headers, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET], paths: [/headers]}}]
"""
LOG_FORMAT = '[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)%" %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% upstream_peer=%UPSTREAM_PEER_URI_SAN%\n'


def _shell(out: Out, cmd: str, text: str) -> None:
    out(f"$ {cmd}")
    for line in text.rstrip("\n").splitlines():
        out(f"  {line}")


def _xfcc(body: str) -> str | None:
    try:
        raw = json.loads(body)["raw"]
    except (ValueError, KeyError):
        return None
    return next((v for n, v in raw if n.lower() == "x-forwarded-client-cert"), None)


def setup(w: World, out: Out) -> None:
    """Pods sleep and web with sidecars and identities; PERMISSIVE (the default) accepts both."""
    lab = w.lab
    sleep, web = lab.add_pod("sleep"), lab.add_pod("web")
    web.spawn_server("http", 8080, "--name", "web")
    conf = w.mkdtemp("mesh-istio")
    os.chmod(conf, 0o755)
    w.config_dirs["web"] = w.config_dirs["sleep"] = conf
    w.write("web.yaml", WEB.format(vip=WEB_VIP, ip=web.ip), "web")
    ca = MeshCA.create()
    out("(a lab CA issues each pod an X.509 SVID: what Istio mounts at /etc/certs)")
    for pod, sa in ((sleep, "sleep"), (web, "web")):
        d = w.mkdtemp(f"certs-{sa}")
        os.chmod(d, 0o755)
        ca.issue("default", sa).write(d)
        out(f"  {pod.name}: spiffe://cluster.local/ns/default/sa/{sa} in {d}/cert-chain.pem, key.pem, root-cert.pem")
        start_mesh_sidecar(w, pod, f"app={sa}", conf, d, LOG_FORMAT)
    code, body = w.status(sleep, f"http://{WEB_VIP}/ip")
    _shell(out, f"curl http://{WEB_VIP}/ip   # in sleep (sidecar): mutual TLS to web's sidecar", f"{code}")
    expect(code == "200", f"200 from web through mutual TLS, got {code} {body[:200]!r}")
    code, _ = w.status(w.nettool, f"http://{web.ip}:8080/ip")
    _shell(out, f"curl http://{web.ip}:8080/ip   # in nettool (no sidecar): plaintext", f"{code}")
    expect(code == "200", f"PERMISSIVE to accept plaintext too, got {code}")
    handshakes = w.stats(web).get("listener.0.0.0.0_15006.ssl.handshake", 0)
    out(f"(web's sidecar: listener.0.0.0.0_15006.ssl.handshake {handshakes})")
    expect(handshakes >= 1, "web's sidecar to count the mutual-TLS handshake")


def strict(w: World, out: Out) -> None:
    web, sleep = w.lab.pod("web"), w.lab.pod("sleep")
    took = w.reload_many({"web": {"strict.yaml": STRICT}})
    _shell(out, "cat strict.yaml   # PeerAuthentication, mesh-wide", STRICT)
    out(f"(web's sidecar reloaded in {took:.1f}s)")
    code, _ = w.status(w.nettool, f"http://{web.ip}:8080/ip")
    _shell(out, f"curl http://{web.ip}:8080/ip   # in nettool: plaintext", f"{code} (connection closed)")
    expect(code == "000", f"STRICT to refuse plaintext, got {code}")
    code, _ = w.status(sleep, f"http://{WEB_VIP}/ip")
    _shell(out, f"curl http://{WEB_VIP}/ip   # in sleep: mutual TLS", code)
    expect(code == "200", f"the meshed client to get 200 under STRICT, got {code}")


def identity(w: World, out: Out) -> None:
    web, sleep = w.lab.pod("web"), w.lab.pod("sleep")
    code, body = w.status(sleep, f"http://{WEB_VIP}/headers")
    xfcc = _xfcc(body)
    _shell(out, f"curl http://{WEB_VIP}/headers   # what web's app sees", f"X-Forwarded-Client-Cert: {xfcc}")
    expect(code == "200" and xfcc is not None and "URI=spiffe://cluster.local/ns/default/sa/sleep" in xfcc,
           f"XFCC with sleep's identity, got {code} {xfcc!r}")  # fmt: skip
    text = w.curl(web, "http://127.0.0.1:15090/stats/prometheus")
    line = next((x for x in text.splitlines() if x.startswith("istio_requests_total{") and "mutual_tls" in x), "")
    labels = [p for p in line.split(",") if "principal" in p or "security_policy" in p]
    _shell(out, "curl -s :15090/stats/prometheus | grep istio_requests_total   # in web, principals", "\n".join(labels))
    expect('source_principal="spiffe://cluster.local/ns/default/sa/sleep"' in line,
           "istio_requests_total with source_principal sleep and mutual_tls")  # fmt: skip


def authorization(w: World, out: Out) -> None:
    sleep = w.lab.pod("sleep")
    took = w.reload_many({"web": {"deny-headers.yaml": DENY_HEADERS}})
    _shell(out, "cat deny-headers.yaml", DENY_HEADERS)
    out(f"(web's sidecar reloaded in {took:.1f}s)")
    code, body = w.status(sleep, f"http://{WEB_VIP}/headers")
    _shell(out, f"curl http://{WEB_VIP}/headers   # in sleep", f"{code} {body}")
    expect(code == "403" and body == "RBAC: access denied", f"403 RBAC: access denied, got {code} {body[:100]!r}")
    code, _ = w.status(sleep, f"http://{WEB_VIP}/ip")
    _shell(out, f"curl http://{WEB_VIP}/ip   # in sleep", code)
    expect(code == "200", f"/ip still 200, got {code}")
