"""Envoy JSON for RBAC (envoy.config.rbac.v3): what `envoy-config` exports for Istio's
AuthorizationPolicy, so real Envoy enforces the same rules.

Promises: permissions use and_rules / or_rules / not_rule, principals and_ids / or_ids /
not_id, as Envoy's two message types spell the same tree; string matchers are exact / prefix
/ suffix (with ignore_case) or safe_regex; CIDRs are address_prefix + prefix_len; policies are
a map by name.
"""

from __future__ import annotations

from typing import Any

from pysidecar.model.rbac import (
    RBAC_HTTP_TYPE,
    RBAC_NETWORK_FILTER,
    RBAC_NETWORK_TYPE,
    Rbac,
    RbacFilter,
    RbacRule,
    StringMatch,
)

T = "type.googleapis.com/"


def string_match(m: StringMatch) -> dict[str, Any]:
    if m.safe_regex is not None:
        return {"safe_regex": {"regex": m.safe_regex}}
    out: dict[str, Any] = {}
    for key in ("exact", "prefix", "suffix"):
        if (v := getattr(m, key)) is not None:
            out[key] = v
    if m.ignore_case:
        out["ignore_case"] = True
    return out


def _cidr(text: str) -> dict[str, Any]:
    addr, _, length = text.partition("/")
    return {"address_prefix": addr, "prefix_len": int(length)}


def rule(r: RbacRule, principal: bool) -> dict[str, Any]:
    k = r.kind
    if k == "any":
        return {"any": True}
    if k in ("and_rules", "or_rules"):
        subs = [rule(x, principal) for x in r.rules]
        if principal:
            return {"and_ids" if k == "and_rules" else "or_ids": {"ids": subs}}
        return {k: {"rules": subs}}
    if k == "not_rule":
        return {"not_id" if principal else "not_rule": rule(r.rules[0], principal)}
    if k == "header":
        h: dict[str, Any] = {"name": r.name}
        if r.present:
            h["present_match"] = True
        elif r.match is not None:
            h["string_match"] = string_match(r.match)
        return {"header": h}
    if k == "url_path":
        assert r.match is not None
        return {"url_path": {"path": string_match(r.match)}}
    if k == "destination_port":
        return {"destination_port": r.port}
    if k in ("destination_ip", "direct_remote_ip", "remote_ip"):
        return {k: _cidr(r.cidr)}
    if k == "requested_server_name":
        assert r.match is not None
        return {"requested_server_name": string_match(r.match)}
    if k == "authenticated":
        return {"authenticated": {"principal_name": string_match(r.match)} if r.match is not None else {}}
    raise AssertionError(k)


def rbac(r: Rbac) -> dict[str, Any]:
    return {
        "action": r.action,
        "policies": {
            p.name: {
                "permissions": [rule(x, False) for x in p.permissions],
                "principals": [rule(x, True) for x in p.principals],
            }
            for p in r.policies
        },
    }


def http_rbac(f: RbacFilter) -> dict[str, Any]:
    return {"@type": T + RBAC_HTTP_TYPE, "rules": rbac(f.rules)}


def network_rbac(f: RbacFilter) -> dict[str, Any]:
    return {"name": RBAC_NETWORK_FILTER, "typed_config": {"@type": T + RBAC_NETWORK_TYPE, "stat_prefix": f.stat_prefix, "rules": rbac(f.rules)}}
