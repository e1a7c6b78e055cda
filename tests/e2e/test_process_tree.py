"""The process tree of `pysidecar run`, on loopback (no root needed): workers forked from the
main process share its pages, a worker that dies is forked again on the current config, and a
worker forked while the main loop had sockets open holds none of them.

Real processes read through /proc: the names ps shows, smaps_rollup's shared and private
pages, the socket inodes each process holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
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


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _yaml(admin: int, listen_ports: list[int], upstream: int) -> str:
    listeners = "".join(
        f"""
  - name: l{p}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l{p}
          cluster: up"""
        for p in listen_ports
    )
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


@contextlib.contextmanager
def _echo_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                while data := conn.recv(4096):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join(5)
        srv.close()


class Sidecar:
    def __init__(self, proc: subprocess.Popen[bytes], admin: int) -> None:
        self.proc = proc
        self.admin = admin

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def workers(self) -> dict[str, int]:
        """The main process's children by name (/proc/<pid>/comm)."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        out = {}
        for k in kids:
            with contextlib.suppress(OSError):
                out[Path(f"/proc/{k}/comm").read_text().strip()] = int(k)
        return out

    def wait_ready(self, workers: int) -> dict[str, int]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "pysidecar exited"
            with contextlib.suppress(OSError):
                if self.get("/ready")[0] == 200 and len(found := self.workers()) == workers:
                    return found
            time.sleep(0.05)
        raise TimeoutError("pysidecar not ready")


@contextlib.contextmanager
def sidecar(config: Path, concurrency: int) -> Iterator[Sidecar]:
    admin = int(config.read_text().split("port_value: ", 1)[1].split("}", 1)[0])
    log = config.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pysidecar", "run", "-c", str(config), "--concurrency", str(concurrency),
             "--drain-time-s", "1"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    s = Sidecar(proc, admin)
    try:
        s.wait_ready(concurrency)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()


def _smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        out[name.rstrip(":")] = int(value)
    return out


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:"):
                found.add(target)
    return found


def _echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"hello")
        return c.recv(100)


def test_workers_are_forked_and_share_the_main_process_pages(tmp_path: Path) -> None:
    with _echo_server() as up:
        cfg = tmp_path / "envoy.yaml"
        cfg.write_text(_yaml(_port(), [_port()], up))
        with sidecar(cfg, 2) as s:
            workers = s.workers()
            assert sorted(workers) == ["wrk:worker_0", "wrk:worker_1"]
            for pid in workers.values():
                mem = _smaps(pid)
                # Anonymous pages written before the fork (the interpreter's heap, the modules,
                # the config) are shared dirty with the main process: a worker started as a new
                # interpreter shares only clean file pages (libraries), 0 kB of these.
                assert mem["Shared_Dirty"] > 8 * 1024, mem
                assert mem["Pss"] < mem["Rss"] * 0.7, mem


def test_a_worker_dying_after_a_reload_comes_back_with_the_reloaded_config(tmp_path: Path) -> None:
    with _echo_server() as up:
        admin, first, second = _port(), _port(), _port()
        cfg = tmp_path / "envoy.yaml"
        cfg.write_text(_yaml(admin, [first], up))
        with sidecar(cfg, 1) as s:
            assert _echo(first) == b"hello"
            cfg.write_text(_yaml(admin, [second], up))  # the reload moves the listener
            deadline = time.monotonic() + 15
            while "listener_manager.lds.update_success: 1" not in s.get("/stats")[1]:
                assert time.monotonic() < deadline, s.get("/stats")[1]
                time.sleep(0.1)
            old = s.workers()["wrk:worker_0"]
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while s.workers().get("wrk:worker_0") in (None, old):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            s.wait_ready(1)
            # The new worker was forked after the reload (with the reload's thread alive in
            # the main process until then): it binds the reloaded listener, not the first one.
            assert _echo(second) == b"hello"
            with pytest.raises(ConnectionRefusedError):
                _echo(first)


def test_a_replacement_worker_holds_none_of_the_main_process_sockets(tmp_path: Path) -> None:
    with _echo_server() as up:
        cfg = tmp_path / "envoy.yaml"
        cfg.write_text(_yaml(_port(), [_port()], up))
        with sidecar(cfg, 2) as s:
            # An admin connection held open while a worker is forked again: were the new
            # worker to keep the main process's copy, closing it there would not end it.
            held = socket.create_connection(("127.0.0.1", s.admin), timeout=5)
            held.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(4096).startswith(b"HTTP/1.1 200")
            os.kill(s.workers()["wrk:worker_1"], signal.SIGKILL)
            time.sleep(0.3)
            new = s.wait_ready(2)["wrk:worker_1"]
            main = _socket_inodes(s.proc.pid)
            assert main and _socket_inodes(new) & main == set()
            held.close()
