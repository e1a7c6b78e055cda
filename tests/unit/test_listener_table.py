"""Listener hand-off and filter chain matching: Envoy's decisions, no sockets."""

from __future__ import annotations

from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Bootstrap,
    CidrRange,
    FilterChain,
    FilterChainMatch,
    Listener,
    MeshConfig,
    OutboundTrafficPolicy,
    SocketAddress,
    TcpProxy,
)
from pysidecar.proxy.listener_table import ConnectionInfo, ListenerTable, select_filter_chain


def chain(name: str, **match: object) -> FilterChain:
    return FilterChain(name, (TcpProxy(name, cluster=name),), FilterChainMatch(**match))  # type: ignore[arg-type]


def port_listener(ip: str, port: int, cluster: str) -> Listener:
    return Listener(f"{ip}_{port}", SocketAddress(ip, port), (chain(cluster),), bind_to_port=False)


def test_handoff_prefers_exact_address_then_wildcard_then_itself() -> None:
    base = standard_sidecar()
    outbound = base.listeners[0]
    b = Bootstrap(
        listeners=(
            *base.listeners,
            port_listener("10.96.0.5", 3306, "exact"),
            port_listener("0.0.0.0", 3306, "wild"),
        )
    )
    table = ListenerTable.build(b)
    assert table.handoff(outbound, SocketAddress("10.96.0.5", 3306)).name == "10.96.0.5_3306"
    assert table.handoff(outbound, SocketAddress("10.96.0.6", 3306)).name == "0.0.0.0_3306"
    assert table.handoff(outbound, SocketAddress("10.96.0.6", 3307)) is outbound
    assert table.handoff(outbound, SocketAddress("::ffff:10.96.0.5", 3306)).name == "10.96.0.5_3306"
    assert table.handoff(outbound, None) is outbound


def _outbound_cluster(mesh: MeshConfig, port: int) -> str:
    outbound = standard_sidecar(mesh).listeners[0]
    c = select_filter_chain(outbound, ConnectionInfo(SocketAddress("198.19.0.1", port)))
    assert c is not None
    tcp = c.terminal_filter
    assert isinstance(tcp, TcpProxy)
    return tcp.cluster or ""


def test_catch_all_follows_outbound_traffic_policy_and_guards_the_loop() -> None:
    allow = MeshConfig()
    registry = MeshConfig(outbound_traffic_policy=OutboundTrafficPolicy.REGISTRY_ONLY)
    assert _outbound_cluster(allow, 80) == PASSTHROUGH_CLUSTER
    assert _outbound_cluster(registry, 80) == BLACKHOLE_CLUSTER
    assert _outbound_cluster(allow, 15001) == BLACKHOLE_CLUSTER


def test_filter_chain_match_is_most_specific_first() -> None:
    lis = Listener(
        "l",
        SocketAddress("0.0.0.0", 15006),
        (
            chain("any"),
            chain("port", destination_port=8080),
            chain("port-tls", destination_port=8080, transport_protocol="tls"),
            chain("sni-exact", server_names=("a.example",), transport_protocol="tls"),
            chain("sni-wild", server_names=("*.example",), transport_protocol="tls"),
            chain("net", prefix_ranges=(CidrRange("10.0.0.0", 8),)),
            chain("net24", prefix_ranges=(CidrRange("10.1.2.0", 24),)),
            chain("http", application_protocols=("http/1.1", "h2c")),
        ),
        default_filter_chain=chain("default", destination_port=1),
    )

    def pick(ip: str = "198.18.0.1", port: int = 80, **kw: object) -> str:
        c = select_filter_chain(lis, ConnectionInfo(SocketAddress(ip, port), **kw))  # type: ignore[arg-type]
        return c.name if c else "none"

    assert pick() == "any"
    assert pick(port=8080) == "port"
    assert pick(port=8080, transport_protocol="tls") == "port-tls"
    assert pick(transport_protocol="tls", server_name="a.example") == "sni-exact"
    assert pick(transport_protocol="tls", server_name="b.example") == "sni-wild"
    assert pick(transport_protocol="tls", server_name="example") == "any"
    assert pick(ip="10.9.9.9") == "net"
    assert pick(ip="10.1.2.3") == "net24"
    assert pick(application_protocols=("http/1.1",)) == "http"


def test_no_match_falls_to_default_chain_or_none() -> None:
    only = Listener("l", SocketAddress("0.0.0.0", 1), (chain("p", destination_port=9),))
    info = ConnectionInfo(SocketAddress("1.2.3.4", 10))
    assert select_filter_chain(only, info) is None
    with_default = Listener("l", SocketAddress("0.0.0.0", 1), only.filter_chains, chain("d"))
    got = select_filter_chain(with_default, info)
    assert got is not None and got.name == "d"
