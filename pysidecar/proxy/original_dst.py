"""SO_ORIGINAL_DST: where a REDIRECTed connection was going before iptables changed it.

Promises: `original_dst(sock)` returns the pre-NAT destination of an accepted TCP socket, for
IPv4 (`getsockopt(SOL_IP, SO_ORIGINAL_DST=80, 16)`) and IPv6 (`getsockopt(IPPROTO_IPV6,
IP6T_SO_ORIGINAL_DST=80, 28)`), or None when the kernel has no NAT record for it (the caller
then uses the socket's local address, as Envoy's original_dst listener filter does).
This module is the only place that knows the sockaddr layouts.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

from pysidecar.model import SocketAddress

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


class _Sock(Protocol):
    """What we need of a socket; asyncio transports hand out a socket-like object."""

    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def original_dst(sock: _Sock) -> SocketAddress | None:
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
            (port,) = struct.unpack_from("!H", raw, 2)
            return SocketAddress(socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
            (port,) = struct.unpack_from("!H", raw, 2)
            ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            return SocketAddress(ip, port)
    except OSError:
        return None
    return None
