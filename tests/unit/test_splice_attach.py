"""SpliceRelay.attach: it takes a connection over completely, or leaves it exactly as it was.
A direction copies until it streams; then it takes a pipe, grown within the listener's buffer
limit and the worker's budget, or keeps copying when no pipe is to be had."""

from __future__ import annotations

import fcntl
import os
import socket
from typing import Any

import pytest

from pysidecar.proxy import splice


class FakeTransport:
    def __init__(self, sock: Any, buffered: int = 0) -> None:
        self.sock = sock
        self.buffered = buffered
        self.calls: list[str] = []

    def get_extra_info(self, name: str) -> Any:
        return {"socket": self.sock}.get(name)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: Any) -> None:
        self.calls.append("set_protocol")

    def close(self) -> None:
        self.calls.append("close")


class FakeStats:
    downstream_cx_rx_bytes_total = 0


class FakeSession:
    loop = None
    rx_bytes = 0
    stats = FakeStats()
    limit = 1 << 20  # the listener's per_connection_buffer_limit_bytes (Envoy's default)


@pytest.fixture
def tcp_pair() -> Any:
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(autouse=True)
def _enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "splice"):
        pytest.skip("no os.splice on this platform")
    monkeypatch.setattr(splice, "ENABLED", True)
    monkeypatch.setattr(splice, "active_sessions", 0)


def attach(transport: FakeTransport, initial: bytes = b"", host: str = "127.0.0.1") -> Any:
    return splice.SpliceRelay.attach(FakeSession(), transport, initial, host)  # type: ignore[arg-type]


def test_a_plain_tcp_connection_is_taken_over(tcp_pair: Any) -> None:
    t = FakeTransport(tcp_pair[1])
    relay = attach(t, b"sniffed")
    assert relay is not None
    assert t.calls == ["set_protocol", "close"]
    assert relay.to_up.held == len(b"sniffed")  # waits for the upstream
    assert relay.to_up.pipe is None and relay.to_down.pipe is None  # copying: no pipe yet
    assert splice.active_sessions == 1
    relay.close()
    assert splice.active_sessions == 0


@pytest.mark.parametrize(
    "why",
    [
        "disabled",
        "not-a-socket",
        "unix-socket",
        "buffered-writes",
        "hostname",
    ],
)
def test_fallback_changes_nothing(tcp_pair: Any, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    sock: Any = tcp_pair[1]
    initial, host, buffered = b"", "127.0.0.1", 0
    if why == "disabled":
        monkeypatch.setattr(splice, "ENABLED", False)
    elif why == "not-a-socket":
        sock = None
    elif why == "unix-socket":
        sock, other = socket.socketpair()
        other.close()
    elif why == "buffered-writes":
        buffered = 10
    elif why == "hostname":
        host = "upstream.example"
    pool: list[tuple[int, int, int]] = []
    monkeypatch.setattr(splice, "_pool", pool)
    t = FakeTransport(sock, buffered)
    fds_before = len(os.listdir("/proc/self/fd"))
    assert attach(t, initial, host) is None
    assert t.calls == []  # the transport still owns the connection
    assert splice.active_sessions == 0
    # No dup or pipe left behind, except empty pipes kept in the pool for the next connection.
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2 * len(pool)
    if why == "unix-socket":
        sock.close()


def test_grown_size_is_the_largest_power_of_two_within_the_limit() -> None:
    assert splice.grown_size(65536, 1 << 20) == min(1 << 20, splice.GROWN_PIPE)
    assert splice.grown_size(65536, 300_000) == 262144
    assert splice.grown_size(65536, 65536) == 65536  # no growth
    assert splice.grown_size(65536, 32768) == 65536  # never shrinks


def test_a_stream_takes_a_pipe_grown_within_the_worker_budget(
    tcp_pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool: list[tuple[int, int, int]] = []
    monkeypatch.setattr(splice, "_pool", pool)
    relay = attach(FakeTransport(tcp_pair[1]))
    monkeypatch.setattr(splice, "grown_pipes", splice.MAX_GROWN)
    relay.to_up.take_pipe()  # the grown-pipe budget is spent: a default pipe
    assert relay.to_up.cap == 65536 == fcntl.fcntl(relay.to_up.w, fcntl.F_GETPIPE_SZ)
    monkeypatch.setattr(splice, "grown_pipes", 0)
    relay.to_down.take_pipe()
    assert (
        relay.to_down.cap == splice.GROWN_PIPE == fcntl.fcntl(relay.to_down.w, fcntl.F_GETPIPE_SZ)
    )
    assert splice.grown_pipes == 1
    relay.close()
    assert splice.grown_pipes == 0
    assert [p[2] for p in pool] == [65536]  # the default pipe only: a grown one is closed
    for r, w, _ in pool:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == 65536
        os.close(r)
        os.close(w)


def test_a_stream_keeps_copying_when_no_pipe_is_to_be_had(
    tcp_pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(splice, "_pool", [])

    def no_pipe(flags: int) -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pipe2", no_pipe)
    relay = attach(FakeTransport(tcp_pair[1]))
    relay.to_up.take_pipe()
    assert relay.to_up.pipe is None and relay.to_up.cap == splice.COPY_SIZE
    assert not relay.to_up.may_splice  # asked once
    relay.close()
