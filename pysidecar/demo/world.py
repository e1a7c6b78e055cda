"""The demo's lab: pods, the sidecar's config directory, and what a step can observe.

Pods (all in one throw-away `Lab`, addresses from 198.18.0.0/15, names only in the lab's hosts
files):

    client   the app pod: Istio's iptables rules (`pysidecar init`), `pysidecar run -c <dir>`
             as uid 1337 on Istio YAML, its app (lab http server) on :8080
    httpbin  httpbin.org:      lab http server on :80, echo on :7
    cnn      edition.cnn.com:  lab http server on :80
    ngxv1/2  seed 002's nginx v1 / v2: lab http servers answering "v1" / "v2"
    myngx    myngx.example: an address with nothing behind it, like a Service VIP
    myapp    seed 002's inbound example: app on :80, one PREROUTING rule, a second proxy
    nettool  seed 002's client pod: curls the others, no sidecar

Promises:
- `build()` returns only once both proxies answer ready; any failure raises (the caller closes
  the lab, which removes pods, processes and /etc/netns entries).
- The config directory is created outside the lab's log directory (so `Lab.logs()` keeps
  working) and `close()` removes it; files are written atomically (temp name, rename), as a
  ConfigMap volume update is, so the proxy never reads half a file.
- `reload()` returns once the proxy has compiled and taken the new files (the reload counters
  moved), or raises `Unexpected` with the rejection.
- Observation is read-only: stats come from the admin port (127.0.0.1:15000 inside the pod),
  Istio metrics from :15090, access-log lines from the files the proxies append to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pysidecar.demo import configs
from pysidecar.lab import DEFAULT_ISTIO_ARGS, PROXY_UID, Lab, Pod

READY_TIMEOUT = 30.0
RELOAD_TIMEOUT = 6.0  # the watcher polls every 1 s and settles 0.2 s: a change shows within ~1.3 s
LOG_TIMEOUT = 2.5  # access logs are flushed once a second
POLL = 0.05


class Unexpected(Exception):
    """A step's expectation did not hold."""


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Unexpected(what)


