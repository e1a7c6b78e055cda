"""Seed 002's http_inspector chapter under pysidecar and real Envoy: the inspector runs on every
connection of a listener that has it (not only when a chain matches on its answer) and its
counters read the same in /stats/prometheus, in Envoy's lines (`envoy_http_inspector_http11_found{} 3`).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conformance.harness import Stack, envoy_binary, get, running

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()
COUNTERS = ("http10_found", "http11_found", "http2_found", "http_not_found", "read_error")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("listener_filters.yaml", ENVOY) as s:
        yield s


def prometheus_lines(stack: Stack, kind: str) -> list[str]:
    admin = stack.ports["a1" if kind == "ours" else "a2"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        text = r.read().decode()
    return [ln for ln in text.splitlines() if "http_inspector" in ln]


def test_every_connection_is_inspected_and_counted_as_envoy_writes_it(stack: Stack) -> None:
    for port in stack.proxies.values():
        for _ in range(3):  # the seed's three `curl localhost:8080`
            assert get(port, "/").body == b"v1\n"
        h2 = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/"],
            capture_output=True, timeout=10, check=True,
        )  # fmt: skip
        assert h2.stdout == b"v1\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 426")  # Envoy refuses HTTP/1.0 by default
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x00\x01not http\r\n\r\n")
            s.settimeout(5)
            s.recv(100)  # the HCM's 400 (or a close): the inspector counted it before
    deadline = time.monotonic() + 3
    while True:
        lines = {kind: prometheus_lines(stack, kind) for kind in stack.proxies}
        if all(any(ln == "envoy_http_inspector_http_not_found{} 1" for ln in v) for v in lines.values()):
            break
        assert time.monotonic() < deadline, "\n".join(f"{k}: {ln}" for k, v in lines.items() for ln in v)
        time.sleep(0.1)
    ours = lines["ours"]
    for name, value in (("http11_found", 3), ("http2_found", 1), ("http10_found", 1), ("http_not_found", 1)):
        assert f"envoy_http_inspector_{name}{{}} {value}" in ours, ours
        assert f"# TYPE envoy_http_inspector_{name} counter" in ours, ours
    if "envoy" in lines:
        def counters(v: list[str]) -> list[str]:
            return sorted(ln for ln in v if re.match(r"envoy_http_inspector_\w+\{\} \d+$", ln))

        assert counters(ours) == counters(lines["envoy"])
