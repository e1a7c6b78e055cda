"""Stopping lab processes: by process group first, then whatever is still inside a namespace.

Promises:
- `stop(proc)` sends SIGTERM to the process group, waits up to `grace` seconds, then SIGKILLs
  the group; it never raises for a process that is already gone.
- `kill_namespace_pids(ns)` SIGKILLs every process still living in a lab namespace (daemons that
  left their process group, shells started by `lab shell`), so the namespace can really go.
Every lab process is started with `start_new_session=True`, so its pgid equals its pid and
killing the group never reaches the test runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from pysidecar.lab.netns import namespace_pids

DEFAULT_GRACE = 3.0


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = DEFAULT_GRACE
) -> None:
    """SIGTERM the process group of `proc`, SIGKILL it after `grace` seconds, reap `proc`."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children may outlive the leader; the group id stays valid while any member lives.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in D state: nothing more to do
        proc.wait(timeout=grace)


def kill_namespace_pids(ns: str, timeout: float = DEFAULT_GRACE) -> list[int]:
    """SIGKILL every process inside `ns`; return the pids that were still there."""
    pids = [p for p in namespace_pids(ns) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if pids:
            time.sleep(0.02)
    return pids


def pid_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None.

    Together with the pid it identifies a process across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses; fields after the last ')' are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])


def is_alive(pid: int, start_time: int | None) -> bool:
    """True when `pid` exists and (if known) is the same process that started at `start_time`."""
    now = pid_start_time(pid)
    if now is None:
        return False
    return start_time is None or now == start_time
