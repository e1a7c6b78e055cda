"""Inbound from Istio YAML: the Services selecting the workload's labels become virtualInbound
chains and `inbound|<port>||` clusters named and shaped as istiod's; the labels' sources."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pysidecar.common.workload import parse_label_flag, parse_metajson_labels, pod_labels
from pysidecar.config.loader import load
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import (
    INBOUND_PASSTHROUGH_CLUSTER_IPV4,
    INBOUND_PASSTHROUGH_CLUSTER_IPV6,
    ISTIO_UNLIMITED,
    VIRTUAL_INBOUND,
    Bootstrap,
    ClusterType,
    FilterChain,
    LbPolicy,
    TcpProxy,
    TrafficDirection,
)
from pysidecar.model.http import HttpConnectionManager
from tests.unit.test_export import assert_envoy_accepts, needs_envoy

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp-db, port: 5432}
  - {name: metrics, port: 9000, targetPort: metrics}
  - {name: grpc-api, port: 7070}
"""
POD = """
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web, version: v1}}
spec:
  containers:
  - name: app
    image: web
    ports: [{name: metrics, containerPort: 9090}]
"""
OTHER = """
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec:
  clusterIP: 10.96.0.51
  selector: {app: other}
  ports: [{name: http, port: 80, targetPort: 8081}]
"""


def _load(tmp: Path, labels: dict[str, str] | None, *docs: str) -> Bootstrap:
    (tmp / "cfg.yaml").write_text("---\n".join(textwrap.dedent(d) for d in docs))
    return load([str(tmp / "cfg.yaml")], labels)


def _inbound_chains(b: Bootstrap) -> list[FilterChain]:
    vi = b.listener(VIRTUAL_INBOUND)
    assert vi is not None
    return [c for c in vi.filter_chains if c.filter_chain_match.destination_port not in (None, 15006)]


def test_http_service_port_is_istiods_inbound_chain(tmp_path: Path) -> None:
    b = _load(tmp_path, {"app": "web"}, WEB, POD, OTHER)
    vi = b.listener(VIRTUAL_INBOUND)
    assert vi is not None and vi.traffic_direction is TrafficDirection.INBOUND
    # The skeleton's blackhole and passthrough chains (HTTP then TCP, per IP family) stay first,
    # as istiod orders them.
    assert [c.name for c in vi.filter_chains[:5]] == [
        "virtualInbound-blackhole", "virtualInbound-catchall-http", "virtualInbound",
        "virtualInbound-catchall-http", "virtualInbound",
    ]  # fmt: skip
    targets = [getattr(c.terminal_filter, "cluster", None) or c.terminal_filter.route_config.name for c in vi.filter_chains[1:5]]  # type: ignore[union-attr]
    assert targets == [INBOUND_PASSTHROUGH_CLUSTER_IPV4] * 2 + [INBOUND_PASSTHROUGH_CLUSTER_IPV6] * 2
    chains = {(c.filter_chain_match.destination_port, c.filter_chain_match.application_protocols): c for c in _inbound_chains(b)}
    http = chains[(8080, ())]
    assert http.name == "0.0.0.0_8080"
    assert http.filter_chain_match.transport_protocol == "raw_buffer"
    hcm = http.terminal_filter
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.stat_prefix == "inbound_0.0.0.0_8080"
    assert hcm.server_name == "istio-envoy"
    rc = hcm.route_config
    assert rc.name == "inbound|8080||" and not rc.validate_clusters
    [vh] = rc.virtual_hosts
    # istiod names the virtual host after the service port, the route config after the target.
    assert vh.name == "inbound|http|80" and vh.domains == ("*",)
    [route] = vh.routes
    assert route.name == "default" and route.match.prefix == "/"
    assert route.route is not None and route.route.cluster == "inbound|8080||" and route.route.timeout == 0.0
    assert route.route.retry_policy is not None and route.route.retry_policy.retry_on == ("reset-before-request",)
    assert route.decorator is not None and route.decorator.operation == "web.default.svc.cluster.local:80/*"
    # Only the selected Service: `other` (port 8081) gets nothing.
    assert {p for p, _ in chains} == {5432, 7070, 8080, 9090}


def test_inbound_cluster_is_original_dst_from_127_0_0_6(tmp_path: Path) -> None:
    b = _load(tmp_path, {"app": "web"}, "connectTimeout: 3s\n", WEB)
    c = b.cluster("inbound|8080||")
    assert c is not None
    assert c.type is ClusterType.ORIGINAL_DST and c.lb_policy is LbPolicy.CLUSTER_PROVIDED
    assert c.upstream_bind_addresses == ("127.0.0.6", "::6")
    assert c.connect_timeout == 3.0
    assert c.circuit_breakers.max_connections == ISTIO_UNLIMITED
    # The outbound side is untouched: the service's own outbound cluster is still there.
    assert b.cluster("outbound|80||web.default.svc.cluster.local") is not None


def test_tcp_port_is_a_tcp_proxy_to_the_inbound_cluster(tmp_path: Path) -> None:
    b = _load(tmp_path, {"app": "web"}, WEB)
    [tcp] = [c for c in _inbound_chains(b) if c.filter_chain_match.destination_port == 5432]
    assert tcp.name == "0.0.0.0_5432" and tcp.filter_chain_match.transport_protocol == "raw_buffer"
    assert tcp.terminal_filter == TcpProxy(stat_prefix="inbound|5432||", cluster="inbound|5432||")


