"""AuthorizationPolicy (security.istio.io v1 / v1beta1) → Envoy RBAC, as istiod's authz builder.

Promises (istio/istio pilot/pkg/security/authz: model.go, generator.go, builder.go):
- Accepted: `selector.matchLabels`, `action` ALLOW (default) / DENY / AUDIT, `rules[]` with
  `from[].source` principals, namespaces, ipBlocks, remoteIpBlocks (and their not*),
  `to[].operation` hosts, ports, methods, paths (and not*), `when[]` keys request.headers[..],
  source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port,
  connection.sni (values / notValues). Refused, naming the field: action CUSTOM and provider
  (no ext_authz), requestPrincipals / request.auth.* (no JWT filter: RequestAuthentication is
  refused too), targetRef(s), path templates, the `istio.io/dry-run` annotation, other keys.
- `policies_for(policies, namespace, labels, root)`: the mesh-wide (root namespace, no
  selector, or a matching selector), namespace-wide and selected policies of this workload.
- `build(policies, for_tcp)`: the RBAC filter configs in istiod's order: AUDIT (LOG), DENY,
  ALLOW, each one Rbac whose policies are named `ns[<ns>]-policy[<name>]-rule[<i>]`. A policy
  without rules matches nothing (istiod's rbacPolicyMatchNever: an ALLOW policy `{}` denies
  all). For a TCP chain the HTTP-only fields (hosts, methods, paths, request.headers) make an
  ALLOW rule disappear (less allowed) and are dropped from a DENY / AUDIT rule (more denied),
  as istiod's checkError does.
- Matchers as istiod writes them: principals exact `spiffe://<p>` (`*`: any, `x*`: prefix,
  `*x`: regex), namespaces regex `.*/ns/<ns>/.*`, hosts on `:authority` ignoring case,
  methods on `:method`, paths on url_path (exact, `x*` prefix, `*x` suffix, `*` present).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located, string_map
from pysidecar.config.node import ConfigError, Node
from pysidecar.model.rbac import ANY, NEVER, Policy, Rbac, RbacFilter, RbacRule, StringMatch

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
TCP_STAT_PREFIX = "tcp."
SPIFFE = "spiffe://"
_SOURCE_FIELDS = ("principals", "namespaces", "ip_blocks", "remote_ip_blocks")
_OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")
_WHEN_KEYS = (
    "source.ip", "remote.ip", "source.namespace", "source.principal", "destination.ip",
    "destination.port", "connection.sni",
)  # fmt: skip
HEADER_KEY = "request.headers["


class HttpOnly(Exception):
    """A field a TCP chain cannot evaluate (istiod's `"x" is HTTP only`)."""


@dataclass(frozen=True, slots=True)
class Field:
    key: str  # the istiod attribute: hosts, ports, ..., source.ip, request.headers[x-a]
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    froms: tuple[tuple[Field, ...], ...]
    tos: tuple[tuple[Field, ...], ...]
    whens: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    meta: ObjectMeta
    selector: tuple[tuple[str, str], ...] | None
    action: str
    rules: tuple[Rule, ...]


# -- parsing ----------------------------------------------------------------------------------


def _strings(node: Node | None) -> tuple[str, ...]:
    return () if node is None else tuple(n.string() for n in node.items())


def _fields(node: Node, names: tuple[str, ...], refused: dict[str, str]) -> tuple[Field, ...]:
    allowed = [*names, *(f"not_{n}" for n in names), *refused, *(f"not_{n}" for n in refused)]
    f = node.fields(*allowed)
    for name, why in refused.items():
        for key in (name, f"not_{name}"):
            if (n := f.get(key)) is not None:
                n.fail(f"{key} is refused: {why}")
    out = []
    for name in names:
        values, nots = _strings(f.get(name)), _strings(f.get(f"not_{name}"))
        for n in (f.get(name), f.get(f"not_{name}")):
            if n is not None and name in ("ip_blocks", "remote_ip_blocks"):
                for item in n.items():
                    _cidr(item)
            if n is not None and name == "ports":
                for item in n.items():
                    s = item.string()
                    if not s.isdigit() or not 0 < int(s) < 65536:
                        item.fail(f"expected a port number, got {s!r}")
            if n is not None and name == "paths":
                for item in n.items():
                    if "{" in item.string():
                        item.fail("path templates ({*} / {**}) are not supported")
        if values or nots:
            out.append(Field(name, values, nots))
    return tuple(out)


def _cidr(node: Node) -> str:
    text = node.string()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        node.fail(f"expected an IP address or CIDR, got {text!r}")
    return str(net)


def _when(node: Node) -> Field:
    f = node.fields("key", "values", "not_values")
    key_node = f.require("key")
    key = key_node.string()
    if key.startswith("request.auth.") or key.startswith("experimental."):
        key_node.fail(f"when key {key!r} is refused: it needs a JWT / metadata filter pysidecar does not have")
    if not (key in _WHEN_KEYS or (key.startswith(HEADER_KEY) and key.endswith("]"))):
        key_node.fail(f"when key {key!r} is not supported; expected one of {', '.join(_WHEN_KEYS)} or request.headers[<name>]")
    values, nots = _strings(f.get("values")), _strings(f.get("not_values"))
    if not values and not nots:
        node.fail("a when condition needs values or notValues")
    return Field(key, values, nots)


def _rule(node: Node) -> Rule:
    f = node.fields("from", "to", "when")
    froms = []
    for n in f.list("from"):
        src = n.fields("source").require("source")
        froms.append(
            _fields(src, _SOURCE_FIELDS, {
                "request_principals": "it needs a JWT filter (RequestAuthentication), which pysidecar does not have",
                "service_accounts": "not supported by pysidecar; use principals",
                "trust_domains": "not supported by pysidecar; use principals",
            })
        )  # fmt: skip
    tos = [_fields(n.fields("operation").require("operation"), _OPERATION_FIELDS, {}) for n in f.list("to")]
    return Rule(tuple(froms), tuple(tos), tuple(_when(n) for n in f.list("when")))


def authorization_policy(doc: Node) -> AuthorizationPolicy:
    meta, top = envelope(doc, "spec")
    with located(meta):
        md = doc.value.get("metadata") if isinstance(doc.value, dict) else None
        notes = md.get("annotations") if isinstance(md, dict) else None
        if isinstance(notes, dict) and str(notes.get("istio.io/dry-run", "")).lower() == "true":
            doc.child("metadata", md).child("annotations", notes).fail(
                "istio.io/dry-run is refused: shadow rules are not implemented"
            )
        spec = top.require("spec")
        f = spec.fields("selector", "action", "rules", "provider", "target_ref", "target_refs")
        for name in ("target_ref", "target_refs"):
            if (n := f.get(name)) is not None:
                n.fail(f"{name} is refused: it binds a policy to a waypoint or gateway, not to a sidecar")
        if (n := f.get("provider")) is not None:
            n.fail("provider is refused: action CUSTOM (ext_authz) is not supported by pysidecar")
        action = f.opt("action", lambda n: n.enum(ACTIONS), "ALLOW")
        if action == "CUSTOM":
            f.require("action").fail("action CUSTOM is refused: pysidecar has no ext_authz filter")
        selector = None
        if (sel := f.get("selector")) is not None:
            selector = string_map(sel.fields("match_labels").get("match_labels"))
        return AuthorizationPolicy(meta, selector, action, tuple(_rule(n) for n in f.list("rules")))


def policies_for(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Mapping[str, str], root_namespace: str
) -> list[AuthorizationPolicy]:
    def selects(p: AuthorizationPolicy) -> bool:
        return p.selector is None or (bool(p.selector) and all(labels.get(k) == v for k, v in p.selector))

    return [p for p in policies if p.meta.namespace in (namespace, root_namespace) and selects(p)]


# -- translation (generator.go) ---------------------------------------------------------------


def _with_prefix(v: str, prefix: str = "") -> StringMatch:
    """istiod's StringMatcherWithPrefix."""
    if v == "*":
        return StringMatch(safe_regex=".+")
    if v.startswith("*"):
        if not prefix:
            return StringMatch(suffix=v[1:])
        return StringMatch(safe_regex=prefix + ".*" + re.escape(v[1:]))
    if v.endswith("*"):
        return StringMatch(prefix=prefix + v[:-1])
    return StringMatch(exact=prefix + v)


def _header(name: str, v: str, ignore_case: bool = False) -> RbacRule:
    """istiod's HeaderMatcher / HostMatcher."""
    if v == "*":
        return RbacRule("header", name=name, present=True)
    if v.startswith("*"):
        return RbacRule("header", name=name, match=StringMatch(suffix=v[1:], ignore_case=ignore_case))
    if v.endswith("*"):
        return RbacRule("header", name=name, match=StringMatch(prefix=v[:-1], ignore_case=ignore_case))
    return RbacRule("header", name=name, match=StringMatch(exact=v, ignore_case=ignore_case))


def _namespace_regex(v: str) -> str:
    return ".*/ns/" + ".*".join(re.escape(p) for p in v.split("*")) + "/.*"


def _one(key: str, v: str, for_tcp: bool) -> RbacRule:
    http_only = key in ("hosts", "methods", "paths") or key.startswith(HEADER_KEY)
    if http_only and for_tcp:
        raise HttpOnly(key)
    if key == "hosts":
        return _header(":authority", v, ignore_case=True)
    if key == "methods":
        return _header(":method", v)
    if key == "paths":
        return RbacRule("url_path", match=_with_prefix(v))
    if key.startswith(HEADER_KEY):
        return _header(key[len(HEADER_KEY) : -1].lower(), v)
    if key in ("ports", "destination.port"):
        return RbacRule("destination_port", port=int(v))
    if key == "destination.ip":
        return RbacRule("destination_ip", cidr=str(ipaddress.ip_network(v, strict=False)))
    if key in ("ip_blocks", "source.ip"):
        return RbacRule("direct_remote_ip", cidr=str(ipaddress.ip_network(v, strict=False)))
    if key in ("remote_ip_blocks", "remote.ip"):
        return RbacRule("remote_ip", cidr=str(ipaddress.ip_network(v, strict=False)))
    if key in ("namespaces", "source.namespace"):
        return RbacRule("authenticated", match=StringMatch(safe_regex=_namespace_regex(v)))
    if key in ("principals", "source.principal"):
        return RbacRule("authenticated", match=_with_prefix(v, SPIFFE))
    if key == "connection.sni":
        return RbacRule("requested_server_name", match=_with_prefix(v))
    raise AssertionError(key)


def _field_rules(f: Field, for_tcp: bool, action: str) -> list[RbacRule]:
    """model.go rule.permission / principal: or(values), not(or(notValues)); an HTTP-only
    value on a TCP chain fails an ALLOW rule and is skipped otherwise."""
    out = []
    for values, negate in ((f.values, False), (f.not_values, True)):
        ors = []
        for v in values:
            try:
                ors.append(_one(f.key, v, for_tcp))
            except HttpOnly:
                if action == "ALLOW":
                    raise
        if ors:
            r = RbacRule("or_rules", tuple(ors))
            out.append(RbacRule("not_rule", (r,)) if negate else r)
    return out


_PERMISSION_WHEN = ("destination.ip", "destination.port", "connection.sni")
# insertFront order: the last inserted comes first.
_FROM_ORDER = ("principals", "namespaces", "remote_ip_blocks", "ip_blocks")
_TO_ORDER = ("hosts", "methods", "paths", "ports")


def _and(fields: list[Field], for_tcp: bool, action: str) -> RbacRule:
    rules = [r for f in fields for r in _field_rules(f, for_tcp, action)]
    return RbacRule("and_rules", tuple(rules) if rules else (ANY,))


def _policy(name: str, rule: Rule, for_tcp: bool, action: str) -> Policy:
    perm_when = [w for w in rule.whens if w.key in _PERMISSION_WHEN]
    prin_when = [w for w in rule.whens if w.key not in _PERMISSION_WHEN]

    def ordered(fields: tuple[Field, ...], order: tuple[str, ...]) -> list[Field]:
        return sorted(fields, key=lambda f: order.index(f.key))

    permissions = tuple(_and(ordered(to, _TO_ORDER) + perm_when, for_tcp, action) for to in rule.tos) or (
        _and(perm_when, for_tcp, action),
    )
    principals = tuple(_and(ordered(fr, _FROM_ORDER) + prin_when, for_tcp, action) for fr in rule.froms) or (
        _and(prin_when, for_tcp, action),
    )
    return Policy(name, permissions, principals)


def _rbac(policies: list[AuthorizationPolicy], action: str, for_tcp: bool) -> Rbac:
    out: list[Policy] = []
    for p in policies:
        if not p.rules:
            out.append(Policy(f"ns[{p.meta.namespace}]-policy[{p.meta.name}]-rule[0]", (NEVER,), (NEVER,)))
        for i, rule in enumerate(p.rules):
            name = f"ns[{p.meta.namespace}]-policy[{p.meta.name}]-rule[{i}]"
            try:
                out.append(_policy(name, rule, for_tcp, action))
            except HttpOnly:
                continue  # istiod: "skipped rule ... on TCP filter chain"
    return Rbac("LOG" if action == "AUDIT" else action, tuple(out))


def build(policies: list[AuthorizationPolicy], for_tcp: bool) -> tuple[RbacFilter, ...]:
    """The RBAC filters of one chain, AUDIT then DENY then ALLOW (builder.go's order)."""
    out = []
    for action in ("AUDIT", "DENY", "ALLOW"):
        chosen = [p for p in policies if p.action == action]
        if chosen:
            out.append(RbacFilter(_rbac(chosen, action, for_tcp), TCP_STAT_PREFIX if for_tcp else ""))
    return tuple(out)


__all__ = ["AuthorizationPolicy", "ConfigError", "authorization_policy", "build", "policies_for"]
