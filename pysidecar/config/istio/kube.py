"""Kubernetes Service + EndpointSlice / Endpoints (+ Pod labels): the in-mesh registry.

Promises:
- A Service becomes `<name>.<namespace>.svc.cluster.local` with its clusterIP as VIP and
  resolution STATIC (istiod's EDS), headless (`clusterIP: None`, and only that: a Service
  without clusterIP is load-balanced, on the wildcard listener) → NONE (passthrough),
  `type: ExternalName` → DNS to the external name. UDP/SCTP ports are skipped, as istiod does.
- Port protocol: `appProtocol`, else the port name prefix (`http-web` → HTTP), else sniffed.
- Endpoints come from EndpointSlices (label `kubernetes.io/service-name`), or when a service
  has none, the legacy Endpoints object of the same name (istiod reads slices only; a
  directory holding both, as `kubectl get -o yaml` dumps them, must not double them); an
  address listed twice is one endpoint; only ready addresses serve. A Pod document lends its
  labels to the endpoint with its IP, so DestinationRule subsets can select them, and its named
  container ports to the inbound side (a Service's named targetPort).
- `spec.selector` is kept: it says which workloads serve the Service (the inbound side).
- Fields of the objects we do not act on (status, selectors, node ports) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pysidecar.config.istio.meta import DOMAIN_SUFFIX, envelope, located, string_map
from pysidecar.config.istio.registry import (
    Endpoint,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    port_protocol,
)
from pysidecar.config.node import Node

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

SERVICE_SPEC_FIELDS = (
    "type",
    "cluster_i_p",
    "cluster_i_ps",
    "ports",
    "selector",
    "external_name",
    "session_affinity",
    "session_affinity_config",
    "ip_families",
    "ip_family_policy",
    "internal_traffic_policy",
    "external_traffic_policy",
    "publish_not_ready_addresses",
    "load_balancer_i_p",
    "load_balancer_class",
    "load_balancer_source_ranges",
    "allocate_load_balancer_node_ports",
    "external_i_ps",
    "health_check_node_port",
    "traffic_distribution",
)


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The endpoints one EndpointSlice or Endpoints object gives a service."""

    service: str  # name.namespace
    endpoints: tuple[Endpoint, ...]
    from_slice: bool = True  # an EndpointSlice (else the legacy Endpoints object)


def hostname(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.{DOMAIN_SUFFIX}"


def _service_port(node: Node) -> ServicePort | None:
    f = node.fields("name", "port", "target_port", "protocol", "app_protocol", "node_port")
    if f.opt("protocol", Node.string, "TCP").upper() != "TCP":
        return None
    name = f.opt("name", Node.string, "")
    target = f.get("target_port")
    target_port: int | None = None
    target_name: str | None = None
    if target is not None:
        if isinstance(target.value, int):
            target_port = target.integer(1, 65535)
        else:
            target_name = target.string()
    return ServicePort(
        name=name,
        number=f.require("port").integer(1, 65535),
        protocol=port_protocol(name, app_protocol=f.opt("app_protocol", Node.string, "")),
        target_port=target_port,
        target_port_name=target_name,
    )


def service(doc: Node) -> Service:
    meta, top = envelope(doc, "spec")
    with located(meta):
        f = top.require("spec").fields(*SERVICE_SPEC_FIELDS)
        kind = f.opt("type", lambda n: n.enum(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]), "ClusterIP")
        ports = tuple(p for p in (_service_port(n) for n in f.list("ports")) if p is not None)
        cluster_ip = f.opt("cluster_i_p", Node.string, "")
        endpoints: tuple[Endpoint, ...] = ()
        if kind == "ExternalName":
            external = f.require("external_name").string()
            resolution = Resolution.DNS
            endpoints = (Endpoint(external),)
            addresses: tuple[str, ...] = ()
        elif cluster_ip == "None":
            resolution = Resolution.NONE
            addresses = ()
        elif not cluster_ip:
            # No clusterIP in the YAML (a manifest before the API server allocates one): still a
            # load-balanced Service, as istiod decides (only `None` is headless); no VIP is known,
            # so it is served on the wildcard listener of its port.
            resolution = Resolution.STATIC
            addresses = ()
        else:
            resolution = Resolution.STATIC
            addresses = (cluster_ip,)
        return Service(
            hostname=hostname(meta.name, meta.namespace),
            namespace=meta.namespace,
            ports=ports,
            resolution=resolution,
            addresses=addresses,
            endpoints=endpoints,
            mesh_external=False,
            kubernetes=True,
            ref=meta.ref,
            selector=string_map(f.get("selector")),
        )


def _ports(nodes: list[Node]) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for n in nodes:
        pf = n.fields("name", "port", "protocol", "app_protocol")
        if pf.opt("protocol", Node.string, "TCP").upper() != "TCP" or "port" not in pf:
            continue
        out.append((pf.opt("name", Node.string, ""), pf.require("port").integer(1, 65535)))
    return tuple(out)


