"""Which listener and which filter chain handle a connection: Envoy's decisions as pure functions.

Promises:
- `ListenerTable.handoff(accepting, original_dst)` is Envoy's use_original_dst hand-off: the
  listener named by the exact `<ip>_<port>`, else the wildcard `0.0.0.0_<port>` (`[::]` for
  IPv6), else the accepting listener itself (whose own chains hold the catch-all).
- `select_filter_chain(listener, info)` is Envoy's filter chain match, stage by stage, the most
  specific candidate winning at each: destination port, destination IP prefix, server name
  (exact, then the longest `*.suffix`), transport protocol, application protocols; else the
  listener's default_filter_chain; else None (Envoy closes and counts no_filter_chain_match).
- No I/O: the table is built once per config and only read afterwards.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pysidecar.model import Bootstrap, FilterChain, Listener, SocketAddress


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the listener filters learned about a connection, used to pick a filter chain."""

    destination: SocketAddress
    transport_protocol: str = "raw_buffer"
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenerTable:
    by_address: dict[tuple[str, int], Listener] = field(default_factory=dict)

    @classmethod
    def build(cls, bootstrap: Bootstrap) -> ListenerTable:
        table: dict[tuple[str, int], Listener] = {}
        for lis in bootstrap.listeners:
            # First listener for an address wins, as Envoy refuses duplicates at load anyway.
            for addr in (lis.address, *lis.additional_addresses):
                table.setdefault((_normal_ip(addr.address), addr.port), lis)
        return cls(table)

    def handoff(self, accepting: Listener, original_dst: SocketAddress | None) -> Listener:
        if not accepting.use_original_dst or original_dst is None:
            return accepting
        ip = _normal_ip(original_dst.address)
        port = original_dst.port
        found = self.by_address.get((ip, port))
        if found is None:
            wildcard = "::" if ":" in ip else "0.0.0.0"
            found = self.by_address.get((wildcard, port))
            if found is None and wildcard == "::":
                # A dual-stack wildcard listener is written as 0.0.0.0 in Istio's config.
                found = self.by_address.get(("0.0.0.0", port))
        return found if found is not None else accepting


def _normal_ip(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _narrow(
    chains: Sequence[FilterChain], score: Callable[[FilterChain], int | None]
) -> list[FilterChain]:
    """Keep the chains with the best score; None means the chain cannot match at all."""
    best: int | None = None
    kept: list[FilterChain] = []
    for chain in chains:
        s = score(chain)
        if s is None:
            continue
        if best is None or s > best:
            best, kept = s, [chain]
        elif s == best:
            kept.append(chain)
    return kept


def _port_score(port: int) -> Callable[[FilterChain], int | None]:
    def score(c: FilterChain) -> int | None:
        want = c.filter_chain_match.destination_port
        if want is None:
            return 0
        return 1 if want == port else None

    return score


def _prefix_score(ip: str) -> Callable[[FilterChain], int | None]:
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(ip)
    except ValueError:
        addr = None

    def score(c: FilterChain) -> int | None:
        ranges = c.filter_chain_match.prefix_ranges
        if not ranges:
            return 0
        best: int | None = None
        for r in ranges:
            net = ipaddress.ip_network(str(r), strict=False)
            if addr is not None and addr.version == net.version and addr in net:
                best = max(best or 0, r.prefix_len + 1)
        return best

    return score


def _server_name_score(name: str) -> Callable[[FilterChain], int | None]:
    def score(c: FilterChain) -> int | None:
        names = c.filter_chain_match.server_names
        if not names:
            return 0
        best: int | None = None
        for want in names:
            if want == name:
                return 1_000_000
            if want.startswith("*.") and name.endswith(want[1:]) and len(name) > len(want) - 1:
                best = max(best or 0, len(want))
        return best

    return score


def _transport_score(transport: str) -> Callable[[FilterChain], int | None]:
    def score(c: FilterChain) -> int | None:
        want = c.filter_chain_match.transport_protocol
        if not want:
            return 0
        return 1 if want == transport else None

    return score


def _alpn_score(protocols: tuple[str, ...]) -> Callable[[FilterChain], int | None]:
    def score(c: FilterChain) -> int | None:
        want = c.filter_chain_match.application_protocols
        if not want:
            return 0
        return 1 if any(p in want for p in protocols) else None

    return score


def select_filter_chain(listener: Listener, info: ConnectionInfo) -> FilterChain | None:
    candidates: list[FilterChain] = list(listener.filter_chains)
    for score in (
        _port_score(info.destination.port),
        _prefix_score(info.destination.address),
        _server_name_score(info.server_name),
        _transport_score(info.transport_protocol),
        _alpn_score(info.application_protocols),
    ):
        candidates = _narrow(candidates, score)
        if not candidates:
            return listener.default_filter_chain
    return candidates[0]
