"""Istio front end: mesh config, ServiceEntry / Service registry, the loader's files and
directories, and the errors that name file, YAML path and resource."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Bootstrap,
    ClusterType,
    LbPolicy,
    OutboundTrafficPolicy,
    SocketAddress,
    TcpProxy,
)

SE_TCP = """
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db, namespace: prod}
spec:
  hosts: [db.example.com]
  addresses: [198.18.5.5]
  ports: [{number: 3306, name: mysql, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 198.18.0.9, ports: {mysql: 13306}}]
"""

CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/stdout
    outboundTrafficPolicy:
      mode: __MODE__
"""


def write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_plain_mesh_config_document(tmp_path: Path) -> None:
    f = write(tmp_path, "mesh.yaml", "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\nconnectTimeout: 3s\n")
    b = load([f])
    assert b.mesh.outbound_traffic_policy is OutboundTrafficPolicy.REGISTRY_ONLY
    assert b.mesh.connect_timeout == 3.0
    catchall = b.listener("virtualOutbound").filter_chains[-1].filters[0]  # type: ignore[union-attr]
    assert isinstance(catchall, TcpProxy) and catchall.cluster == BLACKHOLE_CLUSTER


def test_istio_configmap_mesh(tmp_path: Path) -> None:
    b = load([write(tmp_path, "cm.yaml", CONFIGMAP.replace("__MODE__", "REGISTRY_ONLY"))])
    assert b.mesh.outbound_traffic_policy is OutboundTrafficPolicy.REGISTRY_ONLY


def test_configmap_error_points_inside_data_mesh(tmp_path: Path) -> None:
    f = write(tmp_path, "cm.yaml", CONFIGMAP.replace("__MODE__", "SOMETIMES"))
    with pytest.raises(ConfigError) as e:
        load([f])
    assert e.value.file == f
    assert e.value.path == "data.mesh.outboundTrafficPolicy.mode"
    assert "ALLOW_ANY" in e.value.message


def test_two_mesh_configs_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "outboundTrafficPolicy: {mode: ALLOW_ANY}\n")
    write(tmp_path, "b.yaml", CONFIGMAP.replace("__MODE__", "ALLOW_ANY"))
    with pytest.raises(ConfigError, match="second mesh config"):
        load([str(tmp_path)])


def test_directory_of_multi_document_files(tmp_path: Path) -> None:
    write(tmp_path, "mesh/cm.yaml", CONFIGMAP.replace("__MODE__", "REGISTRY_ONLY"))
    write(tmp_path, "se/db.yaml", SE_TCP)
    write(tmp_path, ".hidden.yaml", "not: [valid")
    write(tmp_path, "README.md", "ignored")
    b = load([str(tmp_path)])
    lis = b.listener("198.18.5.5_3306")
    assert lis is not None and not lis.bind_to_port
    proxy = lis.filter_chains[0].filters[0]
    assert isinstance(proxy, TcpProxy) and proxy.cluster == "outbound|3306||db.example.com"
    c = b.cluster("outbound|3306||db.example.com")
    assert c is not None and c.type is ClusterType.STATIC
    assert [e.address for e in c.endpoints] == [SocketAddress("198.18.0.9", 13306)]
    assert len(b.sources) == 2


@pytest.mark.parametrize(
    ("resolution", "ctype"),
    [("NONE", ClusterType.ORIGINAL_DST), ("DNS", ClusterType.STRICT_DNS), ("DNS_ROUND_ROBIN", ClusterType.LOGICAL_DNS)],
)
def test_resolution_to_cluster_type(tmp_path: Path, resolution: str, ctype: ClusterType) -> None:
    se = f"""
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: ext}}
    spec:
      hosts: [ext.example.com]
      ports: [{{number: 9000, name: tcp, protocol: TCP}}]
      resolution: {resolution}
    """
    b = load([write(tmp_path, "se.yaml", se)])
    c = b.cluster("outbound|9000||ext.example.com")
    assert c is not None and c.type is ctype
    if ctype is ClusterType.ORIGINAL_DST:
        assert c.lb_policy is LbPolicy.CLUSTER_PROVIDED and not c.endpoints
    else:
        assert [e.address for e in c.endpoints] == [SocketAddress("ext.example.com", 9000)]
    # No VIP: the wildcard listener for the port carries the service's tcp_proxy.
    lis = b.listener("0.0.0.0_9000")
    assert lis is not None
    proxy = lis.filter_chains[-1].filters[0]
    assert isinstance(proxy, TcpProxy) and proxy.cluster == "outbound|9000||ext.example.com"


