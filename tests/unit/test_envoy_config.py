"""The Envoy bootstrap front end: what it accepts, and how it refuses what it doesn't."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pysidecar.config.envoy import load_file
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import (
    Cluster,
    ClusterType,
    DnsLookupFamily,
    LbEndpoint,
    LbPolicy,
    ListenerFilter,
    SocketAddress,
    TcpProxy,
)
from pysidecar.observe.stats import StatsStore
from pysidecar.proxy.cluster_manager import ClusterRuntime, pick_family

GOOD = """
admin:
  access_log_path: /dev/null
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: { address: 0.0.0.0, port_value: 8080 }
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
    - filter_chain_match:
        server_names: ["a.example", "*.b.example"]
        transport_protocol: tls
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tls
          idle_timeout: 30s
          weighted_clusters:
            clusters:
            - {name: v1, weight: 40}
            - {name: v2, weight: 60}
  - name: 10.96.0.5_3306
    address:
      socketAddress: { address: 10.96.0.5, portValue: 3306 }
    bindToPort: false
    transparent: true
    freebind: true
    filterChains:
    - filters:
      - name: envoy.tcp_proxy
        typedConfig:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          statPrefix: mysql
          cluster: v1
  clusters:
  - name: v1
    connect_timeout: 0.25s
    type: STRICT_DNS
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: v1
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: v1.lab, port_value: 80}}}
  - name: v2
    type: STATIC
    load_assignment:
      cluster_name: v2
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.5, port_value: 80}}}
          load_balancing_weight: 3
  - name: orig
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config:
      source_address: {address: 127.0.0.6, port_value: 0}
