"""Router mode: seed 001's Gateways and VirtualServices compiled as istiod compiles them for
istio-ingressgateway (names, host matching, TLS credentials from Secrets, PASSTHROUGH), and the
errors that name the resource, the field or the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pysidecar.config.istio.gateway_compile import intersect
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.demo.configs import (
    GATEWAY_HTTP,
    GATEWAY_TLS,
    INGRESS_SERVICE,
    VS_HELLOWORLD,
    VS_HTTPBIN,
)
from pysidecar.model import Bootstrap, Listener, ListenerFilter, TcpProxy
from pysidecar.model.http import HttpConnectionManager, RouteConfiguration
from tests.tlscerts import SeedCerts, tls_secret

LABELS = {"istio": "ingressgateway"}
__all__ = ["GATEWAY_HTTP", "GATEWAY_TLS", "INGRESS_SERVICE", "VS_HELLOWORLD", "VS_HTTPBIN"]  # seed 001's YAML, shared

HTTPBIN = """
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  clusterIP: 198.18.100.1
  ports: [{name: http, port: 8000, targetPort: 80}]
  selector: {app: httpbin}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld-v1}
spec:
  clusterIP: 198.18.100.2
  ports: [{name: http, port: 5000}]
  selector: {app: helloworld-v1}
"""


def write(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def compile_dir(d: Path, files: dict[str, str], labels: dict[str, str] | None = None) -> Bootstrap:
    for name, text in files.items():
        write(d, name, text)
    return load([str(d)], LABELS if labels is None else labels, mode="router")


def http_gateway(host: str = "httpbin.example.com", vs_host: str | None = None, gw: str = "httpbin-gateway") -> dict[str, str]:
    return {
        "svc.yaml": INGRESS_SERVICE + "---\n" + HTTPBIN,
        "gw.yaml": GATEWAY_HTTP.replace("__HOST__", host),
        "vs.yaml": VS_HTTPBIN.replace("__HOST__", vs_host or host).replace("__GW__", gw),
    }


def hcm(lis: Listener, index: int = 0) -> HttpConnectionManager:
    f = lis.filter_chains[index].terminal_filter
    assert isinstance(f, HttpConnectionManager)
    return f


def routes(rc: RouteConfiguration) -> dict[str, list[str]]:
    """virtual host name → the routes' path matchers."""
    return {v.name: [r.match.prefix or r.match.path or "" for r in v.routes] for v in rc.virtual_hosts}


# -- HTTP --------------------------------------------------------------------------------------


def test_http_gateway_names_as_istiod(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, http_gateway())
    assert [x.name for x in b.listeners] == ["0.0.0.0_8080"]
    lis = b.listeners[0]
    assert lis.bind_to_port and not lis.use_original_dst and lis.listener_filters == ()
    assert lis.address.port == 8080
    h = hcm(lis)
    assert h.route_config.name == "http.8080"
    assert h.server_name == "istio-envoy"
    assert h.stat_prefix == "outbound_0.0.0.0_8080"
    assert routes(h.route_config) == {"httpbin.example.com:80": ["/status", "/delay"]}
    vh = h.route_config.virtual_hosts[0]
    assert vh.domains == ("httpbin.example.com", "httpbin.example.com:*")
    r = vh.routes[0].route
    assert r is not None and r.cluster == "outbound|8000||httpbin.default.svc.cluster.local"
    names = {c.name for c in b.clusters}
    assert "outbound|8000||httpbin.default.svc.cluster.local" in names and "BlackHoleCluster" in names
    assert "PassthroughCluster" not in names


def test_without_a_gateway_service_the_server_port_is_bound(tmp_path: Path) -> None:
    files = http_gateway()
    files["svc.yaml"] = HTTPBIN
    b = compile_dir(tmp_path, files)
    assert [x.name for x in b.listeners] == ["0.0.0.0_80"]
    assert hcm(b.listeners[0]).route_config.name == "http.80"


def test_gateway_must_select_the_workload(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, http_gateway(), labels={"istio": "egressgateway"})
    assert b.listeners == ()
    # and a sidecar ignores Gateways altogether
    sidecar = load([str(tmp_path)], LABELS)
    assert sidecar.listener("0.0.0.0_8080") is None and sidecar.listener("virtualOutbound") is not None


def test_wildcard_hosts(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, http_gateway(host="*"))
    rc = hcm(b.listeners[0]).route_config
    assert routes(rc) == {"*:80": ["/status", "/delay"]}
    assert rc.virtual_hosts[0].domains == ("*",)


def test_wildcard_server_host_takes_the_virtual_service_host(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, http_gateway(host="*.example.com", vs_host="httpbin.example.com"))
    assert list(routes(hcm(b.listeners[0]).route_config)) == ["httpbin.example.com:80"]


