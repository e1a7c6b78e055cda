"""SpliceRelay.take_over: it takes both sockets over completely, or leaves both transports
exactly as they were. A streaming direction's pipe grows within the listener's buffer limit
and the worker's budget."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pysidecar.proxy import splice


class FakeTransport:
    def __init__(self, sock: Any, buffered: int = 0, tls: bool = False) -> None:
        self.sock = sock
        self.buffered = buffered
        self.tls = tls
        self.calls: list[str] = []

    def get_extra_info(self, name: str) -> Any:
        return {"socket": self.sock, "sslcontext": object() if self.tls else None}.get(name)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: Any) -> None:
        self.calls.append("set_protocol")

    def close(self) -> None:
        self.calls.append("close")


class FakeStats:
    downstream_cx_rx_bytes_total = 0
    downstream_cx_tx_bytes_total = 0
    upstream_cx_rx_bytes_total = 0
    upstream_cx_tx_bytes_total = 0


class FakeSession:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.stats = FakeStats()
        self.cluster_stats = FakeStats()
        self.limit = 1 << 20  # the listener's per_connection_buffer_limit_bytes (Envoy's default)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    return a, b


@pytest.fixture
def pairs() -> Iterator[
    tuple[tuple[socket.socket, socket.socket], tuple[socket.socket, socket.socket]]
]:
    """(client, proxy's downstream socket), (proxy's upstream socket, server)."""
    down, up = _pair(), _pair()
    yield down, up
    for s in (*down, *up):
        s.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def _enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "splice"):
        pytest.skip("no os.splice on this platform")
    monkeypatch.setattr(splice, "ENABLED", True)
    monkeypatch.setattr(splice, "active_sessions", 0)


def take_over(loop: asyncio.AbstractEventLoop, down: FakeTransport, up: FakeTransport) -> Any:
    return splice.SpliceRelay.take_over(FakeSession(loop), down, up)  # type: ignore[arg-type]


def test_two_plain_tcp_sockets_are_taken_over_and_spliced(pairs: Any, loop: Any) -> None:
    (client, down_sock), (up_sock, server) = pairs
    down, up = FakeTransport(down_sock), FakeTransport(up_sock)
    relay = take_over(loop, down, up)
    assert relay is not None
    assert down.calls == up.calls == ["set_protocol", "close"]
    assert splice.active_sessions == 1
    client.sendall(b"ping")
    server.sendall(b"pong")
    loop.run_until_complete(asyncio.sleep(0.1))  # the relay's readers run
    server.settimeout(2)
    client.settimeout(2)
    assert server.recv(10) == b"ping"
    assert client.recv(10) == b"pong"
    assert relay.session.rx_bytes == 4 and relay.session.tx_bytes == 4
    relay.close()
    assert splice.active_sessions == 0


@pytest.mark.parametrize(
    "why",
    ["disabled", "not-a-socket", "unix-socket", "buffered-writes", "tls", "no-pipes"],
)
def test_fallback_changes_nothing(
    pairs: Any, loop: Any, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    (_, down_sock), (up_sock, _) = pairs
    down_sock_any: Any = down_sock
    buffered, tls = 0, False
    other = None
    if why == "disabled":
        monkeypatch.setattr(splice, "ENABLED", False)
    elif why == "not-a-socket":
        down_sock_any = None
    elif why == "unix-socket":
        down_sock_any, other = socket.socketpair()
    elif why == "buffered-writes":
        buffered = 10
    elif why == "tls":
        tls = True
    elif why == "no-pipes":
        monkeypatch.setattr(splice, "_pool", [])

        def no_pipe(flags: int) -> tuple[int, int]:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(os, "pipe2", no_pipe)
    pool: list[tuple[int, int, int]] = []
    monkeypatch.setattr(splice, "_pool", pool)
    down, up = FakeTransport(down_sock_any), FakeTransport(up_sock, buffered, tls)
    fds_before = len(os.listdir("/proc/self/fd"))
    assert take_over(loop, down, up) is None
    assert down.calls == up.calls == []  # the transports still own the connections
    assert splice.active_sessions == 0
    # No dup or pipe left behind, except empty pipes kept in the pool for the next session.
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2 * len(pool)
    if other is not None:
        down_sock_any.close()
        other.close()


def test_grown_size_is_the_largest_power_of_two_within_the_limit() -> None:
    assert splice.grown_size(65536, 1 << 20) == min(1 << 20, splice.GROWN_PIPE)
    assert splice.grown_size(65536, 300_000) == 262144
    assert splice.grown_size(65536, 65536) == 65536  # no growth
    assert splice.grown_size(65536, 32768) == 65536  # never shrinks


def test_a_pipe_grows_within_the_worker_budget_and_is_never_pooled(
    pairs: Any, loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (_, down_sock), (up_sock, _) = pairs
    pool: list[tuple[int, int, int]] = []
    monkeypatch.setattr(splice, "_pool", pool)
    monkeypatch.setattr(splice, "grown_pipes", splice.MAX_GROWN)
    relay = take_over(loop, FakeTransport(down_sock), FakeTransport(up_sock))
    flow = relay.to_up
    flow.grow()  # the budget is spent: the pipe stays as it was
    assert flow.cap == 65536 == fcntl.fcntl(flow.w, fcntl.F_GETPIPE_SZ)
    monkeypatch.setattr(splice, "grown_pipes", 0)
    flow.grow()
    assert flow.cap == splice.GROWN_PIPE == fcntl.fcntl(flow.w, fcntl.F_GETPIPE_SZ)
    assert splice.grown_pipes == 1
    relay.close()
    assert splice.grown_pipes == 0
    assert [p[2] for p in pool] == [65536]  # the other direction's pipe only
    for r, w, _ in pool:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == 65536
        os.close(r)
        os.close(w)