def test_https_service_entry_chains_by_sni(tmp_path: Path) -> None:
    se = """
    apiVersion: networking.istio.io/v1alpha3
    kind: ServiceEntry
    metadata: {name: google}
    spec:
      hosts: [www.google.com]
      ports: [{number: 443, name: https, protocol: HTTPS}]
      resolution: DNS
      location: MESH_EXTERNAL
    """
    write(tmp_path, "se.yaml", se)
    for mode, fallback in (("ALLOW_ANY", PASSTHROUGH_CLUSTER), ("REGISTRY_ONLY", BLACKHOLE_CLUSTER)):
        write(tmp_path, "mesh.yaml", f"outboundTrafficPolicy: {{mode: {mode}}}\n")
        lis = load([str(tmp_path)]).listener("0.0.0.0_443")
        assert lis is not None
        sni, last = lis.filter_chains
        assert sni.filter_chain_match.server_names == ("www.google.com",)
        assert isinstance(sni.filters[0], TcpProxy) and sni.filters[0].cluster == "outbound|443||www.google.com"
        assert isinstance(last.filters[0], TcpProxy) and last.filters[0].cluster == fallback


MYSQL = """
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: db}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: tcp-mysql, port: 3306, targetPort: 3306}, {name: metrics, port: 9104}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mysql-abc, namespace: db, labels: {kubernetes.io/service-name: mysql}}
addressType: IPv4
ports: [{name: tcp-mysql, port: 3306}, {name: metrics, port: 9104}]
endpoints:
- addresses: [10.1.0.7]
  conditions: {ready: true}
- addresses: [10.1.0.8]
  conditions: {ready: false}
"""


def test_kubernetes_service_and_endpoint_slice(tmp_path: Path) -> None:
    b = load([write(tmp_path, "k8s.yaml", MYSQL)])
    c = b.cluster("outbound|3306||mysql.db.svc.cluster.local")
    assert c is not None and [e.address for e in c.endpoints] == [SocketAddress("10.1.0.7", 3306)]
    assert b.listener("10.96.0.50_3306") is not None
    # `metrics` is sniffed: an HTTP chain (route "<host>:<port>") before the TCP chain.
    sniffed = b.listener("10.96.0.50_9104")
    assert sniffed is not None and len(sniffed.filter_chains) == 2
    assert sniffed.filter_chains[0].filter_chain_match.application_protocols == ("http/1.1", "h2c")


def test_only_cluster_ip_none_is_headless(tmp_path: Path) -> None:
    """Seed 001's helloworld-v1 Service has no clusterIP: istiod load-balances it over its
    endpoints (ClientSideLB); only `clusterIP: None` makes a passthrough (ORIGINAL_DST) cluster,
    which a gateway would send back to its own original destination, itself."""
    hello = """
    apiVersion: v1
    kind: Service
    metadata:
      name: helloworld-v1
      labels:
        app: helloworld-v1
    spec:
      ports:
      - name: http
        port: 5000
      selector:
        app: helloworld-v1
    ---
    apiVersion: v1
    kind: Endpoints
    metadata: {name: helloworld-v1}
    subsets: [{addresses: [{ip: 10.1.0.8}], ports: [{name: http, port: 5000}]}]
    """
    b = load([write(tmp_path / "lb", "k8s.yaml", hello)])
    c = b.cluster("outbound|5000||helloworld-v1.default.svc.cluster.local")
    assert c is not None and c.type is ClusterType.STATIC
    assert [e.address for e in c.endpoints] == [SocketAddress("10.1.0.8", 5000)]
    headless = hello.replace("    spec:\n", "    spec:\n      clusterIP: None\n")
    c = load([write(tmp_path / "headless", "k8s.yaml", headless)]).cluster("outbound|5000||helloworld-v1.default.svc.cluster.local")
    assert c is not None and c.type is ClusterType.ORIGINAL_DST


