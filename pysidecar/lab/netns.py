"""Thin, readable wrappers over iproute2 and setns(2): the only place the lab touches the kernel.

Promises:
- `ip(...)` runs `ip` and raises `LabError` carrying the command and its stderr on failure.
- `entered(ns)` moves the *calling thread* (not the process) into a named netns and always
  moves it back; sockets created inside keep that namespace for their whole life.
- Nothing here ever changes the root namespace's network configuration: every command either
  targets a named lab namespace (`ip -n NS ...`, `ip netns exec NS ...`) or only reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Sequence

NETNS_DIR = "/run/netns"
ETC_NETNS_DIR = "/etc/netns"
CLONE_NEWNET = 0x40000000
TCP_LISTEN = "0A"  # socket state column of /proc/net/tcp{,6}


class LabError(RuntimeError):
    """A lab step failed; the message names the step and carries the tool's stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...`; on failure raise with the exact command and its stderr."""
    cmd = ["ip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)!r} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (the entries of /run/netns)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def namespace_pids(ns: str) -> list[int]:
    """Pids of every process whose network namespace is `ns` (`ip netns pids`)."""
    r = ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns only exists from Python 3.12; we support 3.11.
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with the calling thread inside netns `ns`; restore the old netns after.

    setns(CLONE_NEWNET) is per thread, so other threads (and the asyncio loop of another
    thread) are unaffected. /etc/hosts is *not* remapped here, unlike `ip netns exec`.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def listening_tcp_ports(ns: str) -> set[int]:
    """TCP ports in LISTEN state inside `ns`, IPv4 and IPv6, read from the thread's /proc view."""
    ports: set[int] = set()
    with entered(ns):
        # /proc/thread-self/net follows the netns of this thread, which is now `ns`.
        for name in ("tcp", "tcp6"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    lines = f.readlines()[1:]
            except FileNotFoundError:  # tcp6 is absent when IPv6 is disabled
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[3] == TCP_LISTEN:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def exec_prefix(ns: str, user: int | None = None, caps: Sequence[str] = ()) -> list[str]:
    """argv prefix that runs a command in `ns` (with its /etc/netns files), optionally as `user`.

    `user` sets uid and gid to the same number and clears supplementary groups, as Istio's
    sidecar runs (uid=gid=1337). `caps` are capability names kept as ambient capabilities
    across the uid change, e.g. "dac_read_search".
    """
    argv = ["ip", "netns", "exec", ns]
    if user is not None:
        argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        if caps:
            wanted = ",".join(f"+{c}" for c in caps)
            argv += [f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]
        argv.append("--")
    return argv
