"""Envoy's RBAC engine: does a request (or a connection) match an `Rbac`'s policies, and so
is it allowed. The decision behind envoy.filters.http.rbac and envoy.filters.network.rbac.

Promises (Envoy's RoleBasedAccessControlEngineImpl):
- A policy matches when any of its permissions and any of its principals match; ALLOW allows
  what some policy matches (nothing matching: denied), DENY denies what some policy matches,
  LOG allows everything (and says whether a policy matched, for the `logged` stat).
- Policies are tried in name order, as Envoy's map is; the first match names the policy in
  the response-code details (`rbac_access_denied_matched_policy[<name>]`, `[none]`).
- Header rules see the request's headers by lower-case name with `:method`, `:path`,
  `:authority` among them, several values joined by ","; url_path is the path without its
  query; authenticated matches the peer certificate's URI SAN (absent: no authenticated peer,
  and a rule needing one does not match); HTTP-only rules never match a connection.
- Pure and cheap: regexes and networks are compiled once per rule (cached by identity).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from pysidecar.model.rbac import Rbac, RbacRule, StringMatch
from pysidecar.regex import Regex


@dataclass(frozen=True, slots=True)
class Attributes:
    """What RBAC looks at; `headers` None for a TCP connection."""

    source_ip: str
    destination_ip: str
    destination_port: int
    remote_ip: str = ""
    principal: str | None = None  # the peer certificate's URI SAN (mutual TLS only)
    sni: str = ""
    headers: Mapping[str, str] | None = None
    url_path: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> Regex:
    return Regex(pattern)


@functools.lru_cache(maxsize=4096)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def string_matches(m: StringMatch, value: str) -> bool:
    v = value.lower() if m.ignore_case else value
    if m.exact is not None:
        return v == (m.exact.lower() if m.ignore_case else m.exact)
    if m.prefix is not None:
        return v.startswith(m.prefix.lower() if m.ignore_case else m.prefix)
    if m.suffix is not None:
        return v.endswith(m.suffix.lower() if m.ignore_case else m.suffix)
    if m.safe_regex is not None:
        return _regex(m.safe_regex).fullmatch(value)
    return False


def _in(cidr: str, ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    net = _network(cidr)
    return addr.version == net.version and addr in net


def rule_matches(r: RbacRule, a: Attributes) -> bool:
    k = r.kind
    if k == "any":
        return True
    if k == "and_rules":
        return all(rule_matches(x, a) for x in r.rules)
    if k == "or_rules":
        return any(rule_matches(x, a) for x in r.rules)
    if k == "not_rule":
        return not rule_matches(r.rules[0], a)
    if k == "header":
        if a.headers is None:
            return False
        value = a.headers.get(r.name)
        if r.present:
            return value is not None
        return value is not None and r.match is not None and string_matches(r.match, value)
    if k == "url_path":
        return a.headers is not None and r.match is not None and string_matches(r.match, a.url_path)
    if k == "destination_port":
        return a.destination_port == r.port
    if k == "destination_ip":
        return _in(r.cidr, a.destination_ip)
    if k == "direct_remote_ip":
        return _in(r.cidr, a.source_ip)
    if k == "remote_ip":
        return _in(r.cidr, a.remote_ip or a.source_ip)
    if k == "requested_server_name":
        return r.match is not None and string_matches(r.match, a.sni)
    if k == "authenticated":
        if a.principal is None:
            return False
        return r.match is None or string_matches(r.match, a.principal)
    raise AssertionError(f"unknown RBAC rule {k}")


def matched_policy(rbac: Rbac, a: Attributes) -> str | None:
    for p in sorted(rbac.policies, key=lambda p: p.name):
        if any(rule_matches(x, a) for x in p.permissions) and any(rule_matches(x, a) for x in p.principals):
            return p.name
    return None


def decide(rbac: Rbac, a: Attributes) -> tuple[bool, str | None]:
    """(allowed, the matched policy's name)."""
    name = matched_policy(rbac, a)
    if rbac.action == "ALLOW":
        return name is not None, name
    if rbac.action == "DENY":
        return name is None, name
    return True, name
