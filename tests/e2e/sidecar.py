"""Helpers shared by the e2e tests: a sidecar in a lab pod, its stats, traffic from inside a pod."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence

from pysidecar.lab import Lab, Pod
from pysidecar.lab.pod import PROXY_CAPS

# Istio's REGISTRY_ONLY catch-all virtual host (block_all: 502), at a route config's
# virtual_hosts indentation in the tests' listener YAML.
BLOCK_ALL_VHOST = """            - name: block_all
              domains: ["*"]
              routes:
              - name: block_all
                match: {prefix: /}
                direct_response: {status: 502}
"""


def write_config(lab: Lab, name: str, text: str) -> str:
    path = os.path.join(lab.logdir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def start_sidecar(
    pod: Pod,
    config: str | None = None,
    concurrency: int = 2,
    extra: Sequence[str] = (),
    intercept: bool = True,
    ready_port: int = 15021,
    caps: Sequence[str] = PROXY_CAPS,
) -> subprocess.Popen[bytes]:
    """Istio's rules (pysidecar init with the injector's defaults), then `pysidecar run` as 1337."""
    if intercept:
        pod.install_interception()
    args = ["run", "--concurrency", str(concurrency), *(["-c", config] if config else []), *extra]
    proc = pod.spawn_proxy(args, caps=caps)
    pod.wait_port(ready_port, timeout=20, proc=proc)
    # Every worker up: :15021 for the standard sidecar, else the admin's /ready.
    url = "http://127.0.0.1:15021/healthz/ready" if ready_port == 15021 else "http://127.0.0.1:15000/ready"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        if r.stdout == "200":
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise TimeoutError(f"sidecar in {pod.name} never became ready ({url})")


def stats(pod: Pod, admin: str = "127.0.0.1:15000") -> dict[str, int]:
    """Counters and gauges from the admin port, summed over workers."""
    r = pod.run(["curl", "-sf", f"http://{admin}/stats?format=json"], check=True)
    out: dict[str, int] = {}
    for s in json.loads(r.stdout)["stats"]:
        if isinstance(s.get("value"), int):  # Envoy also lists histograms (no "value")
            out[s["name"]] = s["value"]
    return out


def connect(pod: Pod, host: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection made from inside `pod` by this (root) process: captured by ISTIO_OUTPUT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with pod.netns():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((host, port))
    return s


def recv_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        data = s.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def send_pattern(s: socket.socket, size: int, seed: int = 7) -> str:
    """Send `size` pseudo-random bytes (in 1 MiB blocks), half-close; return their sha256."""
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    digest = hashlib.sha256()
    left = size
    while left:
        piece = block[: min(left, len(block))]
        s.sendall(piece)
        digest.update(piece)
        left -= len(piece)
    s.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def closed_without_data(s: socket.socket) -> bool:
    """True when the peer closed (FIN or reset) without sending a single byte."""
    try:
        return recv_all(s) == b""
    except ConnectionResetError:
        return True
