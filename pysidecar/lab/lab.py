"""A lab: pods (network namespaces) joined by one Linux bridge that lives in its own namespace.

Topology, for a lab with id `psc1a2b`:

    netns psc1a2b-sw:   br0 ── v1-app ┐          (the switch; no addresses, no routes)
                             ── v2-ext ┐│
    netns psc1a2b-app:  lo, eth0 198.18.0.1/15 ◀┘│   (veth pair, created *inside* the lab
    netns psc1a2b-ext:  lo, eth0 198.19.0.10/15 ◀┘    namespaces: the root ns never sees it)

Promises:
- No lab namespace has a route off the machine: the only routes are the on-link 198.18.0.0/15
  (and 2001:2::/64); nothing is ever attached to the root namespace or changed in it.
- Every creation step registers its undo *before* it runs, and `close()` runs the undos in
  reverse (processes, then pods, then the switch, then the temp dir), continuing past
  failures and raising one LabError listing them at the end; close() is idempotent. The
  owner marker goes last and only when all else went, so leftovers stay findable.
- A lab's id is unique on the machine (its marker directory is created exclusively), so
  concurrent labs never collide, and a crashed lab is found by `cleanup_stale`.
"""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from types import TracebackType

from pysidecar.lab import addressing, procs, registry
from pysidecar.lab.netns import ETC_NETNS_DIR, LabError, ip, list_namespaces
from pysidecar.lab.pod import Pod

BRIDGE = "br0"
IPV4_PREFIXLEN = addressing.IPV4_NET.prefixlen  # on-link for every pod: no routes needed
IPV6_PREFIXLEN = addressing.IPV6_NET.prefixlen
ID_ATTEMPTS = 16


