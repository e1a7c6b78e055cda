"""PeerAuthentication (security.istio.io v1 / v1beta1) → the inbound mTLS mode per port.

Promises:
- Accepts `selector.matchLabels`, `mtls.mode` (UNSET, DISABLE, PERMISSIVE, STRICT) and
  `portLevelMtls` (port number → mode; only on a policy with a selector, as istiod requires).
  Anything else is a ConfigError naming the file and YAML path.
- `effective(policies, namespace, labels, root_namespace)` composes them as istiod's
  ComposePeerAuthentication does: PERMISSIVE by default; the mesh-wide policy (root
  namespace, no selector) overrides it, then the namespace's (no selector), then the first
  policy in the workload's namespace whose selector matches its labels; UNSET inherits from
  the level above; a port-level mode (UNSET: the workload's) wins for its port. Of several
  policies at one level the first in file order wins (istiod: the oldest).
- Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located, string_map
from pysidecar.config.node import Node

MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
DEFAULT_MODE = "PERMISSIVE"


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    meta: ObjectMeta
    selector: tuple[tuple[str, str], ...] | None  # None: no selector (namespace / mesh wide)
    mode: str = "UNSET"
    port_modes: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MtlsModes:
    """The workload's inbound mode and its per-port exceptions."""

    default: str = DEFAULT_MODE
    ports: tuple[tuple[int, str], ...] = ()

    def for_port(self, port: int) -> str:
        return dict(self.ports).get(port, self.default)

    @property
    def all_modes(self) -> set[str]:
        return {self.default, *(m for _, m in self.ports)}


def _mode(node: Node) -> str:
    return node.fields("mode").opt("mode", lambda n: n.enum(MODES), "UNSET")


def peer_authentication(doc: Node) -> PeerAuthentication:
    meta, top = envelope(doc, "spec")
    with located(meta):
        spec = top.require("spec")
        f = spec.fields("selector", "mtls", "port_level_mtls")
        selector = None
        if (sel := f.get("selector")) is not None:
            sf = sel.fields("match_labels")
            selector = string_map(sf.get("match_labels"))
        ports: list[tuple[int, str]] = []
        if (plm := f.get("port_level_mtls")) is not None:
            if selector is None:
                plm.fail(
                    "portLevelMtls needs a selector (istiod ignores it on a namespace- or mesh-wide policy)"
                )
            if not isinstance(plm.value, dict):
                plm.fail("expected a mapping of port number to {mode: ...}")
            for k, v in plm.value.items():
                port = plm.child(str(k), v)
                number = Node(k, port.file, port.path).port()
                ports.append((number, _mode(port)))
        return PeerAuthentication(meta, selector, f.opt("mtls", _mode, "UNSET"), tuple(ports))


def effective(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> MtlsModes:
    pas = list(policies)

    def first(match: list[PeerAuthentication]) -> PeerAuthentication | None:
        return match[0] if match else None

    mesh = first([p for p in pas if p.meta.namespace == root_namespace and p.selector is None])
    ns = first(
        [
            p
            for p in pas
            if p.meta.namespace == namespace and p.selector is None and namespace != root_namespace
        ]
    )
    workload = first(
        [
            p for p in pas
            if p.meta.namespace == namespace and p.selector and all(labels.get(k) == v for k, v in p.selector)
        ]
    )  # fmt: skip
    mode = DEFAULT_MODE
    for level in (mesh, ns, workload):
        if level is not None and level.mode != "UNSET":
            mode = level.mode
    ports = (
        tuple((port, m if m != "UNSET" else mode) for port, m in workload.port_modes)
        if workload
        else ()
    )
    return MtlsModes(mode, ports)
