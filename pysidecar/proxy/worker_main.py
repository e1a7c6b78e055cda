"""Starting a worker process: fork it from the main process, run its loop, leave with its status.

Promises:
- `fork_worker(start)` forks one worker and returns it (`WorkerProcess`) with the main
  process's end of their control socketpair. The main process imported the data path and
  loaded the config before; the collector runs and freezes every object first (gc.freeze), so a
  worker's interpreter, modules and config are the main process's pages shared copy-on-write,
  and a worker's collector never walks (never dirties) them. Reference counting still writes to
  the objects a worker uses (Python 3.11 has no immortal objects): what a worker touches becomes
  its own copy, what it only holds stays shared.
- Never with a running event loop: the caller forks before its loop exists or between two runs
  of it (`RuntimeError` otherwise), with no other thread alive. The child never runs, closes or
  collects the parent's loop and objects: it closes the parent's sockets as raw fds (admin, the
  other workers' control channels, the loop's self-pipe: a connection the parent closes must
  not stay open in a worker), resets the signal handlers and wakeup fd the parent's loop set,
  creates its own loop and leaves with os._exit, never returning into the parent's stack.
- SIGTERM and SIGINT are blocked across the fork and unblocked in the child only after its
  handlers are reset, so a signal meant for a worker never wakes the parent's loop.
- A worker's process name (/proc/<pid>/comm: ps, top) is `wrk:worker_<index>`, the name of
  Envoy's worker threads. Its exit status: 0 after a drain, 1 when it cannot bind its
  listeners or fails to start (the traceback on stderr).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import uvloop

from pysidecar.model import AccessLogConfig, Bootstrap
from pysidecar.proxy.logs import setup_logging
from pysidecar.proxy.worker import Worker

log = logging.getLogger(__name__)

# Signals whose handlers the parent's loop owns: blocked from fork until the child reset them.
_PARENT_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})


@dataclass(frozen=True, slots=True)
class WorkerStart:
    """Who a new worker is: what it serves and how."""

    bootstrap: Bootstrap
    index: int
    drain_time: float
    log_level: str
    access_log: AccessLogConfig | None


class WorkerProcess:
    """A forked worker as the main process sees it: its child, reaped with waitpid."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status once the worker has exited (and is reaped), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the status is lost, not the exit
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # Only before it is reaped: a zombie's pid is not reused, a reaped one's may be.
        if self.poll() is None:
            os.kill(self.pid, sig)


def fork_worker(start: WorkerStart) -> tuple[WorkerProcess, socket.socket]:
    if asyncio._get_running_loop() is not None:
        raise RuntimeError("fork_worker: a worker is never forked from inside a running event loop")
    if threading.active_count() > 1:
        raise RuntimeError("fork_worker: other threads are alive (their locks would be copied held)")
    ours, theirs = socket.socketpair()
    gc.collect()
    gc.freeze()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the parent's buffered text again
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # the worker: never returns
        status = 1
        try:
            ours.close()
            status = _run_child(start, theirs, mask)
        except BaseException:
            log.exception("worker %d failed", start.index)
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(status)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    theirs.close()
    return WorkerProcess(pid), ours


def _run_child(start: WorkerStart, sock: socket.socket, mask: Iterable[int]) -> int:
    _leave_parent_loop(keep=sock.fileno())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides on Ctrl-C
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _set_name(f"wrk:worker_{start.index}")
    setup_logging(start.log_level)
    sock.setblocking(False)

    async def run() -> int:
        worker = Worker(start.bootstrap, start.index, start.drain_time, start.access_log)
        return await worker.run(sock)

    result: int = uvloop.run(run())
    return result


def _leave_parent_loop(keep: int) -> None:
    """Forget the parent's event loop without touching it: its epoll set is shared with the
    parent, so its handles are never closed from here; its sockets are closed as raw fds (the
    objects wrapping them are frozen and never run again in this process)."""
    signal.set_wakeup_fd(-1)
    for sig in _PARENT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    asyncio.set_event_loop(None)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:  # the directory's own fd, gone by now
            continue


def _set_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError as e:  # a name is for people reading ps; a worker without one still serves
        log.debug("cannot name the worker process: %s", e)
