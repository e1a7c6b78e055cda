"""Run one Envoy bootstrap under pysidecar and under real Envoy, and talk raw HTTP/1.1 to both.

Everything listens on loopback with ports picked free at start. Upstreams are nginx (as in the
seed's tutorial: index.html holding "v1" / "v2") and the lab's http server. `exchange` sends
exact bytes and parses the exact response, so header order and framing can be compared.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).parent / "scenarios"
# Values that differ between runs or proxies; compared by presence only.
EXTRA_LISTENERS = ("_b", "_c")
VOLATILE = {"date", "x-request-id", "x-envoy-upstream-service-time", "etag", "last-modified"}


def envoy_binary() -> str | None:
    for cand in (ROOT / ".venv" / "bin" / "envoy", shutil.which("envoy")):
        if cand and os.access(str(cand), os.X_OK):
            return str(cand)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(template: str, values: dict[str, object]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), template)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str = ""  # the status line's reason phrase

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def comparable(self) -> tuple[str, list[tuple[str, str]], bytes]:
        return (
            f"{self.status} {self.reason}",
            [(n, "<v>" if n in VOLATILE else v) for n, v in self.headers],
            self.body,
        )


# Bytes read past the end of a response (pipelining), kept for the next read on that socket.
_leftover: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def take_leftover(sock: socket.socket) -> bytes:
    """The bytes read past the last response on `sock` (after a 101: the tunnel's first)."""
    return _leftover.pop(sock, b"")


def read_response(sock: socket.socket, head_request: bool = False) -> Response | None:
    """One response off a socket (Content-Length, chunked or close-delimited)."""
    buf = _leftover.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None if not buf else _fail(buf)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    response, extra = _parse(sock, head, rest, head_request)
    if extra:
        _leftover[sock] = extra
    return response


def _parse(
    sock: socket.socket, head: bytes, rest: bytes, head_request: bool
) -> tuple[Response, bytes]:
    lines = head.decode("latin-1").split("\r\n")
    _, code, reason = (lines[0] + " ").split(" ", 2)
    status = int(code)
    headers = [(k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:])]
    hdr = dict(headers)
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"", reason.strip()), rest
    if "content-length" in hdr:
        n = int(hdr["content-length"])
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        return Response(status, headers, rest[:n], reason.strip()), rest[n:]
    if hdr.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return Response(status, headers, body, reason.strip()), rest
    while data := sock.recv(65536):
        rest += data
    return Response(status, headers, rest, reason.strip()), b""


def _fail(buf: bytes) -> Response:
    raise AssertionError(f"incomplete response: {buf[:200]!r}")


def exchange(port: int, raw: bytes, timeout: float = 10) -> Response | None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return read_response(s, head_request=raw.startswith(b"HEAD "))


def get(port: int, path: str, host: str = "abc.com", method: str = "GET") -> Response:
    r = exchange(
        port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n".encode()
    )
    assert r is not None, f"no response to {method} {path}"
    return r


