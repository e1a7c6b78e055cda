"""`pysidecar demo`: the sidecar intercepting real traffic, step by step, in throw-away lab pods.

Promises:
- Builds lab pods (network namespaces, 198.18.0.0/15 addresses, fake names such as httpbin.org
  that resolve only inside the lab), installs Istio's iptables rules with `pysidecar init`,
  runs `pysidecar run` (embedded defaults) as uid 1337, and replays what the seed tutorials
  show, checking each step's expectation and printing what the proxy recorded.
- Exit 0 only when every step's expectation held; the first failure stops the demo with
  exit 1 and says what was expected.
- Everything it creates is removed on exit, on failure, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from pysidecar.lab import Lab, Pod


class Unexpected(Exception):
    """A step's expectation did not hold."""


@dataclass
class DemoLab:
    lab: Lab
    client: Pod
    httpbin: Pod
    peer: Pod

    def curl(self, pod: Pod, *args: str) -> str:
        r = pod.run(["curl", "-s", "-m", "10", *args], timeout=15)
        return r.stdout

    def stats(self, pattern: str) -> dict[str, int]:
        out = self.curl(self.client, f"http://127.0.0.1:15000/stats?format=json&filter={pattern}")
        return {s["name"]: s["value"] for s in json.loads(out)["stats"] if isinstance(s["value"], int)}


@dataclass(frozen=True)
class Step:
    title: str
    explain: str
    run: Callable[[DemoLab], str]


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Unexpected(what)


def _allow_any(d: DemoLab) -> str:
    before = d.stats("PassthroughCluster").get("cluster.PassthroughCluster.upstream_cx_total", 0)
    body = d.curl(d.client, "http://httpbin.org/")
    expect("hello from httpbin.org" in body, f"httpbin.org's page, got {body!r}")
    after = d.stats("PassthroughCluster")
    expect(after["cluster.PassthroughCluster.upstream_cx_total"] == before + 1, "one more PassthroughCluster connection")
    return (
        f"$ curl http://httpbin.org/\n{body.strip()}\n"
        f"cluster.PassthroughCluster.upstream_cx_total: {before} -> {after['cluster.PassthroughCluster.upstream_cx_total']}"
    )


def _tcp_exact(d: DemoLab) -> str:
    payload = os.urandom(1024 * 1024)
    with d.client.netns():
        s = socket.create_connection((d.httpbin.ip, 7), timeout=10)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(1 << 16):
        got += chunk
    s.close()
    expect(bytes(got) == payload, "the 1 MiB sent, echoed back byte for byte")
    st = d.stats("tcp.PassthroughCluster.downstream_cx_(rx|tx)_bytes_total")
    return "sent 1 MiB to httpbin.org:7 (echo), got the same 1 MiB back\n" + "\n".join(
        f"{k}: {v}" for k, v in sorted(st.items())
    )


def _inbound(d: DemoLab) -> str:
    out = d.curl(d.peer, f"http://{d.client.ip}:8080/ip")
    seen = json.loads(out or "{}")
    expect(seen.get("origin") == "127.0.0.6", f"the app to see the proxy's 127.0.0.6, got {out!r}")
    st = d.stats("InboundPassthroughCluster.upstream_cx_total")
    return f"$ curl http://{d.client.ip}:8080/ip   (from another pod)\n{out.strip()}\n" + "\n".join(
        f"{k}: {v}" for k, v in st.items()
    )


def _loop_guard(d: DemoLab) -> str:
    with d.client.netns():
        s = socket.create_connection((d.client.ip, 15001), timeout=10)
    s.sendall(b"ping\n")
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    s.close()
    expect(data == b"", "the connection closed without data")
    st = d.stats("BlackHoleCluster.upstream_cx_none_healthy")
    return "connected to the pod's own :15001: closed at once\n" + "\n".join(f"{k}: {v}" for k, v in st.items())


def _rules(d: DemoLab) -> str:
    r = d.client.run(["iptables-save", "-t", "nat"], check=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith(("-A", ":ISTIO"))]
    expect(any("--to-ports 15001" in x for x in lines), "the ISTIO_REDIRECT rule to 15001")
    return "\n".join(lines)


STEPS: list[Step] = [
    Step(
        "The interception rules",
        "`pysidecar init` installed Istio's nat rules: outbound TCP goes to 15001, inbound to 15006, "
        "uid 1337 (the proxy) is exempt.",
        _rules,
    ),
    Step(
        "ALLOW_ANY: outbound HTTP passes through",
        "The client's connection to httpbin.org:80 is redirected to 15001; no listener matches "
        "198.18.x.x:80, so the catch-all sends it to PassthroughCluster (its original destination).",
        _allow_any,
    ),
    Step(
        "TCP bytes arrive exactly, half-close respected",
        "tcp_proxy relays both directions; the client's FIN is passed on and the reply still flows.",
        _tcp_exact,
    ),
    Step(
        "Inbound interception through 15006",
        "Another pod reaches the client pod's app on :8080; PREROUTING sends it to 15006 and "
        "InboundPassthroughCluster connects to the app from 127.0.0.6.",
        _inbound,
    ),
    Step(
        "No redirect loop",
        "A connection whose original destination is 15001 itself goes to BlackHoleCluster.",
        _loop_guard,
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-going", action="store_true", help="run every step even after a failure")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _build(lab: Lab) -> DemoLab:
    _say("building lab pods: client (sidecar), httpbin.org, peer ...")
    client = lab.add_pod("client")
    httpbin = lab.add_pod("httpbin", hostnames=["httpbin.org"])
    peer = lab.add_pod("peer")
    httpbin.spawn_server("http", 80, "--name", "httpbin.org")
    httpbin.spawn_server("echo", 7)
    client.spawn_server("http", 8080, "--name", "client-app")
    client.install_interception()
    proxy = client.spawn_proxy(["run", "--concurrency", "2"])
    client.wait_port(15021, timeout=30, proc=proxy)
    deadline = time.monotonic() + 30
    while client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15021/healthz/ready"]).stdout != "200":
        if time.monotonic() > deadline:
            raise Unexpected("the sidecar to become ready on :15021")
        time.sleep(0.05)
    return DemoLab(lab, client, httpbin, peer)


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("pysidecar demo: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    failed = 0
    started = time.monotonic()
    lab = Lab()
    try:
        demo = _build(lab)
        for i, step in enumerate(STEPS, 1):
            _say(f"\n== {i}/{len(STEPS)} {step.title}\n   {step.explain}")
            try:
                out = step.run(demo)
            except Unexpected as e:
                failed += 1
                _say(f"   FAILED: expected {e}")
                if not args.keep_going:
                    break
                continue
            _say("   " + out.replace("\n", "\n   "))
            _say("   ok")
    except KeyboardInterrupt:
        _say("\ninterrupted: cleaning up")
        return 130
    except Exception as e:
        print(f"pysidecar demo: {type(e).__name__}: {e}\n{lab.logs()}", file=sys.stderr)
        return 1
    finally:
        lab.close()
    _say(f"\n{len(STEPS) - failed}/{len(STEPS)} steps as expected in {time.monotonic() - started:.1f}s; lab removed")
    return 1 if failed else 0
