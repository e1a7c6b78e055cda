"""The `Gateway` resource (networking.istio.io): the servers an ingress/egress gateway exposes.

Promises:
- `gateway(doc)` parses a Gateway into frozen dataclasses: its `selector` (the gateway
  workloads it configures, matched against `--workload-labels`), and per server the port
  (number, name, protocol), `hosts` as (namespace, host) pairs (`ns/host`, `./host`, `*/host`
  or a bare host meaning `*/host`) and `tls` (mode, credentialName, file-mounted
  serverCertificate / privateKey / caCertificates, httpsRedirect).
- A field istiod would honour and pysidecar cannot (`bind`, `defaultEndpoint`, SAN / SPKI /
  hash pinning, protocol versions, cipher suites, CRLs, AUTO_PASSTHROUGH, ISTIO_MUTUAL,
  OPTIONAL_MUTUAL) is an error naming file, YAML path and resource, never silently dropped.
- `vs_gateway_key(name, namespace)` and `Gateway.key` spell a gateway as istiod does,
  `<namespace>/<name>`, so a VirtualService's `gateways: [name]` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located, string_map
from pysidecar.config.istio.registry import Protocol, parse_protocol
from pysidecar.config.node import Node

TLS_MODES = ("PASSTHROUGH", "SIMPLE", "MUTUAL")
UNSUPPORTED_TLS_MODES = ("AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")
TLS_FIELDS = (
    "https_redirect", "mode", "server_certificate", "private_key", "ca_certificates",
    "credential_name", "credential_names", "subject_alt_names", "verify_certificate_spki",
    "verify_certificate_hash", "min_protocol_version", "max_protocol_version", "cipher_suites",
    "ca_crl", "tls_certificates",
)  # fmt: skip
UNSUPPORTED_TLS_FIELDS = (
    "credential_names", "subject_alt_names", "verify_certificate_spki", "verify_certificate_hash",
    "min_protocol_version", "max_protocol_version", "cipher_suites", "ca_crl", "tls_certificates",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServerTls:
    mode: str = ""  # "" when only httpsRedirect is set (an HTTP server)
    credential_name: str = ""
    # Istio's file-mounted certificates (the legacy /etc/istio/ingressgateway-certs way).
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    https_redirect: bool = False
    path: str = ""  # YAML path of the tls block, for errors found while compiling


@dataclass(frozen=True, slots=True)
class Server:
    number: int
    port_name: str
    protocol: Protocol
    hosts: tuple[tuple[str, str], ...]  # (namespace filter, host)
    tls: ServerTls | None = None
    name: str = ""
    path: str = ""

    @property
    def terminates_tls(self) -> bool:
        return self.tls is not None and self.tls.mode in ("SIMPLE", "MUTUAL")

    @property
    def passthrough(self) -> bool:
        return self.tls is not None and self.tls.mode == "PASSTHROUGH"


@dataclass(frozen=True, slots=True)
class Gateway:
    meta: ObjectMeta
    selector: tuple[tuple[str, str], ...]
    servers: tuple[Server, ...]

    @property
    def key(self) -> str:
        return f"{self.meta.namespace}/{self.meta.name}"

    def selects(self, labels: dict[str, str]) -> bool:
        """istiod: a Gateway applies to the workloads its selector matches (all of them when empty)."""
        return all(labels.get(k) == v for k, v in self.selector)


def vs_gateway_key(name: str, namespace: str) -> str:
    """A VirtualService's `gateways` entry as a gateway key: `name` is in the VS's namespace."""
    return name if "/" in name else f"{namespace}/{name}"


def _host(node: Node) -> tuple[str, str]:
    text = node.string()
    ns, sep, host = text.partition("/")
    if not sep:
        return "*", text
    if not ns or not host:
        node.fail(f"expected host or namespace/host, got {text!r}")
    return ns, host


def _tls(node: Node) -> ServerTls:
    f = node.fields(*TLS_FIELDS)
    for name in UNSUPPORTED_TLS_FIELDS:
        if (n := f.get(name)) is not None:
            n.fail(f"tls.{name} is not supported by pysidecar")
    mode = ""
    if (m := f.get("mode")) is not None:
        mode = m.enum([*TLS_MODES, *UNSUPPORTED_TLS_MODES])
        if mode in UNSUPPORTED_TLS_MODES:
            m.fail(f"tls mode {mode} is not supported by pysidecar; supported: {', '.join(TLS_MODES)}")
    out = ServerTls(
        mode=mode,
        credential_name=f.opt("credential_name", Node.string, ""),
        server_certificate=f.opt("server_certificate", Node.string, ""),
        private_key=f.opt("private_key", Node.string, ""),
        ca_certificates=f.opt("ca_certificates", Node.string, ""),
        https_redirect=f.opt("https_redirect", Node.boolean, False),
        path=node.path,
    )
    if mode in ("SIMPLE", "MUTUAL") and not out.credential_name and not (out.server_certificate and out.private_key):
        node.fail(f"tls mode {mode} needs credentialName, or serverCertificate and privateKey")
    return out


def server(node: Node) -> Server:
    f = node.fields("port", "bind", "hosts", "tls", "default_endpoint", "name")
    for name in ("bind", "default_endpoint"):
        if (n := f.get(name)) is not None:
            n.fail(f"{name} is not supported by pysidecar (the gateway binds 0.0.0.0)")
    pf = f.require("port").fields("number", "name", "protocol", "target_port")
    protocol_node = pf.require("protocol")
    protocol = parse_protocol(protocol_node.string())
    if protocol is Protocol.UNSUPPORTED or protocol is Protocol.UDP:
        protocol_node.fail(f"unsupported server protocol {protocol_node.string()!r}")
    hosts = tuple(_host(n) for n in f.list("hosts"))
    if not hosts:
        node.fail("a server needs at least one host")
    tls = f.opt("tls", _tls, None)
    if protocol in (Protocol.HTTPS, Protocol.TLS) and (tls is None or not tls.mode):
        node.fail(f"a {protocol.value} server needs tls.mode")
    return Server(
        number=pf.require("number").integer(1, 65535),
        port_name=pf.opt("name", Node.string, ""),
        protocol=protocol,
        hosts=hosts,
        tls=tls,
        name=f.opt("name", Node.string, ""),
        path=node.path,
    )


def gateway(doc: Node) -> Gateway:
    meta, top = envelope(doc, "spec")
    with located(meta):
        f = top.require("spec").fields("selector", "servers")
        servers = tuple(server(n) for n in f.list("servers"))
        return Gateway(meta=meta, selector=string_map(f.get("selector")), servers=servers)
