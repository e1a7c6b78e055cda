"""`pysidecar demo` end to end: every step meets its expectation within a minute, and nothing of
the demo's lab outlives it, whether it finishes or is stopped half-way with SIGTERM or Ctrl-C
(SIGINT to its whole process group, as a terminal sends it).

"Nothing" means: no network namespace and no /etc/netns directory named with the lab's prefix,
no temp directory (config directories, the TLS step's certificates) or lab marker of it, and no process carrying the environment marker this test
gives the demo (every process the demo starts inherits its environment: servers, `ip netns
exec`, setpriv, the proxies and their workers).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from pysidecar.demo.steps import STEPS
from pysidecar.lab import registry
from pysidecar.lab.netns import ETC_NETNS_DIR, list_namespaces

pytestmark = pytest.mark.e2e

MARK = "PYSIDECAR_DEMO_TEST_MARK"
LAB_LINE = re.compile(r"^building the lab \((?P<prefix>[\w-]+)\) \.\.\.$", re.MULTILINE)


def _demo(mark: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pysidecar", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, MARK: mark, "PYTHONUNBUFFERED": "1"},
        # Its own process group, as a shell gives a foreground job: Ctrl-C signals all of it.
        start_new_session=True,
    )


def _marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds MARK=mark (zombies have none: not counted)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def _assert_nothing_left(prefix: str, mark: str, namespaces_before: set[str]) -> None:
    # Reaping by the lab is synchronous, but give stray grandchildren a moment to be reaped.
    deadline = time.monotonic() + 5
    while _marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_pids(mark) == []
    after = set(list_namespaces())
    assert not {ns for ns in after if ns.startswith(prefix + "-")}
    assert not {ns for ns in after - namespaces_before if ns.startswith(prefix + "-")}
    etc = os.listdir(ETC_NETNS_DIR) if os.path.isdir(ETC_NETNS_DIR) else []
    assert not [d for d in etc if d.startswith(prefix + "-")]
    assert not [d for d in os.listdir(tempfile.gettempdir()) if d.startswith(prefix + "-")]
    assert not os.path.exists(registry.marker_dir(prefix))


def test_demo_passes_every_step_and_leaves_nothing() -> None:
    mark = uuid.uuid4().hex
    before = set(list_namespaces())
    started = time.monotonic()
    proc = _demo(mark)
    out, _ = proc.communicate(timeout=300)  # a hang guard; its speed is not a test's business
    elapsed = time.monotonic() - started
    print(out, f"demo took {elapsed:.1f} s")
    assert proc.returncode == 0, out[-3000:]
    m = LAB_LINE.search(out)
    assert m, "the demo names its lab"
    headers = re.findall(r"^== (\d+)/(\d+) ", out, re.MULTILINE)
    assert [int(i) for i, _ in headers] == list(range(1, len(STEPS) + 1))
    assert len(re.findall(r"^   ok \(\d+\.\ds\)$", out, re.MULTILINE)) == len(STEPS)
    assert "FAILED" not in out
    assert f"{len(STEPS)}/{len(STEPS)} steps as expected" in out
    assert "pysidecar lab up" in out  # how to explore by hand
    # Seed 001: each host served its own certificate, chosen by SNI.
    assert "*  subject: CN=httpbin.example.com; O=httpbin organization" in out
    assert "*  subject: CN=helloworld-v1.example.com; O=helloworld organization" in out
    # Seed 000's egress gateway: the sidecar sent httpbin.org to the gateway, the gateway on.
    egress = out[out.index("Egress gateway: httpbin.org through istio-egressgateway") :]
    to_gateway = "outbound|80|httpbin|istio-egressgateway.istio-system.svc.cluster.local"
    assert re.search(rf"^     cluster\.{re.escape(to_gateway)}\.upstream_rq_200: 0 -> 2$", egress, re.MULTILINE)
    gateway_log = egress[egress.index("[egress gateway] access log") :]
    # The sidecar reaches the gateway's `http2` port over HTTP/2 (upstream HTTP/2 landed), so the
    # gateway logs `HTTP/2`, as seed 000's egress gateway log shows it.
    assert re.search(r'"GET /ip HTTP/2" 200 - via_upstream .* "httpbin\.org" "[\d.]+:80" outbound\|80\|\|httpbin\.org ', gateway_log)
    _assert_nothing_left(m.group("prefix"), mark, before)


@pytest.mark.parametrize(
    ("how", "when"),
    [
        # While the 3 s timeout step runs: proxies, servers and reloaded config all exist.
        pytest.param("sigterm", "== 5/", id="SIGTERM to the demo"),
        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group, so the
        # demo's children (proxies, servers, `ip netns exec`) get it at the same moment. Here
        # while the TLS step has its certificates in a temporary directory.
        pytest.param("ctrl-c", "   $ cd /tmp/", id="SIGINT to its process group"),
    ],
)
def test_stopped_mid_demo_cleans_up(how: str, when: str) -> None:
    mark = uuid.uuid4().hex
    before = set(list_namespaces())
    proc = _demo(mark)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(when) or time.monotonic() > deadline:
            break
    assert lines and lines[-1].startswith(when), "".join(lines)[-3000:]
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    out = "".join(lines) + rest
    print(out)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: cleaning up" in out
    m = LAB_LINE.search(out)
    assert m
    _assert_nothing_left(m.group("prefix"), mark, before)
