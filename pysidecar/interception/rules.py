"""The rule set istio-iptables would install, as data: options -> RuleSet per address family.

Promises:
- `build_rule_set(options, family)` is pure: no I/O, same input -> same output. It follows
  istio-iptables' `capture.Run()` step for step, so the emit order is Istio's (see
  docs: interception.md, "Order in which Istio emits rules").
- Every rule spec is written in the canonical order `iptables-save` prints (`-s -d -i -o -p`,
  then matches, then `-j`), with the implicit `-m tcp`/`-m udp` spelled out and marks in hex.
  That is what lets `state.py` compare the kernel's tables with the wanted set by string
  equality, and why `iptables-save -t nat` after apply is line-for-line the wanted listing.
- Chains we own are exactly those named ISTIO_*; rules we add to built-in chains are either
  jumps into ISTIO_* chains or of one of the `BUILTIN_SHAPES` (interface RETURNs, TPROXY
  marks), whatever the flags: that is how a later run with other flags (or `--cleanup-only`
  with none) still recognises them in the kernel.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pysidecar.interception.options import AGENT_DNS_PORT, InterceptionOptions, IPNetwork

ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"

OWNED_CHAIN_PREFIX = "ISTIO_"
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
# Tables in the order Istio's restore input lists them.
TABLE_ORDER = ("mangle", "nat", "raw")

# Envoy marks its inbound->app connections with 1338 in TPROXY mode (constants.OutboundMark).
OUTBOUND_MARK = 1338

_WORD = r"\S+"
_HEX = r"0x[0-9a-f]+"
_CONNMARK_MASKS = "--nfmask 0xffffffff --ctmask 0xffffffff"
_INTERFACE_RETURN = (rf"-i {_WORD} -j RETURN", rf"-o {_WORD} -j RETURN")
# Every rule build_rule_set() puts into a built-in chain that is not a jump into an ISTIO_*
# chain, as iptables-save prints it, with the flag-dependent words (interface, mark, owner,
# loopback CIDR) as patterns. Per (table, chain); a unit test checks the generator against it.
BUILTIN_SHAPES: dict[tuple[str, str], tuple[re.Pattern[str], ...]] = {
    key: tuple(re.compile(p) for p in patterns) for key, patterns in {
        ("nat", "PREROUTING"): _INTERFACE_RETURN[:1],     # -c, -k
        ("nat", "OUTPUT"): _INTERFACE_RETURN[1:],         # -c
        ("mangle", "PREROUTING"): (
            _INTERFACE_RETURN[0],                         # -c under TPROXY
            rf"-p tcp -m mark --mark {_HEX} -j CONNMARK --save-mark {_CONNMARK_MASKS}",
        ),
        ("mangle", "OUTPUT"): (
            _INTERFACE_RETURN[1],                         # -c under TPROXY
            rf"-o lo -p tcp -m mark --mark {_HEX} -j RETURN",
            rf"! -d {_WORD} -o lo -p tcp -m owner --(?:uid|gid)-owner {_WORD} "
            rf"-j MARK --set-xmark {_HEX}/0xffffffff",
            rf"-p tcp -m connmark --mark {_HEX} -j CONNMARK --restore-mark {_CONNMARK_MASKS}",
        ),
    }.items()
}


def has_builtin_shape(table: str, chain: str, spec: str) -> bool:
    """Whether `spec` in built-in `chain` of `table` is one of the non-jump rules we install."""
    return any(p.fullmatch(spec) for p in BUILTIN_SHAPES.get((table, chain), ()))


class Family(enum.Enum):
    V4 = "ipv4"
    V6 = "ipv6"


@dataclass(frozen=True, slots=True)
class Rule:
    """One iptables rule: `-A chain spec` (or `-I chain position spec`) in `table`."""

    table: str
    chain: str
    spec: tuple[str, ...]
    # 1-based insert position; None appends. Istio inserts only at the front of PREROUTING
    # (-k) and at fixed slots of its own fresh mangle ISTIO_INBOUND chain (TPROXY).
    position: int | None = None

    @property
    def text(self) -> str:
        return " ".join(self.spec)

    @property
    def target(self) -> str | None:
        spec = self.spec
        for i, word in enumerate(spec[:-1]):
            if word in ("-j", "-g"):
                return spec[i + 1]
        return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The wanted rules for one address family, in emit order."""

    family: Family
    rules: tuple[Rule, ...]

    def tables(self) -> tuple[str, ...]:
        present = {r.table for r in self.rules}
        return tuple(t for t in TABLE_ORDER if t in present)

    def owned_chains(self, table: str) -> tuple[str, ...]:
        """ISTIO_* chains of `table`: those holding rules and those jumped to, sorted."""
        names: set[str] = set()
        for r in self.rules:
            if r.table != table:
                continue
            if r.chain.startswith(OWNED_CHAIN_PREFIX):
                names.add(r.chain)
            target = r.target
            if target is not None and target.startswith(OWNED_CHAIN_PREFIX):
                names.add(target)
        return tuple(sorted(names))

    def final_chain(self, table: str, chain: str) -> tuple[str, ...]:
        """Our rules of one chain, in the order the kernel ends up holding them.

        For built-in chains this is the order among our own rules only; foreign rules may sit
        between the front (inserted) and back (appended) groups.
        """
        out: list[str] = []
        for r in self.rules:
            if r.table != table or r.chain != chain:
                continue
            if r.position is None:
                out.append(r.text)
            else:
                out.insert(min(r.position - 1, len(out)), r.text)
        return tuple(out)

    def chains_with_rules(self, table: str) -> tuple[str, ...]:
        seen = dict.fromkeys(r.chain for r in self.rules if r.table == table)
        return tuple(seen)


