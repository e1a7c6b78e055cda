"""The HTTP path's seams as data: the stream's lifecycle table, the filter chain's table, the
pool kinds a cluster's protocol selects (where an HTTP/2 upstream pool plugs in)."""

from __future__ import annotations

import asyncio

import pytest

from pysidecar.model import Cluster, ClusterType, LbEndpoint, SocketAddress, UpstreamHttpProtocol
from pysidecar.model.http import (
    FaultInjection,
    HttpConnectionManager,
    HttpFilter,
    LuaConfig,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.observe.stats import StatsStore
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http import conn_pool
from pysidecar.proxy.http import stream_state as ss
from pysidecar.proxy.http.filter import build_chain
from pysidecar.proxy.http.filters.fault import FaultFilter
from pysidecar.proxy.http.filters.lua import LuaFilter
from pysidecar.proxy.http.http1.conn_pool import HostPool
from pysidecar.proxy.http.http2.conn_pool import Http2HostPool
from pysidecar.proxy.http.router_filter import RouterFilter

ROUTER = HttpFilter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router")
LUA_TYPE = "envoy.extensions.filters.http.lua.v3.Lua"


def _run(*events: int, state: int = ss.RECEIVING) -> int:
    for e in events:
        state = ss.advance(state, e)
    return state


def test_a_request_then_its_response() -> None:
    state = _run(ss.START, ss.REQUEST_END, ss.RESPONSE_START, ss.RESPONSE_END)
    assert ss.NAMES[state] == "DONE" and state & ss.RESPONSE_STARTED


def test_a_pipelined_request_is_complete_before_it_starts() -> None:
    state = _run(ss.REQUEST_END)
    assert ss.NAMES[state] == "RECEIVED"
    assert ss.NAMES[_run(ss.START, state=state)] == "WAITING"


def test_an_early_response_ends_the_stream_before_its_request() -> None:
    state = _run(ss.START, ss.RESPONSE_START, ss.RESPONSE_END)
    assert ss.NAMES[state] == "DONE_EARLY" and not state & ss.REQUEST_DONE
    assert ss.NAMES[_run(ss.REQUEST_END, state=state)] == "DONE"


def test_a_reset_before_any_response_has_no_head() -> None:
    state = _run(ss.START, ss.REQUEST_END, ss.RESPONSE_END)
    assert state & ss.RESPONSE_DONE and not state & ss.RESPONSE_STARTED
    assert _run(ss.RESPONSE_END, state=state) == state  # a second ending is a no-op


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ((ss.RESPONSE_START,), "a response before the request was decoded"),
        ((ss.START, ss.START), "decoded twice"),
        ((ss.START, ss.RESPONSE_END, ss.RESPONSE_START), "a response after the end"),
    ],
)
def test_events_a_state_has_no_row_for_raise(events: tuple[int, ...], why: str) -> None:
    with pytest.raises(ss.StreamStateError):
        _run(*events)


def test_the_table_only_reaches_states() -> None:
    assert set(ss.TRANSITIONS.values()) <= set(ss.NAMES)
    assert {s for s, _ in ss.TRANSITIONS} <= set(ss.NAMES)


def _hcm(filters: tuple[HttpFilter, ...], fault: bool = False) -> HttpConnectionManager:
    route = Route(
        RouteMatch(prefix="/"),
        route=RouteAction(cluster="c"),
        fault=FaultInjection(abort_status=503) if fault else None,
    )
    rc = RouteConfiguration("r", (VirtualHost("v", ("*",), (route,)),))
    return HttpConnectionManager("s", rc, http_filters=filters)


def test_the_chain_is_the_configured_filters_router_last() -> None:
    code = 'function envoy_on_response(h) h:headers():add("x-a", "1") end'
    lua = HttpFilter("envoy.filters.http.lua", LUA_TYPE, lua=LuaConfig(code))
    chain = build_chain(_hcm((lua, ROUTER)))
    assert [type(f) for f in chain] == [LuaFilter, RouterFilter]
    assert chain[0].encodes and not chain[1].encodes


def test_route_faults_get_a_fault_filter_even_when_unlisted() -> None:
    assert [type(f) for f in build_chain(_hcm((ROUTER,), fault=True))] == [FaultFilter, RouterFilter]
    assert [type(f) for f in build_chain(_hcm(()))] == [RouterFilter]


def test_the_pool_kind_follows_the_cluster_protocol() -> None:
    """The HTTP/2 upstream plugs in as a pool kind named by upstream_protocol: explicit HTTP/2,
    and use_downstream_protocol_config for a request that came over HTTP/2; a reload (a new
    ClusterRuntime) gets fresh pools, one per (cluster, host, protocol)."""
    loop = asyncio.new_event_loop()
    try:
        store = StatsStore()
        host = ("127.0.0.1", 9)
        manager = conn_pool.PoolManager(loop)

        def pool(protocol: UpstreamHttpProtocol, downstream_http2: bool) -> object:
            cluster = Cluster(
                "c", ClusterType.STATIC, endpoints=(LbEndpoint(SocketAddress(*host)),), upstream_http_protocol=protocol
            )
            runtime = ClusterRuntime(cluster, store.cluster("c"), store)
            return manager.pool(runtime, store.cluster_http("c"), host, 1 << 20, downstream_http2)

        assert isinstance(pool(UpstreamHttpProtocol.HTTP1, True), HostPool)
        assert isinstance(pool(UpstreamHttpProtocol.HTTP2, False), Http2HostPool)
        assert isinstance(pool(UpstreamHttpProtocol.USE_DOWNSTREAM, False), HostPool)
        assert isinstance(pool(UpstreamHttpProtocol.USE_DOWNSTREAM, True), Http2HostPool)
    finally:
        loop.close()