@dataclass
class AccessLog:
    """One proxy's access-log file and how far the demo has shown it."""

    label: str
    path: str
    offset: int = 0
    wanted: int = 0  # lines the current step promised to produce

    def new_lines(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        # Only whole lines: a line being written is picked up next time.
        end = data.rfind(b"\n") + 1
        return data[:end].decode("utf-8", "replace").splitlines()

    def take(self, timeout: float = LOG_TIMEOUT) -> list[str]:
        """The lines written since the last take, waiting (bounded) for the promised count."""
        deadline = time.monotonic() + (timeout if self.wanted else 0)
        lines = self.new_lines()
        while len(lines) < self.wanted and time.monotonic() < deadline:
            time.sleep(POLL)
            lines = self.new_lines()
        self.offset += sum(len(x.encode()) + 1 for x in lines)
        return lines


@dataclass
class World:
    lab: Lab
    config_dir: str
    client: Pod
    httpbin: Pod
    cnn: Pod
    ngxv1: Pod
    ngxv2: Pod
    myngx: Pod
    myapp: Pod
    nettool: Pod
    logs: dict[str, AccessLog] = field(default_factory=dict)

    def close(self) -> None:
        """Remove the config directory (the lab removes everything else)."""
        shutil.rmtree(self.config_dir, ignore_errors=True)

    # -- traffic -------------------------------------------------------------------------

    def curl(self, pod: Pod, *args: str, timeout: float = 15) -> str:
        """curl's stdout inside `pod` (curl itself gives up after 10 s)."""
        return pod.run(["curl", "-s", "-m", "10", *args], timeout=timeout).stdout

    def status(self, pod: Pod, *args: str) -> tuple[str, str]:
        """(HTTP status, body) of a curl inside `pod`; status "000" when no response came."""
        out = self.curl(pod, "-w", "\n%{http_code}", *args)
        body, _, code = out.rpartition("\n")
        return code, body

    def tcp_exchange(self, pod: Pod, dst: Pod, port: int, data: bytes) -> bytes | None:
        """Send `data` from inside `pod` to `dst`'s address, half-close, read to EOF.

        None: refused or reset; b"": closed without a byte. By address, never by name: `netns()` moves only this thread,
        so a name would be looked up in the machine's resolver, not the lab's hosts file.
        """
        with pod.netns():
            try:
                s = socket.create_connection((dst.ip, port), timeout=5)
            except OSError:
                return None
        got = bytearray()
        with s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(1 << 16):
                    got += chunk
            except ConnectionResetError:
                return None
            except OSError:
                # Closed by the peer before we finished sending (ENOTCONN / EPIPE on a
                # connection the sidecar dropped at once): what came back is the answer.
                pass
            return bytes(got)

    # -- config --------------------------------------------------------------------------

    def write(self, name: str, text: str) -> None:
        tmp = os.path.join(self.config_dir, f".{name}.tmp")  # hidden: the loader skips it
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(self.config_dir, name))

    def reload(self, name: str, text: str) -> float:
        """Write `name` and wait until the proxy took it; return how long that took."""
        before = self.stats(self.client)
        done = before.get("listener_manager.lds.update_success", 0)
        rejected = before.get("pysidecar.config_reload_rejected", 0)
        started = time.monotonic()
        self.write(name, text)
        deadline = started + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            now = self.stats(self.client)
            if now.get("pysidecar.config_reload_rejected", 0) > rejected:
                raise Unexpected(f"the proxy to accept {name}; it rejected it (see its log)")
            if now.get("listener_manager.lds.update_success", 0) > done:
                return time.monotonic() - started
            time.sleep(POLL)
        raise Unexpected(f"the proxy to reload {name} within {RELOAD_TIMEOUT:.0f}s")

    # -- observation ---------------------------------------------------------------------

    def stats(self, pod: Pod) -> dict[str, int]:
        """Counters and gauges from the admin (summed over workers), Istio metrics left out."""
        out = self.curl(pod, "http://127.0.0.1:15000/stats?format=json")
        try:
            stats = json.loads(out)["stats"]
        except (ValueError, KeyError) as e:
            raise Unexpected(
                f"the admin's /stats in {pod.name} to answer JSON, got {out[:200]!r}"
            ) from e
        return {
            s["name"]: s["value"]
            for s in stats
            if isinstance(s["value"], int) and "=.=" not in s["name"]
        }

    def istio_metrics(self, pod: Pod) -> dict[str, float]:
        """istio_requests_total and istio_tcp_connections_closed_total from :15090, keyed by
        a short form of their labels (the other 20-odd labels are `unknown` in a lab)."""
        text = self.curl(pod, "http://127.0.0.1:15090/stats/prometheus")
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if not m:
                continue
            labels = dict(LABEL.findall(m.group("labels")))
            short = ",".join(f'{k}="{labels[k]}"' for k in SHOWN_LABELS if k in labels)
            out[f"{m.group('name')}{{{short}}}"] = float(m.group("value"))
        return out


METRIC_LINE = re.compile(
    r"^(?P<name>istio_requests_total|istio_tcp_connections_closed_total)\{(?P<labels>.*)\} (?P<value>\S+)$"
)
LABEL = re.compile(r'(\w+)="([^"]*)"')
SHOWN_LABELS = ("reporter", "destination_service", "response_code", "response_flags")