class _Builder:
    """Collects rules in order; the three helpers mirror Istio's AppendRule/InsertRule."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def append(self, table: str, chain: str, *spec: str) -> None:
        self.rules.append(Rule(table, chain, tuple(spec)))

    def insert(self, table: str, chain: str, position: int, *spec: str) -> None:
        self.rules.append(Rule(table, chain, tuple(spec), position))


def _host(net: IPNetwork | str) -> str:
    return str(net)


def _mark(value: int) -> str:
    # iptables-save prints marks in hex.
    return hex(value)


def _split_family(nets: Iterable[IPNetwork], family: Family) -> list[IPNetwork]:
    version = 4 if family is Family.V4 else 6
    return [n for n in nets if n.version == version]


def _has_loopback(nets: Iterable[IPNetwork]) -> bool:
    return any(n.network_address.is_loopback for n in nets)


def build_rule_set(opts: InterceptionOptions, family: Family) -> RuleSet:
    """The rules istio-iptables' capture.Run() produces for these options and this family."""
    b = _Builder()
    v4 = family is Family.V4
    loopback = str(opts.ipv4_loopback_cidr) if v4 else "::1/128"
    inbound_passthrough_src = "127.0.0.6/32" if v4 else "::6/128"
    tproxy = opts.mode == "TPROXY"
    tunnel = str(opts.inbound_tunnel_port)

    # Exclusions by CIDR/port are per family; Istio separates -x/-i into v4 and v6 lists.
    exclude_cidrs = _split_family(opts.outbound_ranges_exclude, family)
    include_cidrs = _split_family(opts.outbound_ranges_include, family)
    # "If loopback explicitly set via OutboundIPRangesInclude, then don't return": Istio checks
    # both families' lists, so a v6 loopback include also changes the v4 rules.
    include_has_loopback = _has_loopback(opts.outbound_ranges_include)

    dns_v4 = tuple(s for s in opts.dns_servers if s.version == 4)
    dns_v6 = tuple(s for s in opts.dns_servers if s.version == 6)
    redirect_dns = opts.redirect_dns and (opts.capture_all_dns or bool(opts.dns_servers))

    # 1. -c: interfaces never captured, in both directions.
    for iface in opts.exclude_interfaces:
        b.append("nat", "PREROUTING", "-i", iface, "-j", "RETURN")
        b.append("nat", "OUTPUT", "-o", iface, "-j", "RETURN")
    if tproxy:
        for iface in opts.exclude_interfaces:
            b.append("mangle", "PREROUTING", "-i", iface, "-j", "RETURN")
            b.append("mangle", "OUTPUT", "-o", iface, "-j", "RETURN")

    # 2. -k: inbound on VM interfaces is not inbound capture (it may become outbound, step 16).
    for iface in opts.kube_virt_interfaces:
        b.insert("nat", "PREROUTING", 1, "-i", iface, "-j", "RETURN")

    # 3. The tunnel port is never captured inbound.
    b.append("nat", ISTIO_INBOUND, "-p", "tcp", "-m", "tcp", "--dport", tunnel, "-j", "RETURN")

    # 4. The two redirect chains: outbound -> -p, inbound -> -z.
    b.append("nat", ISTIO_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(opts.envoy_port))
    b.append("nat", ISTIO_IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports",
             str(opts.inbound_capture_port))

    # 5. Inbound capture (-b / -d).
    _inbound(b, opts, loopback)

    # 6. All locally generated traffic is examined by ISTIO_OUTPUT.
    b.append("nat", "OUTPUT", "-j", ISTIO_OUTPUT)

    # 7. -o: outbound ports never captured; must come before the redirect-to-self rules.
    for port in opts.outbound_ports_exclude:
        b.append("nat", ISTIO_OUTPUT, "-p", "tcp", "-m", "tcp", "--dport", str(port), "-j", "RETURN")
        b.append("nat", ISTIO_OUTPUT, "-p", "udp", "-m", "udp", "--dport", str(port), "-j", "RETURN")

    # 8. The inbound passthrough cluster connects to the app from 127.0.0.6 / ::6.
    b.append("nat", ISTIO_OUTPUT, "-s", inbound_passthrough_src, "-o", "lo", "-j", "RETURN")

    # 9. uid then gid: app->own Service VIP via the proxy goes through inbound handling; the
    #    app talking to itself is left alone; the proxy's own egress is the loop guard.
    for owner_flag, owners in (("--uid-owner", opts.proxy_uids), ("--gid-owner", opts.proxy_gids)):
        for owner in owners:
            if redirect_dns and owner_flag == "--uid-owner":
                # Keep app -> agent DNS -> upstream from detouring through inbound Envoy.
                b.append("nat", ISTIO_OUTPUT, "!", "-d", loopback, "-o", "lo", "-p", "tcp",
                         "-m", "multiport", "!", "--dports", f"53,{tunnel}",
                         "-m", "owner", owner_flag, owner, "-j", ISTIO_IN_REDIRECT)
            else:
                b.append("nat", ISTIO_OUTPUT, "!", "-d", loopback, "-o", "lo", "-p", "tcp",
                         "-m", "tcp", "!", "--dport", tunnel,
                         "-m", "owner", owner_flag, owner, "-j", ISTIO_IN_REDIRECT)
            if not include_has_loopback:
                if redirect_dns:
                    b.append("nat", ISTIO_OUTPUT, "-o", "lo", "-p", "tcp", "-m", "tcp",
                             "!", "--dport", "53", "-m", "owner", "!", owner_flag, owner,
                             "-j", "RETURN")
                else:
                    b.append("nat", ISTIO_OUTPUT, "-o", "lo", "-m", "owner", "!", owner_flag,
                             owner, "-j", "RETURN")
            b.append("nat", ISTIO_OUTPUT, "-m", "owner", owner_flag, owner, "-j", "RETURN")

    # 10. DNS to the agent (optional).
    if redirect_dns:
        _dns(b, opts, family, dns_v4 if v4 else dns_v6)

    # 11. Envoy-aware apps and container-to-container traffic use localhost.
    b.append("nat", ISTIO_OUTPUT, "-d", loopback, "-j", "RETURN")

    # 12. -x before -i: exclusions win.
    for cidr in exclude_cidrs:
        b.append("nat", ISTIO_OUTPUT, "-d", _host(cidr), "-j", "RETURN")

    # 13. -q: ports always captured.
    for port in opts.outbound_ports_include:
        b.append("nat", ISTIO_OUTPUT, "-p", "tcp", "-m", "tcp", "--dport", str(port),
                 "-j", ISTIO_REDIRECT)

    # 14. -i: what is captured outbound; -k interfaces' inbound goes the same way.
    if opts.outbound_ranges_all:
        b.append("nat", ISTIO_OUTPUT, "-j", ISTIO_REDIRECT)
        for iface in opts.kube_virt_interfaces:
            b.insert("nat", "PREROUTING", 1, "-i", iface, "-j", ISTIO_REDIRECT)
    else:
        for cidr in include_cidrs:
            for iface in opts.kube_virt_interfaces:
                b.insert("nat", "PREROUTING", 1, "-d", _host(cidr), "-i", iface, "-j", ISTIO_REDIRECT)
            b.append("nat", ISTIO_OUTPUT, "-d", _host(cidr), "-j", ISTIO_REDIRECT)

    # 15. TPROXY bookkeeping in mangle.
    if tproxy:
        _tproxy_marks(b, opts, loopback, inbound_passthrough_src)

    return RuleSet(family, tuple(b.rules))