class Lab:
    """Pods as network namespaces. Use as a context manager, or call close() yourself."""

    def __init__(self, prefix: str | None = None, *, persistent: bool = False) -> None:
        self.pods: dict[str, Pod] = {}
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log_counts: dict[str, int] = {}
        self._next_index = 1
        self.closed = False
        self.persistent = persistent
        self.prefix, self.logdir = self._claim_id(prefix, persistent)
        self.switch_ns = f"{self.prefix}-sw"
        atexit.register(self._close_at_exit)
        try:
            self._create_switch()
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------------------

    def _claim_id(self, prefix: str | None, persistent: bool) -> tuple[str, str]:
        for _ in range(ID_ATTEMPTS if prefix is None else 1):
            labid = prefix or f"psc{secrets.token_hex(2)}"
            logdir = tempfile.mkdtemp(prefix=f"{labid}-")
            try:
                registry.write_owner(labid, logdir, persistent)
            except FileExistsError:
                shutil.rmtree(logdir, ignore_errors=True)
                continue
            # The marker is removed by close() only after every undo succeeded, so whatever a
            # failed close leaves behind can still be found by cleanup_stale.
            self._push(
                "remove logdir", functools.partial(shutil.rmtree, logdir, ignore_errors=True)
            )
            return labid, logdir
        raise LabError(
            f"lab id {prefix!r} is taken (marker {registry.marker_dir(prefix)} exists)"
            if prefix
            else "could not find a free lab id"
        )

    def _push(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    def _create_switch(self) -> None:
        sw = self.switch_ns
        self._add_namespace(sw)
        # No STP (ports forward at once) and no multicast snooping (IPv6 ND just floods).
        ip(*f"-n {sw} link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0".split())
        ip("-n", sw, "link", "set", BRIDGE, "up")

    def _add_namespace(self, ns: str) -> None:
        # Refuse a name that exists already: the undo below must only ever delete our own.
        if ns in list_namespaces():
            raise LabError(f"network namespace {ns} already exists (stale? see cleanup_stale)")
        self._push(f"delete namespace {ns}", lambda: registry.remove_namespace(ns))
        ip("netns", "add", ns)

    def add_pod(
        self,
        name: str,
        hostnames: Sequence[str] = (),
        address: str | None = None,
        ipv6: bool = False,
        address6: str | None = None,
    ) -> Pod:
        """Create pod `name` (netns `<prefix>-<name>`) on the lab switch and return it.

        `hostnames` (and the pod's own name) resolve to its IPv4 address in every pod of the
        lab, including pods added later. `address6` implies `ipv6`.
        """
        self._check_open()
        addressing.check_pod_name(name)
        for h in hostnames:
            addressing.check_hostname(h)
        if name in self.pods:
            raise ValueError(f"pod {name!r} already exists in lab {self.prefix}")
        taken = {n for p in self.pods.values() for n in (p.name, *p.hostnames)}
        clash = taken & {name, *hostnames}
        if clash:
            raise ValueError(f"names {sorted(clash)} already belong to another pod")
        index = self._next_index
        self._next_index += 1
        v4 = str(addressing.check_ipv4(address) if address else addressing.ipv4_for(index))
        if v4 in {p.ip for p in self.pods.values()}:
            raise ValueError(f"address {v4} is already used in lab {self.prefix}")
        v6: str | None = None
        if ipv6 or address6:
            v6 = str(addressing.check_ipv6(address6) if address6 else addressing.ipv6_for(index))

        ns = f"{self.prefix}-{name}"
        veth = f"v{index}-{name}"[:15]  # IFNAMSIZ - 1
        self._add_namespace(ns)
        etc = os.path.join(ETC_NETNS_DIR, ns)
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(addressing.RESOLV_CONF)
        sw, v4len, v6len = self.switch_ns, IPV4_PREFIXLEN, IPV6_PREFIXLEN
        # Both ends are born inside lab namespaces: the switch end here, eth0 moved to the pod.
        ip(*f"-n {sw} link add {veth} type veth peer name eth0 netns {ns}".split())
        ip(*f"-n {sw} link set {veth} master {BRIDGE} up".split())
        ip(*f"-n {ns} link set lo up".split())
        ip(*f"-n {ns} addr add {v4}/{v4len} dev eth0".split())
        if v6:
            # nodad: usable at once, no 1-2 s of "tentative" after link up.
            ip(*f"-n {ns} addr add {v6}/{v6len} dev eth0 nodad".split())
        ip(*f"-n {ns} link set eth0 up".split())

        pod = Pod(self, name, ns, v4, v6, hostnames)
        self.pods[name] = pod
        self._write_hosts()
        return pod

    def _write_hosts(self) -> None:
        text = addressing.hosts_file((p.ip, (p.name, *p.hostnames)) for p in self.pods.values())
        for p in self.pods.values():
            path = os.path.join(ETC_NETNS_DIR, p.ns, "hosts")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)  # a running `ip netns exec` never sees half a file

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    # -- processes and logs ------------------------------------------------------------

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop `proc` (and its process group) when the lab closes."""
        self._procs.append(proc)
        self._push(f"stop pid {proc.pid}", lambda: procs.stop(proc))

    def log_name(self, pod: str, what: str) -> str:
        base = f"{pod}-{os.path.basename(what)}"
        n = self._log_counts.get(base, 0)
        self._log_counts[base] = n + 1
        return base if n == 0 else f"{base}.{n}"

    def logs(self, tail: int = 4000) -> str:
        """The last `tail` characters of every log file in logdir, for failure messages."""
        out: list[str] = []
        try:
            names = sorted(os.listdir(self.logdir))
        except FileNotFoundError:
            return ""
        for name in names:
            with open(os.path.join(self.logdir, name), errors="replace") as f:
                text = f.read()
            if text:
                out.append(f"--- {name} ---\n{text[-tail:]}")
        return "\n".join(out)

    # -- teardown ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise LabError(f"lab {self.prefix} is closed")

    def detach(self) -> None:
        """Leave everything running and in place (for `pysidecar lab up`); close() is a no-op."""
        self._undo.clear()
        self.closed = True
        atexit.unregister(self._close_at_exit)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._close_at_exit)
        errors: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as e:
                errors.append(f"{what}: {e}")
        if not errors:
            shutil.rmtree(registry.marker_dir(self.prefix), ignore_errors=True)
        if errors:  # the marker stays: cleanup_stale retries once this process is gone
            raise LabError(f"lab {self.prefix} left things behind:\n  " + "\n  ".join(errors))

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except LabError as e:
            print(e)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab({self.prefix!r}, pods={list(self.pods)})"
