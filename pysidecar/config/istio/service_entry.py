"""ServiceEntry (networking.istio.io v1alpha3 / v1beta1 / v1) → registry `Service`s, one per host.

Promises:
- hosts, addresses (IPs or CIDRs), ports (number, name, protocol, targetPort), location,
  resolution NONE | STATIC | DNS | DNS_ROUND_ROBIN, endpoints (address, ports, labels, weight).
- A port's protocol is the declared one only: without one it is sniffed, whatever its name (as
  istiod's convertPort); an unknown protocol is refused (istiod's validateProtocol).
- Checked as istiod's validation does: at least one host; STATIC needs endpoints with IP
  addresses; DNS_ROUND_ROBIN takes at most one endpoint; NONE with endpoints is refused.
- `workloadSelector` is ignored with a warning: a sidecar has no workloads to select.
"""

from __future__ import annotations

import ipaddress
import logging

from pysidecar.config.istio.meta import ObjectMeta, envelope, ip_or_cidr, located, string_map
from pysidecar.config.istio.registry import (
    PROTOCOL_NAMES,
    Endpoint,
    Protocol,
    Resolution,
    Service,
    ServicePort,
    parse_protocol,
)
from pysidecar.config.node import Node

log = logging.getLogger(__name__)

SPEC_FIELDS = (
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workload_selector",
    "export_to",
    "subject_alt_names",
)


def _protocol(node: Node) -> Protocol:
    """istiod's validateProtocol: one of Istio's protocol names, case-insensitive."""
    text = node.string()
    found = parse_protocol(text)
    if found is Protocol.UNSUPPORTED:
        node.fail(f"unrecognized protocol {text!r}; expected one of {', '.join(PROTOCOL_NAMES)} (or none, to sniff)")
    return found


def _port(node: Node) -> ServicePort:
    f = node.fields("number", "name", "protocol", "target_port")
    name = f.opt("name", Node.string, "")
    number = f.require("number").integer(1, 65535)
    # istiod's convertPort: the declared protocol only, never the name; none means sniffed.
    return ServicePort(
        name=name,
        number=number,
        protocol=f.opt("protocol", _protocol, Protocol.UNSUPPORTED),
        target_port=f.opt("target_port", lambda n: n.integer(1, 65535), None),
    )


def _endpoint(node: Node, resolution: Resolution) -> Endpoint:
    f = node.fields("address", "ports", "labels", "weight", "network", "locality", "service_account")
    address = f.require("address").string()
    if resolution is Resolution.STATIC:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not address.startswith("unix://"):
                f.require("address").fail(f"resolution STATIC needs an IP address, got {address!r}")
    ports_node = f.get("ports")
    ports: tuple[tuple[str, int], ...] = ()
    if ports_node is not None:
        if not isinstance(ports_node.value, dict):
            ports_node.fail("expected a mapping of port name to number")
        ports = tuple(
            (str(k), ports_node.child(str(k), v).integer(1, 65535)) for k, v in ports_node.value.items()
        )
    return Endpoint(
        address=address,
        ports=ports,
        labels=string_map(f.get("labels")),
        weight=f.opt("weight", lambda n: n.integer(1), 1),
        service_account=f.opt("service_account", Node.string, ""),
    )


def service_entry(doc: Node) -> list[Service]:
    meta, top = envelope(doc, "spec")
    with located(meta):
        return _services(meta, top.require("spec"))


def _services(meta: ObjectMeta, spec: Node) -> list[Service]:
    f = spec.fields(*SPEC_FIELDS)
    if f.get("workload_selector") is not None:
        log.warning("%s: %s: workloadSelector ignored (a sidecar has no workloads to select)", meta.file, meta.ref)
    hosts = [n.string() for n in f.list("hosts")]
    if not hosts:
        spec.fail("spec.hosts: at least one host is required")
    resolution = f.opt(
        "resolution", lambda n: Resolution(n.enum([r.value for r in Resolution])), Resolution.NONE
    )
    location = f.opt("location", lambda n: n.enum(["MESH_EXTERNAL", "MESH_INTERNAL"]), "MESH_EXTERNAL")
    ports = tuple(_port(n) for n in f.list("ports"))
    if not ports:
        spec.fail("at least one port is required")
    seen: set[int] = set()
    for i, p in enumerate(ports):
        if p.number in seen:
            spec.child("ports", None).child(i, None).fail(f"duplicate port number {p.number}")
        seen.add(p.number)
    endpoints = tuple(_endpoint(n, resolution) for n in f.list("endpoints"))
    if resolution is Resolution.STATIC and not endpoints and f.get("workload_selector") is None:
        spec.fail("resolution STATIC needs endpoints")
    if resolution is Resolution.DNS_ROUND_ROBIN and len(endpoints) > 1:
        spec.fail("resolution DNS_ROUND_ROBIN takes at most one endpoint")
    if resolution is Resolution.NONE and endpoints:
        spec.fail("resolution NONE takes no endpoints (use STATIC or DNS)")
    addresses = tuple(ip_or_cidr(n) for n in f.list("addresses"))
    for i, h in enumerate(hosts):
        if h.startswith("*") and resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not endpoints:
            spec.child("hosts", None).child(i, None).fail(
                f"wildcard host {h!r} cannot be resolved by DNS without endpoints"
            )
    f.list("export_to")
    sans = tuple(n.string() for n in f.list("subject_alt_names"))
    return [
        Service(
            hostname=h,
            namespace=meta.namespace,
            ports=ports,
            resolution=resolution,
            addresses=addresses,
            endpoints=endpoints,
            mesh_external=location == "MESH_EXTERNAL",
            ref=meta.ref,
            subject_alt_names=sans,
        )
        for h in hosts
    ]
