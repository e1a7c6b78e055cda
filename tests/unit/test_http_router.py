"""Route matching, virtual host choice, rewrites and header operations: pure functions."""

from __future__ import annotations

import random

from pysidecar.model.http import (
    ClusterWeight,
    HeaderAppendAction,
    HeaderMatcher,
    HeaderMutations,
    HeaderValueOption,
    RegexRewrite,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.proxy.http.headers import apply_ops, compile_ops, strip_request
from pysidecar.proxy.http.route_table import RouteTable, strip_port


def _vh(name: str, *domains: str, routes: tuple[Route, ...] = ()) -> VirtualHost:
    return VirtualHost(
        name, domains, routes or (Route(RouteMatch(prefix="/"), name, RouteAction("c")),)
    )


def test_vhost_precedence_exact_suffix_prefix_star() -> None:
    table = RouteTable.build(
        RouteConfiguration(
            virtual_hosts=(
                _vh("exact", "api.example.com"),
                _vh("suffix", "*.example.com"),
                _vh("longer-suffix", "*.api2.example.com"),
                _vh("prefix", "api.*"),
                _vh("any", "*"),
            )
        )
    )
    name = lambda h: table.virtual_host(h).vhost.name  # noqa: E731
    assert name("API.example.com") == "exact"
    assert name("x.example.com") == "suffix"
    assert name("x.api2.example.com") == "longer-suffix"
    assert name("api.other") == "prefix"
    assert name("example.com") == "any"  # *.example.com needs a non-empty part
    assert name("x.example.com:80") == "any"  # the port counts by default


def test_no_star_means_no_vhost_and_port_can_be_ignored() -> None:
    config = RouteConfiguration(
        virtual_hosts=(_vh("a", "abc.com"),), ignore_port_in_host_matching=True
    )
    table = RouteTable.build(config)
    assert table.virtual_host("abc.com:8080") is not None
    assert table.virtual_host("other") is None
    assert strip_port("[::1]:80") == "[::1]" and strip_port("::1") == "::1"


def test_route_order_and_match_kinds() -> None:
    routes = (
        Route(RouteMatch(path="/exact"), "path", RouteAction("c")),
        Route(RouteMatch(safe_regex=r"/items/\d+"), "regex", RouteAction("c")),
        Route(RouteMatch(path_separated_prefix="/api"), "sep", RouteAction("c")),
        Route(
            RouteMatch(prefix="/h", headers=(HeaderMatcher("x-env", exact="canary"),)),
            "hdr",
            RouteAction("c"),
        ),
        Route(RouteMatch(prefix="/H", case_sensitive=False), "ci", RouteAction("c")),
        Route(RouteMatch(prefix="/"), "default", RouteAction("c")),
    )
    vh = RouteTable.build(
        RouteConfiguration(virtual_hosts=(_vh("v", "*", routes=routes),))
    ).virtual_host("x")
    assert vh is not None and vh.needs_headers
    pick = lambda p, h=None: vh.select(p, h or {}).route.name  # noqa: E731
    assert pick("/exact?x=1") == "path"
    assert pick("/exact/more") == "default"
    assert pick("/items/12") == "regex" and pick("/items/12a") == "default"
    assert pick("/api") == "sep" and pick("/api/v1") == "sep" and pick("/apix") == "default"
    assert pick("/h", {"x-env": "canary"}) == "hdr"
    assert pick("/h", {"x-env": "prod"}) == "ci"


def test_header_matcher_kinds_and_invert() -> None:
    from pysidecar.proxy.http.route_table import CompiledHeaderMatcher

    m = CompiledHeaderMatcher(HeaderMatcher("a", prefix="x", invert_match=True))
    assert m.matches({"a": "yz"}) and not m.matches({"a": "xy"}) and not m.matches({})
    assert CompiledHeaderMatcher(HeaderMatcher("a", present_match=True)).matches({"a": ""})
    assert CompiledHeaderMatcher(HeaderMatcher("a", present_match=False)).matches({})
    assert CompiledHeaderMatcher(HeaderMatcher("a", safe_regex="v[0-9]")).matches({"a": "v1"})
    # Matched by RE2: its syntax (\\pL, POSIX classes, \\z) works; \\d is ASCII digits only.
    assert CompiledHeaderMatcher(HeaderMatcher("a", safe_regex=r"\pL+[[:digit:]]\z")).matches({"a": "é1"})
    assert not CompiledHeaderMatcher(HeaderMatcher("a", safe_regex=r"\d")).matches({"a": "\u0661"})
    assert not CompiledHeaderMatcher(HeaderMatcher("a", safe_regex="v[0-9]")).matches({"a": "v12"})


def test_rewrites_keep_the_query() -> None:
    regex = Route(
        RouteMatch(prefix="/abc"),
        "",
        RouteAction("c", regex_rewrite=RegexRewrite(r"^/abc/(.*?)$", r"/\1.html")),
    )
    prefix = Route(RouteMatch(prefix="/old"), "", RouteAction("c", prefix_rewrite="/new"))
    vh = RouteTable.build(
        RouteConfiguration(virtual_hosts=(_vh("v", "*", routes=(regex, prefix)),))
    ).virtual_host("h")
    assert vh is not None
    r1, r2 = vh.routes
    assert r1.rewrite_path("/abc/index") == "/index.html"
    assert r1.rewrite_path("/abc/index?q=1") == "/index.html?q=1"
    assert r2.rewrite_path("/old/x?y") == "/new/x?y"


def test_weighted_pick_follows_weights() -> None:
    action = RouteAction(weighted_clusters=(ClusterWeight("v1", 4), ClusterWeight("v2", 6)))
    route = Route(RouteMatch(prefix="/"), "", action)
    vh = RouteTable.build(
        RouteConfiguration(virtual_hosts=(_vh("v", "*", routes=(route,)),))
    ).virtual_host("h")
    assert vh is not None
    rng = random.Random(1)
    picks = [vh.routes[0].pick_cluster(rng)[0] for _ in range(10000)]
    assert 5700 < picks.count("v2") < 6300


def test_header_ops_levels_and_actions() -> None:
    route = HeaderMutations(
        request_headers_to_add=(HeaderValueOption("x-a", "route"),),
        response_headers_to_add=(
            HeaderValueOption("x-b", "1", HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
            HeaderValueOption("x-c", "1", HeaderAppendAction.ADD_IF_ABSENT),
            HeaderValueOption("x-d", "1", HeaderAppendAction.OVERWRITE_IF_EXISTS),
        ),
        response_headers_to_remove=("x-gone",),
    )
    config = HeaderMutations(request_headers_to_add=(HeaderValueOption("x-a", "global"),))
    req, resp = compile_ops((route, config))
    assert apply_ops([], req) == [(b"x-a", b"route"), (b"x-a", b"global")]
    out = apply_ops([(b"x-b", b"0"), (b"x-c", b"0"), (b"x-gone", b"1"), (b"x-b", b"2")], resp)
    # Envoy's setCopy: every x-b removed, the new one added at the end.
    assert out == [(b"x-c", b"0"), (b"x-b", b"1")]


def test_strip_request_drops_hop_by_hop_and_envoy_control() -> None:
    h = [
        (b"connection", b"close"),
        (b"x-envoy-retry-on", b"5xx"),
        (b"x-envoy-max-retries", b"9"),
        (b"a", b"b"),
    ]
    assert strip_request(h) == [(b"a", b"b")]
