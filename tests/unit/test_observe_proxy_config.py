"""`pysidecar proxy-config`: istioctl-shaped tables from fixed config dumps."""

from __future__ import annotations

import argparse
import json

import yaml

from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import Bootstrap, Cluster, FilterChain, Listener, SocketAddress, TcpProxy
from pysidecar.observe import proxy_config_tables as t
from pysidecar.observe.config_dump import config_dump
from pysidecar.observe.proxy_config import render

# A dynamic (xDS) listener as a real Istio sidecar's Envoy dumps it: port 80 with an HTTP
# chain by RDS and a TCP catch-all.
ISTIO_PORT_80 = {
    "name": "0.0.0.0_80",
    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
    "filter_chains": [
        {
            "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {"rds": {"route_config_name": "80"}},
                }
            ],
        }
    ],
    "default_filter_chain": {
        "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": "PassthroughCluster"}}]
    },
    "bind_to_port": False,
}
ROUTE_80 = {
    "name": "80",
    "virtual_hosts": [
        {"name": "httpbin.org:80", "domains": ["httpbin.org"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||httpbin.org"}}]},
        {"name": "block_all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 502}}]},
    ],
}


def _dump() -> dict:
    base = standard_sidecar()
    kube_dns = Listener(
        name="10.96.0.10_53",
        address=SocketAddress("10.96.0.10", 53),
        bind_to_port=False,
        filter_chains=(
            FilterChain("", (TcpProxy("outbound|53||kube-dns.kube-system.svc.cluster.local", "outbound|53||kube-dns.kube-system.svc.cluster.local"),)),
        ),
    )
    dns_cluster = Cluster("outbound|53||kube-dns.kube-system.svc.cluster.local")
    b = Bootstrap((*base.listeners, kube_dns), (*base.clusters, dns_cluster), base.admin)
    dump = config_dump(b, 0.0)
    for config in dump["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            config["dynamic_listeners"] = [{"name": "0.0.0.0_80", "active_state": {"listener": ISTIO_PORT_80}}]
        if config["@type"].endswith("RoutesConfigDump"):
            config["dynamic_route_configs"] = [{"route_config": ROUTE_80}]
    return dump


def test_listener_table_reads_like_istioctl() -> None:
    assert t.table(t.LISTENER_HEADER, t.listener_rows(_dump())) == (
        "ADDRESS    PORT  MATCH                                                 DESTINATION\n"
        "10.96.0.10 53    ALL                                                   Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local\n"
        "0.0.0.0    80    Trans: raw_buffer; App: http/1.1,h2c                  Route: 80\n"
        "0.0.0.0    80    ALL                                                   PassthroughCluster\n"
        "0.0.0.0    15001 ALL                                                   PassthroughCluster\n"
        "0.0.0.0    15001 Addr: *:15001                                         Non-HTTP/Non-TCP\n"
        "0.0.0.0    15006 Addr: *:15006                                         Non-HTTP/Non-TCP\n"
        "0.0.0.0    15006 Trans: raw_buffer; App: http/1.1,h2c; Addr: ::/0      InboundPassthroughClusterIpv6\n"
        "0.0.0.0    15006 Trans: raw_buffer; Addr: ::/0                         InboundPassthroughClusterIpv6\n"
        "0.0.0.0    15006 Trans: raw_buffer; App: http/1.1,h2c; Addr: 0.0.0.0/0 InboundPassthroughClusterIpv4\n"
        "0.0.0.0    15006 Trans: raw_buffer; Addr: 0.0.0.0/0                    InboundPassthroughClusterIpv4\n"
    )  # as the seed's istioctl table: tcp_proxy to BlackHoleCluster is Non-HTTP/Non-TCP


def test_sidecar_ports_15021_and_15090_as_seed_002_lists_them() -> None:
    rows = t.listener_rows(config_dump(standard_sidecar(), 0.0))
    assert ("0.0.0.0", "15021", "ALL", "Inline Route: /healthz/ready*") in rows
    assert ("0.0.0.0", "15090", "ALL", "Inline Route: /stats/prometheus*") in rows
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), key=int)


def test_listener_port_filter() -> None:
    rows = t.listener_rows(_dump(), port=15001)
    assert [r[2] for r in rows] == ["ALL", "Addr: *:15001"]


def test_match_descriptions() -> None:
    assert t.describe_match(None) == "ALL"
    assert t.describe_match({"transport_protocol": "tls", "destination_port": 8080}) == "Trans: tls; Addr: *:8080"
    inbound_tls = {
        "transport_protocol": "tls",
        "application_protocols": ["istio-http/1.0", "istio-h2"],
        "prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
    }
    assert t.describe_match(inbound_tls) == "Trans: tls; App: istio-http/1.0,istio-h2; Addr: 0.0.0.0/0"
    assert t.describe_match({"server_names": ["a.com", "b.com"]}) == "SNI: a.com,b.com"
    # istioctl's names for the ALPN lists istiod uses; seed 002's `Trans: tls; App: TCP TLS`.
    assert t.describe_match({"transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"]}) == "Trans: tls; App: TCP TLS"
    assert t.describe_match({"application_protocols": ["http/1.0", "http/1.1", "h2c"]}) == "App: HTTP"


def test_destinations() -> None:
    hcm = "envoy.filters.network.http_connection_manager"
    inline = {"virtual_hosts": [{"domains": ["*"], "routes": [{"match": {"prefix": "/stats/prometheus"}}]}]}
    assert t.describe_destination([{"name": hcm, "typed_config": {"route_config": inline}}]) == "Inline Route: /stats/prometheus*"
    # A named route config reads as istiod's RDS ones do; a catch-all to one cluster (Istio's
    # inline `inbound|8080||`) reads as that cluster, as istioctl prints it.
    assert t.describe_destination([{"name": hcm, "typed_config": {"route_config": {"name": "local_route"}}}]) == "Route: local_route"
    inbound = {"name": "inbound|8080||", "virtual_hosts": [{"name": "inbound|http|8080", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||"}}]}]}  # fmt: skip
    assert t.describe_destination([{"name": hcm, "typed_config": {"route_config": inbound}}]) == "Cluster: inbound|8080||"
    passthrough = {"name": "InboundPassthroughClusterIpv4", "virtual_hosts": [{"domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "InboundPassthroughClusterIpv4"}}]}]}  # fmt: skip
    assert t.describe_destination([{"name": hcm, "typed_config": {"route_config": passthrough}}]) == "InboundPassthroughClusterIpv4"
    exact = {"virtual_hosts": [{"domains": ["*"], "routes": [{"match": {"path": "/"}, "route": {"cluster": "c"}}]}]}
    assert t.describe_destination([{"name": hcm, "typed_config": {"route_config": exact}}]) == "Inline Route: /"
    assert t.describe_destination([{"name": hcm, "typed_config": {"rds": {"route_config_name": "80"}}}]) == "Route: 80"
    assert t.describe_destination([]) == "Non-HTTP/Non-TCP"


def test_route_cluster_endpoint_tables() -> None:
    dump = _dump()
    # Inline route configs are in Envoy's dump too: istioctl lists them (Istio's inbound passthrough).
    assert t.route_rows(dump) == [
        ("80", "httpbin.org:80", "httpbin.org", "/*", ""), ("80", "block_all", "*", "/*", ""),
        ("InboundPassthroughClusterIpv4", "inbound|http|0", "*", "/*", ""),
        ("InboundPassthroughClusterIpv6", "inbound|http|0", "*", "/*", ""),
    ]  # fmt: skip
    rows = t.cluster_rows(dump)
    assert ("BlackHoleCluster", "-", "-", "-", "STATIC", "") in rows
    assert ("PassthroughCluster", "-", "-", "-", "ORIGINAL_DST", "") in rows
    assert ("kube-dns.kube-system.svc.cluster.local", "53", "-", "outbound", "STATIC", "") in rows
    clusters = {"cluster_statuses": [{"name": "svc", "host_statuses": [
        {"address": {"socket_address": {"address": "198.19.0.10", "port_value": 80}}, "health_status": {"eds_health_status": "HEALTHY"}}]}]}  # fmt: skip
    assert t.table(t.ENDPOINT_HEADER, t.endpoint_rows(clusters)) == (
        # istioctl's tabwriter for endpoints pads with 5 spaces.
        "ENDPOINT           STATUS      OUTLIER CHECK     CLUSTER\n198.19.0.10:80     HEALTHY     OK                svc\n"
    )


def _args(**kw: object) -> argparse.Namespace:
    base = {"output": "short", "port": None, "name": None, "fqdn": None, "cluster": None}
    return argparse.Namespace(**{**base, **kw})


def test_yaml_and_json_output_use_istioctl_camel_case() -> None:
    out = yaml.safe_load(render("listeners", _args(output="yaml", port=15001), _dump()))
    assert len(out) == 1
    assert out[0]["useOriginalDst"] is True and out[0]["trafficDirection"] == "OUTBOUND"
    assert out[0]["filterChains"][0]["filterChainMatch"] == {"destinationPort": 15001}
    assert out[0]["filterChains"][0]["filters"][0]["typedConfig"]["@type"].endswith("TcpProxy")
    routes = json.loads(render("routes", _args(output="json", name="80"), _dump()))
    assert routes[0]["virtualHosts"][1]["routes"][0]["directResponse"] == {"status": 502}


def test_listener_chains_ordered_as_istioctl() -> None:
    """Seed 002's 15006 rows: Non-HTTP/Non-TCP, then InboundPassthroughClusterIpv4, then
    Cluster: inbound|8080|| (DESTINATION descending), whatever the chain order."""

    def chain(match: dict[str, object], cluster: str) -> dict[str, object]:
        tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": cluster}}
        return {"filter_chain_match": match, "filters": [tcp]}

    listener = {
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "filter_chains": [
            chain({"destination_port": 8080, "transport_protocol": "raw_buffer"}, "inbound|8080||"),
            chain({"transport_protocol": "raw_buffer"}, "InboundPassthroughClusterIpv4"),
            chain({"destination_port": 15006}, "BlackHoleCluster"),
        ],
    }
    dump = {"configs": [{"@type": t.ADMIN_TYPE + "ListenersConfigDump", "static_listeners": [{"listener": listener}]}]}
    assert [r[3] for r in t.listener_rows(dump)] == [
        "Non-HTTP/Non-TCP", "InboundPassthroughClusterIpv4", "Cluster: inbound|8080||",
    ]  # fmt: skip
