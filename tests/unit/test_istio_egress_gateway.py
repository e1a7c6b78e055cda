"""Seed 000's egress gateway compiled both ways from the same YAML, as istiod compiles it: for the
client's sidecar (the `mesh` match: httpbin.org → the gateway's subset cluster) and for the
gateway (`--mode router`, labels istio=egressgateway: the Gateway's match, httpbin.org:80 on a
listener bound at the Service's targetPort 8080)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.demo import configs
from pysidecar.model import Bootstrap, SocketAddress
from pysidecar.model.http import RouteConfiguration
from tests.unit.test_istio_gateway import hcm, write
from tests.unit.test_istio_routes import route_config

GATEWAY_IP = "198.18.0.9"
LABELS = configs.EGRESS_GATEWAY_LABELS
TO_GATEWAY = "outbound|80|httpbin|istio-egressgateway.istio-system.svc.cluster.local"
TO_HTTPBIN = "outbound|80||httpbin.org"


def seed(d: Path, mode: str = "ALLOW_ANY", service: str | None = None, vs: str | None = None) -> list[str]:
    write(d, "mesh.yaml", configs.mesh(mode))
    write(d, "gateway.yaml", configs.EGRESS_GATEWAY_SEED if vs is None else vs)
    write(d, "se.yaml", configs.SE_HTTPBIN)
    write(d, "svc.yaml", service or configs.egress_gateway_service(GATEWAY_IP))
    return [str(d)]


def gateway(d: Path, **kw: str) -> Bootstrap:
    return load(seed(d, **kw), LABELS, mode="router")


def clusters_of(rc: RouteConfiguration) -> dict[str, list[str]]:
    """virtual host → the clusters its routes go to."""
    return {v.name: [r.route.cluster if r.route else "-" for r in v.routes] for v in rc.virtual_hosts}


def test_sidecar_sends_httpbin_to_the_gateway_subset(tmp_path: Path) -> None:
    b = load(seed(tmp_path))
    rc = route_config(b, "0.0.0.0_80")
    got = clusters_of(rc)
    # Only the route whose match names `mesh`: the gateway's own route is not the sidecar's.
    assert got["httpbin.org:80"] == [TO_GATEWAY]
    assert got["istio-egressgateway.istio-system.svc.cluster.local:80"] == [
        "outbound|80||istio-egressgateway.istio-system.svc.cluster.local"
    ]
    # The subset (no labels: every endpoint) reaches the gateway pod at the targetPort.
    c = b.cluster(TO_GATEWAY)
    assert c is not None and [e.address for e in c.endpoints] == [SocketAddress(GATEWAY_IP, 8080)]


def test_registry_only_keeps_the_route_to_the_gateway(tmp_path: Path) -> None:
    got = clusters_of(route_config(load(seed(tmp_path, mode="REGISTRY_ONLY")), "0.0.0.0_80"))
    assert got["httpbin.org:80"] == [TO_GATEWAY] and got["block_all"] == ["-"]


def test_gateway_listens_on_the_target_port_and_routes_to_httpbin(tmp_path: Path) -> None:
    b = gateway(tmp_path)
    assert [x.name for x in b.listeners] == ["0.0.0.0_8080"]
    h = hcm(b.listeners[0])
    assert h.route_config.name == "http.8080" and h.use_remote_address
    # Virtual hosts keep the server's port 80; the match `port: 80` is the server's, not 8080.
    assert clusters_of(h.route_config) == {"httpbin.org:80": [TO_HTTPBIN]}
    assert h.route_config.virtual_hosts[0].domains == ("httpbin.org", "httpbin.org:*")
    c = b.cluster(TO_HTTPBIN)
    assert c is not None and c.type.name == "STRICT_DNS"
    assert [e.address for e in c.endpoints] == [SocketAddress("httpbin.org", 80)]


def test_gateway_export_for_envoy(tmp_path: Path) -> None:
    out = to_envoy(gateway(tmp_path), "router")
    (lis,) = [x for x in out["static_resources"]["listeners"] if x["name"] == "0.0.0.0_8080"]
    assert lis["address"]["socket_address"]["port_value"] == 8080
    typed = lis["filter_chains"][0]["filters"][0]["typed_config"]
    (vh,) = typed["route_config"]["virtual_hosts"]
    assert vh["name"] == "httpbin.org:80" and vh["routes"][0]["route"]["cluster"] == TO_HTTPBIN
    assert out["node"]["id"].startswith("router~")


def test_gateways_are_matched_per_match(tmp_path: Path) -> None:
    """Per match, not per route: in one route, a match for `mesh` is dropped on the gateway, a
    match without `gateways` applies to every gateway the VirtualService is bound to, and
    `ns/name` names the Gateway too."""
    vs = configs.EGRESS_GATEWAY_SEED.replace(
        "    - gateways:\n      - httpbin-egressgateway\n      port: 80\n",
        "    - gateways:\n      - mesh\n      uri: {prefix: /never}\n    - uri: {prefix: /status}\n"
        "    - gateways:\n      - default/httpbin-egressgateway\n      port: 80\n",
    )
    assert vs != configs.EGRESS_GATEWAY_SEED
    rc = hcm(gateway(tmp_path, vs=vs).listeners[0]).route_config
    (vh,) = rc.virtual_hosts
    assert [(r.match.prefix, r.route.cluster if r.route else "-") for r in vh.routes] == [
        ("/status", TO_HTTPBIN),
        ("/", TO_HTTPBIN),
    ]
    for f in tmp_path.iterdir():
        f.unlink()
    # The sidecar: the seed's `mesh` route matches everything on port 80, so (as istiod stops at
    # a catch-all) the routes after it are never reached and not written.
    sidecar = clusters_of(route_config(load(seed(tmp_path, vs=vs)), "0.0.0.0_80"))
    assert sidecar["httpbin.org:80"] == [TO_GATEWAY]


@pytest.mark.parametrize("target", ["8080", "http2"])
def test_named_target_port_is_read_off_the_endpoints(tmp_path: Path, target: str) -> None:
    service = configs.egress_gateway_service(GATEWAY_IP).replace(
        "{name: http2, port: 80, targetPort: 8080}", f"{{name: http2, port: 80, targetPort: {target}}}"
    )
    b = gateway(tmp_path, service=service)
    assert [x.name for x in b.listeners] == ["0.0.0.0_8080"]


def test_named_target_port_no_endpoint_names_binds_the_server_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = configs.egress_gateway_service(GATEWAY_IP).replace("targetPort: 8080", "targetPort: web")
    b = gateway(tmp_path, service=service)
    assert [x.name for x in b.listeners] == ["0.0.0.0_80"]
    assert "no endpoint names targetPort 'web'" in caplog.text


def test_a_service_not_selecting_the_gateway_translates_nothing(tmp_path: Path) -> None:
    service = configs.egress_gateway_service(GATEWAY_IP).replace("selector: {istio: egressgateway}", "selector: {app: x}")
    assert [x.name for x in gateway(tmp_path, service=service).listeners] == ["0.0.0.0_80"]
