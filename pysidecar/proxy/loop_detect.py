"""Forwarding loops to the proxy's own listeners: found before the upstream connect, not after.

A proxy that picks, as its upstream, an address one of its own bound listeners accepts on
connects to itself: a gateway sending a passthrough (ORIGINAL_DST) cluster to the original
destination, which for a listener bound on its own port is the gateway itself; a STATIC endpoint
naming the proxy's own address. Envoy does not check this: every round trip appends to
x-forwarded-for until the request headers pass their limit (431), after thousands of
connections. pysidecar refuses the attempt up front (README: "Forwarding loops"); the call
sites answer a local reply (HTTP) or close (TCP) and log a line naming the listener.

Promises:
- `own_sockets(listeners)` is the set of addresses the proxy's bound listeners accept on (main
  and additional addresses of each listener with bind_to_port), computed once per config.
- `forwarding_loop(host, port, own, local_ip)` answers the own address `host:port` reaches, or
  None: an exact match, or a wildcard listener (0.0.0.0 / ::) on that port when `host` is a
  loopback address or `local_ip`, the address the downstream connection arrived at (an address
  of this host, so of that wildcard listener).
- Only loops through this proxy's own sockets: a loop through another proxy (A → B → A), or
  through iptables interception of the proxy's own connections (which istio-iptables exempts by
  uid), is not seen here.
- Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pysidecar.model import Listener, SocketAddress

_WILDCARDS = ("0.0.0.0", "::")


def own_sockets(listeners: Iterable[Listener]) -> frozenset[SocketAddress]:
    out: set[SocketAddress] = set()
    for listener in listeners:
        if listener.bind_to_port:
            out.add(listener.address)
            out.update(listener.additional_addresses)
    return frozenset(out)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: not one of our sockets as far as we can tell without I/O


# The ports of the last `own` set seen (one per config): most upstreams share no port with a
# listener, and are answered without building a SocketAddress per request.
_ports_of: tuple[frozenset[SocketAddress], frozenset[int]] | None = None


def _own_ports(own: frozenset[SocketAddress]) -> frozenset[int]:
    global _ports_of
    cached = _ports_of
    if cached is None or cached[0] is not own:
        cached = _ports_of = (own, frozenset(a.port for a in own))
    return cached[1]


def forwarding_loop(host: str, port: int, own: frozenset[SocketAddress], local_ip: str) -> SocketAddress | None:
    if not own or port not in _own_ports(own):
        return None
    exact = SocketAddress(host, port)
    if exact in own:
        return exact
    if host == local_ip or _is_loopback(host):
        for wildcard in _WILDCARDS:
            candidate = SocketAddress(wildcard, port)
            if candidate in own:
                return candidate
    return None


# RFC 5842's 508 Loop Detected: a status no upstream answer can be mistaken for.
LOOP_STATUS = 508
LOOP_DETAILS = "forwarding_loop"


def loop_message(cluster: str, host: str, port: int, own: SocketAddress) -> str:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"forwarding loop: cluster {cluster} sends to {target}, which is this proxy's own listener {own}"
