"""Admin under hostile use, pysidecar against real Envoy 1.40 (scenarios/hardening.yaml):
mutating endpoints answer GET (and PUT) with Envoy's 405 and do nothing; `/stats?filter=` is
RE2 on both (the same error text for a bad pattern, a backtracking bomb answered at once)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.conformance.harness import Response, Stack, envoy_binary, read_response, running

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("hardening.yaml", ENVOY) as s:
        yield s


def admin(s: Stack, kind: str, raw: bytes) -> Response:
    port = s.ports["a1" if kind == "ours" else "a2"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(raw)
        r = read_response(c)
    assert r is not None
    return r


def kinds(s: Stack) -> list[str]:
    return ["ours", "envoy"] if "envoy" in s.proxies else ["ours"]


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /quitquitquit",
        b"GET /reset_counters",
        b"GET /healthcheck/fail",
        b"GET /logging?level=debug",
        b"GET /drain_listeners",
        b"PUT /reset_counters",
    ],
)
def test_mutating_endpoints_refuse_other_methods_with_405(stack: Stack, request_line: bytes) -> None:
    answers = {}
    for kind in kinds(stack):
        r = admin(stack, kind, request_line + b" HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
        answers[kind] = (r.status, r.body)
    method = request_line.split(b" ")[0]
    assert answers["ours"] == (405, b"Method %s not allowed, POST required." % method)
    if "envoy" in answers:
        assert answers["ours"] == answers["envoy"]
    # Still serving (GET /quitquitquit did not quit, /healthcheck/fail did not fail).
    for kind in kinds(stack):
        assert admin(stack, kind, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


def test_stats_filter_is_re2(stack: Stack) -> None:
    answers = {}
    for kind in kinds(stack):
        r = admin(stack, kind, b"GET /stats?filter=(a HTTP/1.1\r\nHost: x\r\n\r\n")
        answers[kind] = (r.status, r.body)
        started = time.monotonic()
        bomb = admin(stack, kind, b"GET /stats?filter=(a%2B)%2B%24&format=json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bomb.status == 200 and time.monotonic() - started < 2, kind
    assert answers["ours"][0] == 400 and answers["ours"][1].startswith(b"Invalid re2 regex")
    if "envoy" in answers:
        assert answers["ours"] == answers["envoy"]