class Stack:
    """nginx v1/v2 upstreams, a lab http server, and the same bootstrap under both proxies."""

    def __init__(self, scenario: str, envoy: str | None, more_ports: tuple[str, ...] = ()) -> None:
        """`more_ports`: further free ports a scenario names (`grpc` fills dollar-brace GRPC_PORT)."""
        self.dir = tempfile.mkdtemp(prefix="pysidecar-conf-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = {
            k: free_port()
            for k in (
                "v1", "v2", "dead", "a1", "a2", "lab", *more_ports,
                *(f"{kind}{x}" for kind in ("ours", "envoy") for x in ("", *EXTRA_LISTENERS)),
            )
        }  # fmt: skip
        for name in ("v1", "v2"):
            self._nginx(name, self.ports[name])
        lab = self._spawn(
            [sys.executable, "-m", "pysidecar.lab.servers", "http", "--host", "127.0.0.1",
             "--port", str(self.ports["lab"]), "--name", "lab"],
            "lab",
        )  # fmt: skip
        wait_port(self.ports["lab"], lab)
        template = (SCENARIOS / scenario).read_text()
        self.proxies: dict[str, int] = {}
        # The further listeners of scenarios that have them (LISTEN_PORT_B, ...), by suffix.
        self.extra: dict[str, dict[str, int]] = {x: {} for x in EXTRA_LISTENERS}
        runs = [("ours", "a1")] + ([("envoy", "a2")] if envoy else [])
        for kind, admin in runs:
            values = {
                "ADMIN_ADDR": "127.0.0.1", "ADMIN_PORT": self.ports[admin],
                "LISTEN_ADDR": "127.0.0.1", "LISTEN_PORT": self.ports[kind],
                **{f"LISTEN_PORT{x.upper()}": self.ports[f"{kind}{x}"] for x in EXTRA_LISTENERS},
                "V1_ADDR": "127.0.0.1", "V1_PORT": self.ports["v1"],
                "V2_ADDR": "127.0.0.1", "V2_PORT": self.ports["v2"],
                "DEAD_ADDR": "127.0.0.1", "DEAD_PORT": self.ports["dead"],
                "LAB_ADDR": "127.0.0.1", "LAB_PORT": self.ports["lab"],
                **{f"{name.upper()}_PORT": self.ports[name] for name in more_ports},
            }  # fmt: skip
            path = os.path.join(self.dir, f"{kind}.yaml")
            Path(path).write_text(render(template, values))
            if kind == "ours":
                argv = [sys.executable, "-m", "pysidecar", "run", "-c", path, "--concurrency", "1"]
            else:
                assert envoy is not None
                # Access log files flushed within 0.2 s (Envoy's default is every 10 s).
                argv = [envoy, "-c", path, "--concurrency", "1", "-l", "error",
                        "--base-id", str(self.ports[kind]), "--file-flush-interval-msec", "200"]  # fmt: skip
            self._spawn(argv, kind)
            self.proxies[kind] = self.ports[kind]
            for x in EXTRA_LISTENERS:
                if "${LISTEN_PORT" + x.upper() + "}" in template:
                    self.extra[x][kind] = self.ports[f"{kind}{x}"]
        for kind, port in self.proxies.items():
            wait_port(port, self.procs[-1 if kind == "envoy" else -2 if envoy else -1])

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.dir, f"{log}.log"), "wb")  # noqa: SIM115 - child keeps it
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        out.close()
        self.procs.append(proc)
        return proc

    def _nginx(self, name: str, port: int) -> None:
        root = os.path.join(self.dir, name)
        os.makedirs(os.path.join(root, "html"))
        Path(root, "html", "index.html").write_text(f"{name}\n")
        conf = os.path.join(root, "nginx.conf")
        Path(conf).write_text(
            f"""
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 256; }}
http {{
  access_log off;
  default_type text/html;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root {root}/html;
  }}
}}
"""
        )
        proc = self._spawn(["nginx", "-p", root, "-c", conf], f"nginx-{name}")
        wait_port(port, proc)

    def logs(self) -> str:
        out = []
        for p in Path(self.dir).glob("*.log"):
            out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running(scenario: str, envoy: str | None, more_ports: tuple[str, ...] = ()) -> Iterator[Stack]:
    """A Stack for the test module's fixture: logs printed when a test fails, always closed."""
    s = Stack(scenario, envoy, more_ports)
    try:
        yield s
    except Exception:
        print(s.logs())
        raise
    finally:
        s.close()


def same(results: dict[str, Response]) -> Response:
    """pysidecar's answer, after checking that Envoy's (when it ran) is the same."""
    ours = results["ours"]
    if "envoy" in results:
        assert ours.comparable() == results["envoy"].comparable(), (
            f"pysidecar: {ours.comparable()}\nenvoy:     {results['envoy'].comparable()}"
        )
    return ours
