"""`--run-validation`: prove that the installed rules really redirect (Istio's validator).

Promises:
- Listens on 127.0.0.1 at the outbound and inbound capture ports (-p, -z). A child process
  (fork, then setgid/setuid to the proxy gid/uid) keeps connecting from 127.0.0.1 to
  127.0.0.6:<probe port> (15002). Nothing listens there: only the ISTIO_OUTPUT rule for the
  proxy uid ("proxy calls the pod's own address -> inbound") can bring it to one of our
  listeners. The listener reads SO_ORIGINAL_DST and passes when the port is the probe port.
- Returns within `timeout` seconds either way; the child is always killed and reaped and the
  sockets closed. Only loopback is used.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass

from pysidecar.interception.options import InterceptionOptions

# linux/netfilter_ipv4.h: SO_ORIGINAL_DST; sockaddr_in is 16 bytes.
SO_ORIGINAL_DST = 80
_SOCKADDR_IN_LEN = 16
PROBE_SOURCE = "127.0.0.1"
# 127.0.0.6 is the inbound passthrough source; any 127/8 address other than the loopback CIDR
# works, Istio picks this one because it is already special in the rules.
PROBE_TARGET = "127.0.0.6"
_RETRY_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class ValidationResult:
    passed: bool
    detail: str


def original_destination(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_LEN)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


def _resolve_id(value: str, lookup: str) -> int:
    if value.isdigit():
        return int(value)
    if lookup == "uid":
        return pwd.getpwnam(value).pw_uid
    return grp.getgrnam(value).gr_gid


def _client_loop(target_port: int, uid: int, gid: int) -> None:
    """Runs in the forked child; never returns."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                with contextlib.suppress(OSError):
                    s.bind((PROBE_SOURCE, 0))
                    s.connect((PROBE_TARGET, target_port))
            time.sleep(_RETRY_INTERVAL)
    finally:
        os._exit(0)


def _listen(port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((PROBE_SOURCE, port))
        s.listen(16)
    except OSError:
        s.close()
        return None
    s.setblocking(False)
    return s


def run_validation(opts: InterceptionOptions) -> ValidationResult:
    ports = tuple(dict.fromkeys((opts.envoy_port, opts.inbound_capture_port)))
    listeners = [s for s in (_listen(p) for p in ports) if s is not None]
    if not listeners:
        return ValidationResult(False, f"could not listen on 127.0.0.1 ports {ports}")
    uid = _resolve_id(opts.proxy_uids[0], "uid")
    gid = _resolve_id(opts.proxy_gids[0], "gid")
    seen: list[str] = []
    pid = os.fork()
    if pid == 0:
        for s in listeners:
            s.close()
        _client_loop(opts.probe_port, uid, gid)
    try:
        deadline = time.monotonic() + opts.probe_timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(listeners, [], [], left)
            for listener in ready:
                try:
                    conn, _peer = listener.accept()
                except BlockingIOError:
                    continue
                with conn:
                    try:
                        ip, port = original_destination(conn)
                    except OSError as exc:
                        seen.append(f"no original destination ({exc.strerror})")
                        continue
                    if port == opts.probe_port:
                        local_port = listener.getsockname()[1]
                        return ValidationResult(
                            True, f"connection to {ip}:{port} as uid {uid} was redirected to "
                                  f"127.0.0.1:{local_port}")
                    seen.append(f"{ip}:{port}")
        extra = f" (saw only: {', '.join(seen)})" if seen else ""
        return ValidationResult(
            False, f"no connection from uid {uid} to {PROBE_TARGET}:{opts.probe_port} reached "
                   f"ports {', '.join(map(str, ports))} within {opts.probe_timeout:g}s{extra}; "
                   "the iptables rules are missing or do not redirect")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for s in listeners:
            s.close()
