"""The `Sidecar` resource: which hosts this proxy sees (egress) and its outbound traffic policy.

Promises:
- `egress[].hosts` (`namespace/dnsName`, with `*` and `.` for the namespace and `*` / `*.suffix`
  for the name) filters the registry and the VirtualServices, as istiod's SidecarScope does.
- `outboundTrafficPolicy.mode` overrides the mesh config's.
- Only one Sidecar without workloadSelector is applied; others are ignored with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located
from pysidecar.config.node import Node
from pysidecar.model import OutboundTrafficPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sidecar:
    meta: ObjectMeta
    egress_hosts: tuple[tuple[str, str], ...] = ()  # (namespace, host pattern)
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    has_workload_selector: bool = False

    def sees(self, namespace: str, hostname: str) -> bool:
        if not self.egress_hosts:
            return True
        for ns, pattern in self.egress_hosts:
            ns_ok = ns == "*" or ns == namespace or (ns == "." and namespace == self.meta.namespace)
            if ns_ok and host_matches(pattern, hostname):
                return True
        return False


def host_matches(pattern: str, hostname: str) -> bool:
    """Istio's host matching: `*` anything, `*.suffix` by suffix, else exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


def _egress_host(node: Node) -> tuple[str, str]:
    text = node.string()
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name:
        node.fail(f"expected namespace/dnsName (e.g. ./* or istio-system/*), got {text!r}")
    return ns, name


def sidecar(doc: Node) -> Sidecar:
    meta, top = envelope(doc, "spec")
    with located(meta):
        f = top.require("spec").fields(
            "workload_selector", "ingress", "egress", "outbound_traffic_policy", "inbound_connection_pool"
        )
        hosts: list[tuple[str, str]] = []
        for e in f.list("egress"):
            ef = e.fields("port", "bind", "capture_mode", "hosts")
            if ef.get("port") is not None or ef.get("bind") is not None:
                log.warning("%s: %s: egress port/bind ignored (the registry's ports are used)", meta.file, meta.ref)
            hosts.extend(_egress_host(n) for n in ef.list("hosts"))
        if f.get("ingress") is not None:
            log.warning("%s: %s: ingress listeners ignored", meta.file, meta.ref)
        mode: OutboundTrafficPolicy | None = None
        if (otp := f.get("outbound_traffic_policy")) is not None:
            if (egress := otp.fields("mode", "egress_proxy").get("egress_proxy")) is not None:
                egress.fail("egressProxy is not supported (it needs istiod's alpha egress routing)")
            mode = otp.fields("mode", "egress_proxy").opt(
                "mode",
                lambda n: OutboundTrafficPolicy(n.enum([m.value for m in OutboundTrafficPolicy])),
                None,
            )
        return Sidecar(
            meta=meta,
            egress_hosts=tuple(hosts),
            outbound_traffic_policy=mode,
            has_workload_selector=f.get("workload_selector") is not None,
        )
