"""Istio mTLS compiled as istiod builds it: identity files, auto mTLS clusters, inbound chains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pysidecar.config.identity import load_identity
from pysidecar.config.istio.mtls import sni_for
from pysidecar.config.loader import load, watched_files
from pysidecar.config.node import ConfigError
from pysidecar.lab.ca import MeshCA
from pysidecar.model.tls import TLS_MODE_ISTIO, TLS_MODE_KEY

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.1.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp, port: 9000, targetPort: 9000}
  - {name: other, port: 7000, targetPort: 7000}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
subsets:
- addresses: [{ip: 10.0.0.5}, {ip: 10.0.0.6}]
  ports: [{name: http, port: 8080}, {name: tcp, port: 9000}, {name: other, port: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-legacy, namespace: default, labels: {app: web}}
spec: {}
status: {podIP: 10.0.0.6}
"""
CLUSTER = "outbound|80||web.default.svc.cluster.local"


@pytest.fixture
def certs(tmp_path: Path) -> str:
    d = tmp_path / "certs"
    MeshCA.create().issue("default", "sleep").write(str(d))
    return str(d)


def _write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def test_sni_is_istiods_dns_srv_subset_key() -> None:
    assert sni_for("outbound|80||web.ns.svc.cluster.local") == "outbound_.80_._.web.ns.svc.cluster.local"
    assert sni_for("outbound|80|v1|web.ns.svc.cluster.local") == "outbound_.80_.v1_.web.ns.svc.cluster.local"


def test_identity_errors_name_the_file(tmp_path: Path, certs: str) -> None:
    assert load_identity(str(tmp_path / "none"), required=False) is None
    with pytest.raises(ConfigError) as e:
        load_identity(str(tmp_path / "none"), required=True)
    assert e.value.file.endswith("cert-chain.pem")
    os.remove(os.path.join(certs, "key.pem"))
    with pytest.raises(ConfigError) as e:
        load_identity(certs, required=False)
    assert e.value.file.endswith("key.pem") and "not found" in e.value.message
    MeshCA.create().issue("default", "x", hours_ago=48).write(certs)
    with pytest.raises(ConfigError) as e:
        load_identity(certs, required=True)
    assert "not valid now" in e.value.message


def test_auto_mtls_matches_pods_with_a_sidecar(tmp_path: Path, certs: str) -> None:
    b = load([_write(tmp_path, "web.yaml", WEB)], cert_dir=certs)
    assert b.identity is not None and b.identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/sleep"
    c = b.cluster(CLUSTER)
    assert c is not None and c.transport_socket is None
    m_istio, m_plain = c.transport_socket_matches
    assert (m_istio.name, m_istio.match) == ("tlsMode-istio", ((TLS_MODE_KEY, TLS_MODE_ISTIO),))
    assert (m_plain.name, m_plain.match, m_plain.transport_socket) == ("tlsMode-disabled", (), None)
    ctx = m_istio.transport_socket
    assert ctx is not None
    assert ctx.sni == "outbound_.80_._.web.default.svc.cluster.local"
    assert ctx.alpn_protocols == ("istio-peer-exchange", "istio")
    # istiod's ServiceAccounts: every endpoint's (the legacy pod runs as `default`).
    assert ctx.match_subject_alt_names == (
        "spiffe://cluster.local/ns/default/sa/default", "spiffe://cluster.local/ns/default/sa/web",
    )  # fmt: skip
    by_ip = {e.address.address: e.transport_socket_match for e in c.endpoints}
    assert by_ip == {"10.0.0.5": ((TLS_MODE_KEY, TLS_MODE_ISTIO),), "10.0.0.6": ()}
    assert c.upstream_tls(by_ip["10.0.0.5"]) is ctx and c.upstream_tls(()) is None
    # A rotation is a reload: the certificate files are watched.
    assert os.path.join(certs, "cert-chain.pem") in watched_files([str(tmp_path / "web.yaml")], b)


def test_without_identity_nothing_changes(tmp_path: Path) -> None:
    b = load([_write(tmp_path, "web.yaml", WEB)], cert_dir=None, workload_labels={"app": "web"})
    if b.identity is None:  # no /etc/certs on this machine
        c = b.cluster(CLUSTER)
        assert c is not None and not c.transport_socket_matches
        assert all(ch.transport_socket is None for lis in b.listeners for ch in lis.filter_chains)


def test_destination_rule_modes(tmp_path: Path, certs: str) -> None:
    dr = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9000}
      tls: {mode: DISABLE}
    - port: {number: 7000}
      tls: {mode: SIMPLE, sni: web.example, caCertificates: /etc/ssl/certs/ca-certificates.crt}