def test_unbound_or_non_matching_virtual_services_leave_a_404(tmp_path: Path) -> None:
    for files in (http_gateway(gw="other-gateway"), http_gateway(vs_host="other.example.com")):
        for f in tmp_path.iterdir():
            f.unlink()
        rc = hcm(compile_dir(tmp_path, files).listeners[0]).route_config
        [vh] = rc.virtual_hosts
        assert vh.name == "blackhole" and vh.routes[0].direct_response is not None
        assert vh.routes[0].direct_response.status == 404


def test_gateway_named_with_its_namespace(tmp_path: Path) -> None:
    files = http_gateway(gw="default/httpbin-gateway")
    assert list(routes(hcm(compile_dir(tmp_path, files).listeners[0]).route_config)) == ["httpbin.example.com:80"]


def test_server_host_namespace_filters_virtual_services(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, http_gateway(host="prod/httpbin.example.com", vs_host="httpbin.example.com"))
    assert [v.name for v in hcm(b.listeners[0]).route_config.virtual_hosts] == ["blackhole"]
    for f in tmp_path.iterdir():
        f.unlink()
    b = compile_dir(tmp_path, http_gateway(host="./httpbin.example.com", vs_host="httpbin.example.com"))
    assert list(routes(hcm(b.listeners[0]).route_config)) == ["httpbin.example.com:80"]


@pytest.mark.parametrize(
    ("server", "vs", "want"),
    [
        ("*", "httpbin.example.com", "httpbin.example.com"),
        ("httpbin.example.com", "*", "httpbin.example.com"),
        ("*.example.com", "*.example.com", "*.example.com"),
        ("*.example.com", "a.b.example.com", "a.b.example.com"),
        ("httpbin.example.com", "httpbin.example.org", None),
        ("*.example.com", "example.com", None),
    ],
)
def test_host_intersection(server: str, vs: str, want: str | None) -> None:
    assert intersect(server, vs) == want


# -- TLS ---------------------------------------------------------------------------------------


def tls_files(certs: SeedCerts, mode: str = "SIMPLE", httpbin_secret: str | None = None) -> dict[str, str]:
    secret = httpbin_secret if httpbin_secret is not None else tls_secret("httpbin-credential", certs.httpbin)
    return {
        "svc.yaml": INGRESS_SERVICE + "---\n" + HTTPBIN,
        "gw.yaml": GATEWAY_TLS.replace("__MODE__", mode),
        "vs.yaml": VS_HTTPBIN.replace("__HOST__", "httpbin.example.com").replace("__GW__", "mygateway")
        + "---\n" + VS_HELLOWORLD,
        "secrets.yaml": secret + "---\n" + tls_secret("helloworld-credential", certs.helloworld),
    }  # fmt: skip


def test_simple_tls_one_chain_per_host(tmp_path: Path, certs: SeedCerts) -> None:
    b = compile_dir(tmp_path, tls_files(certs))
    [lis] = b.listeners
    assert lis.name == "0.0.0.0_8443" and lis.listener_filters == (ListenerFilter.TLS_INSPECTOR,)
    by_sni = {c.filter_chain_match.server_names: c for c in lis.filter_chains}
    assert set(by_sni) == {("httpbin.example.com",), ("helloworld-v1.example.com",)}
    httpbin = by_sni[("httpbin.example.com",)]
    ts = httpbin.transport_socket
    assert ts is not None and not ts.require_client_certificate and ts.trusted_ca is None
    assert ts.tls_certificates[0].certificate_chain.inline_string == certs.httpbin.crt_text()
    assert ts.alpn_protocols == ("h2", "http/1.1")
    h = httpbin.terminal_filter
    assert isinstance(h, HttpConnectionManager)
    assert h.route_config.name == "https.443.https-httpbin.mygateway.default"
    assert routes(h.route_config) == {"httpbin.example.com:443": ["/status", "/delay"]}
    hello = by_sni[("helloworld-v1.example.com",)].terminal_filter
    assert isinstance(hello, HttpConnectionManager)
    assert routes(hello.route_config) == {"helloworld-v1.example.com:443": ["/hello"]}


def test_mutual_tls_with_ca_in_the_secret(tmp_path: Path, certs: SeedCerts) -> None:
    secret = tls_secret("httpbin-credential", certs.httpbin, ca=certs.ca)
    b = compile_dir(tmp_path, tls_files(certs, "MUTUAL", secret))
    ts = b.listeners[0].filter_chains[0].transport_socket
    assert ts is not None and ts.require_client_certificate
    assert ts.trusted_ca is not None and ts.trusted_ca.inline_string == certs.ca.crt_text()