def test_endpoint_slices_win_over_endpoints_and_addresses_count_once(tmp_path: Path) -> None:
    # A dump of a namespace holds both objects for a Service; istiod reads the slices only.
    extra = """
    apiVersion: v1
    kind: Endpoints
    metadata: {name: mysql, namespace: db}
    subsets: [{addresses: [{ip: 10.1.0.7}, {ip: 10.1.0.9}], ports: [{name: tcp-mysql, port: 3306}]}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: mysql-def, namespace: db, labels: {kubernetes.io/service-name: mysql}}
    addressType: IPv4
    ports: [{name: tcp-mysql, port: 13306}]
    endpoints: [{addresses: [10.1.0.7]}, {addresses: [10.1.0.6]}]
    """
    b = load([write(tmp_path / "dump", "k8s.yaml", MYSQL), write(tmp_path / "dump", "extra.yaml", extra)])
    c = b.cluster("outbound|3306||mysql.db.svc.cluster.local")
    assert c is not None
    assert [e.address for e in c.endpoints] == [SocketAddress("10.1.0.7", 3306), SocketAddress("10.1.0.6", 13306)]
    # Endpoints alone still serve a Service without slices.
    only = """
    apiVersion: v1
    kind: Service
    metadata: {name: mysql, namespace: db}
    spec: {clusterIP: 10.96.0.50, ports: [{name: tcp-mysql, port: 3306}]}
    ---
    """ + extra.split("---")[0]
    c = load([write(tmp_path / "only", "k8s.yaml", only)]).cluster("outbound|3306||mysql.db.svc.cluster.local")
    assert c is not None and [e.address.address for e in c.endpoints] == ["10.1.0.7", "10.1.0.9"]


def test_service_entry_errors_name_resource_and_field(tmp_path: Path) -> None:
    bad = SE_TCP.replace("resolution: STATIC", "resolution: SOMETIMES")
    f = write(tmp_path, "se.yaml", "---\n" + bad)
    with pytest.raises(ConfigError) as e:
        load([f])
    assert e.value.path == "spec.resolution"
    assert e.value.message.startswith("ServiceEntry prod/db: ")


def test_workload_selector_warns_and_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    se = SE_TCP.replace("  resolution: STATIC", "  workloadSelector: {labels: {app: db}}\n  resolution: STATIC")
    load([write(tmp_path, "se.yaml", se)])
    assert "workloadSelector ignored" in caplog.text


def test_unknown_kinds_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n"
    b = load([write(tmp_path, "dep.yaml", dep + "---\n" + SE_TCP)])
    assert "Deployment web ignored" in caplog.text
    assert b.listener("198.18.5.5_3306") is not None


@pytest.mark.parametrize("kind", ["RequestAuthentication"])
def test_unenforced_security_kinds_are_refused(tmp_path: Path, kind: str) -> None:
    doc = f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p}}\nspec: {{}}\n"
    f = write(tmp_path, "sec.yaml", SE_TCP + "---\n" + doc)
    with pytest.raises(ConfigError) as e:
        load([f])
    assert e.value.file == f and e.value.path == "kind"
    assert kind in e.value.message and "refused" in e.value.message


def test_envoy_bootstrap_alone_is_unchanged(tmp_path: Path) -> None:
    envoy = """
    static_resources:
      clusters: [{name: a, type: STATIC, connect_timeout: 1s}]
    """
    b = load([write(tmp_path, "envoy.yaml", envoy)])
    assert [c.name for c in b.clusters] == ["a"] and not b.listeners


def test_envoy_bootstrap_and_istio_resources_do_not_mix(tmp_path: Path) -> None:
    write(tmp_path, "envoy.yaml", "static_resources: {}\n")
    write(tmp_path, "se.yaml", SE_TCP)
    with pytest.raises(ConfigError, match="cannot be mixed"):
        load([str(tmp_path)])


def test_envoy_file_based_dynamic_resources(tmp_path: Path) -> None:
    write(
        tmp_path,
        "lds.yaml",
        """
        resources:
        - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
          name: listener_0
          address: {socket_address: {address: 0.0.0.0, port_value: 18080}}
          filter_chains:
          - filters:
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: x
                cluster: backend
        """,
    )
    write(
        tmp_path,
        "cds.yaml",
        """
        resources:
        - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
          name: backend
          type: STATIC
          load_assignment:
            cluster_name: backend
            endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}}]}]
        """,
    )
    boot = write(
        tmp_path,
        "envoy.yaml",
        f"""
        node: {{id: id_1, cluster: test}}
        dynamic_resources:
          lds_config: {{path_config_source: {{path: {tmp_path}/lds.yaml}}, resource_api_version: V3}}
          cds_config: {{path: cds.yaml}}
        """,
    )
    b = load([boot])
    assert [x.name for x in b.listeners] == ["listener_0"]
    assert [c.name for c in b.clusters] == ["backend"]
    assert len(b.sources) == 3
    # The directory holding them loads the same way: lds/cds files are not documents of their own.
    assert load([str(tmp_path)]).listeners == b.listeners