def _inbound(b: _Builder, opts: InterceptionOptions, loopback: str) -> None:
    if not opts.inbound_ports_all and not opts.inbound_ports:
        return  # -b "": no inbound capture at all.
    tproxy = opts.mode == "TPROXY"
    table = "mangle" if tproxy else "nat"
    if tproxy:
        mark = _mark(opts.tproxy_mark)
        # Every packet diverted is marked so policy routing delivers it locally.
        b.append("mangle", ISTIO_DIVERT, "-j", "MARK", "--set-xmark", f"{mark}/0xffffffff")
        b.append("mangle", ISTIO_DIVERT, "-j", "ACCEPT")
        b.append("mangle", ISTIO_TPROXY, "!", "-d", loopback, "-p", "tcp", "-j", "TPROXY",
                 "--on-port", str(opts.inbound_capture_port), "--on-ip", _any_addr(loopback),
                 "--tproxy-mark", f"{mark}/0xffffffff")
    b.append(table, "PREROUTING", "-p", "tcp", "-j", ISTIO_INBOUND)
    if opts.inbound_ports_all:
        for port in opts.inbound_ports_exclude:
            b.append(table, ISTIO_INBOUND, "-p", "tcp", "-m", "tcp", "--dport", str(port),
                     "-j", "RETURN")
        if tproxy:
            # Packets of established sockets go straight to the local stack; new ones to TPROXY.
            b.append("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "conntrack", "--ctstate",
                     "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.append("mangle", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_TPROXY)
        else:
            b.append("nat", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_IN_REDIRECT)
        return
    for port in opts.inbound_ports:
        if tproxy:
            b.append("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "tcp", "--dport", str(port),
                     "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.append("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "tcp", "--dport", str(port),
                     "-j", ISTIO_TPROXY)
        else:
            b.append("nat", ISTIO_INBOUND, "-p", "tcp", "-m", "tcp", "--dport", str(port),
                     "-j", ISTIO_IN_REDIRECT)


def _any_addr(loopback: str) -> str:
    return "0.0.0.0" if ipaddress.ip_network(loopback).version == 4 else "::"


def _tproxy_marks(b: _Builder, opts: InterceptionOptions, loopback: str, passthrough_src: str) -> None:
    mark = _mark(opts.tproxy_mark)
    outbound_mark = _mark(OUTBOUND_MARK)
    # Save the mark set by Envoy's original_src listener filter as the connection mark.
    b.append("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark,
             "-j", "CONNMARK", "--save-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")
    # Already marked envoy -> app traffic is not marked again.
    b.append("mangle", "OUTPUT", "-o", "lo", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for owner_flag, owners in (("--uid-owner", opts.proxy_uids), ("--gid-owner", opts.proxy_gids)):
        for owner in owners:
            # app -> VIP -> Envoy outbound -(1338)-> Envoy inbound -> app.
            b.append("mangle", "OUTPUT", "!", "-d", loopback, "-o", "lo", "-p", "tcp",
                     "-m", "owner", owner_flag, owner,
                     "-j", "MARK", "--set-xmark", f"{outbound_mark}/0xffffffff")
    # Replies of TPROXYed connections follow the policy route back through lo.
    b.append("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark,
             "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")
    if not opts.inbound_ports_all and not opts.inbound_ports:
        return  # Istio inserts these unconditionally; without -b there is no ISTIO_INBOUND jump.
    b.insert("mangle", ISTIO_INBOUND, 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
    b.insert("mangle", ISTIO_INBOUND, 2, "-s", passthrough_src, "-i", "lo", "-p", "tcp", "-j", "RETURN")
    b.insert("mangle", ISTIO_INBOUND, 3, "-i", "lo", "-p", "tcp", "-m", "mark", "!", "--mark",
             outbound_mark, "-j", "RETURN")


def _dns(b: _Builder, opts: InterceptionOptions, family: Family,
         servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]) -> None:
    suffix = "/32" if family is Family.V4 else "/128"
    agent = str(AGENT_DNS_PORT)
    b.append("raw", "OUTPUT", "-j", ISTIO_OUTPUT_DNS)
    if opts.capture_all_dns or servers:
        b.append("nat", ISTIO_OUTPUT, "-j", ISTIO_OUTPUT_DNS)
    if opts.capture_all_dns:
        b.append("nat", ISTIO_OUTPUT_DNS, "-p", "tcp", "-m", "tcp", "--dport", "53",
                 "-j", "REDIRECT", "--to-ports", agent)
        b.append("nat", ISTIO_OUTPUT_DNS, "-p", "udp", "-m", "udp", "--dport", "53",
                 "-j", "REDIRECT", "--to-ports", agent)
    else:
        # Only the resolv.conf servers: a local dnsmasq forwarding upstream must not loop back.
        for proto in ("tcp", "udp"):
            for s in servers:
                b.append("nat", ISTIO_OUTPUT_DNS, "-d", f"{s}{suffix}", "-p", proto, "-m", proto,
                         "--dport", "53", "-j", "REDIRECT", "--to-ports", agent)
    # Separate conntrack zones for proxy<->upstream and app<->proxy UDP DNS (Istio's race fix).
    for owner_flag, owners in (("--uid-owner", opts.proxy_uids), ("--gid-owner", opts.proxy_gids)):
        for owner in owners:
            b.append("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "-m", "udp", "--dport", "53",
                     "-m", "owner", owner_flag, owner, "-j", "CT", "--zone", "1")
            b.append("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "-m", "udp", "--sport", agent,
                     "-m", "owner", owner_flag, owner, "-j", "CT", "--zone", "2")
    if opts.capture_all_dns:
        b.append("raw", "PREROUTING", "-j", ISTIO_INBOUND)
        b.append("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "-m", "udp", "--dport", "53",
                 "-j", "CT", "--zone", "2")
        b.append("raw", ISTIO_INBOUND, "-p", "udp", "-m", "udp", "--sport", "53",
                 "-j", "CT", "--zone", "1")
        return
    if servers:
        b.append("raw", "PREROUTING", "-j", ISTIO_INBOUND)
    for s in servers:
        b.append("raw", ISTIO_OUTPUT_DNS, "-d", f"{s}{suffix}", "-p", "udp", "-m", "udp",
                 "--dport", "53", "-j", "CT", "--zone", "2")
        b.append("raw", ISTIO_INBOUND, "-s", f"{s}{suffix}", "-p", "udp", "-m", "udp",
                 "--sport", "53", "-j", "CT", "--zone", "1")