def endpoint_slice(doc: Node) -> EndpointSet:
    meta, top = envelope(doc, "address_type", "endpoints", "ports")
    with located(meta):
        labels = dict(meta.labels)
        owner = labels.get(SERVICE_NAME_LABEL)
        if owner is None:
            doc.fail(f"an EndpointSlice needs the label {SERVICE_NAME_LABEL!r}")
        ports = _ports(top.list("ports"))
        out: list[Endpoint] = []
        for ep in top.list("endpoints"):
            ef = ep.fields(
                "addresses", "conditions", "target_ref", "node_name", "zone", "hints", "hostname", "deprecated_topology"
            )
            ready = True
            if (cond := ef.get("conditions")) is not None:
                cf = cond.fields("ready", "serving", "terminating")
                ready = cf.opt("ready", Node.boolean, True)
            if ready:
                out.extend(Endpoint(a.string(), ports) for a in ef.list("addresses"))
        return EndpointSet(f"{owner}.{meta.namespace}", tuple(out))


def endpoints(doc: Node) -> EndpointSet:
    meta, top = envelope(doc, "subsets")
    with located(meta):
        out: list[Endpoint] = []
        for subset in top.list("subsets"):
            sf = subset.fields("addresses", "not_ready_addresses", "ports")
            ports = _ports(sf.list("ports"))
            for a in sf.list("addresses"):
                af = a.fields("ip", "hostname", "node_name", "target_ref")
                out.append(Endpoint(af.require("ip").string(), ports))
            sf.list("not_ready_addresses")
        return EndpointSet(f"{meta.name}.{meta.namespace}", tuple(out), from_slice=False)


def pod_service_account(doc: Node) -> str:
    """A Pod document's spec.serviceAccountName (Kubernetes' default: `default`)."""
    spec = _member(doc, "spec").value
    name = spec.get("serviceAccountName") or spec.get("serviceAccount") if isinstance(spec, dict) else None
    return str(name) if name else "default"


def pod_labels(doc: Node) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """(pod IP, labels) from a Pod document, when it has an IP."""
    if not isinstance(doc.value, dict):
        doc.fail("expected a mapping")
    status = doc.value.get("status") or {}
    ip = status.get("podIP") if isinstance(status, dict) else None
    md = doc.value.get("metadata") or {}
    if not ip or not isinstance(md, dict):
        return None
    return str(ip), string_map(doc.child("metadata", md).child("labels", md.get("labels")))


@dataclass(frozen=True, slots=True)
class PodPorts:
    """A Pod document's labels and named container ports: resolves named targetPorts inbound."""

    labels: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int], ...]


def _member(node: Node, key: str) -> Node:
    """A key of a mapping we only partly read (a Pod's spec): absent or not a mapping → null."""
    value = node.value.get(key) if isinstance(node.value, dict) else None
    return node.child(key, value)


def pod_ports(doc: Node) -> PodPorts:
    """Labels and `spec.containers[].ports[]` (name → containerPort) of a Pod document; the
    rest of the pod spec is not looked at."""
    labels = string_map(_member(_member(doc, "metadata"), "labels"))
    ports: list[tuple[str, int]] = []
    for c in _member(_member(doc, "spec"), "containers").items():
        for p in _member(c, "ports").items():
            pf = p.fields("name", "container_port", "protocol", "host_port", "host_i_p")
            if "name" in pf and pf.opt("protocol", Node.string, "TCP").upper() == "TCP":
                ports.append((pf.require("name").string(), pf.require("container_port").integer(1, 65535)))
    return PodPorts(labels, tuple(ports))


def _merged(a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    names = {n for n, _ in a}
    return a + tuple(p for p in b if p[0] not in names)


def attach_endpoints(
    services: list[Service],
    sets: list[EndpointSet],
    pods: dict[str, tuple[tuple[str, str], ...]],
    accounts: dict[str, str] | None = None,
) -> list[Service]:
    """Kubernetes services with their endpoints and pod labels. As istiod, a service with
    EndpointSlices takes its endpoints from them only (every slice naming it), the legacy
    Endpoints object otherwise; an address listed twice is one endpoint (its ports merged)."""
    sliced = {s.service for s in sets if s.from_slice}
    by_service: dict[str, dict[str, Endpoint]] = {}
    for s in sets:
        if s.from_slice or s.service not in sliced:
            found = by_service.setdefault(s.service, {})
            for e in s.endpoints:
                seen = found.get(e.address)
                found[e.address] = e if seen is None else replace(seen, ports=_merged(seen.ports, e.ports))
    out: list[Service] = []
    for svc in services:
        if not svc.kubernetes or svc.resolution is Resolution.DNS:
            out.append(svc)
            continue
        key = svc.hostname.removesuffix(f".svc.{DOMAIN_SUFFIX}")
        eps = tuple(
            replace(e, labels=pods.get(e.address, e.labels), service_account=(accounts or {}).get(e.address, e.service_account))
            for e in by_service.get(key, {}).values()
        )
        out.append(replace(svc, endpoints=eps))
    return out


__all__ = ["EndpointSet", "PodPorts", "Protocol", "attach_endpoints", "endpoint_slice", "endpoints", "pod_labels", "pod_ports", "service"]
