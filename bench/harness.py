"""`python -m bench`: pysidecar beside Envoy (and a direct connection) on one config.

Promises:
- Upstreams (nginx with a 1 KiB and a 1 MiB file, an iperf3 server) and load generators (wrk,
  h2load, iperf3 client) run on CPU 0; the proxy under test (all its processes) runs alone on
  CPU 1. Both proxies run the same Envoy YAML (bench/envoy_config.py) with one worker
  (`--concurrency 1`). Only loopback addresses are used; every load is bounded in time.
- Targets alternate inside each repetition (direct, envoy, pysidecar, direct, ...), so slow
  drifts of the machine hit all of them alike; the table shows medians over the repetitions and
  the ratios are computed from those medians of the same run.
- A scenario that cannot run for a target (pysidecar refuses the HTTP config, or its HCM
  listener does not answer) is reported as "n/a: <reason>", never as a number.
- Results: a table on stdout, bench/results/<timestamp>.json (every run plus the summary),
  bench/results/<timestamp>.png (latency distributions), logs under bench/results/<timestamp>/.
- `--profile` instead samples the pysidecar worker with py-spy during each scenario and writes
  flame graphs plus a top-frames text summary next to the results (`--native` for the compiled
  target: its mypyc frames and the C below them are invisible to py-spy otherwise; py-spy then
  pauses the worker per sample, so read shares, not the req/s of that run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import envoy_config as cfg
from bench.parse import (
    added,
    median,
    parse_h2load,
    parse_h2load_log,
    parse_iperf3,
    parse_proc_stat,
    parse_pss_kb,
    parse_rss_kb,
    parse_strace_c,
    parse_wrk,
    ratio,
    top_frames,
)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
LOAD_CPU = "0"  # load generators and upstreams
PROXY_CPU = "1"  # the proxy under test, alone
PLACEMENT = (
    f"upstreams (nginx, iperf3 -s) and load generators (wrk, h2load, iperf3 -c) on cpu{LOAD_CPU}; "
    f"the proxy under test (every process of it) alone on cpu{PROXY_CPU} (taskset -c)"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_CONNECTIONS = 50
# HTTP/2 load (http2_1k): as many streams in flight as wrk's 50 connections, on 5 connections.
H2_CONNECTIONS = 5
H2_STREAMS = 10
LAT_CLIENTS = 10
LAT_RPS = 1000  # total, split over LAT_CLIENTS

TCP_SCENARIOS = ("tcp_1k", "tcp_1m", "bulk", "lat_tcp")
HTTP_SCENARIOS = ("http_1k", "http_1m", "http2_1k", "h2h2_1k", "grpc_unary", "lat_http")
# HTTP/2 on both sides (h2h2_1k: nginx h2c upstream) and gRPC unary (grpc_unary: the grpcio
# server of tests/grpc_app.py, a 100-byte message per call): h2load through the H2_PORT listener.
H2H2_SCENARIOS = ("h2h2_1k", "grpc_unary")
GRPC_MESSAGE = 100


@dataclass
class Settings:
    duration: float
    reps: int
    warmup: float
    targets: tuple[str, ...]
    scenarios: tuple[str, ...]
    out: Path
    stamp: str
    profile: bool = False
    syscalls: bool = False
    concurrency: int = 1
    log: list[str] = field(default_factory=list)


# -- processes ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            total += parse_proc_stat(f.read())
    return total / CLK_TCK


def pss_kb(pids: list[int]) -> int:
    """Sum of Pss over the processes (/proc/<pid>/smaps_rollup): pages shared between them (the
    interpreter, libraries) counted once in all, where a sum of RSS counts them per process."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            total += parse_pss_kb(f.read())
    return total


def rss_kb(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            out.append(parse_rss_kb(f.read()))
    return out


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def run(cmd: list[str], timeout: float, cpu: str = LOAD_CPU) -> str:
    r = subprocess.run(
        ["taskset", "-c", cpu, *cmd], capture_output=True, text=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}"
        )
    return r.stdout


