"""AuthorizationPolicy compiled as istiod's authz builder does, and Envoy's RBAC decisions on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import Bootstrap
from pysidecar.model.rbac import RbacFilter
from pysidecar.proxy.rbac import Attributes, decide

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.1.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp, port: 9000, targetPort: 9000}]
"""


def _load(tmp: Path, policy: str, labels: dict[str, str] | None = None) -> Bootstrap:
    (tmp / "web.yaml").write_text(WEB)
    (tmp / "p.yaml").write_text(policy)
    return load([str(tmp / "web.yaml"), str(tmp / "p.yaml")], labels if labels is not None else {"app": "web"})


def _filters(b: Bootstrap, port: int) -> tuple[tuple[RbacFilter, ...], tuple[RbacFilter, ...]]:
    lis = b.listener("virtualInbound")
    assert lis is not None
    chain = next(c for c in lis.filter_chains if c.filter_chain_match.destination_port == port)
    http = tuple(f.rbac for f in getattr(chain.terminal_filter, "http_filters", ()) if f.rbac is not None)
    return chain.rbac, http


def _http(path: str, method: str = "GET", principal: str | None = None, headers: dict[str, str] | None = None) -> Attributes:
    h = {":method": method, ":path": path, ":authority": "web", **(headers or {})}
    return Attributes("10.0.0.9", "10.0.0.5", 8080, principal=principal, headers=h, url_path=path.split("?")[0])


def _allowed(filters: tuple[RbacFilter, ...], a: Attributes) -> bool:
    return all(decide(f.rules, a)[0] for f in filters)


POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: %s
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"], namespaces: ["default"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/admin*", "*.png", "/exact"]}}]
"""
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def test_deny_matches_path_forms_method_and_principal(tmp_path: Path) -> None:
    _, http = _filters(_load(tmp_path, POLICY % "DENY"), 8080)
    assert [f.rules.action for f in http] == ["DENY"]
    assert not _allowed(http, _http("/admin/x", principal=SLEEP))
    assert not _allowed(http, _http("/a/b.png?q=1", principal=SLEEP))  # url_path ignores the query
    assert not _allowed(http, _http("/exact", principal=SLEEP))
    assert _allowed(http, _http("/exact/no", principal=SLEEP))
    assert _allowed(http, _http("/admin", method="POST", principal=SLEEP))
    assert _allowed(http, _http("/admin", principal=None))  # plaintext: no principal
    assert _allowed(http, _http("/admin", principal="spiffe://cluster.local/ns/other/sa/sleep"))
    assert decide(http[0].rules, _http("/admin", principal=SLEEP))[1] == "ns[default]-policy[p]-rule[0]"


def test_allow_denies_what_matches_nothing_and_drops_http_rules_on_tcp(tmp_path: Path) -> None:
    _, http = _filters(_load(tmp_path, POLICY % "ALLOW"), 8080)
    assert _allowed(http, _http("/admin", principal=SLEEP))
    assert not _allowed(http, _http("/other", principal=SLEEP))
    tcp9000, _ = _filters(_load(tmp_path, POLICY % "ALLOW"), 9000)
    # The only rule is HTTP-only: on the TCP chain it is skipped, so ALLOW matches nothing.
    assert tcp9000 and not tcp9000[0].rules.policies
    assert not _allowed(tcp9000, Attributes("10.0.0.9", "10.0.0.5", 9000, principal=SLEEP))


def test_deny_keeps_tcp_rules_without_http_fields(tmp_path: Path) -> None:
    tcp, _ = _filters(_load(tmp_path, POLICY % "DENY"), 9000)
    # methods / paths dropped: the DENY rule is wider, any connection of sleep is denied.
    assert not _allowed(tcp, Attributes("10.0.0.9", "10.0.0.5", 9000, principal=SLEEP))
    assert _allowed(tcp, Attributes("10.0.0.9", "10.0.0.5", 9000, principal=None))


def test_empty_allow_denies_all_and_selector_elsewhere_applies_nothing(tmp_path: Path) -> None:
    empty = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: none, namespace: default}\nspec: {}\n"
    _, http = _filters(_load(tmp_path, empty), 8080)
    assert not _allowed(http, _http("/", principal=SLEEP))
    other = (POLICY % "DENY").replace("app: web", "app: other")
    tcp, http = _filters(_load(tmp_path, other), 8080)
    assert not http and not tcp


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("action: CUSTOM\n  provider: {name: x}", "spec.provider"),
        ("rules: [{from: [{source: {requestPrincipals: ['*']}}]}]", "spec.rules[0].from[0].source.requestPrincipals"),
        ("rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]", "spec.rules[0].when[0].key"),
        ("rules: [{to: [{operation: {paths: ['/{*}/x']}}]}]", "spec.rules[0].to[0].operation.paths[0]"),
        ("targetRefs: [{kind: Gateway, name: gw}]", "spec.targetRefs"),
    ],
)
def test_unsupported_fields_are_refused(tmp_path: Path, spec: str, path: str) -> None:
    doc = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  {spec}\n"
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, doc)
    assert e.value.path == path, e.value
