"""Admin endpoints over a stand-in proxy state: routes, methods, bodies in Envoy's shapes."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import pytest

from pysidecar.common.envoy_json import duration
from pysidecar.common.stream_info import StreamInfo
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import Bootstrap, Cluster, LbEndpoint, SocketAddress
from pysidecar.observe.admin import admin_routes, readiness_routes, stats_routes
from pysidecar.observe.config_dump import config_dump
from pysidecar.observe.host_stats import COUNTERS, HostSnapshot, HostStats, merge_hosts
from pysidecar.observe.http_server import Request, Response
from pysidecar.observe.stats import Kind, StatsStore
from pysidecar.proxy.supervisor import Supervisor
from pysidecar.proxy.worker import declare_stats


class FakeProxy:
    def __init__(self, bootstrap: Bootstrap) -> None:
        self.bootstrap = bootstrap
        self.started = 1606339578.0
        self.ready = False
        self.server_state = "PRE_INITIALIZING"
        self.store = StatsStore()
        self.store.listener("0.0.0.0_15001").downstream_cx_total = 3
        self.store.cluster("outbound|80||httpbin.org;").upstream_cx_connect_ms.record(2.0)
        self.calls: list[str] = []

    async def merged_stats(self) -> dict[str, tuple[Kind, object]]:
        return self.store.snapshot()

    async def host_stats(self) -> HostSnapshot:
        hosts = HostStats()
        info = StreamInfo(upstream_cluster="svc", upstream_host="198.19.0.10:80")
        hosts.record(info)
        hosts.record(info)
        return hosts.snapshot({"svc": {"198.19.0.10:80": 0, "198.19.0.11:80": 0}})

    async def reset_counters(self) -> None:
        self.calls.append("reset")

    async def drain_listeners(self) -> None:
        self.calls.append("drain")

    async def set_log_level(self, level: str) -> None:
        self.calls.append(f"level={level}")

    def quit(self) -> None:
        self.calls.append("quit")

    def reload_dump(self) -> dict[str, object] | None:
        return {"@type": "type.googleapis.com/pysidecar.admin.v1.ReloadConfigDump", "update_rejected": 1}

    def set_healthy(self, healthy: bool) -> None:
        self.calls.append(f"healthy={healthy}")


def _bootstrap() -> Bootstrap:
    base = standard_sidecar()
    svc = Cluster(
        name="svc",
        connect_timeout=0.25,
        alt_stat_name="outbound|80||svc.lab;",
        endpoints=(LbEndpoint(SocketAddress("198.19.0.10", 80)), LbEndpoint(SocketAddress("198.19.0.11", 80))),
    )
    return Bootstrap(base.listeners, (*base.clusters, svc), base.admin, base.stats_address, base.readiness_address)


def call(proxy: Any, path: str, method: str = "GET", query: dict[str, list[str]] | None = None, routes: Any = None) -> Response:
    handlers = routes or admin_routes(proxy)
    req = Request(method, path, query or {}, {}, b"")
    resp: Response = asyncio.run(handlers[path](req))
    return resp


def text(resp: Response) -> str:
    return resp.body.decode() if isinstance(resp.body, bytes) else resp.body


def test_post_only_endpoints_refuse_get_with_405() -> None:
    """Envoy 1.40's answer (tests/conformance/test_hardening_admin.py compares them)."""
    proxy = FakeProxy(_bootstrap())
    for path in ("/quitquitquit", "/logging", "/reset_counters", "/drain_listeners", "/healthcheck/fail"):
        resp = call(proxy, path)
        assert (resp.status, text(resp)) == (405, "Method GET not allowed, POST required.")
    assert proxy.calls == []
    assert call(proxy, "/reset_counters", "POST").status == 200
    assert call(proxy, "/logging", "POST", {"level": ["debug"]}).status == 200
    assert call(proxy, "/logging", "POST", {"level": ["loud"]}).status == 400
    assert call(proxy, "/healthcheck/fail", "POST").status == 200
    assert call(proxy, "/quitquitquit", "POST").status == 200
    assert proxy.calls == ["reset", "level=debug", "healthy=False", "quit"]