class Upstreams:
    """nginx (1 KiB and 1 MiB files; also h2c-only), an iperf3 server and the gRPC server, on
    the load CPU."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Upstreams:
        www = self.workdir / "www"
        www.mkdir(parents=True, exist_ok=True)
        (www / "1k").write_bytes(os.urandom(1024))
        (www / "1m").write_bytes(os.urandom(1024 * 1024))
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(cfg.nginx_conf(str(www), str(prefix)))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self._spawn(["taskset", "-c", LOAD_CPU, nginx, "-c", str(conf), "-p", str(prefix)], "nginx")
        wait_port(cfg.NGINX_PORT, 10, self.procs[-1])
        self._spawn(
            [
                "taskset",
                "-c",
                LOAD_CPU,
                "iperf3",
                "-s",
                "-B",
                "127.0.0.1",
                "-p",
                str(cfg.IPERF_PORT),
            ],
            "iperf3",
        )
        wait_port(cfg.IPERF_PORT, 10, self.procs[-1])
        # The gRPC server (grpcio, dev dependency) and one request body: a 5-byte gRPC prefix
        # and GRPC_MESSAGE bytes.
        (self.workdir / "grpc-unary.bin").write_bytes(
            b"\x00" + GRPC_MESSAGE.to_bytes(4, "big") + b"x" * GRPC_MESSAGE
        )
        self._spawn(
            ["taskset", "-c", LOAD_CPU, str(VENV_BIN / "python"), "-m", "tests.grpc_app", "serve",
             "--port", str(cfg.GRPC_PORT), "--name", "bench"],
            "grpc",
        )  # fmt: skip
        wait_port(cfg.GRPC_PORT, 20, self.procs[-1])
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            stop(p)


def stop(p: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# -- the proxies --------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    http_na: str | None = None  # why the HTTP scenarios cannot run, if they cannot

    def pids(self) -> list[int]:
        return _children(self.proc.pid) if self.proc is not None else []

    def worker_pids(self) -> list[int]:
        """The processes that relay: Envoy's only one; pysidecar's workers (named wrk:worker_N)."""
        if self.proc is None:
            return []
        if self.name == "envoy":
            return [self.proc.pid]
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm", "rb") as f:
                if f.read().startswith(b"wrk:worker_"):
                    out.append(pid)
        return out

    def tcp_port(self) -> int:
        return cfg.NGINX_PORT if self.name == "direct" else cfg.TCP_PORT

    def http_port(self) -> int:
        return cfg.NGINX_PORT if self.name == "direct" else cfg.HTTP_PORT

    def bulk_port(self) -> int:
        return cfg.IPERF_PORT if self.name == "direct" else cfg.BULK_PORT


def proxy_command(name: str, config: Path, concurrency: int = 1) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    workers = str(concurrency)
    if name == "envoy":
        return [
            str(VENV_BIN / "envoy"), "-c", str(config), "--concurrency", workers,
            "--disable-hot-restart", "--log-level", "warn", "--drain-time-s", "1",
        ], env  # fmt: skip
    if name == "pysidecar-before":
        # Another tree's pysidecar (PYSIDECAR_BEFORE: a checkout of the commit to compare
        # against) on this venv: PYTHONPATH puts it before the editable install, workers too.
        env["PYTHONPATH"] = os.environ["PYSIDECAR_BEFORE"]
        # Not the current directory first (`-c` and `-m` put it there): run from this tree,
        # that would be this tree's pysidecar, the "before" silently the same as "after".
        env["PYTHONSAFEPATH"] = "1"
        return [
            str(VENV_BIN / "python"), "-c", "import sys; from pysidecar.cli import main; sys.exit(main())",
            "run", "-c", str(config), "--concurrency", workers, "--log-level", "warning", "--drain-time-s", "1",
        ], env  # fmt: skip
    if name.startswith("pysidecar"):
        if name == "pysidecar-nosplice":
            env["PYSIDECAR_SPLICE"] = "0"
        # pysidecar-pure: the same sources as plain Python (the compiled data path switched off).
        env["PYSIDECAR_PURE"] = "1" if name == "pysidecar-pure" else "0"
        return [
            str(VENV_BIN / "pysidecar"), "run", "-c", str(config), "--concurrency", workers,
            "--log-level", "warning", "--drain-time-s", "1",
        ], env  # fmt: skip
    raise ValueError(f"unknown target {name}")


@contextlib.contextmanager
def proxy(
    name: str, config: Path, workdir: Path, http_na: str | None, concurrency: int = 1
) -> Iterator[Target]:
    if name == "direct":
        yield Target("direct")
        return
    cmd, env = proxy_command(name, config, concurrency)
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["taskset", "-c", PROXY_CPU, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    target = Target(name, proc, http_na)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited {proc.returncode}; see {workdir / (name + '.log')}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                if http_get(cfg.ADMIN_PORT, "/ready", 0.5)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after 30s")
            time.sleep(0.05)
        for port in (cfg.TCP_PORT, cfg.BULK_PORT):
            wait_port(port, 10, proc)
        if target.http_na is None:
            target.http_na = probe_http(cfg.HTTP_PORT)
        if target.http_na is None:
            wait_port(cfg.H2_PORT, 10, proc)
        yield target
    finally:
        stop(proc)
        log.close()


def probe_http(port: int) -> str | None:
    """None when the HCM listener routes and injects headers; else why it cannot be measured."""
    try:
        status, headers, body = http_get(port, "/1k")
    except Exception as e:  # anything: refused, reset, bad status line
        return f"HCM listener did not answer: {type(e).__name__}: {e}"
    if status != 200 or len(body) != 1024:
        return f"HCM listener answered {status} with {len(body)} bytes"
    if headers.get("x-bench-response") != "1":
        return "HCM listener did not add response_headers_to_add"
    return None


def pysidecar_refusal(config: Path) -> str | None:
    """pysidecar's own verdict on the config: None if it loads, else its error message."""
    r = subprocess.run(
        [str(VENV_BIN / "python"), "-c",
         "import sys\nfrom pysidecar.config.loader import load\nfrom pysidecar.config.node import ConfigError\n"
         "try:\n    load([sys.argv[1]])\nexcept ConfigError as e:\n    print(e); sys.exit(2)\n",
         str(config)],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    if r.returncode == 0:
        return None
    return (r.stdout.strip() or r.stderr.strip().splitlines()[-1]).replace("\n", " ")[:300]


# -- scenarios --------------------------------------------------------------------------------


def measure_proxy(
    target: Target, seconds: float, load: Callable[[], str]
) -> tuple[str, dict[str, Any]]:
    """Run `load`; around it, the proxy's CPU time, and its RSS sampled mid-way."""
    pids = target.pids()
    before = cpu_seconds(pids)
    extra: dict[str, Any] = {}
    if not pids:
        return load(), extra
    import threading

    samples: list[list[int]] = []

    def sample() -> None:
        time.sleep(seconds / 2)
        samples.append(rss_kb(target.pids()))
        samples.append(rss_kb(target.worker_pids()))
        samples.append([pss_kb(target.pids())])

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = load()
    t.join()
    extra["cpu_s"] = cpu_seconds(pids) - before
    if samples and samples[0]:
        extra["rss_mb"] = sum(samples[0]) / 1024.0
        # The process that relays (Envoy: its only one; pysidecar: the worker, not the supervisor).
        if samples[1]:
            extra["rss_worker_mb"] = max(samples[1]) / 1024.0
        if samples[2][0]:
            extra["pss_mb"] = samples[2][0] / 1024.0
    return out, extra


def wrk(target: Target, port: int, path: str, seconds: float) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        f"http://127.0.0.1:{port}{path}",
    ]
    out, extra = measure_proxy(target, seconds, lambda: run(cmd, seconds + 30))
    w = parse_wrk(out)
    res: dict[str, Any] = {
        "rps": w.rps,
        "bytes_per_s": w.bytes_per_s,
        "requests": w.requests,
        "errors": w.errors,
    }
    res.update(extra)
    if "cpu_s" in extra and w.requests:
        res["cpu_s_per_1k_req"] = extra["cpu_s"] / (w.requests / 1000.0)
    return res


