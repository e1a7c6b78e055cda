"""The service registry istiod builds from ServiceEntries and Kubernetes Services.

Promises:
- `Service` is istiod's model.Service reduced to what a sidecar's config needs: hostname,
  VIPs, ports with their protocol, resolution and endpoints (with labels, for subsets).
- `port_protocol(name, app_protocol)` decides a Kubernetes Service port's protocol as Istio
  does: `appProtocol` wins, else the port name's prefix before the first `-`; anything else is
  sniffed (UNSUPPORTED). A ServiceEntry port has only its declared protocol.
- Plain data and pure functions; no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Protocol(enum.Enum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    MONGO = "Mongo"
    MYSQL = "MySQL"
    REDIS = "Redis"
    UDP = "UDP"
    # Istio's "unsupported": the port is sniffed (HTTP vs anything else) at connection time.
    UNSUPPORTED = "UnsupportedProtocol"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_http2(self) -> bool:
        """Istio's IsHTTP2: ports whose upstream connections speak HTTP/2."""
        return self in (Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_grpc(self) -> bool:
        return self in (Protocol.GRPC, Protocol.GRPC_WEB)

    @property
    def is_tls(self) -> bool:
        return self in (Protocol.HTTPS, Protocol.TLS)


# Istio's protocol.Parse: case-insensitive names.
_BY_NAME: dict[str, Protocol] = {p.value.lower(): p for p in Protocol} | {
    "grpc-web": Protocol.GRPC_WEB,
    # Kubernetes' standard appProtocol values.
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.HTTPS,
}


# What a ServiceEntry may declare (istiod's validateProtocol).
PROTOCOL_NAMES = tuple(p.value for p in Protocol if p is not Protocol.UNSUPPORTED)


def parse_protocol(text: str) -> Protocol:
    return _BY_NAME.get(text.lower(), Protocol.UNSUPPORTED)


def port_protocol(name: str, app_protocol: str = "") -> Protocol:
    """Istio's rule for Kubernetes ports: appProtocol, else the name's prefix before `-`."""
    if app_protocol:
        found = parse_protocol(app_protocol)
        if found is not Protocol.UNSUPPORTED:
            return found
    prefix = name.split("-", 1)[0]
    found = parse_protocol(prefix) if prefix else Protocol.UNSUPPORTED
    # UDP and the unknown are never guessed from a name.
    return Protocol.UNSUPPORTED if found is Protocol.UDP else found


class Resolution(enum.Enum):
    NONE = "NONE"  # passthrough: connect to the original destination
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    number: int
    protocol: Protocol
    target_port: int | None = None
    # Kubernetes' named targetPort: looked up in each endpoint's ports.
    target_port_name: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    # Port name → number on this endpoint (ServiceEntry `endpoints[].ports`, EndpointSlice ports).
    ports: tuple[tuple[str, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    # The workload's Kubernetes service account (Pod spec.serviceAccountName, ServiceEntry
    # endpoints[].serviceAccount), in the service's namespace: its SPIFFE identity.
    service_account: str = ""

    def port_for(self, port: ServicePort) -> int:
        by_name = dict(self.ports)
        for key in (port.target_port_name, port.name):
            if key and key in by_name:
                return by_name[key]
        return port.target_port or port.number

    def has_labels(self, wanted: tuple[tuple[str, str], ...]) -> bool:
        mine = dict(self.labels)
        return all(mine.get(k) == v for k, v in wanted)


@dataclass(frozen=True, slots=True)
class Service:
    hostname: str
    namespace: str
    ports: tuple[ServicePort, ...]
    resolution: Resolution
    # VIPs: ServiceEntry `addresses` (IPs or CIDRs) or a Kubernetes clusterIP.
    addresses: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    mesh_external: bool = False
    kubernetes: bool = False
    # Where it came from (`ServiceEntry default/httpbin-ext`), for errors and warnings.
    ref: str = ""
    # Kubernetes spec.selector: the pods (and so the sidecars) that serve it, for inbound.
    selector: tuple[tuple[str, str], ...] = ()
    # ServiceEntry subjectAltNames: the identities its endpoints may present.
    subject_alt_names: tuple[str, ...] = ()

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.number == number:
                return p
        return None


def outbound_cluster_name(port: int, hostname: str, subset: str = "") -> str:
    """istiod's model.BuildSubsetKey for outbound clusters."""
    return f"outbound|{port}|{subset}|{hostname}"