def test_ready_follows_the_proxy() -> None:
    proxy = FakeProxy(_bootstrap())
    assert (call(proxy, "/ready").status, text(call(proxy, "/ready"))) == (503, "PRE_INITIALIZING\n")
    r = readiness_routes(proxy)
    assert call(proxy, "/healthz/ready", routes=r).status == 503
    proxy.ready, proxy.server_state = True, "LIVE"
    assert (call(proxy, "/ready").status, text(call(proxy, "/ready"))) == (200, "LIVE\n")
    assert call(proxy, "/healthz/ready", routes=r).status == 200
    proxy.ready, proxy.server_state = False, "DRAINING"  # after /healthcheck/fail, as Envoy
    assert (call(proxy, "/ready").status, text(call(proxy, "/ready"))) == (503, "DRAINING\n")
    assert json.loads(text(call(proxy, "/server_info")))["state"] == "DRAINING"


def test_stats_text_filter_json_usedonly_prometheus() -> None:
    proxy = FakeProxy(_bootstrap())
    body = text(call(proxy, "/stats"))
    assert "listener.0.0.0.0_15001.downstream_cx_total: 3\n" in body
    assert "listener.0.0.0.0_15001.downstream_cx_active: 0\n" in body
    used = text(call(proxy, "/stats", query={"usedonly": [""]}))
    assert "downstream_cx_active" not in used and "downstream_cx_total: 3" in used
    assert "upstream_cx_connect_ms" in used
    filtered = text(call(proxy, "/stats", query={"filter": ["^listener"]}))
    assert filtered and all(x.startswith("listener.") for x in filtered.splitlines())
    assert call(proxy, "/stats", query={"filter": ["("]}).status == 400
    stats = json.loads(text(call(proxy, "/stats", query={"format": ["json"]})))["stats"]
    assert {"name": "listener.0.0.0.0_15001.downstream_cx_total", "value": 3} in stats
    prom = call(proxy, "/stats/prometheus")
    assert prom.content_type.startswith("text/plain; version=0.0.4")
    assert 'envoy_listener_downstream_cx_total{listener_address="0.0.0.0_15001"} 3' in text(prom)
    assert text(call(proxy, "/stats", query={"format": ["prometheus"]})) == text(prom)
    assert list(stats_routes(proxy)) == ["/stats/prometheus"]