def _se(tmp_path: Path, ports: str, extra: str = "resolution: DNS") -> Bootstrap:
    doc = f"""
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {{name: ext}}
    spec:
      hosts: [ext.example]
      addresses: [198.18.7.7]
      ports: {ports}
      {extra}
    """
    return load([write(tmp_path, "se.yaml", doc)])


def test_service_entry_port_without_protocol_is_sniffed_whatever_its_name(tmp_path: Path) -> None:
    # istiod's convertPort reads only `protocol`: no protocol is sniffing, even for a port named http.
    sniffed = _se(tmp_path, "[{number: 8000, name: http}]").listener("198.18.7.7_8000")
    assert sniffed is not None and len(sniffed.filter_chains) == 2
    assert sniffed.filter_chains[0].filter_chain_match.application_protocols == ("http/1.1", "h2c")
    assert isinstance(sniffed.filter_chains[1].filters[0], TcpProxy)
    declared = _se(tmp_path, "[{number: 8000, name: tcp, protocol: http}]")  # case-insensitive
    assert declared.listener("198.18.7.7_8000") is None and declared.listener("0.0.0.0_8000") is not None


def test_service_entry_unknown_protocol_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _se(tmp_path, "[{number: 8000, name: web, protocol: HTTP3}]")
    assert e.value.path == "spec.ports[0].protocol" and "unrecognized protocol 'HTTP3'" in e.value.message
    assert "ServiceEntry default/ext" in e.value.message and "HTTPS" in e.value.message


def test_service_entry_target_port(tmp_path: Path) -> None:
    dns = _se(tmp_path, "[{number: 80, name: http, protocol: HTTP, targetPort: 8080}]").cluster("outbound|80||ext.example")
    assert dns is not None and [e.address for e in dns.endpoints] == [SocketAddress("ext.example", 8080)]
    static = """resolution: STATIC
      endpoints: [{address: 10.2.0.1}, {address: 10.2.0.2, ports: {http: 9090}}]"""
    c = _se(tmp_path, "[{number: 80, name: http, protocol: HTTP, targetPort: 8080}]", static).cluster("outbound|80||ext.example")
    # targetPort for endpoints without their own port; an endpoint's named port wins.
    assert c is not None and [e.address for e in c.endpoints] == [SocketAddress("10.2.0.1", 8080), SocketAddress("10.2.0.2", 9090)]


def test_kubernetes_app_protocol_wins_over_the_port_name(tmp_path: Path) -> None:
    svc = """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      clusterIP: 10.96.3.3
      ports:
      - {name: web, port: 8080, appProtocol: http}
      - {name: http-metrics, port: 9100, appProtocol: tcp}
      - {name: grpc-x, port: 9000, appProtocol: kubernetes.io/h2c}
      - {name: admin, port: 9901}
    """
    b = load([write(tmp_path, "svc.yaml", svc)])
    # http by appProtocol though the name says nothing: the shared HTTP listener, no VIP listener.
    assert b.listener("10.96.3.3_8080") is None and b.listener("0.0.0.0_8080") is not None
    # tcp by appProtocol though the name says http: a VIP listener with the TCP chain only.
    tcp = b.listener("10.96.3.3_9100")
    assert tcp is not None and len(tcp.filter_chains) == 1 and isinstance(tcp.filter_chains[0].filters[0], TcpProxy)
    # kubernetes.io/h2c is HTTP2: HTTP, on the shared listener.
    assert b.listener("10.96.3.3_9000") is None and b.listener("0.0.0.0_9000") is not None
    # Neither: sniffed (HTTP and TCP chains on the VIP listener).
    sniffed = b.listener("10.96.3.3_9901")
    assert sniffed is not None and len(sniffed.filter_chains) == 2
