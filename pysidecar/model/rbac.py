"""Envoy's RBAC config (envoy.config.rbac.v3), the subset Istio's AuthorizationPolicy compiles to.

Promises:
- Plain frozen data, Envoy's names: an `Rbac` has an action (ALLOW, DENY, LOG) and named
  policies; a `Policy` matches when any of its permissions and any of its principals match.
  Permissions and principals are trees of `RbacRule` (and_rules, or_rules, not_rule, any,
  header, url_path, destination_ip / _port, requested_server_name on the permission side;
  authenticated.principal_name, direct_remote_ip, remote_ip, header on the principal side).
- `RbacFilter` is the config of both envoy.filters.http.rbac and envoy.filters.network.rbac
  (the network one has Istio's stat_prefix "tcp."). No logic here: proxy/rbac.py decides.
"""

from __future__ import annotations

from dataclasses import dataclass

RBAC_HTTP_FILTER = "envoy.filters.http.rbac"
RBAC_HTTP_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_NETWORK_FILTER = "envoy.filters.network.rbac"
RBAC_NETWORK_TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"
ACTIONS = ("ALLOW", "DENY", "LOG")


@dataclass(frozen=True, slots=True)
class StringMatch:
    """envoy.type.matcher.v3.StringMatcher: one of exact / prefix / suffix / safe_regex."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    safe_regex: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class RbacRule:
    """A Permission or a Principal: `kind` names the oneof Envoy sets.

    any | and_rules / or_rules (`rules`) | not_rule (`rules[0]`) | header (`name`, `match` or
    `present`) | url_path (`match`) | destination_port (`port`) | destination_ip /
    direct_remote_ip / remote_ip (`cidr`) | requested_server_name (`match`) | authenticated
    (`match` on the principal name; None: any authenticated peer)."""

    kind: str
    rules: tuple[RbacRule, ...] = ()
    name: str = ""
    match: StringMatch | None = None
    present: bool = False
    port: int = 0
    cidr: str = ""  # address_prefix/prefix_len


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    permissions: tuple[RbacRule, ...]
    principals: tuple[RbacRule, ...]


@dataclass(frozen=True, slots=True)
class Rbac:
    action: str  # ALLOW | DENY | LOG
    policies: tuple[Policy, ...] = ()


@dataclass(frozen=True, slots=True)
class RbacFilter:
    rules: Rbac
    stat_prefix: str = ""  # the network filter's (Istio: "tcp.")


ANY = RbacRule("any")
# istiod's rbacPolicyMatchNever: an AuthorizationPolicy without rules.
NEVER = RbacRule("not_rule", (ANY,))
