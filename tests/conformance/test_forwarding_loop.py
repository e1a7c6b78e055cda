"""Forwarding loops to the proxy's own listener are answered at once (README: "Forwarding
loops"), not after a storm of connections: 508 with a body naming the cluster, the address and
the listener, a warning in the log; tcp_proxy closes. pysidecar only: Envoy does not check, and
loops until its request headers pass their limit.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import Stack, get, running


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("loop.yaml", None) as s:
        yield s


@pytest.mark.parametrize("path, cluster", [("/od", "passthrough"), ("/static", "self")])
def test_http_loop_is_a_508_naming_the_listener(stack: Stack, path: str, cluster: str) -> None:
    port = stack.proxies["ours"]
    start = time.monotonic()
    r = get(port, path, host="gw.test")
    assert time.monotonic() - start < 0.5
    assert r.status == 508
    assert r.body == (
        f"forwarding loop: cluster {cluster} sends to 127.0.0.1:{port}, "
        f"which is this proxy's own listener 0.0.0.0:{port}"
    ).encode()
    log = Path(stack.dir, "ours.log").read_text(errors="replace")
    assert f"forwarding loop: cluster {cluster} sends to 127.0.0.1:{port}" in log
    # The same listener still proxies what does not loop.
    assert get(port, "/headers", host="gw.test").status == 200


def test_tcp_loop_is_closed(stack: Stack) -> None:
    port = stack.extra["_b"]["ours"]
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"hello")
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            assert s.recv(100) == b""  # closed, not relayed to itself
    log = Path(stack.dir, "ours.log").read_text(errors="replace")
    assert f"forwarding loop: cluster passthrough sends to 127.0.0.1:{port}, which is this proxy's own listener 127.0.0.1:{port}" in log
