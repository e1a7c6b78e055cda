"""Sort parsed YAML documents by kind into one `IstioConfig`.

Promises:
- Accepts networking.istio.io v1alpha3 / v1beta1 / v1 ServiceEntry, VirtualService,
  DestinationRule, Sidecar, Gateway; Kubernetes Service, EndpointSlice, Endpoints, Pod, Secret
  (gateway credentials), Ingress + IngressClass (converted to a Gateway and VirtualServices by
  `ingress.py`, as istiod's ingress controller does); the `istio` ConfigMap; a kind-less
  MeshConfig document; `kind: List` (its items). Gateways and Secrets are kept for router mode;
  a sidecar ignores them.
- Kinds neither has a use for (Deployment, ConfigMap, ...) are skipped with a warning naming
  file and resource; a wrong apiVersion for a known kind is an error.
- PeerAuthentication and AuthorizationPolicy (security.istio.io v1 / v1beta1) are kept for
  the inbound chains.
- Security kinds not enforced (RequestAuthentication) are REFUSED: skipping a DENY policy would run a
  proxy that looks protected and is not. The error names file, YAML path and why.
- Two mesh configs are an error naming both files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pysidecar.config.istio import kube
from pysidecar.config.istio.authorization_policy import AuthorizationPolicy, authorization_policy
from pysidecar.config.istio.destination_rule import DestinationRule, destination_rule
from pysidecar.config.istio.gateway import Gateway, gateway
from pysidecar.config.istio.ingress import Ingress, ingress, ingress_class, to_istio
from pysidecar.config.istio.mesh import (
    configmap_mesh,
    is_istio_configmap,
    is_mesh_document,
    mesh_config,
)
from pysidecar.config.istio.peer_authentication import PeerAuthentication, peer_authentication
from pysidecar.config.istio.registry import Service
from pysidecar.config.istio.secrets import Secret, secret
from pysidecar.config.istio.service_entry import service_entry
from pysidecar.config.istio.sidecar_scope import Sidecar, sidecar
from pysidecar.config.istio.virtual_service import VirtualService, virtual_service
from pysidecar.config.node import Node
from pysidecar.model import MeshConfig

log = logging.getLogger(__name__)

NETWORKING_VERSIONS = ("v1alpha3", "v1beta1", "v1")
INGRESS_APIS = ("networking.k8s.io/v1", "networking.k8s.io/v1beta1", "extensions/v1beta1")
NETWORKING_KINDS = ("ServiceEntry", "VirtualService", "DestinationRule", "Sidecar", "Gateway")
# security.istio.io kinds not enforced (yet): refused at load, never skipped.
UNENFORCED_SECURITY_KINDS = ("RequestAuthentication",)
SECURITY_VERSIONS = ("v1", "v1beta1")


@dataclass(frozen=True, slots=True)
class IstioConfig:
    mesh: MeshConfig | None = None
    services: tuple[Service, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    secrets: tuple[Secret, ...] = ()
    files: tuple[str, ...] = ()
    # Pod documents' labels and named container ports (named targetPorts, inbound).
    pods: tuple[kube.PodPorts, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()


@dataclass
class _Collector:
    mesh: MeshConfig | None = None
    mesh_file: str = ""
    services: list[Service] = field(default_factory=list)
    endpoint_sets: list[kube.EndpointSet] = field(default_factory=list)
    pods: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    pod_accounts: dict[str, str] = field(default_factory=dict)
    peer_authentications: list[PeerAuthentication] = field(default_factory=list)
    authorization_policies: list[AuthorizationPolicy] = field(default_factory=list)
    pod_ports: list[kube.PodPorts] = field(default_factory=list)
    virtual_services: list[VirtualService] = field(default_factory=list)
    destination_rules: list[DestinationRule] = field(default_factory=list)
    sidecars: list[Sidecar] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    ingresses: list[Ingress] = field(default_factory=list)
    ingress_classes: dict[str, str] = field(default_factory=dict)

    def set_mesh(self, doc: Node, mesh: MeshConfig) -> None:
        if self.mesh is not None:
            doc.fail(f"a second mesh config (the first is in {self.mesh_file})")
        self.mesh, self.mesh_file = mesh, doc.file

    def add(self, doc: Node) -> None:
        value = doc.value
        if not isinstance(value, dict):
            doc.fail("expected a mapping (a Kubernetes object or a MeshConfig)")
        if is_mesh_document(value):
            self.set_mesh(doc, mesh_config(doc))
            return
        kind = str(value.get("kind", ""))
        api = str(value.get("apiVersion", ""))
        if kind == "List":
            items = doc.fields("api_version", "kind", "metadata", "items").list("items")
            for item in items:
                self.add(item)
            return
        if kind in NETWORKING_KINDS:
            group, _, version = api.partition("/")
            if group != "networking.istio.io" or version not in NETWORKING_VERSIONS:
                doc.child("apiVersion", api).fail(
                    f"{kind} needs apiVersion networking.istio.io/{{{','.join(NETWORKING_VERSIONS)}}}, got {api!r}"
                )
        if kind in ("PeerAuthentication", "AuthorizationPolicy"):
            group, _, version = api.partition("/")
            if group != "security.istio.io" or version not in SECURITY_VERSIONS:
                doc.child("apiVersion", api).fail(f"{kind} needs apiVersion security.istio.io/{{v1,v1beta1}}, got {api!r}")
            if kind == "PeerAuthentication":
                self.peer_authentications.append(peer_authentication(doc))
            else:
                self.authorization_policies.append(authorization_policy(doc))
            return
        if kind in UNENFORCED_SECURITY_KINDS or api.startswith("security.istio.io/"):
            doc.child("kind", kind).fail(
                f"{kind} ({api}) is refused: pysidecar does not enforce it yet, and a security "
                "policy that is loaded but not enforced would leave traffic unprotected; remove it "
                "or run real Envoy (pysidecar envoy-config)"
            )
        if kind == "ServiceEntry":
            self.services.extend(service_entry(doc))
        elif kind == "VirtualService":
            self.virtual_services.append(virtual_service(doc))
        elif kind == "DestinationRule":
            self.destination_rules.append(destination_rule(doc))
        elif kind == "Sidecar":
            self.sidecars.append(sidecar(doc))
        elif kind == "Gateway":
            self.gateways.append(gateway(doc))
        elif kind == "Secret" and api == "v1":
            self.secrets.append(secret(doc))
        elif kind == "Ingress" and api in INGRESS_APIS:
            self.ingresses.append(ingress(doc))
        elif kind == "IngressClass" and api.startswith("networking.k8s.io/"):
            name, controller = ingress_class(doc)
            self.ingress_classes[name] = controller
        elif kind == "Service" and api == "v1":
            self.services.append(kube.service(doc))
        elif kind == "EndpointSlice" and api.startswith("discovery.k8s.io/"):
            self.endpoint_sets.append(kube.endpoint_slice(doc))
        elif kind == "Endpoints" and api == "v1":
            self.endpoint_sets.append(kube.endpoints(doc))
        elif kind == "Pod" and api == "v1":
            found = kube.pod_labels(doc)
            if found is not None:
                self.pods[found[0]] = found[1]
                self.pod_accounts[found[0]] = kube.pod_service_account(doc)
            self.pod_ports.append(kube.pod_ports(doc))
        elif is_istio_configmap(value):
            self.set_mesh(doc, configmap_mesh(doc))
        else:
            md = value.get("metadata")
            name = md.get("name", "?") if isinstance(md, dict) else "?"
            log.warning("%s: %s %s ignored: not a kind a sidecar acts on", doc.file, kind or "<no kind>", name)

    def result(self, files: tuple[str, ...]) -> IstioConfig:
        services = tuple(kube.attach_endpoints(self.services, self.endpoint_sets, self.pods, self.pod_accounts))
        gw, ingress_vss = to_istio(self.ingresses, self.ingress_classes, {s.hostname: s for s in services})
        return IstioConfig(
            mesh=self.mesh,
            services=services,
            virtual_services=tuple(self.virtual_services + ingress_vss),
            destination_rules=tuple(self.destination_rules),
            sidecars=tuple(self.sidecars),
            gateways=tuple(self.gateways + ([gw] if gw is not None else [])),
            secrets=tuple(self.secrets),
            files=files,
            pods=tuple(self.pod_ports),
            peer_authentications=tuple(self.peer_authentications),
            authorization_policies=tuple(self.authorization_policies),
        )


def collect(docs: list[Node]) -> IstioConfig:
    c = _Collector()
    for doc in docs:
        c.add(doc)
    return c.result(tuple(dict.fromkeys(d.file for d in docs)))
