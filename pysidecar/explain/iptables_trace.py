"""Which nat rule captures a TCP connection: a walk through `iptables-save` text.

Promises:
- `trace_nat(tables, packet)` walks the nat table's OUTPUT (a connection the pod opens) or
  PREROUTING (one arriving at the pod) chain as the kernel does (jumps, RETURN, the built-in
  chain's ACCEPT policy) and returns each rule that matched, with its chain and position, and
  the verdict: REDIRECT to a port, or not captured.
- It evaluates what istio-iptables writes: `[!] -s/-d CIDR`, `[!] -i/-o IF`, `-p tcp`,
  `-m tcp [!] --dport/--sport`, `-m multiport [!] --dports`, `-m owner [!] --uid-owner /
  --gid-owner`, `-j RETURN | ACCEPT | REDIRECT --to-ports N | <chain>`. A rule using anything
  else stops the walk with `unknown` naming it: never a guess.
- The output interface of a connection the pod opens is `lo` for a loopback destination, else
  another one; the packet's source is the given one (unknown: only `! -s` rules match).
- Pure: the text is an input (the caller reads `iptables-save -t nat` or a file).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pysidecar.interception.state import parse_save

Tables = dict[str, dict[str, list[str]]]


@dataclass(frozen=True, slots=True)
class Packet:
    destination: str
    port: int
    outbound: bool = True  # OUTPUT (the pod opens it) or PREROUTING (it arrives)
    uid: int = 0
    gid: int = 0
    source: str | None = None
    in_interface: str = "eth0"


@dataclass(slots=True)
class NatTrace:
    steps: list[str] = field(default_factory=list)
    redirect_port: int | None = None
    verdict: str = "not captured"


class _Unknown(Exception):
    pass


def _in(net: str, address: str | None) -> bool:
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def _ports(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _matches(spec: list[str], p: Packet) -> tuple[bool, list[str]]:
    """Whether the rule's matches hold; the words after `-j`."""
    out_iface = "lo" if _in("127.0.0.0/8", p.destination) or p.destination == "::1" else "eth0"
    i = 0
    ok = True
    neg = False
    while i < len(spec):
        w = spec[i]
        if w == "!":
            neg = True
            i += 1
            continue
        if w in ("-j", "-g"):
            return ok, spec[i + 1 :]
        arg = spec[i + 1] if i + 1 < len(spec) else ""
        if w in ("-m",):
            if arg not in ("tcp", "owner", "multiport", "comment"):
                raise _Unknown(f"-m {arg}")
            i += 2
            continue
        if w == "--comment":
            i += 2
            continue
        if w == "-s":
            hit = _in(arg, p.source)
        elif w == "-d":
            hit = _in(arg, p.destination)
        elif w == "-o":
            hit = p.outbound and out_iface == arg
        elif w == "-i":
            hit = (not p.outbound) and p.in_interface == arg
        elif w == "-p":
            hit = arg == "tcp"
        elif w == "--dport" or w == "--dports":
            hit = p.port in _ports(arg)
        elif w == "--sport":
            hit = False  # an ephemeral source port: never one of Istio's named ports
        elif w == "--uid-owner":
            hit = p.outbound and str(p.uid) == arg
        elif w == "--gid-owner":
            hit = p.outbound and str(p.gid) == arg
        else:
            raise _Unknown(w)
        ok = ok and (hit != neg)
        neg = False
        i += 2
    return ok, []


def trace_nat(save_text: str, packet: Packet) -> NatTrace:
    nat = parse_save(save_text).get("nat", {})
    trace = NatTrace()
    start = "OUTPUT" if packet.outbound else "PREROUTING"
    if start not in nat:
        trace.steps.append(f"nat {start}: no rules (the table is empty): not captured")
        return trace
    stack: list[tuple[str, int]] = [(start, 0)]
    hops = 0
    while stack:
        chain, index = stack.pop()
        rules = nat.get(chain, [])
        while index < len(rules):
            hops += 1
            if hops > 1000:
                trace.verdict = "unknown: the rules loop"
                return trace
            spec = rules[index].split()
            index += 1
            try:
                hit, target = _matches(spec, packet)
            except _Unknown as e:
                trace.steps.append(f"nat {chain} rule {index}: -A {chain} {rules[index - 1]}")
                trace.verdict = f"unknown: cannot evaluate {e} here"
                return trace
            if not hit or not target:
                continue
            trace.steps.append(f"nat {chain} rule {index}: -A {chain} {rules[index - 1]}")
            verb = target[0]
            if verb == "RETURN":
                break
            if verb == "ACCEPT":
                trace.verdict = "accepted: not captured"
                return trace
            if verb == "REDIRECT":
                port = target[target.index("--to-ports") + 1] if "--to-ports" in target else str(packet.port)
                trace.redirect_port = int(port.split("-")[0])
                trace.verdict = f"REDIRECT to port {trace.redirect_port}"
                return trace
            if verb in nat:
                stack.append((chain, index))
                stack.append((verb, 0))
                break
            trace.verdict = f"unknown: target {verb}"
            return trace
    trace.steps.append(f"nat {start}: end of chain, policy ACCEPT")
    return trace
