"""tcp_proxy's splice(2) path for streams and its Protocol path, on loopback (no root needed).

Every behaviour test runs twice: with the splice path (the default: a connection moves to it
when a stream starts) and with PYSIDECAR_SPLICE=0 (the Protocol path throughout), so both keep
the same promises: exact bytes both ways, half-close in both directions, bounded buffering
under backpressure, idle timeout, byte stats. One test checks that a stream really moves to
the splice path (the worker holds pipes while it is open), that a message does not, and that
with the path off nothing does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(front: int, admin: int, up: int, idle: str = "3600s", limit: int = 65536) -> str:
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {front}}}}}
    per_connection_buffer_limit_bytes: {limit}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: front
          cluster: up
          idle_timeout: {idle}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}
"""


class Proxy:
    def __init__(self, proc: subprocess.Popen[bytes], front: int, admin: int) -> None:
        self.proc = proc
        self.front = front
        self.admin = admin

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.admin}/stats?format=json", timeout=5
        ) as r:
            doc = json.load(r)
        return {s["name"]: s["value"] for s in doc["stats"] if isinstance(s["value"], int)}

    def worker_pid(self) -> int:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                text = f.read()
                ppid = int(text[text.rindex(")") + 2 :].split()[1])
                if ppid == self.proc.pid and Path(f"/proc/{entry}/comm").read_bytes().startswith(
                    b"wrk:worker_"
                ):
                    return int(entry)
        raise LookupError("no worker process")

    def pipes(self) -> int:
        fd_dir = f"/proc/{self.worker_pid()}/fd"
        n = 0
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                n += os.readlink(f"{fd_dir}/{fd}").startswith("pipe:")
        return n

    def pipe_sizes(self) -> list[int]:
        """The capacity of every pipe the worker holds (each once, though it has two fds)."""
        fd_dir = f"/proc/{self.worker_pid()}/fd"
        sizes: dict[str, int] = {}
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                link = os.readlink(f"{fd_dir}/{fd}")
                if link.startswith("pipe:") and link not in sizes:
                    # A new open of the same pipe (O_NONBLOCK: no wait for a writer).
                    probe = os.open(f"{fd_dir}/{fd}", os.O_RDONLY | os.O_NONBLOCK)
                    try:
                        sizes[link] = fcntl.fcntl(probe, fcntl.F_GETPIPE_SZ)
                    finally:
                        os.close(probe)
        return list(sizes.values())

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.front), timeout=10)
        return s


def start_proxy(
    tmp_path: Path, up: int, splice: bool, idle: str = "3600s", limit: int = 65536
) -> Proxy:
    # free_port() can race with other processes on the machine: a few tries with new ports.
    for _ in range(2):
        with contextlib.suppress(PortTaken):
            return _start_proxy(tmp_path, up, splice, idle, limit)
    return _start_proxy(tmp_path, up, splice, idle, limit)


class PortTaken(Exception):
    pass


def _start_proxy(tmp_path: Path, up: int, splice: bool, idle: str, limit: int) -> Proxy:
    front, admin = free_port(), free_port()
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(config(front, admin, up, idle, limit))
    env = dict(os.environ, PYSIDECAR_SPLICE="1" if splice else "0")
    log = tmp_path / "pysidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pysidecar", "run", "-c", str(cfg), "--concurrency", "1", "--drain-time-s", "1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text()
            if "cannot bind" in text or "Address already in use" in text:
                raise PortTaken(text)
            raise AssertionError(f"pysidecar exited: {text[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r,
        ):
            if r.status == 200:
                return Proxy(proc, front, admin)
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("pysidecar not ready")


FLOOD = 128 * MiB


