"""`pysidecar run`: the supervisor (the main process). Loads the config, starts the workers,
serves admin.

Promises:
- A config error is reported with file, YAML path and what was expected, and the command exits
  with status 2 before anything is bound.
- `--concurrency N` worker processes (default 2, like Istio's sidecar) each bind every listener
  with SO_REUSEPORT. The main process imports the data path and loads the config, then forks
  them (proxy/worker_main.py: pages shared copy-on-write, collector frozen) before its own loop
  exists. A worker that cannot bind stops the start-up (exit 1); a worker that dies later is
  replaced by a new fork between two runs of the main loop (`serve`), with the current config.
- `--mode router` compiles Istio YAML for a gateway (the Gateways selecting
  `--workload-labels`) instead of the sidecar (config/istio/gateway_compile.py).
- The main process serves admin (127.0.0.1:15000 by default), Prometheus stats (:15090) and
  readiness (:15021) when the config names them; stats are merged over the workers on request.
- `--access-log PATH` (a file or /dev/stdout) turns Envoy's access log on in every worker,
  `--access-log-format text|json|<format>` picks Istio's text or JSON line or a format of
  Envoy's command operators; a bad format is a configuration error (status 2).
- SIGTERM / SIGINT / POST /quitquitquit: workers stop accepting, drain open connections for up
  to --drain-time-s, and the command exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import uvloop

from pysidecar import native
from pysidecar.common import workload
from pysidecar.common.access_format import FormatError, formatter
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import add_interception_mode_argument, resolve_interception_mode
from pysidecar.config.watch import ConfigWatcher, ReloadState
from pysidecar.model import Bootstrap
from pysidecar.observe import http_server
from pysidecar.observe.access_log import from_flags
from pysidecar.observe.admin import admin_routes, readiness_routes, stats_routes
from pysidecar.observe.host_stats import HostSnapshot, merge_hosts
from pysidecar.observe.stats import SERVER_STATES, Kind, ServerStats, merge
from pysidecar.proxy.control import ControlClient, Message
from pysidecar.proxy.logs import setup_logging
from pysidecar.proxy.worker_main import WorkerProcess, WorkerStart, fork_worker

log = logging.getLogger("pysidecar")

# Istio's terminationDrainDuration default.
DEFAULT_DRAIN_TIME = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config-path", "--config", dest="config", action="append", default=[],
        metavar="PATH", help="Envoy v3 bootstrap YAML (default: the embedded standard sidecar)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--drain-time-s", type=float, default=DEFAULT_DRAIN_TIME, dest="drain_time",
        help="how long open connections may finish after SIGTERM (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "-l", "--log-level", default="info",
        choices=["trace", "debug", "info", "warning", "warn", "error", "critical", "off"],
    )  # fmt: skip
    parser.add_argument(
        "--access-log", metavar="PATH", default=None,
        help="write Envoy's access log to PATH (a file, or /dev/stdout); off by default",
    )  # fmt: skip
    workload.add_workload_arguments(parser)
    workload.add_mode_argument(parser)
    add_interception_mode_argument(parser)
    parser.add_argument(
        "--access-log-format", metavar="FORMAT", default=None,
        help="text (Istio's default line), json (Istio's keys), or a format of %%OPERATORS%%",
    )  # fmt: skip


class Supervisor:
    """The main process's state; implements admin's ProxyState."""

    def __init__(self, bootstrap: Bootstrap, args: argparse.Namespace) -> None:
        self.bootstrap = bootstrap
        self.args = args
        self.concurrency: int = max(1, args.concurrency)
        self.started = time.time()
        self.healthy = True
        self.server_stats = ServerStats("server.")
        self._procs: dict[int, WorkerProcess] = {}
        self._clients: dict[int, ControlClient] = {}
        self._ready: set[int] = set()
        self._ever_ready: set[int] = set()
        self._stopping = False
        self._exit_code = 0
        self._done: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Worker indexes to fork once the loop has stopped (`serve`): all at start, then the dead.
        self._to_fork: list[int] = []
        self._executor: ThreadPoolExecutor | None = None
        # Hot reload of the -c files: counters and the last rejection, for stats and the admin.
        self.reload = ReloadState()

    # -- ProxyState ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.healthy and not self._stopping and len(self._ready) == self.concurrency

    @property
    def server_state(self) -> str:
        """Envoy's server state as /ready and /server_info spell it."""
        if len(self._ready) < self.concurrency and not self._stopping:
            return "PRE_INITIALIZING"
        return "DRAINING" if self._stopping or not self.healthy else "LIVE"

    async def merged_stats(self) -> dict[str, tuple[Kind, object]]:
        snaps = await asyncio.gather(
            *(c.request("stats") for c in self._clients.values()), return_exceptions=True
        )
        good: list[dict[str, tuple[Kind, object]]] = [s for s in snaps if isinstance(s, dict)]
        merged = merge(good)
        server = self.server_stats
        server.concurrency = self.concurrency
        server.live = 1 if self.ready else 0
        # /healthcheck/fail turns live off but leaves the state LIVE (as Envoy does).
        state = self.server_state
        if state == "DRAINING" and not self._stopping:
            state = "LIVE"
        server.state = SERVER_STATES[state]
        server.uptime = int(time.time() - self.started)
        merged.update((name, (kind, value)) for name, kind, value in server.items())
        merged.update(self.reload.stats())
        return merged

    async def host_stats(self) -> HostSnapshot:
        snaps = await asyncio.gather(
            *(c.request("clusters") for c in self._clients.values()), return_exceptions=True
        )
        return merge_hosts(s for s in snaps if isinstance(s, dict))

    async def recent(self, n: int) -> list[dict[str, object]]:
        """The last `n` streams the workers finished, oldest first."""
        answers = await asyncio.gather(*(c.request("recent", n=n) for c in self._clients.values()), return_exceptions=True)
        records = [r for a in answers if isinstance(a, list) for r in a]
        records.sort(key=lambda r: float(r.get("time") or 0))
        return records[-n:]

    async def reset_counters(self) -> None:
        await asyncio.gather(*(c.request("reset_counters") for c in self._clients.values()))

    async def set_log_level(self, level: str) -> None:
        setup_logging(level)
        self.args.log_level = level  # workers started later inherit it
        await asyncio.gather(*(c.request("logging", level=level) for c in self._clients.values()))

    async def drain_listeners(self) -> None:
        # Envoy stops the listeners and stays LIVE: readiness is not what this changes.
        await asyncio.gather(*(c.request("drain") for c in self._clients.values()))

    def quit(self) -> None:
        asyncio.get_running_loop().call_soon(self.shutdown)

    def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy

    def reload_dump(self) -> dict[str, object] | None:
        """The reload counters and the last rejected reload, for /config_dump."""
        return self.reload.dump()

    async def apply_config(self, bootstrap: Bootstrap) -> None:
        """A reloaded config: every worker swaps to it; workers started later get it too."""
        self.bootstrap = bootstrap
        await asyncio.gather(
            *(c.request("config", bootstrap=bootstrap) for c in self._clients.values()), return_exceptions=True
        )

    # -- workers -----------------------------------------------------------------------------
    def serve(self) -> int:
        """Bind admin, stats and readiness, fork the workers, run the main loop until the drain
        is over. Workers are forked only while the loop is stopped (first after the admin is
        bound, as Envoy binds it first: /ready says 503 until every worker is up; later to
        replace one that died): a fork from inside a running loop would hand the child a loop
        in the middle of its run."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._done = loop.create_future()
        self._new_executor(loop)
        loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        loop.add_signal_handler(signal.SIGINT, self.shutdown)
        try:
            servers = loop.run_until_complete(self._listen())
            self._to_fork = list(range(self.concurrency))
            main = loop.create_task(self.run(servers))
            main.add_done_callback(lambda _: loop.stop())
            while True:
                self._fork_replacements(loop)
                loop.run_forever()
                if main.done():
                    return main.result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            loop.close()

    def _fork(self, index: int) -> tuple[WorkerProcess, socket.socket]:
        """Fork worker `index` on the current config (never while the loop runs)."""
        start = WorkerStart(
            self.bootstrap, index, self.args.drain_time, self.args.log_level,
            getattr(self.args, "access_log_config", None),
        )  # fmt: skip
        proc, sock = fork_worker(start)
        self._procs[index] = proc  # from now on a shutdown signals it
        return proc, sock

    def _fork_replacements(self, loop: asyncio.AbstractEventLoop) -> None:
        wanted, self._to_fork = self._to_fork, []
        if self._stopping or not wanted:
            return
        # The config reloads' thread is joined first: a fork would copy its locks held.
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for index in wanted:
            self._attach_soon(loop, index, *self._fork(index))
        self._new_executor(loop)

    def _new_executor(self, loop: asyncio.AbstractEventLoop) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config")
        loop.set_default_executor(self._executor)

    def _attach_soon(self, loop: asyncio.AbstractEventLoop, index: int, proc: WorkerProcess, sock: socket.socket) -> None:
        """The worker's control channel and exit watch, once the loop runs."""
        self._tasks.add(task := loop.create_task(self._attach(index, proc, sock)))
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, index: int, proc: WorkerProcess, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        self._clients[index] = ControlClient(reader, writer, self._on_event)
        # A pidfd turns readable when the process exits (a zombie's too, until it is reaped).
        pidfd = os.pidfd_open(proc.pid)
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit, index, proc, pidfd)

    def _on_event(self, msg: Message) -> None:
        if msg.get("op") == "ready":
            self._ready.add(int(msg["worker"]))
            self._ever_ready.add(int(msg["worker"]))
            if len(self._ready) == self.concurrency:
                log.info("all %d workers ready", self.concurrency)

    def _on_exit(self, index: int, proc: WorkerProcess, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        proc.poll()  # reaps it: the pidfd said it has exited
        self._ready.discard(index)
        client = self._clients.pop(index, None)
        if client is not None:
            client.close()
        if self._procs.get(index) is proc:
            del self._procs[index]
        if self._stopping:
            if not self._procs and self._done is not None and not self._done.done():
                self._done.set_result(0)
            return
        if index not in self._ever_ready:
            log.error("worker %d exited with status %s before it was ready", index, proc.returncode)
            self.shutdown(exit_code=1)
            return
        log.error("worker %d exited with status %s; starting a new one", index, proc.returncode)
        self._to_fork.append(index)
        loop.stop()  # serve() forks the new one once the loop is out of its run

    def shutdown(self, exit_code: int = 0) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._exit_code = exit_code
        log.info("shutting down: draining for up to %.1fs", self.args.drain_time)
        for proc in self._procs.values():
            proc.send_signal(signal.SIGTERM)
        if not self._procs and self._done is not None and not self._done.done():
            self._done.set_result(0)

    async def _listen(self) -> list[asyncio.AbstractServer]:
        servers: list[asyncio.AbstractServer] = []
        b = self.bootstrap
        try:
            if b.admin is not None:
                a = b.admin.address
                servers.append(await http_server.serve(a.address, a.port, admin_routes(self)))
            if b.stats_address is not None:
                a = b.stats_address
                servers.append(await http_server.serve(a.address, a.port, stats_routes(self)))
            if b.readiness_address is not None:
                a = b.readiness_address
                servers.append(await http_server.serve(a.address, a.port, readiness_routes(self)))
        except OSError as e:
            log.error("cannot start: %s", e)
            self.shutdown(exit_code=1)
        return servers

    async def run(self, servers: list[asyncio.AbstractServer]) -> int:
        assert self._done is not None, "run() is started by serve()"
        if self.args.config and not self._stopping:
            watcher = ConfigWatcher(
                self.args.config, self.bootstrap, self.apply_config, self.reload, loader=getattr(self.args, "loader", load)
            )
            self._tasks.add(asyncio.get_running_loop().create_task(watcher.run()))
        try:
            await asyncio.shield(self._done)
        finally:
            for s in servers:
                s.close()
        await self._reap()
        return self._exit_code

    async def _reap(self) -> None:
        deadline = time.monotonic() + self.args.drain_time + 5.0
        for proc in list(self._procs.values()):
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, 0)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        labels = workload.resolve_labels(args.workload_labels)
    except ValueError as e:
        print(f"pysidecar: --workload-labels: {e}", file=sys.stderr)
        return 2
    try:
        interception = resolve_interception_mode(args.interception_mode, os.environ)
    except ValueError as e:
        print(f"pysidecar: {e}", file=sys.stderr)
        return 2
    # The pod's labels, namespace and interception mode are fixed for its life: every reload
    # compiles with them.
    namespace = workload.resolve_namespace(args.namespace)
    # --access-log wins over the MeshConfig's accessLogFile, which is compiled into the
    # listeners' filters (so a reload changes it) only when the flag is absent.
    args.loader = functools.partial(
        load,
        workload_labels=labels,
        namespace=namespace,
        mesh_access_log=args.access_log is None,
        interception_mode=interception,
        mode=args.mode,
        cert_dir=args.cert_dir,
    )
    try:
        bootstrap = args.loader(args.config)
    except ConfigError as e:
        print(f"pysidecar: configuration error: {e}", file=sys.stderr)
        return 2
    access_log = from_flags(args.access_log, args.access_log_format)
    try:
        formatter(access_log)  # compiled again in each worker; here to fail before binding
    except FormatError as e:
        print(f"pysidecar: configuration error: --access-log-format: {e}", file=sys.stderr)
        return 2
    args.access_log_config = access_log if access_log.path else None
    log.info(
        "pysidecar starting: %d listeners, %d clusters from %s, concurrency %d, data path %s",
        len(bootstrap.listeners), len(bootstrap.clusters), ", ".join(bootstrap.sources), args.concurrency,
        native.status(),
    )  # fmt: skip
    return Supervisor(bootstrap, args).serve()
