"""DestinationRule → subsets and the traffic policy a sidecar applies to a host's clusters.

Promises:
- `host`, `subsets` (name, labels, trafficPolicy), `trafficPolicy.loadBalancer.simple`,
  `connectionPool` (tcp.maxConnections, tcp.connectTimeout, http.http1MaxPendingRequests,
  http.http2MaxRequests, http.maxRetries, http.idleTimeout) and `outlierDetection`
  (consecutive5xxErrors, consecutiveGatewayErrors, interval, baseEjectionTime,
  maxEjectionPercent, minHealthPercent, the deprecated consecutiveErrors) are parsed and
  checked; subset names are unique. connectionPool.http.maxRequestsPerConnection too.
- tcp.maxConnectionDuration too (the upstream HTTP connections' max_connection_duration).
- http.h2UpgradePolicy (DEFAULT | DO_NOT_UPGRADE | UPGRADE), useClientProtocol and
  maxConcurrentStreams: the clusters' upstream HTTP protocol (config/istio/clusters.py).
- What pysidecar would not do is refused, naming the field: tcp.idleTimeout, tunnel,
  proxyProtocol, local-origin outlier splitting. tcp.tcpKeepalive, which changes only the
  socket options, is warned about and ignored.
- `workloadSelector` is ignored with a warning.
- `trafficPolicy.tls` (ClientTLSSettings): mode DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL with
  clientCertificate / privateKey / caCertificates (files), sni, subjectAltNames,
  insecureSkipVerify, on the rule, a subset, or a port (portLevelSettings[].port.number + tls).
  MUTUAL needs clientCertificate and privateKey (istiod's check). credentialName (a sidecar
  reads no Secret: istiod drops it for a sidecar without workloadSelector) and caCrl are
  refused. Other portLevelSettings fields are ignored with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located, resolve_host, string_map
from pysidecar.config.node import Fields, Node
from pysidecar.model import LbPolicy

log = logging.getLogger(__name__)

# Istio's simple load balancers → Envoy's lb_policy. PASSTHROUGH is an ORIGINAL_DST cluster.
SIMPLE_LB = {
    "UNSPECIFIED": LbPolicy.LEAST_REQUEST,
    "LEAST_REQUEST": LbPolicy.LEAST_REQUEST,
    "LEAST_CONN": LbPolicy.LEAST_REQUEST,
    "ROUND_ROBIN": LbPolicy.ROUND_ROBIN,
    "RANDOM": LbPolicy.RANDOM,
    "PASSTHROUGH": LbPolicy.CLUSTER_PROVIDED,
}


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int | None = None
    connect_timeout: float | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None
    max_requests_per_connection: int | None = None
    max_connection_duration: float | None = None
    # http.h2UpgradePolicy (None: DEFAULT, the mesh's), useClientProtocol, maxConcurrentStreams.
    h2_upgrade: bool | None = None
    use_client_protocol: bool = False
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_errors: int | None = None  # deprecated: istiod reads it as gateway errors
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


@dataclass(frozen=True, slots=True)
class ClientTls:
    """networking.istio.io ClientTLSSettings."""

    mode: str = "DISABLE"  # DISABLE | SIMPLE | MUTUAL | ISTIO_MUTUAL
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False
    where: str = ""  # file: YAML path, for errors found when compiling


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    lb_policy: LbPolicy | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None
    # portLevelSettings[].tls by port number.
    port_tls: tuple[tuple[int, ClientTls], ...] = ()

    def tls_for(self, port: int) -> ClientTls | None:
        return dict(self.port_tls).get(port, self.tls)


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    meta: ObjectMeta
    host: str
    subsets: tuple[Subset, ...] = ()
    traffic_policy: TrafficPolicy | None = None

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


def _count(n: Node) -> int:
    return n.integer(0)


def _unsupported(f: Fields, name: str, why: str) -> None:
    if (n := f.get(name)) is not None:
        n.fail(f"{name} is not supported by pysidecar: {why}")


def _ignored(f: Fields, name: str, why: str) -> None:
    if (n := f.get(name)) is not None:
        log.warning("%s: %s: ignored (%s)", n.file, n.path, why)


def connection_pool(node: Node) -> ConnectionPool:
    f = node.fields("tcp", "http")
    tcp = f.get("tcp")
    tf = tcp.fields("max_connections", "connect_timeout", "tcp_keepalive", "max_connection_duration", "idle_timeout") if tcp else None
    if tf is not None:
        _ignored(tf, "tcp_keepalive", "upstream sockets use the kernel's keepalive settings")
        _unsupported(tf, "idle_timeout", "tcp_proxy keeps its 1h idle timeout; for HTTP use http.idleTimeout")
    http = f.get("http")
    hf = (
        http.fields(
            "http1_max_pending_requests", "http2_max_requests", "max_requests_per_connection",
            "max_retries", "idle_timeout", "h2_upgrade_policy", "use_client_protocol",
            "max_concurrent_streams",
        )
        if http
        else None
    )  # fmt: skip
    upgrade = "DEFAULT"
    if hf is not None:
        upgrade = hf.opt("h2_upgrade_policy", lambda n: n.enum(["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]), "DEFAULT")
    return ConnectionPool(
        max_connections=tf.opt("max_connections", _count, None) if tf else None,
        connect_timeout=tf.opt("connect_timeout", Node.duration, None) if tf else None,
        http1_max_pending_requests=hf.opt("http1_max_pending_requests", _count, None) if hf else None,
        http2_max_requests=hf.opt("http2_max_requests", _count, None) if hf else None,
        max_retries=hf.opt("max_retries", _count, None) if hf else None,
        idle_timeout=hf.opt("idle_timeout", Node.duration, None) if hf else None,
        max_requests_per_connection=hf.opt("max_requests_per_connection", _count, None) if hf else None,
        max_connection_duration=tf.opt("max_connection_duration", Node.duration, None) if tf else None,
        h2_upgrade=None if upgrade == "DEFAULT" else upgrade == "UPGRADE",
        use_client_protocol=hf.opt("use_client_protocol", Node.boolean, False) if hf else False,
        max_concurrent_streams=hf.opt("max_concurrent_streams", _count, None) if hf else None,
    )


def outlier_detection(node: Node) -> OutlierDetection:
    f = node.fields(
        "consecutive_5xx_errors", "consecutive_errors", "consecutive_gateway_errors",
        "consecutive_local_origin_failures", "split_external_local_origin_errors", "interval",
        "base_ejection_time", "max_ejection_percent", "min_health_percent",
    )  # fmt: skip
    _unsupported(f, "consecutive_local_origin_failures", "local-origin failures are not split from 5xx")
    if f.opt("split_external_local_origin_errors", Node.boolean, False):
        _unsupported(f, "split_external_local_origin_errors", "local-origin failures are not split from 5xx")
    default = OutlierDetection()
    return OutlierDetection(
        consecutive_5xx_errors=f.opt("consecutive_5xx_errors", _count, None),
        consecutive_gateway_errors=f.opt("consecutive_gateway_errors", _count, None),
        consecutive_errors=f.opt("consecutive_errors", _count, None),
        interval=f.opt("interval", Node.duration, default.interval),
        base_ejection_time=f.opt("base_ejection_time", Node.duration, default.base_ejection_time),
        max_ejection_percent=f.opt("max_ejection_percent", lambda n: n.integer(0, 100), default.max_ejection_percent),
        min_health_percent=f.opt("min_health_percent", lambda n: n.integer(0, 100), default.min_health_percent),
    )


def traffic_policy(node: Node) -> TrafficPolicy:
    f = node.fields("load_balancer", "connection_pool", "outlier_detection", "tls", "port_level_settings", "tunnel", "proxy_protocol")
    lb: LbPolicy | None = None
    if (lbn := f.get("load_balancer")) is not None:
        lf = lbn.fields("simple", "consistent_hash", "locality_lb_setting", "warmup_duration_secs", "warmup")
        if (ch := lf.get("consistent_hash")) is not None:
            ch.fail("consistentHash load balancing is not supported by pysidecar")
        if (simple := lf.get("simple")) is not None:
            lb = SIMPLE_LB[simple.enum(list(SIMPLE_LB))]
    port_tls: list[tuple[int, ClientTls]] = []
    for pn in f.list("port_level_settings"):
        pf = pn.fields("port", "load_balancer", "connection_pool", "outlier_detection", "tls")
        number = pf.require("port").fields("number").require("number").port()
        if (t := pf.get("tls")) is not None:
            port_tls.append((number, client_tls(t)))
        if any(k in pf for k in ("load_balancer", "connection_pool", "outlier_detection")):
            log.warning("%s: %s: portLevelSettings other than tls ignored", pn.file, pn.path)
    _unsupported(f, "tunnel", "upstream traffic is not tunnelled (CONNECT / POST)")
    _unsupported(f, "proxy_protocol", "no PROXY protocol header is sent upstream")
    return TrafficPolicy(
        lb_policy=lb,
        connection_pool=f.opt("connection_pool", connection_pool, None),
        outlier_detection=f.opt("outlier_detection", outlier_detection, None),
        tls=f.opt("tls", client_tls, None),
        port_tls=tuple(port_tls),
    )


TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


def client_tls(node: Node) -> ClientTls:
    f = node.fields(
        "mode", "client_certificate", "private_key", "ca_certificates", "credential_name",
        "subject_alt_names", "sni", "insecure_skip_verify", "ca_crl",
    )  # fmt: skip
    _unsupported(f, "credential_name", "a sidecar reads no Secret (istiod drops credentialName for sidecars); use file paths")
    _unsupported(f, "ca_crl", "certificate revocation lists are not checked")
    mode = f.opt("mode", lambda n: n.enum(TLS_MODES), "DISABLE")
    out = ClientTls(
        mode=mode,
        client_certificate=f.opt("client_certificate", Node.string, ""),
        private_key=f.opt("private_key", Node.string, ""),
        ca_certificates=f.opt("ca_certificates", Node.string, ""),
        sni=f.opt("sni", Node.string, ""),
        subject_alt_names=tuple(n.string() for n in f.list("subject_alt_names")),
        insecure_skip_verify=f.opt("insecure_skip_verify", Node.boolean, False),
        where=f"{node.file}: {node.path}",
    )
    if mode == "MUTUAL" and not (out.client_certificate and out.private_key):
        node.fail("tls mode MUTUAL needs clientCertificate and privateKey (istiod: must not be empty)")
    return out


def destination_rule(doc: Node) -> DestinationRule:
    meta, top = envelope(doc, "spec")
    with located(meta):
        spec = top.require("spec")
        f = spec.fields("host", "subsets", "traffic_policy", "export_to", "workload_selector")
        if f.get("workload_selector") is not None:
            log.warning("%s: %s: workloadSelector ignored", meta.file, meta.ref)
        subsets: list[Subset] = []
        for n in f.list("subsets"):
            sf = n.fields("name", "labels", "traffic_policy")
            name = sf.require("name").string()
            if any(s.name == name for s in subsets):
                sf.require("name").fail(f"duplicate subset name {name!r}")
            subsets.append(Subset(name, string_map(sf.get("labels")), sf.opt("traffic_policy", traffic_policy, None)))
        f.list("export_to")
        return DestinationRule(
            meta=meta,
            host=resolve_host(f.require("host").string(), meta.namespace),
            subsets=tuple(subsets),
            traffic_policy=f.opt("traffic_policy", traffic_policy, None),
        )