"""
    b = load([_write(tmp_path, "web.yaml", WEB), _write(tmp_path, "dr.yaml", dr)], cert_dir=certs)
    c80 = b.cluster(CLUSTER)
    assert c80 is not None and c80.transport_socket is not None and not c80.transport_socket_matches
    assert c80.transport_socket.sni == "outbound_.80_._.web.default.svc.cluster.local"
    c9000 = b.cluster("outbound|9000||web.default.svc.cluster.local")
    assert c9000 is not None and c9000.transport_socket is None and not c9000.transport_socket_matches
    c7000 = b.cluster("outbound|7000||web.default.svc.cluster.local")
    assert c7000 is not None and c7000.transport_socket is not None
    assert c7000.transport_socket.sni == "web.example" and not c7000.transport_socket.tls_certificates


def test_istio_mutual_and_strict_need_an_identity(tmp_path: Path) -> None:
    dr = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""
    files = [_write(tmp_path, "web.yaml", WEB), _write(tmp_path, "dr.yaml", dr)]
    with pytest.raises(ConfigError) as e:
        load(files, cert_dir=str(tmp_path / "empty"))  # explicit and missing: the file is named
    assert e.value.file.endswith("cert-chain.pem")
    if not os.path.exists("/etc/certs/cert-chain.pem"):
        with pytest.raises(ConfigError) as e:
            load(files)
        assert e.value.file.endswith("dr.yaml") and e.value.path == "spec.trafficPolicy.tls"


def test_credential_name_is_refused(tmp_path: Path) -> None:
    dr = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy: {tls: {mode: MUTUAL, credentialName: web-creds}}
"""
    with pytest.raises(ConfigError) as e:
        load([_write(tmp_path, "web.yaml", WEB), _write(tmp_path, "dr.yaml", dr)])
    assert e.value.path == "spec.trafficPolicy.tls.credentialName"


PA = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}
"""


def _chains(tmp_path: Path, certs: str, *pas: str) -> dict[int, list[tuple[str, tuple[str, ...], bool]]]:
    files = [_write(tmp_path, "web.yaml", WEB)] + [_write(tmp_path, f"pa{i}.yaml", p) for i, p in enumerate(pas)]
    b = load(files, cert_dir=certs, workload_labels={"app": "web"})
    lis = b.listener("virtualInbound")
    assert lis is not None
    out: dict[int, list[tuple[str, tuple[str, ...], bool]]] = {}
    for ch in lis.filter_chains:
        m = ch.filter_chain_match
        if m.destination_port in (8080, 9000, 7000):
            out.setdefault(m.destination_port, []).append(
                (m.transport_protocol, m.application_protocols, ch.transport_socket is not None)
            )
    return out


def test_inbound_permissive_by_default(tmp_path: Path, certs: str) -> None:
    chains = _chains(tmp_path, certs)
    istio_all = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")
    assert chains[8080] == [("tls", istio_all, True), ("raw_buffer", (), False)]
    assert chains[9000] == [("tls", istio_all, True), ("tls", (), False), ("raw_buffer", (), False)]
    assert chains[7000] == [
        ("tls", ("istio-http/1.0", "istio-http/1.1", "istio-h2"), True),
        ("raw_buffer", ("http/1.1", "h2c"), False),
        ("tls", ("istio-peer-exchange", "istio"), True),
        ("raw_buffer", (), False),
        ("tls", (), False),
    ]


def test_inbound_strict_mesh_wide_and_port_level(tmp_path: Path, certs: str) -> None:
    mesh = PA.format(name="default", ns="istio-system", spec="  mtls: {mode: STRICT}")
    workload = PA.format(
        name="web", ns="default",
        spec="  selector: {matchLabels: {app: web}}\n  portLevelMtls:\n    9000: {mode: DISABLE}",
    )  # fmt: skip
    chains = _chains(tmp_path, certs, mesh, workload)
    assert chains[8080] == [("tls", (), True)]
    assert chains[9000] == [("raw_buffer", (), False)]
    assert chains[7000] == [("tls", ("istio-http/1.0", "istio-http/1.1", "istio-h2"), True), ("tls", (), True)]
    # The namespace's DISABLE overrides the mesh's STRICT.
    ns = PA.format(name="default", ns="default", spec="  mtls: {mode: DISABLE}")
    chains = _chains(tmp_path, certs, mesh, ns)
    assert chains[8080] == [("raw_buffer", (), False)]


def test_port_level_mtls_needs_a_selector(tmp_path: Path, certs: str) -> None:
    bad = PA.format(name="x", ns="default", spec="  portLevelMtls:\n    9000: {mode: DISABLE}")
    with pytest.raises(ConfigError) as e:
        _chains(tmp_path, certs, bad)
    assert e.value.path == "spec.portLevelMtls"
