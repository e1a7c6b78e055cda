"""The Lua filter runs real Lua: seed 002's envoy_on_response add and scripts using get /
getNumValues / add / replace / remove, respond, body and a runtime error, under pysidecar and
real Envoy (scenarios/lua.yaml): same status, headers, and the same request at the upstream.
pysidecar only: the instruction budget (Envoy has none; its worker would hang).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import (
    Response,
    Stack,
    envoy_binary,
    exchange,
    read_response,
    running,
    same,
)

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("lua.yaml", ENVOY) as s:
        yield s


def request(port: int, raw: bytes) -> Response:
    r = exchange(port, raw)
    assert r is not None
    return r


def upstream_view(r: Response) -> tuple[int, list[tuple[str, str]], list[list[str]]]:
    """Status, response headers, and the headers the lab server received (x-request-id masked)."""
    raw = json.loads(r.body)["raw"]
    seen = [[n, "<v>" if n == "x-request-id" else v] for n, v in raw]
    return r.status, r.comparable()[1], seen


def both(stack: Stack, raw: bytes) -> dict[str, Response]:
    return {kind: request(port, raw) for kind, port in stack.proxies.items()}


def test_seed_add_and_replace_remove_get_on_both_sides(stack: Stack) -> None:
    raw = (
        b"GET /headers HTTP/1.1\r\nHost: lab.test\r\nUser-Agent: curl\r\nX-Drop-Me: 1\r\n"
        b"X-M: one\r\nX-M: two\r\n\r\n"
    )
    answers = both(stack, raw)
    views = {kind: upstream_view(r) for kind, r in answers.items()}
    ours = views["ours"]
    if "envoy" in views:
        assert ours == views["envoy"]
    status, headers, seen = ours
    assert status == 200
    assert ("location", "China") in headers and ("x-served-by", "lua") in headers
    assert ("x-status-seen", "200") in headers
    names = [n for n, _ in seen]
    assert "x-drop-me" not in names
    assert ["user-agent", "lua-agent"] in seen and ["x-lua-added", "yes"] in seen
    assert ["x-absent", "added-by-replace"] in seen
    assert ["x-first-m", "one,two"] in seen and ["x-count-m", "2"] in seen


def test_respond_answers_locally_through_the_response_script(stack: Stack) -> None:
    r = same(both(stack, b"GET /deny HTTP/1.1\r\nHost: lab.test\r\n\r\n"))
    assert r.status == 403 and r.body == b"denied by lua"
    assert r.header("x-lua") == "denied" and r.header("x-status-seen") == "403"


def test_runtime_error_lets_the_request_go_on_with_what_was_done(stack: Stack) -> None:
    """Envoy 1.40 logs `script log: ...: boom` and the request proceeds (no 500)."""
    r = same(both(stack, b"GET /error HTTP/1.1\r\nHost: lab.test\r\n\r\n"))
    assert r.status == 404 and r.header("location") == "China"
    log = Path(stack.dir, "ours.log").read_text(errors="replace")
    line = 'script log: [string "function envoy_on_request(request_handle)..."]:9: boom'
    assert line in log
    if "envoy" in stack.proxies:
        assert line in Path(stack.dir, "envoy.log").read_text(errors="replace")


def test_body_is_buffered_for_the_script(stack: Stack) -> None:
    raw = b"POST /anything/body HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 11\r\n\r\nhello world"
    answers = both(stack, raw)
    bodies = {kind: json.loads(r.body) for kind, r in answers.items()}
    for b in bodies.values():
        headers = {k.lower(): v for k, v in (b["headers"].items() if isinstance(b["headers"], dict) else b["headers"])}
        assert headers["x-body-length"] == "11" and headers["x-body-start"] == "hello"
    if "envoy" in answers:
        assert answers["ours"].comparable()[1] == answers["envoy"].comparable()[1]


def test_headers_taken_before_body_are_dead_after_it(stack: Stack) -> None:
    """Envoy's `object used outside of proper scope`: the script errs, the request goes on."""
    raw = b"POST /anything/stale HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 3\r\n\r\nabc"
    answers = both(stack, raw)
    for r in answers.values():
        body = json.loads(r.body)
        names = [k.lower() for k, _ in body["headers"]]
        assert r.status == 200 and "x-body-length" not in names and "x-lua-added" in names
    log = Path(stack.dir, "ours.log").read_text(errors="replace")
    assert "object used outside of proper scope" in log


