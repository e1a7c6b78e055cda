"""A pod: one network namespace with eth0 on the lab switch, and ways to run things inside it.

Promises:
- `run` and `spawn` execute through `ip netns exec`, so the command sees the pod's network
  *and* the pod's /etc/hosts; `netns()` moves only the calling thread and remaps no files.
- Every process `spawn` starts is tracked by the lab and stopped (process group SIGTERM, SIGKILL
  after 3 s) when the lab closes, whatever the test did.
- `spawn_proxy` runs `pysidecar` as the proxy uid/gid (default 1337, Istio's), with the ambient
  capability CAP_DAC_READ_SEARCH only so it can read a checkout under a private home directory;
  the iptables owner match sees uid and gid, never capabilities.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from pysidecar.lab.netns import LabError, entered, exec_prefix, listening_tcp_ports

if TYPE_CHECKING:
    from pysidecar.lab.lab import Lab

# What Istio's injector passes to istio-iptables (see shared/reference/interception.md).
# A list as callers extend it (`[*DEFAULT_ISTIO_ARGS, "-o", "22"]`); never mutate it.
DEFAULT_ISTIO_ARGS: list[str] = [
    "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
    "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
]  # fmt: skip
PROXY_UID = 1337
PROXY_CAPS = ("dac_read_search",)

Output = int | IO[Any] | None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Pod:
    """A lab pod. Create it with `Lab.add_pod`, never directly."""

    def __init__(
        self, lab: Lab, name: str, ns: str, ip: str, ip6: str | None, hostnames: Sequence[str]
    ) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ip = ip
        self.ip6 = ip6
        self.hostnames = tuple(hostnames)
        self.proxy: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Pod({self.name!r}, ns={self.ns!r}, ip={self.ip!r}, ip6={self.ip6!r})"

    # -- running things ----------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = 10,
        check: bool = False,
        user: int | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """subprocess.run inside the pod, stdout/stderr captured as text.

        Output is decoded as UTF-8 with surrogateescape and no newline translation: binary
        output never raises, and `r.stdout.encode("utf-8", "surrogateescape")` is exact.
        """
        raw = subprocess.run(
            [*exec_prefix(self.ns, user), *argv],
            capture_output=True,
            timeout=timeout,
            input=input.encode() if input is not None else None,
            env=dict(env) if env is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        r = subprocess.CompletedProcess(
            raw.args, raw.returncode, _text(raw.stdout), _text(raw.stderr)
        )
        if check:
            r.check_returncode()
        return r

    def spawn(
        self,
        argv: Sequence[str],
        user: int | None = None,
        stdout: Output = None,
        stderr: Output = None,
        env: Mapping[str, str] | None = None,
        caps: Sequence[str] = (),
        log: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Popen inside the pod in a new session, tracked by the lab.

        When neither stdout nor stderr is given, both go to `<logdir>/<pod>-<log>.out|.err`
        (`log` defaults to the program's name plus a counter), so failing tests can show them.
        """
        opened: list[IO[bytes]] = []
        if stdout is None and stderr is None:
            base = os.path.join(self.lab.logdir, self.lab.log_name(self.name, log or argv[0]))
            stdout = open(base + ".out", "wb")  # noqa: SIM115 - closed below, child keeps its copy
            stderr = open(base + ".err", "wb")  # noqa: SIM115
            opened = [stdout, stderr]
        merged_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.Popen(
                [*exec_prefix(self.ns, user, caps), *argv],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=merged_env,
                start_new_session=True,  # pgid == pid: stop() kills the group, never us
            )
        finally:
            for f in opened:
                f.close()
        self.lab.track(proc)
        return proc

    def spawn_server(
        self, kind: str, port: int, *args: str, timeout: float = 10
    ) -> subprocess.Popen[bytes]:
        """Start `python -m pysidecar.lab.servers KIND --port PORT ARGS` and wait until it listens."""
        proc = self.spawn(
            [sys.executable, "-m", "pysidecar.lab.servers", kind, "--port", str(port), *args],
            env={"PYTHONUNBUFFERED": "1"},
            log=f"{kind}{port}",
        )
        self.wait_port(port, timeout=timeout, proc=proc)
        return proc

    def install_interception(
        self, args: Sequence[str] = DEFAULT_ISTIO_ARGS, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `pysidecar init ARGS` in the pod; raise LabError with its stderr when it fails."""
        r = self.run([sys.executable, "-m", "pysidecar", "init", *args], timeout=timeout)
        if r.returncode != 0:
            raise LabError(
                f"pod {self.name}: `pysidecar init {' '.join(args)}` exited {r.returncode}:\n"
                f"{r.stderr.strip()}\n{r.stdout.strip()}"
            )
        return r

    def spawn_proxy(
        self,
        args: Sequence[str] = ("run",),
        uid: int = PROXY_UID,
        env: Mapping[str, str] | None = None,
        caps: Sequence[str] = PROXY_CAPS,
    ) -> subprocess.Popen[bytes]:
        """Start `pysidecar ARGS` in the pod as uid=gid=`uid` with ambient `caps` (TPROXY wants
        "net_admin" too); logs go to the lab's logdir."""
        proc = self.spawn(
            [sys.executable, "-m", "pysidecar", *args],
            user=uid,
            caps=caps,
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
            log="proxy",
        )
        self.proxy = proc
        return proc

    # -- waiting and entering ----------------------------------------------------------

    def listening_ports(self) -> set[int]:
        return listening_tcp_ports(self.ns)

    def wait_port(
        self, port: int, timeout: float = 10, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Return once a TCP socket listens on `port` in this pod (read from /proc, no connect).

        With `proc`, fail early (LabError with the lab's logs) when that process exits first.
        """
        deadline = time.monotonic() + timeout
        while port not in listening_tcp_ports(self.ns):
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"pod {self.name}: process {proc.pid} exited ({proc.returncode}) before "
                    f"listening on tcp port {port}\n{self.lab.logs()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pod {self.name}: nothing listens on tcp port {port} after {timeout}s"
                )
            time.sleep(0.02)

    @contextlib.contextmanager
    def netns(self) -> Iterator[Pod]:
        """The calling thread enters this pod's netns for the body (sockets made inside stay)."""
        with entered(self.ns):
            yield self
