"""A cluster's upstream HTTP protocol as Envoy and istiod express it: Envoy YAML
(HttpProtocolOptions explicit / use-downstream / the older cluster http2_protocol_options),
Istio ports (http2, grpc, grpc-web, appProtocol, sniffed), DestinationRule h2UpgradePolicy /
useClientProtocol / maxConcurrentStreams and the mesh's h2UpgradePolicy; exported so real
Envoy accepts it and reading the export back gives the same clusters."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import (
    ISTIO_H2_MAX_CONCURRENT_STREAMS,
    Bootstrap,
    Cluster,
    UpstreamHttpProtocol,
)
from pysidecar.model.http import Http2Options
from tests.unit.test_export import assert_envoy_accepts, needs_envoy

H2 = UpstreamHttpProtocol.HTTP2
H1 = UpstreamHttpProtocol.HTTP1
DOWNSTREAM = UpstreamHttpProtocol.USE_DOWNSTREAM
ISTIO_H2 = Http2Options(max_concurrent_streams=ISTIO_H2_MAX_CONCURRENT_STREAMS)
OPTS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _envoy(tmp_path: Path, cluster_extra: dict[str, Any]) -> Bootstrap:
    cluster = {
        "name": "grpc",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "grpc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 50051}}}}]}],
        },
        **cluster_extra,
    }
    p = tmp_path / "envoy.yaml"
    p.write_text(yaml.safe_dump({"static_resources": {"clusters": [cluster]}}))
    return load_file(str(p))


def _typed(**options: Any) -> dict[str, Any]:
    return {"typed_extension_protocol_options": {OPTS: {"@type": "type.googleapis.com/" + OPTS, **options}}}


def _roundtrip(tmp_path: Path, b: Bootstrap, name: str) -> Cluster:
    """The cluster as read back from `envoy-config`'s export: the same."""
    out = tmp_path / "export" / "envoy.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(yaml.safe_dump(to_envoy(b)))
    c, again = b.cluster(name), load_file(str(out)).cluster(name)
    assert c is not None and again == c
    return c


@pytest.mark.parametrize(
    ("extra", "protocol", "h2"),
    [
        ({}, H1, Http2Options()),
        (_typed(explicit_http_config={"http_protocol_options": {}}), H1, Http2Options()),
        (_typed(explicit_http_config={"http2_protocol_options": {}}), H2, Http2Options()),
        (
            _typed(explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 7, "initial_stream_window_size": 65535}}),
            H2,
            Http2Options(max_concurrent_streams=7, initial_stream_window_size=65535),
        ),
        ({"http2_protocol_options": {"max_concurrent_streams": 3}}, H2, Http2Options(max_concurrent_streams=3)),
        (_typed(use_downstream_protocol_config={"http_protocol_options": {}, "http2_protocol_options": {}}), DOWNSTREAM, Http2Options()),
        (
            _typed(
                common_http_protocol_options={"idle_timeout": "30s", "max_requests_per_connection": 5},
                explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 100}},
            ),
            H2,
            Http2Options(max_concurrent_streams=100),
        ),
    ],
)
def test_envoy_yaml_upstream_protocol(tmp_path: Path, extra: dict[str, Any], protocol: UpstreamHttpProtocol, h2: Http2Options) -> None:
    b = _envoy(tmp_path, extra)
    c = _roundtrip(tmp_path, b, "grpc")
    assert c.upstream_http_protocol is protocol and c.http2_options == h2