def h2load(target: Target, port: int, path: str, seconds: float, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """HTTP/2 with prior knowledge (h2c): H2_CONNECTIONS connections of H2_STREAMS streams."""
    cmd = [
        "h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{max(1, round(seconds))}",
        *extra_args, f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    out, extra = measure_proxy(target, seconds, lambda: run(cmd, seconds + 30))
    w = parse_h2load(out)
    res: dict[str, Any] = {"rps": w.rps, "bytes_per_s": w.bytes_per_s, "requests": w.requests, "errors": w.errors}
    res.update(extra)
    if "cpu_s" in extra and w.requests:
        res["cpu_s_per_1k_req"] = extra["cpu_s"] / (w.requests / 1000.0)
    return res


def bulk(target: Target, seconds: float) -> dict[str, Any]:
    cmd = [
        "iperf3",
        "-c",
        "127.0.0.1",
        "-p",
        str(target.bulk_port()),
        "-t",
        str(max(1, round(seconds))),
        "-J",
    ]
    out, extra = measure_proxy(target, seconds, lambda: run(cmd, seconds + 30))
    r = parse_iperf3(out)
    res: dict[str, Any] = {"gbit_per_s": r.bits_per_s / 1e9}
    res.update(extra)
    if "cpu_s" in extra and r.bytes:
        res["cpu_s_per_gb"] = extra["cpu_s"] / (r.bytes / 1e9)
    return res


def latency(target: Target, port: int, seconds: float, workdir: Path, tag: str) -> dict[str, Any]:
    logf = workdir / f"h2load-{tag}.log"
    n = int(LAT_RPS * seconds)
    cmd = [
        "h2load", "--h1", "-c", str(LAT_CLIENTS), "-n", str(n), "--rps", str(LAT_RPS // LAT_CLIENTS),
        "--log-file", str(logf), f"http://127.0.0.1:{port}/1k",
    ]  # fmt: skip
    _, extra = measure_proxy(target, seconds, lambda: run(cmd, seconds + 60))
    lat = parse_h2load_log(logf.read_text(), skip_first_us=500_000)
    res: dict[str, Any] = {
        "p50_ms": lat.p50_ms, "p99_ms": lat.p99_ms, "p999_ms": lat.p999_ms,
        "requests": lat.count, "errors": lat.errors, "samples_file": logf.name,
    }  # fmt: skip
    res.update(extra)
    return res


def run_scenario(
    target: Target, scenario: str, s: Settings, workdir: Path, rep: int
) -> dict[str, Any]:
    d = s.duration
    if scenario == "http2_1k" and target.name == "direct":
        return {"na": "the upstream (nginx) serves no h2c"}
    if scenario.startswith(("http", "lat_http")) and target.name == "direct":
        return {"same_as": scenario.replace("http", "tcp")}
    if scenario.startswith(("http", "lat_http", *H2H2_SCENARIOS)) and target.http_na:
        return {"na": target.http_na}
    tag = f"{target.name}-{scenario}-{rep}"
    if scenario == "tcp_1k":
        return wrk(target, target.tcp_port(), "/1k", d)
    if scenario == "tcp_1m":
        return wrk(target, target.tcp_port(), "/1m", d)
    if scenario == "http_1k":
        return wrk(target, target.http_port(), "/1k", d)
    if scenario == "http_1m":
        return wrk(target, target.http_port(), "/1m", d)
    if scenario == "http2_1k":
        return h2load(target, target.http_port(), "/1k", d)
    if scenario == "h2h2_1k":
        return h2load(target, cfg.NGINX_H2C_PORT if target.name == "direct" else cfg.H2_PORT, "/1k", d)
    if scenario == "grpc_unary":
        grpc_args = ("-d", str(workdir / "grpc-unary.bin"), "-H", "content-type: application/grpc", "-H", "te: trailers")
        port = cfg.GRPC_PORT if target.name == "direct" else cfg.H2_PORT
        return h2load(target, port, "/lab.Echo/Unary", d, grpc_args)
    if scenario == "bulk":
        return bulk(target, d)
    if scenario == "lat_tcp":
        return latency(target, target.tcp_port(), d, workdir, tag)
    if scenario == "lat_http":
        return latency(target, target.http_port(), d, workdir, tag)
    raise ValueError(scenario)


# -- summary ------------------------------------------------------------------------------------

# (scenario, metric, higher is better, unit) rows of the table, in order.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("tcp_1k", "rps", "req/s"),
    ("tcp_1m", "rps", "req/s"),
    ("http_1k", "rps", "req/s"),
    ("http_1m", "rps", "req/s"),
    ("http2_1k", "rps", "req/s"),
    ("h2h2_1k", "rps", "req/s"),
    ("grpc_unary", "rps", "req/s"),
    ("bulk", "gbit_per_s", "Gbit/s"),
    ("lat_tcp", "p50_ms", "ms"),
    ("lat_tcp", "p99_ms", "ms"),
    ("lat_tcp", "p999_ms", "ms"),
    ("lat_http", "p50_ms", "ms"),
    ("lat_http", "p99_ms", "ms"),
    ("lat_http", "p999_ms", "ms"),
    ("tcp_1k", "cpu_s_per_1k_req", "cpu s"),
    ("http_1k", "cpu_s_per_1k_req", "cpu s"),
    ("http2_1k", "cpu_s_per_1k_req", "cpu s"),
    ("h2h2_1k", "cpu_s_per_1k_req", "cpu s"),
    ("grpc_unary", "cpu_s_per_1k_req", "cpu s"),
    ("bulk", "cpu_s_per_gb", "cpu s"),
    ("tcp_1k", "rss_mb", "MB"),
    ("tcp_1k", "pss_mb", "MB"),
    ("tcp_1k", "rss_worker_mb", "MB"),
    ("http_1k", "rss_mb", "MB"),
    ("http_1k", "pss_mb", "MB"),
)
LATENCY = {"p50_ms", "p99_ms", "p999_ms"}


def summarize(runs: list[dict[str, Any]], targets: tuple[str, ...]) -> dict[str, Any]:
    """Medians per (scenario, target, metric), and ratios of pysidecar vs Envoy and vs direct."""
    summary: dict[str, Any] = {}
    for scenario in {r["scenario"] for r in runs}:
        per: dict[str, Any] = {}
        for t in targets:
            rows = [r["result"] for r in runs if r["scenario"] == scenario and r["target"] == t]
            if not rows:
                continue
            if any("na" in x for x in rows):
                per[t] = {"na": next(x["na"] for x in rows if "na" in x)}
                continue
            if any("same_as" in x for x in rows):
                per[t] = {"same_as": rows[0]["same_as"]}
                continue
            keys = {k for x in rows for k, v in x.items() if isinstance(v, int | float)}
            per[t] = {k: median(x.get(k) for x in rows) for k in sorted(keys)}
            per[t]["runs"] = len(rows)
            per[t]["errors_total"] = sum(x.get("errors", 0) for x in rows)
        summary[scenario] = per

    def value(scenario: str, target: str, metric: str) -> float | None:
        cell = summary.get(scenario, {}).get(target)
        if cell is None or "na" in cell:
            return None
        if "same_as" in cell:
            return value(cell["same_as"], target, metric)
        v = cell.get(metric)
        return float(v) if isinstance(v, int | float) else None

    ratios: dict[str, Any] = {}
    for scenario, metric, _ in ROWS:
        key = f"{scenario}.{metric}"
        d = value(scenario, "direct", metric)
        row: dict[str, Any] = {}
        for t in targets:
            if t == "direct":
                continue
            v = value(scenario, t, metric)
            if metric in LATENCY:
                row[t + "_added_ms"] = added(v, d)
        for t in targets:
            if not t.startswith("pysidecar"):
                continue
            v = value(scenario, t, metric)
            e = value(scenario, "envoy", metric)
            if metric in LATENCY:
                row[f"{t}_vs_envoy_added"] = ratio(added(v, d), added(e, d))
            else:
                row[f"{t}_vs_envoy"] = ratio(v, e)
                row[f"{t}_vs_direct"] = ratio(v, d)
                if "pysidecar-before" in targets and t != "pysidecar-before":
                    row[f"{t}_vs_before"] = ratio(v, value(scenario, "pysidecar-before", metric))
        ratios[key] = row
    return {"medians": summary, "ratios": ratios, "value": None}


def goals(summary: dict[str, Any], concurrency: int = 1) -> list[dict[str, Any]]:
    r = summary["ratios"]
    m = summary["medians"]

    def get(key: str, field_: str) -> float | None:
        v = r.get(key, {}).get(field_)
        return float(v) if isinstance(v, int | float) else None

    def rps(scenario: str, target: str) -> float | None:
        v = m.get(scenario, {}).get(target, {}).get("rps")
        return float(v) if isinstance(v, int | float) else None

    def na_reason(scenario: str) -> str | None:
        cell = m.get(scenario, {}).get("pysidecar", {})
        return cell.get("na") if isinstance(cell, dict) else None

    out = []

    def goal(name: str, value: float | None, op: str, bound: float, scenario: str, na: str | None = None) -> None:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append(
            {
                "goal": name,
                "value": value,
                "bound": f"{op} {bound}",
                "met": met,
                "na": (na or na_reason(scenario)) if value is None else None,
            }
        )

    # Issue 16's goals (ratios to Envoy on the same YAML, one run).
    goal("HTTP/1.1 req/s vs Envoy (1 KiB, stats + access log)",
         get("http_1k.rps", "pysidecar_vs_envoy"), ">=", 1.25, "http_1k")  # fmt: skip
    goal("HTTP/1.1 proxy CPU per request vs Envoy",
         get("http_1k.cpu_s_per_1k_req", "pysidecar_vs_envoy"), "<=", 0.8, "http_1k")  # fmt: skip
    goal("TCP proxy CPU per request vs Envoy",
         get("tcp_1k.cpu_s_per_1k_req", "pysidecar_vs_envoy"), "<=", 0.7, "tcp_1k")  # fmt: skip
    goal("bulk proxy CPU per GB vs Envoy",
         get("bulk.cpu_s_per_gb", "pysidecar_vs_envoy"), "<=", 0.5, "bulk")  # fmt: skip
    goal("HTTP/2 req/s vs Envoy (h2c, 1 KiB)",
         get("http2_1k.rps", "pysidecar_vs_envoy"), ">=", 0.6, "http2_1k")  # fmt: skip
    goal("p99.9 added at 1000 req/s vs Envoy's (HTTP)",
         get("lat_http.p999_ms", "pysidecar_vs_envoy_added"), "<=", 1.0, "lat_http")  # fmt: skip
    if "pysidecar-nolog" in m.get("http_1k", {}):
        goal(
            "HTTP/1.1 req/s with access log vs stats only (pysidecar)",
            ratio(rps("http_1k", "pysidecar"), rps("http_1k", "pysidecar-nolog")),
            ">=",
            0.9,
            "http_1k",
        )
    # Memory is judged at --concurrency 2, as the issue states it (Istio's default). A sum of
    # RSS counts every shared page once per process (pysidecar's forked workers share the main
    # process's); PSS counts it once in all, as the pod's memory cgroup is charged: both shown.
    memory = concurrency == 2
    why = None if memory else f"memory goals are judged at --concurrency 2 (this run: {concurrency})"
    goal("RSS of all processes vs Envoy (--concurrency 2; shared pages once per process)",
         get("tcp_1k.rss_mb", "pysidecar_vs_envoy") if memory else None, "<=", 0.6, "tcp_1k", why)  # fmt: skip
    goal("PSS of all processes vs Envoy (--concurrency 2; shared pages once in all)",
         get("tcp_1k.pss_mb", "pysidecar_vs_envoy") if memory else None, "<=", 0.6, "tcp_1k", why)  # fmt: skip
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def table(summary: dict[str, Any], targets: tuple[str, ...]) -> str:
    m, r = summary["medians"], summary["ratios"]
    py = [t for t in targets if t.startswith("pysidecar")]
    head = ["metric", *targets, *(f"{t}/envoy" for t in py), *(f"{t}/direct" for t in py)]
    lines = [head]
    for scenario, metric, unit in ROWS:
        if scenario not in m:
            continue
        row = [f"{scenario} {metric} ({unit})"]
        for t in targets:
            cell = m[scenario].get(t)
            if cell is None:
                row.append("-")
            elif "na" in cell:
                row.append("n/a")
            elif "same_as" in cell:
                row.append(_fmt((m.get(cell["same_as"], {}).get(t) or {}).get(metric)))
            else:
                row.append(_fmt(cell.get(metric)))
        rr = r.get(f"{scenario}.{metric}", {})
        for t in py:
            key = f"{t}_vs_envoy_added" if metric in LATENCY else f"{t}_vs_envoy"
            row.append(_fmt(rr.get(key)) + ("x" if rr.get(key) is not None else ""))
        for t in py:
            row.append(
                ""
                if metric in LATENCY
                else _fmt(rr.get(f"{t}_vs_direct"))
                + ("x" if rr.get(f"{t}_vs_direct") is not None else "")
            )
        lines.append(row)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = "\n".join(
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
    notes = []
    for scenario, cells in sorted(m.items()):
        for t, cell in cells.items():
            if isinstance(cell, dict) and "na" in cell:
                notes.append(f"  {scenario} {t}: n/a: {cell['na']}")
            elif isinstance(cell, dict) and cell.get("errors_total"):
                notes.append(
                    f"  {scenario} {t}: {cell['errors_total']} errors (socket errors or non-2xx)"
                )
    if notes:
        text += "\nnotes:\n" + "\n".join(sorted(set(notes)))
    text += "\nlatency ratios are (proxy p - direct p) / (envoy p - direct p): lower is better."
    return text


def plot(runs: list[dict[str, Any]], workdir: Path, png: Path) -> str | None:
    """CDF (log-scaled latency) of all latency samples per target; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    panels = [
        s
        for s in ("lat_tcp", "lat_http")
        if any(r["scenario"] == s and "samples_file" in r["result"] for r in runs)
    ]
    if not panels:
        return "no latency samples"
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, scenario in zip(axes[0], panels, strict=True):
        for t in dict.fromkeys(r["target"] for r in runs):
            files = [
                r["result"]["samples_file"]
                for r in runs
                if r["scenario"] == scenario and r["target"] == t and "samples_file" in r["result"]
            ]
            if scenario == "lat_http" and t == "direct":
                files = [
                    r["result"]["samples_file"]
                    for r in runs
                    if r["scenario"] == "lat_tcp"
                    and r["target"] == t
                    and "samples_file" in r["result"]
                ]
            samples: list[float] = []
            for f in files:
                samples.extend(
                    parse_h2load_log((workdir / f).read_text(), skip_first_us=500_000).samples_ms
                )
            if not samples:
                continue
            samples.sort()
            n = len(samples)
            ax.plot(samples, [(i + 1) / n for i in range(n)], label=f"{t} (n={n})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{scenario}: {LAT_RPS} req/s, {LAT_CLIENTS} connections, 1 KiB")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return None


# -- profile ------------------------------------------------------------------------------------


def profile(s: Settings, config: Path, workdir: Path, http_na: str | None) -> None:
    pyspy = VENV_BIN / "py-spy"
    if not pyspy.exists():
        print("py-spy is not installed in .venv (bench/run.sh installs it)")
        return
    for name in (t for t in s.targets if t.startswith("pysidecar")):
        with proxy(name, config, workdir, http_na, s.concurrency) as target:
            worker = target.worker_pids()[0]
            for scenario in s.scenarios:
                if scenario.startswith(("http", "lat_http")) and target.http_na:
                    print(f"{name} {scenario}: n/a: {target.http_na}")
                    continue
                base = s.out / f"{s.stamp}-profile-{name}-{scenario}"
                secs = max(2, round(s.duration))
                spy = subprocess.Popen(
                    [str(pyspy), "record", "--pid", str(worker), "--duration", str(secs), "--rate", "250",
                     "--format", "raw", "--output", f"{base}.txt",
                     *(("--native",) if name == "pysidecar" else ("--nonblocking",))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.3)
                result = run_scenario(target, scenario, s, workdir, 0)
                spy.wait(secs + 30)
                raw = Path(f"{base}.txt")
                if not raw.exists():
                    print(f"{name} {scenario}: py-spy wrote nothing")
                    continue
                top = top_frames(raw.read_text(), 15)
                summary = Path(f"{base}-top.txt")
                lines = [
                    f"{name} {scenario}: {json.dumps({k: v for k, v in result.items() if isinstance(v, int | float)})}"
                ]
                lines += [
                    f"{pct:5.1f}% self  {pct_incl:5.1f}% incl  {frame}"
                    for frame, pct, pct_incl in top
                ]
                summary.write_text("\n".join(lines) + "\n")
                print("\n".join(lines[:12]))
                print()


# -- syscall floor ------------------------------------------------------------------------------

SYSCALL_REQUESTS = 4000


def syscalls(s: Settings, configs: dict[str, Path], workdir: Path, http_na: str | None) -> None:
    """`strace -c` on every thread of every proxy process over a fixed number of requests: the
    system calls each proxy makes per request, the floor no user-space work can go under."""
    n = SYSCALL_REQUESTS
    loads = {
        "tcp_1k": lambda port: ["h2load", "--h1", "-n", str(n), "-c", "10", f"http://127.0.0.1:{port}/1k"],
        "http_1k": lambda port: ["h2load", "--h1", "-n", str(n), "-c", "10", f"http://127.0.0.1:{port}/1k"],
        "http2_1k": lambda port: ["h2load", "-n", str(n), "-c", "4", "-m", "10", f"http://127.0.0.1:{port}/1k"],
    }  # fmt: skip
    for name in (t for t in s.targets if t != "direct"):
        na = http_na if name.startswith("pysidecar") else None
        with proxy(name, configs.get(name, configs["pysidecar"]), workdir, na, s.concurrency) as target:
            for scenario in (x for x in s.scenarios if x in loads):
                port = target.tcp_port() if scenario.startswith("tcp") else target.http_port()
                tids = [int(t) for p in target.pids() for t in os.listdir(f"/proc/{p}/task")]
                out = workdir / f"strace-{name}-{scenario}.txt"
                tracer = subprocess.Popen(
                    ["strace", "-c", "-f", "-o", str(out), *(a for t in tids for a in ("-p", str(t)))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)  # attached to every thread
                run(loads[scenario](port), 120)
                tracer.send_signal(signal.SIGINT)
                tracer.wait(30)
                calls = parse_strace_c(out.read_text())
                total = calls.pop("total", 0)
                top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6])
                print(f"{name:>16} {scenario:<9} {total / n:6.2f} syscalls/request ({top})", flush=True)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repetition of 2 s each (~1 min)"
    )
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 5; quick 2)")
    ap.add_argument("--reps", type=int, help="alternating repetitions (default 3; quick 1)")
    ap.add_argument("--targets", default="direct,envoy,pysidecar",
                    help="comma list of direct, envoy, pysidecar, pysidecar-pure (compiled data path off), "
                    "pysidecar-nosplice, pysidecar-nolog, "
                    "pysidecar-before (the tree in $PYSIDECAR_BEFORE, for before/after runs)")  # fmt: skip
    ap.add_argument("--scenarios", default=",".join(TCP_SCENARIOS + HTTP_SCENARIOS))
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the pysidecar worker per scenario instead"
    )
    ap.add_argument(
        "--syscalls", action="store_true",
        help=f"strace -c every proxy thread over {SYSCALL_REQUESTS} requests per scenario instead",
    )  # fmt: skip
    ap.add_argument("--concurrency", type=int, default=1, help="workers of each proxy (default 1)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args(argv)
    if os.cpu_count() is None or (os.cpu_count() or 1) < 2:
        print("need 2 CPUs: one for load and upstreams, one for the proxy", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    s = Settings(
        duration=a.duration or (2.0 if a.quick else 5.0),
        reps=a.reps or (1 if a.quick else 3),
        warmup=0.5 if a.quick else 1.0,
        targets=tuple(a.targets.split(",")),
        scenarios=tuple(x for x in a.scenarios.split(",") if x),
        out=Path(a.out),
        stamp=stamp,
        profile=a.profile,
        syscalls=a.syscalls,
        concurrency=a.concurrency,
    )
    workdir = s.out / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(LOAD_CPU)})

    full = workdir / "envoy.yaml"
    full.write_text(cfg.bootstrap(http=True))
    refusal = pysidecar_refusal(full)
    configs = {"envoy": full, "pysidecar": full}
    if "pysidecar-nolog" in s.targets:
        nolog = workdir / "envoy-nolog.yaml"
        nolog.write_text(cfg.bootstrap(http=True, access_log=False))
        configs["pysidecar-nolog"] = nolog
    http_na = None
    if refusal is not None:
        # pysidecar runs the same file less the HCM listener (its TCP listeners are identical);
        # Envoy keeps the full file so its HTTP numbers are there to compare against later.
        http_na = "pysidecar refuses the HCM config: " + refusal.replace(str(full) + ": ", "")
        tcp_only = workdir / "envoy-tcp.yaml"
        tcp_only.write_text(cfg.bootstrap(http=False))
        configs["pysidecar"] = tcp_only
        if (why := pysidecar_refusal(tcp_only)) is not None:
            print(f"pysidecar refuses even the TCP config: {why}", file=sys.stderr)
            return 1
    print(f"placement: {PLACEMENT}")
    print(f"config: {full} (one Envoy YAML for both proxies, --concurrency {s.concurrency} each)")
    if http_na:
        print(f"HTTP scenarios for pysidecar: n/a: {http_na}")
        print(
            f"  pysidecar runs {configs['pysidecar'].name}: the same file without the HCM listener"
        )

    with Upstreams(workdir):
        if s.profile:
            profile(s, configs["pysidecar"], workdir, http_na)
            return 0
        if s.syscalls:
            syscalls(s, configs, workdir, http_na)
            return 0
        runs: list[dict[str, Any]] = []
        started = time.monotonic()
        for rep in range(s.reps):
            for tname in s.targets:
                cfg_path = configs.get(tname, configs["pysidecar"])
                na = http_na if tname.startswith("pysidecar") else None
                with proxy(tname, cfg_path, workdir, na, s.concurrency) as target:
                    # Warm-up: first connections, first code paths (not measured).
                    with contextlib.suppress(Exception):
                        run(
                            [
                                "wrk",
                                "-t1",
                                "-c10",
                                "-d1s",
                                f"http://127.0.0.1:{target.tcp_port()}/1k",
                            ],
                            20,
                        )
                    for scenario in s.scenarios:
                        try:
                            result = run_scenario(target, scenario, s, workdir, rep)
                        except Exception as e:
                            result = {"na": f"{type(e).__name__}: {e}"[:300]}
                        runs.append(
                            {"rep": rep, "target": tname, "scenario": scenario, "result": result}
                        )
                        brief = {
                            k: round(v, 3) if isinstance(v, float) else v
                            for k, v in result.items()
                            if k in ("rps", "gbit_per_s", "p99_ms", "na", "errors")
                        }
                        print(
                            f"  rep {rep + 1}/{s.reps} {tname:>18} {scenario:<9} {brief}",
                            flush=True,
                        )
        elapsed = time.monotonic() - started

    summary = summarize(runs, s.targets)
    summary.pop("value", None)
    checks = goals(summary, s.concurrency)
    png = s.out / f"{stamp}.png"
    plot_err = plot(runs, workdir, png)
    doc = {
        "stamp": stamp,
        "command": " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "placement": PLACEMENT,
        "concurrency": s.concurrency,
        "configs": {k: str(v.relative_to(s.out)) for k, v in configs.items()},
        "http_na": http_na,
        "duration_s": s.duration,
        "reps": s.reps,
        "elapsed_s": round(elapsed, 1),
        "load": {
            "wrk": f"-t1 -c{WRK_CONNECTIONS}",
            "latency": f"h2load --h1 -c{LAT_CLIENTS} --rps {LAT_RPS // LAT_CLIENTS} (total {LAT_RPS} req/s)",
            "bulk": "iperf3 -c (1 stream)",
        },
        "summary": summary,
        "goals": checks,
        "plot": png.name if plot_err is None else f"n/a: {plot_err}",
        "runs": runs,
    }
    out = s.out / f"{stamp}.json"
    out.write_text(json.dumps(doc, indent=1, default=str))
    print()
    print(table(summary, s.targets))
    print()
    for g in checks:
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
        extra = f" ({g['na']})" if g.get("na") else ""
        print(f"  {state:>6}  {g['goal']}: {_fmt(g['value'])} (goal {g['bound']}){extra}")
    print(
        f"\nwrote {out}"
        + (f" and {png}" if plot_err is None else f" (no plot: {plot_err})")
        + f" in {elapsed:.0f}s"
    )
    return 0