def test_explicit_grpc_port_is_http_only(tmp_path: Path) -> None:
    b = _load(tmp_path, {"app": "web"}, WEB)
    [grpc] = [c for c in _inbound_chains(b) if c.filter_chain_match.destination_port == 7070]
    assert isinstance(grpc.terminal_filter, HttpConnectionManager)
    assert grpc.filter_chain_match.application_protocols == ()


def test_named_target_port_resolved_by_the_pod_and_sniffed(tmp_path: Path) -> None:
    b = _load(tmp_path, {"app": "web"}, WEB, POD)
    # `metrics` is not a protocol name: sniffed, so an HTTP chain by ALPN and a TCP chain.
    chains = [c for c in _inbound_chains(b) if c.filter_chain_match.destination_port == 9090]
    assert [c.name for c in chains] == ["0.0.0.0_9090", "0.0.0.0_9090"]
    http, tcp = chains
    assert http.filter_chain_match.application_protocols == ("http/1.1", "h2c")
    assert isinstance(http.terminal_filter, HttpConnectionManager)
    assert http.terminal_filter.route_config.virtual_hosts[0].name == "inbound|http|9000"
    assert tcp.filter_chain_match.application_protocols == ()
    assert tcp.terminal_filter == TcpProxy(stat_prefix="inbound|9090||", cluster="inbound|9090||")
    assert b.cluster("inbound|9090||") is not None


def test_named_target_port_without_a_pod_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = _load(tmp_path, {"app": "web"}, WEB)
    assert 9090 not in {c.filter_chain_match.destination_port for c in _inbound_chains(b)}
    assert b.cluster("inbound|9090||") is None
    assert "targetPort 'metrics'" in caplog.text


def test_no_labels_means_no_inbound(tmp_path: Path) -> None:
    for labels in (None, {}, {"app": "nobody"}):
        b = _load(tmp_path, labels, WEB, POD)
        assert _inbound_chains(b) == []
        assert not [c for c in b.clusters if c.name.startswith("inbound|")]
        vi, base = b.listener(VIRTUAL_INBOUND), standard_sidecar().listener(VIRTUAL_INBOUND)
        assert vi is not None and base is not None
        # The skeleton's chains (their HCMs carry the mesh's tracing sampling once compiled).
        assert [(c.name, c.filter_chain_match) for c in vi.filter_chains] == [(c.name, c.filter_chain_match) for c in base.filter_chains]


def test_selector_needs_every_label_and_empty_selects_nothing(tmp_path: Path) -> None:
    two = WEB.replace("selector: {app: web}", "selector: {app: web, tier: front}")
    assert _inbound_chains(_load(tmp_path, {"app": "web"}, two)) == []
    assert _inbound_chains(_load(tmp_path, {"app": "web", "tier": "front", "x": "y"}, two)) != []
    bare = WEB.replace("  selector: {app: web}\n", "")
    assert _inbound_chains(_load(tmp_path, {"app": "web"}, bare)) == []


def test_first_service_wins_a_target_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tcp_too = OTHER.replace("app: other", "app: web").replace("name: http, port: 80, targetPort: 8081", "name: tcp, port: 81, targetPort: 8080")
    b = _load(tmp_path, {"app": "web"}, WEB, tcp_too)
    on_8080 = [c for c in _inbound_chains(b) if c.filter_chain_match.destination_port == 8080]
    assert len(on_8080) == 1 and isinstance(on_8080[0].terminal_filter, HttpConnectionManager)
    assert "target port 8080 is already served as HTTP" in caplog.text


def test_labels_sources() -> None:
    assert parse_label_flag("app=web, version=v1") == {"app": "web", "version": "v1"}
    assert parse_label_flag("") == {}
    with pytest.raises(ValueError):
        parse_label_flag("app")
    assert parse_metajson_labels('{"app": "web", "n": 1}') == {"app": "web", "n": "1"}
    assert parse_metajson_labels("[1]") is None and parse_metajson_labels("{") is None
    file_text = 'app="file"\npod-template-hash="abc"\n'
    # ISTIO_METAJSON_LABELS first, then the downward-API file; a bad env value falls through.
    assert pod_labels({"ISTIO_METAJSON_LABELS": '{"app": "env"}'}, file_text) == {"app": "env"}
    assert pod_labels({"ISTIO_METAJSON_LABELS": "nope"}, file_text)["app"] == "file"
    assert pod_labels({}, file_text) == {"app": "file", "pod-template-hash": "abc"}
    assert pod_labels({}, None) == {}


def _envoy_config(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pysidecar", "envoy-config", "-c", str(tmp / "cfg.yaml"), *extra],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_envoy_config_flag_and_bad_value(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(WEB))
    r = _envoy_config(tmp_path, "--workload-labels", "app=web")
    assert r.returncode == 0, r.stderr
    lis = {x["name"]: x for x in yaml.safe_load(r.stdout)["static_resources"]["listeners"]}
    names = [c.get("name") for c in lis[VIRTUAL_INBOUND]["filter_chains"]]
    assert "0.0.0.0_8080" in names and "0.0.0.0_5432" in names
    r = _envoy_config(tmp_path, "--workload-labels", "app")
    assert r.returncode == 2 and "--workload-labels" in r.stderr


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_the_inbound_chains(tmp_path: Path) -> None:
    assert_envoy_accepts(tmp_path, _load(tmp_path, {"app": "web"}, WEB, POD))