def test_listeners_in_envoys_text_and_json() -> None:
    proxy = FakeProxy(_bootstrap())
    assert text(call(proxy, "/listeners")) == "virtualOutbound::0.0.0.0:15001\nvirtualInbound::0.0.0.0:15006\n"
    body = json.loads(text(call(proxy, "/listeners", query={"format": ["json"]})))
    first = body["listener_statuses"][0]
    assert first["name"] == "virtualOutbound"
    assert first["local_address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}


def test_clusters_have_per_host_lines() -> None:
    proxy = FakeProxy(_bootstrap())
    lines = text(call(proxy, "/clusters")).splitlines()
    assert "svc::observability_name::outbound|80||svc.lab;" in lines
    assert "svc::198.19.0.10:80::cx_total::2" in lines
    assert "svc::198.19.0.11:80::cx_total::0" in lines
    assert "svc::198.19.0.10:80::health_flags::healthy" in lines
    assert "BlackHoleCluster::added_via_api::false" in lines
    host_lines = [x.split("::")[2] for x in lines if x.startswith("svc::198.19.0.10:80::")]
    assert host_lines[: len(COUNTERS)] == list(COUNTERS)
    body = json.loads(text(call(proxy, "/clusters", query={"format": ["json"]})))
    svc = next(c for c in body["cluster_statuses"] if c["name"] == "svc")
    stats = {s["name"]: s["value"] for s in svc["host_statuses"][0]["stats"]}
    assert stats["cx_total"] == "2"


def test_host_stats_merge_over_workers() -> None:
    a = {"svc": {"h:1": dict.fromkeys(COUNTERS, 1)}}
    b = {"svc": {"h:1": dict.fromkeys(COUNTERS, 2), "h:2": dict.fromkeys(COUNTERS, 0)}}
    merged = merge_hosts([a, b])
    assert merged["svc"]["h:1"]["cx_total"] == 3 and merged["svc"]["h:2"]["rq_total"] == 0


def test_config_dump_is_envoy_shaped() -> None:
    dump = config_dump(_bootstrap(), 1606339578.409)
    types = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
    assert types == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump"]
    listeners = dump["configs"][2]["static_listeners"]
    outbound = listeners[0]["listener"]
    assert listeners[0]["last_updated"] == "2020-11-25T21:26:18.409Z"
    assert outbound["@type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert outbound["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}
    assert outbound["use_original_dst"] is True and outbound["traffic_direction"] == "OUTBOUND"
    blackhole = outbound["filter_chains"][0]
    assert blackhole["filter_chain_match"] == {"destination_port": 15001}
    assert blackhole["name"] == "virtualOutbound-blackhole"
    tcp = blackhole["filters"][0]
    assert tcp["name"] == "envoy.filters.network.tcp_proxy"
    assert tcp["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "BlackHoleCluster",
        "cluster": "BlackHoleCluster",
        "idle_timeout": "3600s",
    }
    inbound = listeners[1]["listener"]
    assert [f["name"] for f in inbound["listener_filters"]] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.tls_inspector",
        "envoy.filters.listener.http_inspector",
    ]
    clusters = {c["cluster"]["name"]: c["cluster"] for c in dump["configs"][1]["static_clusters"]}
    assert clusters["PassthroughCluster"]["type"] == "ORIGINAL_DST"
    assert clusters["PassthroughCluster"]["lb_policy"] == "CLUSTER_PROVIDED"
    assert clusters["InboundPassthroughClusterIpv4"]["upstream_bind_config"] == {
        "source_address": {"address": "127.0.0.6", "port_value": 0},
    }
    assert clusters["InboundPassthroughClusterIpv6"]["upstream_bind_config"] == {
        "source_address": {"address": "::6", "port_value": 0},
    }
    svc = clusters["svc"]
    assert svc["connect_timeout"] == "0.250s" and svc["alt_stat_name"] == "outbound|80||svc.lab;"
    endpoint = svc["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["endpoint"]
    assert endpoint == {"address": {"socket_address": {"address": "198.19.0.11", "port_value": 80}}}
    json.dumps(dump)  # serialisable as is
    body = json.loads(text(call(FakeProxy(_bootstrap()), "/config_dump")))
    assert body["configs"][2]["static_listeners"][0]["listener"]["name"] == "virtualOutbound"
    assert body["configs"][4] == FakeProxy(_bootstrap()).reload_dump()  # after Envoy's four


@pytest.mark.parametrize(("seconds", "text_"), [(10.0, "10s"), (0.25, "0.250s"), (0.0, "0s"), (3600, "3600s")])
def test_durations_read_like_protobuf_json(seconds: float, text_: str) -> None:
    assert duration(seconds) == text_


def test_main_process_state_as_envoys() -> None:
    """The main process's server state and server.* stats (one ServerStats table), measured on
    Envoy 1.40: /healthcheck/fail → DRAINING 503 with server.live 0 and server.state 0;
    /drain_listeners leaves it LIVE."""
    proxy = Supervisor(_bootstrap(), argparse.Namespace(concurrency=2))
    assert proxy.server_state == "PRE_INITIALIZING"
    proxy._ready = {0, 1}
    assert (proxy.server_state, proxy.ready) == ("LIVE", True)
    proxy.set_healthy(False)
    assert (proxy.server_state, proxy.ready) == ("DRAINING", False)
    stats = asyncio.run(proxy.merged_stats())
    assert (stats["server.live"], stats["server.state"], stats["server.concurrency"]) == (
        ("gauge", 0), ("gauge", 0), ("gauge", 2),
    )  # fmt: skip
    proxy.set_healthy(True)
    asyncio.run(proxy.drain_listeners())
    assert (proxy.server_state, proxy.ready) == ("LIVE", True)


def test_stats_are_declared_with_their_listeners() -> None:
    """At 0 before any traffic, as Envoy shows them (seed 002: http_inspector.http10_found 0)."""
    store = StatsStore()
    declare_stats(store, standard_sidecar())
    names = store.snapshot()
    for name in ("http_inspector.http10_found", "tls_inspector.tls_not_found",
                 "listener.0.0.0.0_15001.downstream_cx_total", "tcp.PassthroughCluster.downstream_cx_total"):
        assert names[name] == ("counter", 0), name  # fmt: skip
