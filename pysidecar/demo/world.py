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
    helloworld  seed 001's helloworld-v1: lab http server on :5000
    ingress  seed 001's istio-ingressgateway: `pysidecar run --mode router --workload-labels
             istio=ingressgateway` on its own -c directory (Service 80 → 8080, 443 → 8443)
    egress   seed 000's istio-egressgateway: `pysidecar run --mode router --workload-labels
             istio=egressgateway` (Service 80 → 8080), no interception

Promises:
- `build()` returns only once every proxy answers ready (the gateways start with their
  Services only, no Gateway yet: no listener but admin and readiness); any failure raises (the caller closes
  the lab, which removes pods, processes and /etc/netns entries).
- Each proxy's config directory (and any scratch directory, such as a step's certificates)
  is created outside the lab's log directory (so `Lab.logs()` keeps working), named with the
  lab's prefix, and `close()` removes them all; files are written atomically (temp name, rename), as a
  ConfigMap volume update is, so the proxy never reads half a file.
- `reload()` / `reload_many()` return once every proxy concerned has compiled and taken the new
  files (its reload counter moved), or raise `Unexpected` with the rejection.
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
from collections.abc import Callable, Mapping, Sequence
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


# A proxy pod's config changes: file name → its new text, or None to remove it.
Changes = Mapping[str, str | None]


@dataclass
class World:
    lab: Lab
    client: Pod
    httpbin: Pod
    cnn: Pod
    ngxv1: Pod
    ngxv2: Pod
    myngx: Pod
    myapp: Pod
    nettool: Pod
    helloworld: Pod
    ingress: Pod
    egress: Pod
    # The -c directory of each pod running pysidecar on Istio YAML: client, ingress, egress.
    config_dirs: dict[str, str] = field(default_factory=dict)
    scratch: list[str] = field(default_factory=list)  # more directories to remove
    logs: dict[str, AccessLog] = field(default_factory=dict)

    @property
    def config_dir(self) -> str:
        return self.config_dirs["client"]

    @property
    def zipkin(self) -> str:
        """The mesh's zipkin address: nettool's collector (an address, so nothing is resolved)."""
        return f"{self.nettool.ip}:9411"

    def close(self) -> None:
        """Remove the config and scratch directories (the lab removes everything else)."""
        for d in [*self.config_dirs.values(), *self.scratch]:
            shutil.rmtree(d, ignore_errors=True)

    def mkdtemp(self, what: str) -> str:
        """A scratch directory named with the lab's prefix, removed by `close()` at the latest."""
        d = tempfile.mkdtemp(prefix=f"{self.lab.prefix}-{what}-")
        self.scratch.append(d)
        return d

    def forget(self, d: str) -> None:
        """Remove a scratch directory now."""
        shutil.rmtree(d, ignore_errors=True)
        self.scratch.remove(d)

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

    def write(self, name: str, text: str | None, pod: str = "client") -> None:
        """Write (None: remove) `name` in `pod`'s config directory."""
        d = self.config_dirs[pod]
        if text is None:
            os.unlink(os.path.join(d, name))
            return
        tmp = os.path.join(d, f".{name}.tmp")  # hidden: the loader skips it
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(d, name))

    def reload(self, name: str, text: str | None, pod: str = "client") -> float:
        """Write (None: remove) `name` and wait until the proxy took it; how long that took."""
        return self.reload_many({pod: {name: text}})

    def reload_many(self, changes: Mapping[str, Changes]) -> float:
        """Make the changes (pod → files, each pod's in the order given) and wait until every
        pod's proxy has reloaded; how long that took. A proxy may take a change in two
        reloads: callers that need all of it probe for it (the reload only says it started)."""
        before = {pod: self.stats(self.lab.pod(pod)) for pod in changes}
        started = time.monotonic()
        for pod, files in changes.items():
            for name, text in files.items():
                self.write(name, text, pod)
        waiting = set(changes)
        deadline = started + RELOAD_TIMEOUT
        while waiting and time.monotonic() < deadline:
            for pod in sorted(waiting):
                now, old = self.stats(self.lab.pod(pod)), before[pod]
                names = ", ".join(changes[pod])
                if now.get("pysidecar.config_reload_rejected", 0) > old.get("pysidecar.config_reload_rejected", 0):
                    raise Unexpected(f"the {pod} proxy to accept {names}; it rejected it (see its log)")
                if now.get("listener_manager.lds.update_success", 0) > old.get("listener_manager.lds.update_success", 0):
                    waiting.discard(pod)
            if waiting:
                time.sleep(POLL)
        if waiting:
            raise Unexpected(f"the {', '.join(sorted(waiting))} proxy to reload within {RELOAD_TIMEOUT:.0f}s")
        return time.monotonic() - started

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


def start_mesh_sidecar(w: World, pod: Pod, labels: str, conf: str, cert_dir: str, log_format: str) -> None:
    """Istio's rules and `pysidecar run` with a workload identity (--cert-dir), its access log on."""
    log = _access_log(w.lab, f"{pod.name}-access.log")
    pod.install_interception()
    args = ["run", "--concurrency", "1", "-c", conf, "--workload-labels", labels, "--cert-dir", cert_dir,
            "--access-log", log, "--access-log-format", log_format]  # fmt: skip
    _spawn_proxy(pod, args, 15021, "http://127.0.0.1:15021/healthz/ready")
    w.logs[pod.name] = AccessLog(f"{pod.name} sidecar", log)


def _config_dir(lab: Lab, pod: str) -> str:
    d = tempfile.mkdtemp(prefix=f"{lab.prefix}-{pod}-istio-")
    os.chmod(d, 0o755)  # the proxy runs as uid 1337
    return d


def _start_gateway(w: World, pod: Pod, labels: str, say: Callable[[str], None]) -> None:
    """`pysidecar run --mode router` on the pod's config directory, its access log on."""
    log = _access_log(w.lab, f"{pod.name}-access.log")
    args = ["run", "--mode", "router", "--workload-labels", labels, "--concurrency", "1"]
    args += ["-c", w.config_dirs[pod.name], "--access-log", log]
    say(f"{pod.name}: pysidecar {' '.join(args[:5])} -c {w.config_dirs[pod.name]}")
    _spawn_proxy(pod, args, 15021, "http://127.0.0.1:15021/healthz/ready")
    w.logs[pod.name] = AccessLog(f"{pod.name} gateway", log)


def build(lab: Lab, say: Callable[[str], None]) -> World:
    """Create the pods, the config, the proxies; see the module docstring."""
    say(f"lab {lab.prefix}: pods client, httpbin (httpbin.org), cnn (edition.cnn.com), "
        "ngxv1, ngxv2, myngx (myngx.example), myapp, nettool, helloworld, ingress, egress")  # fmt: skip
    world = World(
        lab,
        client=lab.add_pod("client"),
        httpbin=lab.add_pod("httpbin", hostnames=["httpbin.org"]),
        cnn=lab.add_pod("cnn", hostnames=["edition.cnn.com"]),
        ngxv1=lab.add_pod("ngxv1"),
        ngxv2=lab.add_pod("ngxv2"),
        myngx=lab.add_pod("myngx", hostnames=["myngx.example"]),
        myapp=lab.add_pod("myapp"),
        nettool=lab.add_pod("nettool"),
        helloworld=lab.add_pod("helloworld"),
        ingress=lab.add_pod("ingress"),
        egress=lab.add_pod("egress"),
    )
    try:
        for pod in ("client", "ingress", "egress"):
            world.config_dirs[pod] = _config_dir(lab, pod)
        say("servers: httpbin.org :80 and :7 (echo), edition.cnn.com :80, v1, v2, helloworld-v1, the apps")
        world.httpbin.spawn_server("http", 80, "--name", "httpbin.org")
        world.httpbin.spawn_server("echo", 7)
        world.cnn.spawn_server("http", 80, "--name", "edition.cnn.com")
        world.ngxv1.spawn_server("http", 80, "--body", "v1\n", "--name", "ngxv1")
        world.ngxv2.spawn_server("http", 80, "--body", "v2\n", "--name", "ngxv2")
        world.helloworld.spawn_server("http", 5000, "--body", configs.HELLO)
        world.client.spawn_server("http", 8080, "--name", "client-app")
        world.myapp.spawn_server("http", 80, "--name", "myapp")
        # The sidecars' zipkin collector (Istio's zipkin.istio-system:9411), in nettool: spans
        # are POSTed there (a lab http server; what it answers does not matter to the sender).
        world.nettool.spawn_server("http", 9411, "--name", "zipkin")

        # What the cluster has before the tutorials start: the mesh config, sleep's Service,
        # the gateways' Services (istio-system) and seed 001's backends.
        egress_service = configs.egress_gateway_service(world.egress.ip)
        world.write("mesh.yaml", configs.mesh("ALLOW_ANY", zipkin=world.zipkin))
        world.write("sleep-service.yaml", configs.SLEEP_SERVICE)
        world.write("istio-egressgateway.yaml", egress_service)
        world.write("istio-egressgateway.yaml", egress_service, "egress")
        world.write("istio-ingressgateway.yaml", configs.INGRESS_SERVICE, "ingress")
        world.write("backends.yaml", configs.ingress_backends(world.httpbin.ip, world.helloworld.ip), "ingress")

        client_log = _access_log(lab, "client-access.log")
        say(f"client: pysidecar init {' '.join(_shown_args())}; pysidecar run -c {world.config_dir}")
        world.client.install_interception()
        _spawn_proxy(
            world.client,
            ["run", "--concurrency", "2", "-c", world.config_dir, "--access-log", client_log],
            15021,
            "http://127.0.0.1:15021/healthz/ready",
        )
        world.logs["client"] = AccessLog("client sidecar", client_log)

        inbound = os.path.join(lab.logdir, "myapp-envoy.yaml")
        with open(inbound, "w") as f:
            f.write(configs.INBOUND_ENVOY)
        os.chmod(inbound, 0o644)
        myapp_log = _access_log(lab, "myapp-access.log")
        say("myapp: the seed's PREROUTING rule; pysidecar run -c myapp-envoy.yaml (seed 002)")
        world.myapp.run(configs.INBOUND_RULE, check=True)
        _spawn_proxy(
            world.myapp,
            ["run", "--concurrency", "1", "-c", inbound, "--access-log", myapp_log],
            15006,
            "http://127.0.0.1:15000/ready",
        )
        world.logs["myapp"] = AccessLog("myapp sidecar", myapp_log)
        _start_gateway(world, world.ingress, "istio=ingressgateway", say)
        _start_gateway(world, world.egress, "istio=egressgateway", say)
    except BaseException:
        world.close()
        raise
    return world


def _shown_args() -> list[str]:
    return [f"'{a}'" if a in ("", "*") else a for a in DEFAULT_ISTIO_ARGS]