def test_changed_path_is_routed_again(stack: Stack) -> None:
    r = same(both(stack, b"GET /reroute HTTP/1.1\r\nHost: lab.test\r\n\r\n"))
    assert (r.status, r.body) == (200, b"rerouted by lua")


def test_direct_response_runs_the_response_script(stack: Stack) -> None:
    r = same(both(stack, b"GET /direct HTTP/1.1\r\nHost: lab.test\r\n\r\n"))
    assert r.body == b"direct answer" and r.header("location") == "China"


def test_state_is_per_request_and_a_runaway_script_is_bounded(tmp_path: Path) -> None:
    """Two streams at once each see their own handle; a `while true do end` costs its request
    an error after the instruction budget, never the worker (pysidecar only)."""
    from pysidecar.proxy.lua.script import LuaScript
    from pysidecar.proxy.lua.wrappers import HeaderMap, StreamInfoView

    script = LuaScript(
        "function envoy_on_request(h)\n"
        "  local mine = h:headers():get('x-id')\n"
        "  local b = h:body()\n"
        "  h:headers():add('x-echo', mine)\n"
        "  if mine == 'spin' then while true do end end\n"
        "end\n"
    )
    a = HeaderMap({}, [(b"x-id", b"a")])
    b = HeaderMap({}, [(b"x-id", b"b")])
    call_a, call_b = script.call(False, a, StreamInfoView), script.call(False, b, StreamInfoView)
    assert call_a is not None and call_b is not None
    assert call_a.start().kind == "body" and call_b.start().kind == "body"  # both suspended
    assert call_b.resume_body(None).kind == "done" and call_a.resume_body(None).kind == "done"
    assert a.headers[-1] == (b"x-echo", b"a") and b.headers[-1] == (b"x-echo", b"b")
    spin = HeaderMap({}, [(b"x-id", b"spin")])
    call = script.call(False, spin, StreamInfoView)
    assert call is not None and call.start().kind == "body"
    started = time.monotonic()
    outcome = call.resume_body(None)
    assert outcome.kind == "error" and "CPU budget" in outcome.error
    assert time.monotonic() - started < 2


def test_pipelined_requests_keep_their_own_results(stack: Stack) -> None:
    port = stack.proxies["ours"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /deny HTTP/1.1\r\nHost: lab.test\r\n\r\nGET /direct HTTP/1.1\r\nHost: lab.test\r\n\r\n")
        first, second = read_response(s), read_response(s)
    assert first is not None and first.status == 403
    assert second is not None and second.body == b"direct answer"


def test_stream_info_is_made_only_when_asked() -> None:
    from pysidecar.proxy.lua.script import LuaScript
    from pysidecar.proxy.lua.wrappers import HeaderMap, StreamInfoView

    made: list[int] = []

    def info() -> StreamInfoView:
        made.append(1)
        return StreamInfoView(protocol="HTTP/2", downstream_local_address="10.0.0.1:80")

    script = LuaScript(
        "function envoy_on_response(h)\n"
        "  if h:headers():get(':status') == '200' then\n"
        "    local si = h:streamInfo()\n"
        "    h:headers():add('x-proto', si:protocol())\n"
        "    h:headers():add('x-local', si:downstreamLocalAddress())\n"
        "  end\n"
        "end\n"
    )
    quiet = HeaderMap({b":status": b"404"}, [])
    call = script.call(True, quiet, info)
    assert call is not None and call.start().kind == "done" and not made
    m = HeaderMap({b":status": b"200"}, [])
    call = script.call(True, m, info)
    assert call is not None and call.start().kind == "done"
    assert m.headers == [(b"x-proto", b"HTTP/2"), (b"x-local", b"10.0.0.1:80")]