def test_envoy_yaml_common_options_kept_beside_http2(tmp_path: Path) -> None:
    c = _envoy(
        tmp_path,
        _typed(
            common_http_protocol_options={"idle_timeout": "30s", "max_requests_per_connection": 5},
            explicit_http_config={"http2_protocol_options": {}},
        ),
    ).cluster("grpc")
    assert c is not None and (c.http_idle_timeout, c.max_requests_per_connection) == (30.0, 5)


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        (
            _typed(explicit_http_config={"http2_protocol_options": {"hpack_table_size": 0}}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config.http2_protocol_options.hpack_table_size",
            "unknown or unsupported field",
        ),
        (
            _typed(explicit_http_config={"http3_protocol_options": {}}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config.http3_protocol_options",
            "unknown or unsupported field",
        ),
        (
            _typed(explicit_http_config={"http_protocol_options": {}, "http2_protocol_options": {}}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config",
            "exactly one of",
        ),
        (
            _typed(explicit_http_config={}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config",
            "exactly one of",
        ),
        (
            {"http2_protocol_options": {}, **_typed(explicit_http_config={"http2_protocol_options": {}})},
            "static_resources.clusters[0].http2_protocol_options",
            "cannot be combined",
        ),
        (
            {"http2_protocol_options": {"max_concurrent_streams": 0}},
            "static_resources.clusters[0].http2_protocol_options.max_concurrent_streams",
            ">= 1",
        ),
        (
            _typed(explicit_http_config={"http2_protocol_options": {"initial_stream_window_size": 100}}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config.http2_protocol_options.initial_stream_window_size",
            ">= 65535",
        ),
        (
            _typed(explicit_http_config={"http_protocol_options": {"accept_http_10": True}}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.explicit_http_config.http_protocol_options.accept_http_10",
            "unknown or unsupported field",
        ),
        (
            _typed(explicit_http_config={"http2_protocol_options": {}}, use_downstream_protocol_config={}),
            f"static_resources.clusters[0].typed_extension_protocol_options.{OPTS}.use_downstream_protocol_config",
            "oneof",
        ),
    ],
)
def test_envoy_yaml_refusals_name_file_and_path(tmp_path: Path, extra: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _envoy(tmp_path, extra)
    assert e.value.file.endswith("envoy.yaml") and e.value.path == path and words in e.value.message


SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [svc.lab]
  ports:
  - {number: 80, name: web, protocol: HTTP}
  - {number: 81, name: h2, protocol: HTTP2}
  - {number: 82, name: grpc, protocol: GRPC}
  - {number: 83, name: grpc-web, protocol: GRPC-Web}
  - {number: 84, name: tcp, protocol: TCP}
  - {number: 85, name: sniffed}
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
"""


def _istio(tmp_path: Path, *docs: str) -> Bootstrap:
    for i, d in enumerate((SE, *docs)):
        (tmp_path / f"{i}.yaml").write_text(textwrap.dedent(d))
    return load([str(tmp_path)])


def _protocols(b: Bootstrap) -> dict[int, tuple[UpstreamHttpProtocol, Http2Options]]:
    out = {}
    for port in range(80, 86):
        c = b.cluster(f"outbound|{port}||svc.lab")
        assert c is not None
        out[port] = (c.upstream_http_protocol, c.http2_options)
    return out


def test_istio_port_protocols_choose_the_upstream_protocol_as_istiod(tmp_path: Path) -> None:
    b = _istio(tmp_path)
    assert _protocols(b) == {
        80: (H1, Http2Options()),
        81: (H2, ISTIO_H2),
        82: (H2, ISTIO_H2),
        83: (H2, ISTIO_H2),
        84: (H1, Http2Options()),
        85: (DOWNSTREAM, ISTIO_H2),
    }
    for port in (80, 82, 85):
        _roundtrip(tmp_path, b, f"outbound|{port}||svc.lab")


def test_mesh_h2_upgrade_policy_upgrades_http_ports_only(tmp_path: Path) -> None:
    got = _protocols(_istio(tmp_path, "h2UpgradePolicy: UPGRADE\n"))
    assert got[80] == (H2, ISTIO_H2)  # HTTP upgraded
    assert got[84][0] is H1 and got[85][0] is DOWNSTREAM  # TCP and sniffed ports are not


def _dr(http: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "svc"},
            "spec": {"host": "svc.lab", "trafficPolicy": {"connectionPool": {"http": http}}},
        }
    )


@pytest.mark.parametrize(
    ("mesh", "http", "want"),
    [
        # DestinationRule UPGRADE upgrades even a sniffed port (the user says it is HTTP).
        ("", {"h2UpgradePolicy": "UPGRADE"}, {80: H2, 81: H2, 84: H2, 85: H2}),
        # DO_NOT_UPGRADE wins over the mesh's UPGRADE, but a grpc port stays HTTP/2.
        ("h2UpgradePolicy: UPGRADE\n", {"h2UpgradePolicy": "DO_NOT_UPGRADE"}, {80: H1, 81: H2, 84: H1, 85: DOWNSTREAM}),
        # DEFAULT: the mesh's.
        ("h2UpgradePolicy: UPGRADE\n", {"h2UpgradePolicy": "DEFAULT"}, {80: H2, 81: H2, 84: H1, 85: DOWNSTREAM}),
        # useClientProtocol: the downstream's, even for grpc ports and with UPGRADE.
        ("", {"useClientProtocol": True, "h2UpgradePolicy": "UPGRADE"}, {80: DOWNSTREAM, 81: DOWNSTREAM, 84: DOWNSTREAM, 85: DOWNSTREAM}),
    ],
)
def test_destination_rule_h2_upgrade_and_client_protocol(
    tmp_path: Path, mesh: str, http: dict[str, Any], want: dict[int, UpstreamHttpProtocol]
) -> None:
    docs = [_dr(http)] + ([mesh] if mesh else [])
    got = _protocols(_istio(tmp_path, *docs))
    assert {p: got[p][0] for p in want} == want


def test_destination_rule_max_concurrent_streams_applies_to_http2_clusters(tmp_path: Path) -> None:
    got = _protocols(_istio(tmp_path, _dr({"maxConcurrentStreams": 10})))
    assert got[82] == (H2, Http2Options(max_concurrent_streams=10))
    assert got[80] == (H1, Http2Options()) and got[85] == (DOWNSTREAM, ISTIO_H2)


def test_h2_upgrade_policy_value_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _istio(tmp_path, _dr({"h2UpgradePolicy": "SOMETIMES"}))
    assert e.value.path == "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy" and "UPGRADE" in e.value.message


K8S = """
apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: default}
spec:
  selector: {app: greeter}
  ports:
  - {name: grpc-api, port: 50051}
  - {name: web, port: 8080, appProtocol: kubernetes.io/h2c}
  - {name: http-x, port: 8081, appProtocol: grpc}
"""


def test_kubernetes_port_names_and_app_protocol(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(K8S)
    b = load([str(tmp_path)])
    for port in (50051, 8080, 8081):
        c = b.cluster(f"outbound|{port}||greeter.default.svc.cluster.local")
        assert c is not None and c.upstream_http_protocol is H2, port


@needs_envoy
def test_real_envoy_accepts_the_exported_http2_clusters(tmp_path: Path) -> None:
    b = _istio(tmp_path, _dr({"maxConcurrentStreams": 10, "idleTimeout": "30s"}))
    assert_envoy_accepts(tmp_path, b)
    b2 = _envoy(tmp_path, _typed(use_downstream_protocol_config={"http2_protocol_options": {"initial_connection_window_size": 1048576}}))
    assert_envoy_accepts(tmp_path, b2)
