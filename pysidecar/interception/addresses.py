"""Facts about the pod's network namespace that decide which rules to install.

Promises:
- `has_global_ipv6()` is True when some interface holds an IPv6 address that is neither
  loopback nor link-local (Istio's getLocalIP test); then, or with --dual-stack, ip6tables
  rules are installed too. Read through netlink (pyroute2), falling back to `ip -6 addr`.
- `resolv_conf_servers()` returns the nameservers of /etc/resolv.conf (for --redirect-dns),
  empty when the file is missing.
- `ensure_ipv6_passthrough_address()` adds ::6/128 to lo (Istio's configureIPv6Addresses), so
  the inbound passthrough can bind it; "already there" is success.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from pathlib import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _is_global(text: str) -> bool:
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast)


def ipv6_addresses() -> list[str]:
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return [str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(family=socket.AF_INET6)]
    except Exception:  # pyroute2 missing or netlink refused: ask iproute2 instead
        proc = subprocess.run(["ip", "-6", "-o", "addr", "show"], capture_output=True,
                              text=True, check=False)
        out = []
        for line in proc.stdout.splitlines():
            words = line.split()
            if "inet6" in words:
                out.append(words[words.index("inet6") + 1].split("/")[0])
        return out


def has_global_ipv6() -> bool:
    return any(_is_global(a) for a in ipv6_addresses())


def resolv_conf_servers(path: Path = Path("/etc/resolv.conf")) -> tuple[IPAddress, ...]:
    try:
        text = path.read_text()
    except OSError:
        return ()
    servers: list[IPAddress] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append(ipaddress.ip_address(words[1].split("%")[0]))
            except ValueError:
                continue
    return tuple(dict.fromkeys(servers))


def ensure_ipv6_passthrough_address() -> None:
    proc = subprocess.run(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "exists" not in proc.stderr.lower():
        raise RuntimeError(f"adding ::6/128 to lo failed: {proc.stderr.strip()}")
