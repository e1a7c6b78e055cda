"""Redirect Location building (Envoy's Utility::newUri) and query parameter route matching."""

from __future__ import annotations

from pysidecar.model.http import (
    QueryParameterMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from pysidecar.proxy.http.route_table import RouteTable, query_params, redirect_location


def test_location_keeps_what_the_redirect_does_not_change() -> None:
    assert redirect_location(RedirectAction(), "a.com", "/x?q=1") == "http://a.com/x?q=1"
    assert redirect_location(RedirectAction(host_redirect="b.com"), "a.com:8080", "/x") == "http://b.com/x"
    assert redirect_location(RedirectAction(path_redirect="/new"), "a.com", "/old?q=1") == "http://a.com/new?q=1"
    assert redirect_location(RedirectAction(path_redirect="/new?z=2"), "a.com", "/old?q=1") == "http://a.com/new?z=2"
    assert redirect_location(RedirectAction(strip_query=True), "a.com", "/old?q=1") == "http://a.com/old"


def test_location_ports_and_schemes() -> None:
    assert redirect_location(RedirectAction(port_redirect=8443), "a.com:80", "/") == "http://a.com:8443/"
    # Scheme change drops the old scheme's default port, keeps any other.
    assert redirect_location(RedirectAction(https_redirect=True), "a.com:80", "/p") == "https://a.com/p"
    assert redirect_location(RedirectAction(scheme_redirect="https"), "a.com:8080", "/p") == "https://a.com:8080/p"
    assert redirect_location(RedirectAction(https_redirect=True), "[::1]:80", "/") == "https://[::1]/"
    assert redirect_location(RedirectAction(), "a.com:80", "/") == "http://a.com:80/"


def test_prefix_rewrite_redirect() -> None:
    rc = RouteConfiguration(
        virtual_hosts=(
            VirtualHost("vh", ("*",), (Route(RouteMatch(prefix="/old/"), redirect=RedirectAction(prefix_rewrite="/new/")),)),
        )
    )
    _, r = RouteTable.build(rc).select("a.com", "/old/x?q=1")
    assert r is not None and r.intercepts
    assert redirect_location(r.route.redirect, "a.com", "/old/x?q=1", rewritten=r.rewrite_path("/old/x?q=1")) == "http://a.com/new/x?q=1"  # type: ignore[arg-type]


def test_query_params_first_value_undecoded() -> None:
    assert query_params("/p?a=1&a=2&b&c=x%20y#frag") == {"a": "1", "b": "", "c": "x%20y"}
    assert query_params("/p") == {}


def _table(*matchers: QueryParameterMatcher) -> RouteTable:
    routes = (
        Route(RouteMatch(prefix="/", query_parameters=matchers), "q", RouteAction("q")),
        Route(RouteMatch(prefix="/"), "other", RouteAction("other")),
    )
    return RouteTable.build(RouteConfiguration(virtual_hosts=(VirtualHost("vh", ("*",), routes),)))


def _name(t: RouteTable, path: str) -> str:
    _, r = t.select("h", path)
    assert r is not None
    return r.route.name


def test_query_parameter_matchers() -> None:
    exact = _table(QueryParameterMatcher("v", exact="2"))
    assert _name(exact, "/?v=2") == "q"
    assert _name(exact, "/?v=22") == "other" and _name(exact, "/") == "other"
    assert _name(exact, "/?v=3&v=2") == "other"  # the first value counts
    prefix = _table(QueryParameterMatcher("v", prefix="ab"))
    assert _name(prefix, "/x?v=abc") == "q" and _name(prefix, "/x?v=b") == "other"
    regex = _table(QueryParameterMatcher("id", safe_regex="[0-9]+"))
    assert _name(regex, "/?id=123") == "q" and _name(regex, "/?id=12a") == "other"
    present = _table(QueryParameterMatcher("debug", present_match=True))
    assert _name(present, "/?debug") == "q" and _name(present, "/?x=1") == "other"
    both = _table(QueryParameterMatcher("a", exact="1"), QueryParameterMatcher("b", exact="2"))
    assert _name(both, "/?b=2&a=1") == "q" and _name(both, "/?a=1") == "other"


def test_query_values_match_case_sensitively_on_case_insensitive_routes() -> None:
    routes = (
        Route(RouteMatch(prefix="/api", case_sensitive=False, query_parameters=(QueryParameterMatcher("v", exact="X"),)), "q", RouteAction("q")),
    )
    t = RouteTable.build(RouteConfiguration(virtual_hosts=(VirtualHost("vh", ("*",), routes),)))
    assert _name(t, "/API?v=X") == "q"
    assert t.select("h", "/API?v=x")[1] is None