def _wait_ready(pod: Pod, url: str, proc_alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        r = pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        if r.stdout == "200":
            return
        if not proc_alive():
            break
        time.sleep(POLL)
    raise Unexpected(f"the proxy in {pod.name} to become ready ({url})\n{pod.lab.logs()}")


def _access_log(lab: Lab, name: str) -> str:
    """An empty file the proxy (uid 1337, no write capability) can append to."""
    path = os.path.join(lab.logdir, name)
    with open(path, "w"):
        pass
    os.chown(path, PROXY_UID, PROXY_UID)
    return path


def _spawn_proxy(pod: Pod, args: Sequence[str], port: int, ready_url: str) -> None:
    proc = pod.spawn_proxy(args)
    pod.wait_port(port, timeout=READY_TIMEOUT, proc=proc)
    _wait_ready(pod, ready_url, lambda: proc.poll() is None)


def build(lab: Lab, say: Callable[[str], None]) -> World:
    """Create the pods, the config, both proxies; see the module docstring."""
    say(f"lab {lab.prefix}: pods client, httpbin (httpbin.org), cnn (edition.cnn.com), "
        "ngxv1, ngxv2, myngx (myngx.example), myapp, nettool")  # fmt: skip
    client = lab.add_pod("client")
    httpbin = lab.add_pod("httpbin", hostnames=["httpbin.org"])
    cnn = lab.add_pod("cnn", hostnames=["edition.cnn.com"])
    ngxv1 = lab.add_pod("ngxv1")
    ngxv2 = lab.add_pod("ngxv2")
    myngx = lab.add_pod("myngx", hostnames=["myngx.example"])
    myapp = lab.add_pod("myapp")
    nettool = lab.add_pod("nettool")

    config_dir = tempfile.mkdtemp(prefix=f"{lab.prefix}-istio-")
    os.chmod(config_dir, 0o755)  # the proxy runs as uid 1337
    world = World(lab, config_dir, client, httpbin, cnn, ngxv1, ngxv2, myngx, myapp, nettool)
    try:
        say("servers: httpbin.org :80 and :7 (echo), edition.cnn.com :80, v1, v2, the apps")
        httpbin.spawn_server("http", 80, "--name", "httpbin.org")
        httpbin.spawn_server("echo", 7)
        cnn.spawn_server("http", 80, "--name", "edition.cnn.com")
        ngxv1.spawn_server("http", 80, "--body", "v1\n", "--name", "ngxv1")
        ngxv2.spawn_server("http", 80, "--body", "v2\n", "--name", "ngxv2")
        client.spawn_server("http", 8080, "--name", "client-app")
        myapp.spawn_server("http", 80, "--name", "myapp")

        world.write("mesh.yaml", configs.mesh("ALLOW_ANY"))
        world.write("sleep-service.yaml", configs.SLEEP_SERVICE)
        client_log = _access_log(lab, "client-access.log")
        say(f"client: pysidecar init {' '.join(_shown_args())}; pysidecar run -c {config_dir}")
        client.install_interception()
        _spawn_proxy(
            client,
            ["run", "--concurrency", "2", "-c", config_dir, "--access-log", client_log],
            15021,
            "http://127.0.0.1:15021/healthz/ready",
        )
        world.logs["client"] = AccessLog("client", client_log)

        inbound = os.path.join(lab.logdir, "myapp-envoy.yaml")
        with open(inbound, "w") as f:
            f.write(configs.INBOUND_ENVOY)
        os.chmod(inbound, 0o644)
        myapp_log = _access_log(lab, "myapp-access.log")
        say("myapp: the seed's PREROUTING rule; pysidecar run -c myapp-envoy.yaml (seed 002)")
        myapp.run(configs.INBOUND_RULE, check=True)
        _spawn_proxy(
            myapp,
            ["run", "--concurrency", "1", "-c", inbound, "--access-log", myapp_log],
            15006,
            "http://127.0.0.1:15000/ready",
        )
        world.logs["myapp"] = AccessLog("myapp", myapp_log)
    except BaseException:
        world.close()
        raise
    return world


def _shown_args() -> list[str]:
    return [f"'{a}'" if a in ("", "*") else a for a in DEFAULT_ISTIO_ARGS]
