"""Lab addresses, names and hosts files: plain functions, no I/O.

Promises:
- Every lab address lies in the benchmarking ranges 198.18.0.0/15 (RFC 2544) and 2001:2::/48
  (RFC 5180), which no real network routes; anything else is refused.
- All pods of a lab share one on-link prefix (198.18.0.0/15 and 2001:2::/64), so no routes and no
  forwarding are ever needed.
- `hosts_file` is what a pod sees as /etc/hosts under `ip netns exec`: localhost, then every pod
  name and every extra hostname of the lab, each mapped to its pod's IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

IPV4_NET = ipaddress.IPv4Network("198.18.0.0/15")
IPV6_RANGE = ipaddress.IPv6Network("2001:2::/48")
IPV6_NET = ipaddress.IPv6Network("2001:2::/64")  # the one on-link /64 all v6 pods share

# Pod names become part of namespace names and hostnames: keep them short and boring.
POD_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
RESERVED_NAMES = frozenset({"sw", "localhost", "ip6-localhost", "ip6-loopback"})


def check_pod_name(name: str) -> None:
    if not POD_NAME.match(name) or name in RESERVED_NAMES:
        raise ValueError(
            f"pod name {name!r}: expected a lowercase letter then up to 15 letters/digits, "
            f"not one of {sorted(RESERVED_NAMES)}"
        )


def check_hostname(name: str) -> None:
    if not HOSTNAME.match(name) or name.lower() in RESERVED_NAMES:
        raise ValueError(f"hostname {name!r} is not a valid DNS name for a lab hosts file")


def ipv4_for(index: int) -> ipaddress.IPv4Address:
    """The automatic address of the index-th pod: 198.18.0.<index>, continuing into 198.18.1.x."""
    addr = IPV4_NET.network_address + index
    if not 0 < index < IPV4_NET.num_addresses - 1:
        raise ValueError(f"pod index {index} is outside {IPV4_NET}")
    return addr


def ipv6_for(index: int) -> ipaddress.IPv6Address:
    """The IPv6 address of the index-th pod: 2001:2::<index in hex>."""
    if index <= 0:
        raise ValueError(f"pod index {index} must be positive")
    return IPV6_NET.network_address + index


def check_ipv4(address: str) -> ipaddress.IPv4Address:
    addr = ipaddress.IPv4Address(address)
    if addr not in IPV4_NET or addr in (IPV4_NET.network_address, IPV4_NET.broadcast_address):
        raise ValueError(f"lab address {address} must be a host address inside {IPV4_NET}")
    return addr


def check_ipv6(address: str) -> ipaddress.IPv6Address:
    addr = ipaddress.IPv6Address(address)
    if addr not in IPV6_NET or addr == IPV6_NET.network_address:
        raise ValueError(f"lab IPv6 address {address} must be a host address inside {IPV6_NET}")
    return addr


def hosts_file(entries: Iterable[tuple[str, Iterable[str]]]) -> str:
    """Render /etc/hosts from (ipv4, names) pairs, after the usual localhost lines."""
    lines = [
        "# written by pysidecar.lab: lab pods resolve names only from this file",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    for addr, names in entries:
        names = list(names)
        if names:
            lines.append(f"{addr}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


# No nameserver is reachable from a lab pod; make resolvers give up at once instead of waiting.
RESOLV_CONF = (
    "# written by pysidecar.lab: no DNS in the lab, names come from /etc/hosts\n"
    "nameserver 127.0.0.1\n"
    "options timeout:1 attempts:1\n"
)