"""


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "envoy.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_accepts_the_supported_subset_in_both_spellings(tmp_path: Path) -> None:
    b = load_file(_write(tmp_path, GOOD))
    assert b.admin is not None and b.admin.address == SocketAddress("127.0.0.1", 9901)
    l0, mysql = b.listeners
    assert l0.listener_filters == (ListenerFilter.TLS_INSPECTOR,)
    chain = l0.filter_chains[0]
    assert chain.filter_chain_match.server_names == ("a.example", "*.b.example")
    tcp = chain.terminal_filter
    assert isinstance(tcp, TcpProxy) and tcp.idle_timeout == 30.0
    assert [(w.name, w.weight) for w in tcp.weighted_clusters] == [("v1", 40), ("v2", 60)]
    assert mysql.bind_to_port is False and mysql.address == SocketAddress("10.96.0.5", 3306)
    assert (mysql.transparent, mysql.freebind, l0.transparent, l0.freebind) == (True, True, False, False)
    v1, v2, orig = b.clusters
    assert (v1.type, v1.lb_policy, v1.connect_timeout) == (ClusterType.STRICT_DNS, LbPolicy.LEAST_REQUEST, 0.25)
    assert v2.endpoints[0].load_balancing_weight == 3
    assert orig.lb_policy is LbPolicy.CLUSTER_PROVIDED and orig.upstream_bind_addresses == ("127.0.0.6",)


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("stat_prefix: tls", "stat_prefx: tls", "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefx", "unknown or unsupported field 'stat_prefx'"),
        ("port_value: 8080", "port_value: 80800", "static_resources.listeners[0].address.socket_address.port_value", "<= 65535"),
        ("type: STRICT_DNS", "type: EDS", "static_resources.clusters[0].type", "expected one of STATIC, STRICT_DNS"),
        ("connect_timeout: 0.25s", "connect_timeout: soon", "static_resources.clusters[0].connect_timeout", "expected a duration"),
        ("address: 198.18.0.5", "address: v2.lab", "static_resources.clusters[1].load_assignment", "a STATIC cluster needs IP addresses"),
        ("TlsInspector", "TlsInspectorr", "static_resources.listeners[0].listener_filters[0].typed_config", "unsupported listener filter type"),
        ("v3.TcpProxy\n          stat_prefix: tls", "v3.RedisProxy\n          stat_prefix: tls", "static_resources.listeners[0].filter_chains[0].filters[0]", "unsupported network filter type"),
        ("transport_protocol: tls", "transport_protocol: quic", "static_resources.listeners[0].filter_chains[0].filter_chain_match.transport_protocol", "expected one of raw_buffer, tls"),
        ("  - name: v2\n", "  - name: v1\n", "static_resources.clusters[1]", "duplicate cluster name 'v1'"),
        # Fields Envoy acts on that we don't: refused unless at their default, never ignored.
        ("      - lb_endpoints:\n        - endpoint: {address: {socket_address: {address: v1.lab", "      - priority: 1\n        lb_endpoints:\n        - endpoint: {address: {socket_address: {address: v1.lab", "static_resources.clusters[0].load_assignment.endpoints[0].priority", "priority levels are not supported"),
        ("{address: 127.0.0.6, port_value: 0}", "{address: 127.0.0.6, port_value: 4000}", "static_resources.clusters[2].upstream_bind_config.source_address.port_value", "a fixed source port is not supported"),
        ("{ address: 0.0.0.0, port_value: 8080 }", "{ address: '::', port_value: 8080, ipv4_compat: true }", "static_resources.listeners[0].address.socket_address.ipv4_compat", "ipv4_compat: true is not supported"),
        ("type: STRICT_DNS", "type: STRICT_DNS\n    dns_lookup_family: V5_ONLY", "static_resources.clusters[0].dns_lookup_family", "expected one of AUTO, V4_ONLY"),
        ("bindToPort: false", "bindToPort: false\n    listenerFiltersTimeout: later", "static_resources.listeners[1].listenerFiltersTimeout", "expected a duration"),
    ],
)
def test_errors_name_file_yaml_path_and_expectation(
    tmp_path: Path, old: str, new: str, path: str, expected: str
) -> None:
    assert old in GOOD
    file = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_file(file)
    assert err.value.file == file
    assert err.value.path == path
    assert expected in err.value.message
    assert str(err.value).startswith(f"{file}: {path}: ")


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    file = _write(tmp_path, "static_resources:\n  listeners: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        load_file(file)


def test_run_with_a_typo_exits_2_before_binding(tmp_path: Path) -> None:
    file = _write(tmp_path, GOOD.replace("use_original_dst", "x").replace("bindToPort: false", "bindToPrt: false"))
    r = subprocess.run(
        [sys.executable, "-m", "pysidecar", "run", "-c", file], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert "static_resources.listeners[1].bindToPrt" in r.stderr
    assert file in r.stderr


def test_defaults_and_values_of_fields_we_act_on(tmp_path: Path) -> None:
    b = load_file(_write(tmp_path, GOOD))
    l0, mysql = b.listeners
    # Envoy's defaults: 15 s, and close (not continue) when listener filters time out.
    assert (l0.listener_filters_timeout, l0.continue_on_listener_filters_timeout) == (15.0, False)
    v1, v2, _ = b.clusters
    assert v1.dns_lookup_family is DnsLookupFamily.AUTO
    text = GOOD.replace("type: STRICT_DNS", "type: STRICT_DNS\n    dns_lookup_family: V4_ONLY").replace(
        "    bindToPort: false", "    bindToPort: false\n    listener_filters_timeout: 0s\n"
        "    continueOnListenerFiltersTimeout: true"
    ).replace(
        # Locality weights: Envoy ignores them without locality_weighted_lb_config, so do we.
        "      - lb_endpoints:\n        - endpoint: {address: {socket_address: {address: 198.18",
        "      - load_balancing_weight: 7\n        priority: 0\n        lb_endpoints:\n"
        "        - endpoint: {address: {socket_address: {address: 198.18",
    )
    b = load_file(_write(tmp_path, text))
    mysql = b.listeners[1]
    assert (mysql.listener_filters_timeout, mysql.continue_on_listener_filters_timeout) == (0.0, True)
    assert b.clusters[0].dns_lookup_family is DnsLookupFamily.V4_ONLY
    assert b.clusters[1].endpoints == v2.endpoints


@pytest.mark.parametrize(("family", "want"), [
    (DnsLookupFamily.AUTO, ["2001:db8::1", "2001:db8::2"]),
    (DnsLookupFamily.V4_ONLY, ["198.18.0.1"]),
    (DnsLookupFamily.V6_ONLY, ["2001:db8::1", "2001:db8::2"]),
    (DnsLookupFamily.V4_PREFERRED, ["198.18.0.1"]),
    (DnsLookupFamily.ALL, ["2001:db8::1", "198.18.0.1", "2001:db8::2"]),
])
def test_dns_lookup_family_picks_addresses_as_envoy(family: DnsLookupFamily, want: list[str]) -> None:
    assert pick_family(["2001:db8::1", "198.18.0.1", "2001:db8::2"], family) == want
    # A name with one family only: the *_PREFERRED / AUTO choices fall back to it.
    only_v4 = pick_family(["198.18.0.1"], family)
    assert only_v4 == ([] if family is DnsLookupFamily.V6_ONLY else ["198.18.0.1"])


def test_dns_lookup_family_applies_to_a_real_resolution() -> None:
    # localhost resolves through /etc/hosts to 127.0.0.1 (and ::1 where listed).
    cfg = Cluster("c", ClusterType.STRICT_DNS, endpoints=(LbEndpoint(SocketAddress("localhost", 80)),),
                  dns_lookup_family=DnsLookupFamily.V4_ONLY)
    rt = ClusterRuntime(cfg, StatsStore().cluster("c"))
    asyncio.run(_resolve_with(rt))
    assert [h.address for h in rt.hosts] == ["127.0.0.1"]
    rt6 = ClusterRuntime(replace(cfg, dns_lookup_family=DnsLookupFamily.V6_ONLY), StatsStore().cluster("c"))
    asyncio.run(_resolve_with(rt6))
    assert all(":" in h.address for h in rt6.hosts)


async def _resolve_with(rt: ClusterRuntime) -> None:
    await rt.resolve_once(asyncio.get_running_loop())


def test_istio_and_envoy_timeout_defaults(tmp_path: Path) -> None:
    # tcp_proxy idle_timeout unset: one hour (Envoy's and Istio's default), from YAML and model.
    b = load_file(_write(tmp_path, """
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 7000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - {name: c, type: STATIC}
"""))
    tcp = b.listeners[0].filter_chains[0].terminal_filter
    assert isinstance(tcp, TcpProxy) and tcp.idle_timeout == 3600.0 == TcpProxy("t", "c").idle_timeout
    assert b.clusters[0].connect_timeout == 5.0  # plain Envoy's cluster default
    # The standard sidecar (pysidecar run with no -c): istiod's 10 s connect timeout everywhere.
    sidecar = load([])
    assert {c.name: c.connect_timeout for c in sidecar.clusters} == {
        "PassthroughCluster": 10.0, "InboundPassthroughClusterIpv4": 10.0, "InboundPassthroughClusterIpv6": 10.0,
        "BlackHoleCluster": 10.0,
    }
    tcp_proxies = [f for x in sidecar.listeners for c in x.filter_chains for f in c.filters if isinstance(f, TcpProxy)]
    assert tcp_proxies and all(f.idle_timeout == 3600.0 for f in tcp_proxies)

