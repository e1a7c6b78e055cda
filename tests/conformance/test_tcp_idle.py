"""tcp_proxy's idle timeout under pysidecar and real Envoy: the same close, the same log line.

Envoy 1.40 closes an idle tcp_proxy connection with no response flag (`-`, not SI, which is
the HTTP stream idle timeout) and no termination details; pysidecar must log the same.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import Stack, envoy_binary, read_response, running

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("tcp_idle.yaml", ENVOY) as s:
        yield s


def _access_lines(stack: Stack, kind: str) -> list[str]:
    text = (Path(stack.dir) / f"{kind}.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.startswith("ACCESS ")]


def test_idle_tcp_connection_is_closed_and_logged_as_envoy_does(stack: Stack) -> None:
    for port in stack.proxies.values():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        response = read_response(s)
        assert response is not None and response.status == 200  # keep-alive: then quiet
        started = time.monotonic()
        assert s.recv(100) == b""  # the proxy closed it
        assert 0.9 <= time.monotonic() - started < 3.5
        s.close()
    lines: dict[str, list[str]] = {}
    deadline = time.monotonic() + 5  # pysidecar flushes its log once a second, Envoy here 0.2 s
    while time.monotonic() < deadline:
        lines = {kind: _access_lines(stack, kind) for kind in stack.proxies}
        if all(len(x) >= 2 for x in lines.values()):
            break
        time.sleep(0.1)
    # The harness's readiness probe (connect, close) is the first line of each.
    ours = lines["ours"]
    assert len(ours) == 2, lines
    flags, details, termination, received, _sent, cluster = ours[1].split()[1:]
    assert (flags, details, termination, received, cluster) == ("-", "-", "-", "27", "lab")
    if ENVOY:
        assert lines["envoy"] == ours