def pattern(size: int) -> Iterator[bytes]:
    """`size` bytes in 1 MiB pieces of a pattern that shows a lost or repeated piece."""
    for i in range(0, size, MiB):
        yield hashlib.sha256(str(i).encode()).digest() * (min(MiB, size - i) // 32)


@contextlib.contextmanager
def upstream(
    handler: str, record: list[object] | None = None
) -> Iterator[tuple[int, socket.socket]]:
    """A loopback server thread: "echo" (echoes, then half-closes after the client's FIN),
    "stuck" (accepts, never reads), "reset" (reads a little, then resets), "flood" (sends
    FLOOD bytes of `pattern`, appending its progress in bytes to `record` as it goes, then
    half-closes), "eof-first" (sends b"bye", half-closes, then reads to EOF and appends the
    byte count and sha256 of what it read to `record`)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve_one(c: socket.socket) -> None:
        # The proxy may close first (idle timeout, reset tests): that is not the server's error.
        with c, contextlib.suppress(OSError):
            if handler == "echo":
                while data := c.recv(1 << 20):
                    c.sendall(data)
                c.sendall(b"<after-eof>")  # the downstream half-closed; we may still talk
                c.shutdown(socket.SHUT_WR)
            elif handler == "stuck":
                stop.wait(30)
            elif handler == "reset":
                c.recv(10)
                c.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            elif handler == "flood":
                assert record is not None
                record.append(0)
                for piece in pattern(FLOOD):
                    c.sendall(piece)
                    record.append(int(record[-1]) + len(piece))  # type: ignore[call-overload]
                c.shutdown(socket.SHUT_WR)
                while c.recv(1 << 16):
                    pass
            elif handler == "eof-first":
                assert record is not None
                c.sendall(b"bye")
                c.shutdown(socket.SHUT_WR)
                digest, n = hashlib.sha256(), 0
                while data := c.recv(1 << 20):
                    digest.update(data)
                    n += len(data)
                record.append((n, digest.hexdigest()))

    def accept_loop() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    try:
        yield port, srv
    finally:
        stop.set()
        t.join(2)
        srv.close()


@pytest.fixture(params=[True, False], ids=["splice", "protocol"])
def splice(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _stop(p: Proxy) -> None:
    p.proc.terminate()
    try:
        p.proc.wait(10)
    except subprocess.TimeoutExpired:
        p.proc.kill()


def test_exact_bytes_both_ways_half_close_and_stats(tmp_path: Path, splice: bool) -> None:
    size = 24 * MiB + 12345  # not a multiple of any pipe or buffer size
    with upstream("echo") as (port, _):
        # Envoy's default buffer limit (1 MiB): the splice path's pipes grow to it on the way.
        p = start_proxy(tmp_path, port, splice, limit=MiB)
        try:
            pipes_before = p.pipes()
            s = p.connect()
            block = hashlib.sha256(b"pattern").digest() * 4096  # 128 KiB
            sent = hashlib.sha256()
            got = hashlib.sha256()
            received = 0

            def reader() -> None:
                nonlocal received
                while data := s.recv(1 << 20):
                    got.update(data)
                    received += len(data)

            t = threading.Thread(target=reader)
            t.start()
            left = size
            mid = -1
            while left:
                piece = block[: min(left, len(block))]
                s.sendall(piece)
                sent.update(piece)
                left -= len(piece)
                if mid < 0 and left < size // 2:
                    mid = p.pipes() - pipes_before
            # Half-way the stream had moved to the splice path (its two pipes held): the
            # half-close and the rest below go through it.
            assert mid == (4 if splice else 0)
            s.shutdown(socket.SHUT_WR)  # half-close: the upstream still answers after our FIN
            t.join(60)
            s.close()
            sent.update(b"<after-eof>")
            assert received == size + len(b"<after-eof>")
            assert got.hexdigest() == sent.hexdigest()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                st = p.stats()
                if st.get(f"listener.127.0.0.1_{p.front}.downstream_cx_active", 1) == 0:
                    break
                time.sleep(0.05)
            assert st["tcp.front.downstream_cx_rx_bytes_total"] == size
            assert st["tcp.front.downstream_cx_tx_bytes_total"] == size + 11
            assert st["cluster.up.upstream_cx_tx_bytes_total"] == size
            assert st["cluster.up.upstream_cx_rx_bytes_total"] == size + 11
            assert st["cluster.up.upstream_cx_active"] == 0
        finally:
            _stop(p)


def test_the_fast_path_is_taken_only_when_enabled(tmp_path: Path, splice: bool) -> None:
    with upstream("stuck") as (port, _):
        p = start_proxy(tmp_path, port, splice)
        try:
            before = p.pipes()
            s = p.connect()
            s.sendall(b"hello")
            time.sleep(0.3)
            small = p.pipes()
            s.settimeout(1.0)
            with contextlib.suppress(TimeoutError):
                for _ in range(64):
                    s.sendall(b"x" * MiB)
            streaming = p.pipes()
            s.close()
            # A message stays on the Protocol path (no pipe); a stream moves to the splice
            # path, a pipe (two fds) per direction. With the splice path off, no pipe ever.
            assert small - before == 0
            assert streaming - before == (4 if splice else 0)
        finally:
            _stop(p)


@pytest.mark.parametrize("limit", [MiB, 256 * 1024, 65536])
def test_a_bulk_stream_grows_its_pipe_up_to_the_buffer_limit(tmp_path: Path, limit: int) -> None:
    """A read that fills the pipe marks a bulk stream: its pipe grows to the listener's buffer
    limit (at most Linux's unprivileged 1 MiB), which still bounds what is buffered; a grown
    pipe is closed with its session, never pooled for the next one."""
    with upstream("stuck") as (port, _):
        p = start_proxy(tmp_path, port, True, limit=limit)
        try:
            before = p.pipe_sizes()
            s = p.connect()
            s.settimeout(1.0)
            sent = 0
            with contextlib.suppress(TimeoutError):
                while sent < 256 * MiB:
                    sent += s.send(b"x" * 65536)
            # Spliced: two pipes more than the worker's own; the streaming direction's grew.
            assert sorted(p.pipe_sizes()) == sorted([*before, 65536, limit])
            assert sent < 32 * MiB, f"the proxy kept reading: {sent} bytes accepted"
            s.close()
        except BaseException:
            _stop(p)
            raise
    try:
        # The upstream is gone (reset): the session closes and its pipes go.
        deadline = time.monotonic() + 5
        while max(p.pipe_sizes(), default=0) > 65536 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert max(p.pipe_sizes(), default=0) <= 65536
    finally:
        _stop(p)


def test_backpressure_bounds_buffering(tmp_path: Path, splice: bool) -> None:
    with upstream("stuck") as (port, _):
        p = start_proxy(tmp_path, port, splice)
        try:
            s = p.connect()
            s.settimeout(1.0)
            sent = 0
            block = b"x" * 65536
            with contextlib.suppress(TimeoutError):
                while sent < 256 * MiB:
                    sent += s.send(block)
            # Loopback socket buffers on both legs plus one pipe / watermark: far below the offer.
            assert sent < 32 * MiB, f"the proxy kept reading: {sent} bytes accepted"
            assert p.stats()["tcp.front.downstream_flow_control_paused_reading_total"] >= 1
            s.close()
        finally:
            _stop(p)


def test_idle_timeout_closes_a_quiet_connection(tmp_path: Path, splice: bool) -> None:
    with upstream("echo") as (port, _):
        p = start_proxy(tmp_path, port, splice, idle="1s")
        try:
            s = p.connect()
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(10) == b""  # closed by the proxy
            assert 0.9 <= time.monotonic() - t0 < 4.5
            assert p.stats()["tcp.front.idle_timeout"] == 1
        finally:
            _stop(p)


def test_upstream_reset_closes_downstream(tmp_path: Path, splice: bool) -> None:
    with upstream("reset") as (port, _):
        p = start_proxy(tmp_path, port, splice)
        try:
            s = p.connect()
            s.settimeout(5)
            s.sendall(b"0123456789")
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
            s.close()
            deadline = time.monotonic() + 5
            while p.stats()["cluster.up.upstream_cx_active"] != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert p.stats()["cluster.up.upstream_cx_active"] == 0
        finally:
            _stop(p)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


def test_backpressure_towards_a_client_that_does_not_read(tmp_path: Path, splice: bool) -> None:
    progress: list[object] = []
    with upstream("flood", progress) as (port, _):
        p = start_proxy(tmp_path, port, splice)
        try:
            rss_before = _rss_kib(p.worker_pid())
            s = p.connect()
            s.settimeout(10)
            time.sleep(1.5)  # the client reads nothing: the upstream must be held back
            offered = int(progress[-1])  # type: ignore[call-overload]
            rss_stalled = _rss_kib(p.worker_pid())
            st = p.stats()
            # Kernel buffers on both loopback legs plus one watermark / pipe: far below FLOOD.
            assert offered < 32 * MiB, f"the proxy kept reading the upstream: {offered} bytes"
            assert rss_stalled - rss_before < 16 * 1024, (rss_before, rss_stalled)
            assert st["cluster.up.upstream_flow_control_paused_reading_total"] >= 1
            got, n = hashlib.sha256(), 0
            while data := s.recv(1 << 20):
                got.update(data)
                n += len(data)
            s.close()
            want = hashlib.sha256()
            for piece in pattern(FLOOD):
                want.update(piece)
            assert n == FLOOD and got.hexdigest() == want.hexdigest()
            st = p.stats()
            assert st["cluster.up.upstream_flow_control_resumed_reading_total"] >= 1
            assert st["tcp.front.downstream_cx_tx_bytes_total"] == FLOOD
        finally:
            _stop(p)


def test_upstream_half_closes_first_and_the_client_keeps_sending(
    tmp_path: Path, splice: bool
) -> None:
    received: list[object] = []
    with upstream("eof-first", received) as (port, _):
        p = start_proxy(tmp_path, port, splice)
        try:
            s = p.connect()
            s.settimeout(10)
            assert recv_until_eof(s) == b"bye"  # the upstream's FIN reached us...
            sent, size = hashlib.sha256(), 0
            for piece in pattern(8 * MiB + 777):  # ...and our direction is still open
                s.sendall(piece)
                sent.update(piece)
                size += len(piece)
            s.shutdown(socket.SHUT_WR)
            assert recv_until_eof(s) == b""
            s.close()
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert received == [(size, sent.hexdigest())]
            assert p.stats()["tcp.front.downstream_cx_rx_bytes_total"] == size
        finally:
            _stop(p)


def recv_until_eof(s: socket.socket) -> bytes:
    out = b""
    while data := s.recv(1 << 16):
        out += data
    return out