def test_generic_secret_and_separate_cacert_secret(tmp_path: Path, certs: SeedCerts) -> None:
    ca = "apiVersion: v1\nkind: Secret\nmetadata: {name: httpbin-credential-cacert}\nstringData:\n  cacert: |\n"
    ca += textwrap.indent(certs.ca.crt_text(), "    ")
    secret = tls_secret("httpbin-credential", certs.httpbin, generic=True) + "---\n" + ca
    b = compile_dir(tmp_path, tls_files(certs, "MUTUAL", secret))
    ts = b.listeners[0].filter_chains[0].transport_socket
    assert ts is not None and ts.trusted_ca is not None
    assert ts.trusted_ca.inline_string == certs.ca.crt_text()


def test_mutual_without_a_ca_is_an_error(tmp_path: Path, certs: SeedCerts) -> None:
    with pytest.raises(ConfigError) as e:
        compile_dir(tmp_path, tls_files(certs, "MUTUAL"))
    assert e.value.file.endswith("gw.yaml")
    assert e.value.path == "spec.servers[0].tls.credentialName"
    assert "Gateway default/mygateway" in e.value.message and "MUTUAL needs a CA" in e.value.message


def test_unknown_credential_names_the_gateway_and_field(tmp_path: Path, certs: SeedCerts) -> None:
    files = tls_files(certs)
    files["gw.yaml"] = files["gw.yaml"].replace("helloworld-credential", "nope-credential")
    with pytest.raises(ConfigError) as e:
        compile_dir(tmp_path, files)
    assert e.value.file.endswith("gw.yaml") and e.value.path == "spec.servers[1].tls.credentialName"
    assert "Gateway default/mygateway" in e.value.message and "no Secret named 'nope-credential'" in e.value.message


def test_bad_pem_names_the_secret_file_and_key(tmp_path: Path, certs: SeedCerts) -> None:
    bad = tls_secret("httpbin-credential", certs.httpbin).replace("  tls.crt: ", "  tls.crt: QUJD")
    with pytest.raises(ConfigError) as e:
        compile_dir(tmp_path, tls_files(certs, httpbin_secret=bad))
    assert e.value.file.endswith("secrets.yaml") and e.value.path == "data.tls.crt"
    assert "credential 'httpbin-credential'" in e.value.message


def test_key_not_matching_certificate_is_an_error(tmp_path: Path, certs: SeedCerts) -> None:
    from tests.tlscerts import Pair

    mixed = tls_secret("httpbin-credential", Pair(certs.helloworld.key, certs.httpbin.crt))
    with pytest.raises(ConfigError) as e:
        compile_dir(tmp_path, tls_files(certs, httpbin_secret=mixed))
    assert e.value.path == "data.tls.key" and "does not match" in e.value.message


# -- PASSTHROUGH -------------------------------------------------------------------------------

PASSTHROUGH = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination:
        host: my-nginx
        port: {number: 443}
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx}
spec:
  clusterIP: 198.18.100.3
  ports: [{port: 443, protocol: TCP}]
  selector: {run: my-nginx}
"""


def test_passthrough_by_sni_to_the_tls_route(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, {"svc.yaml": INGRESS_SERVICE, "nginx.yaml": PASSTHROUGH})
    [lis] = b.listeners
    assert lis.name == "0.0.0.0_8443" and lis.listener_filters == (ListenerFilter.TLS_INSPECTOR,)
    [chain] = lis.filter_chains
    assert chain.filter_chain_match.server_names == ("nginx.example.com",)
    assert chain.transport_socket is None
    proxy = chain.terminal_filter
    assert isinstance(proxy, TcpProxy) and proxy.cluster == "outbound|443||my-nginx.default.svc.cluster.local"


def test_unsupported_tls_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        compile_dir(tmp_path, {"nginx.yaml": PASSTHROUGH.replace("mode: PASSTHROUGH", "mode: ISTIO_MUTUAL")})
    assert e.value.path == "spec.servers[0].tls.mode" and "ISTIO_MUTUAL is not supported" in e.value.message


def test_https_redirect_requires_tls(tmp_path: Path) -> None:
    files = http_gateway()
    files["gw.yaml"] = files["gw.yaml"].replace('    hosts: ["httpbin.example.com"]', '    hosts: ["httpbin.example.com"]\n    tls: {httpsRedirect: true}')
    [vh] = hcm(compile_dir(tmp_path, files).listeners[0]).route_config.virtual_hosts
    assert vh.require_tls


# -- Kubernetes Ingress ------------------------------------------------------------------------

INGRESS_SEED = """
apiVersion: networking.k8s.io/v1beta1
kind: Ingress
metadata:
  annotations:
    kubernetes.io/ingress.class: istio
  name: ingress
spec:
  rules:
  - host: httpbin.example.com
    http:
      paths:
      - path: /status/*
        backend:
          serviceName: httpbin
          servicePort: 8000
"""
INGRESS_V1 = """
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: my-istio}
spec: {controller: istio.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ingress}
spec:
  ingressClassName: __CLASS__
  rules:
  - host: httpbin.example.com
    http:
      paths:
      - {path: /status, pathType: Prefix, backend: {service: {name: httpbin, port: {number: 8000}}}}
      - {path: /headers, pathType: Exact, backend: {service: {name: httpbin, port: {name: http}}}}
"""


def test_seed_ingress_becomes_gateway_routes(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, {"svc.yaml": INGRESS_SERVICE + "---\n" + HTTPBIN, "ingress.yaml": INGRESS_SEED})
    [lis] = b.listeners
    assert lis.name == "0.0.0.0_8080"
    rc = hcm(lis).route_config
    assert rc.name == "http.8080"
    assert routes(rc) == {"httpbin.example.com:80": ["/status/"]}
    r = rc.virtual_hosts[0].routes[0].route
    assert r is not None and r.cluster == "outbound|8000||httpbin.default.svc.cluster.local"


def test_ingress_v1_path_types_and_class(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, {"svc.yaml": INGRESS_SERVICE + "---\n" + HTTPBIN, "ingress.yaml": INGRESS_V1.replace("__CLASS__", "my-istio")})
    [vh] = hcm(b.listeners[0]).route_config.virtual_hosts
    matches = [(r.match.safe_regex, r.match.path) for r in vh.routes]
    assert matches == [(None, "/headers"), ("/status(/.*)?", None)]
    assert {r.route.cluster for r in vh.routes if r.route} == {"outbound|8000||httpbin.default.svc.cluster.local"}
    (tmp_path / "ingress.yaml").write_text(INGRESS_V1.replace("__CLASS__", "nginx"))
    other = load([str(tmp_path)], LABELS, mode="router")
    assert other.listeners == ()  # not Istio's: no Gateway at all


def test_ingress_tls_terminates_with_the_secret(tmp_path: Path, certs: SeedCerts) -> None:
    tls = INGRESS_V1.replace("__CLASS__", "istio").replace("  rules:", "  tls: [{hosts: [httpbin.example.com], secretName: httpbin-credential}]\n  rules:")
    files = {"svc.yaml": INGRESS_SERVICE + "---\n" + HTTPBIN, "ingress.yaml": tls, "secret.yaml": tls_secret("httpbin-credential", certs.httpbin, namespace="default")}
    b = compile_dir(tmp_path, files)
    https = b.listener("0.0.0.0_8443")
    assert https is not None
    [chain] = https.filter_chains
    assert chain.filter_chain_match.server_names == ("httpbin.example.com",) and chain.transport_socket is not None
    assert list(routes(hcm(https).route_config)) == ["httpbin.example.com:443"]


def test_two_servers_for_one_host_keep_the_first(tmp_path: Path, certs: SeedCerts, caplog: pytest.LogCaptureFixture) -> None:
    files = tls_files(certs)
    files["gw.yaml"] = files["gw.yaml"].replace("hosts: [helloworld-v1.example.com]", "hosts: [httpbin.example.com]")
    [lis] = compile_dir(tmp_path, files).listeners
    [chain] = lis.filter_chains
    assert chain.name == "https.443.https-httpbin.mygateway.default"
    assert "matches what https.443.https-httpbin.mygateway.default matches; ignored" in caplog.text


TCP_GATEWAY = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: tcp-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: ["*"]
  gateways: [tcp-gateway]
  tcp:
  - match: [{port: 31400}]
    route:
    - destination: {host: httpbin, port: {number: 8000}}
"""


def test_tcp_server_proxies_to_the_tcp_route(tmp_path: Path) -> None:
    b = compile_dir(tmp_path, {"svc.yaml": HTTPBIN, "tcp.yaml": TCP_GATEWAY})
    [lis] = b.listeners
    assert lis.name == "0.0.0.0_31400" and lis.listener_filters == ()
    [chain] = lis.filter_chains
    proxy = chain.terminal_filter
    assert isinstance(proxy, TcpProxy) and proxy.cluster == "outbound|8000||httpbin.default.svc.cluster.local"
    # A tcp route for another port leaves the server without a chain, so without a listener.
    (tmp_path / "tcp.yaml").write_text(TCP_GATEWAY.replace("port: 31400}]", "port: 9999}]"))
    assert load([str(tmp_path)], LABELS, mode="router").listeners == ()


def test_router_without_config_is_the_bare_gateway() -> None:
    b = load([], LABELS, mode="router")
    assert b.listeners == () and [c.name for c in b.clusters] == ["BlackHoleCluster"]
    assert b.admin is not None and b.readiness_address is not None and b.stats_address is not None
