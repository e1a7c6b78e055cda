"""Istio's standard metrics (istio_requests_total, istio_tcp_*), recorded from finished StreamInfos.

Promises:
- The metrics are ordinary stat blocks in the worker's `StatsStore`, named the way Istio's
  stats filter names them inside Envoy: the labels as `key=.=value;.;` pairs, then the metric
  (`reporter=.=source;.;source_workload=.=...;.;istio_requests_total`). So they are merged over
  the workers, reset and exposed like every other stat, and tag extraction turns the pairs
  into labels, in Istio's order.
- HTTP: istio_requests_total (counter), istio_request_duration_milliseconds,
  istio_request_bytes, istio_response_bytes (histograms, Envoy's buckets), with all 25 of
  Istio's labels (request_protocol `grpc` and grpc_response_status for gRPC requests). TCP:
  istio_tcp_connections_opened_total / _closed_total,
  istio_tcp_received_bytes_total / _sent_bytes_total, with Istio's TCP label set (no
  response_code, no grpc_response_status). A TCP connection is counted when it closes: the
  data path reports a connection once, finished.
- Reporter is `source` for outbound listeners, `destination` for inbound ones; our side of the
  labels comes from `WorkloadMetadata`, the peer's side is `unknown` (no metadata exchange)
  except the principals, which mutual TLS tells as Istio's stats plugin reads them: inbound,
  source_principal is the client certificate's URI SAN, destination_principal our own, and
  connection_security_policy `mutual_tls` (else `none`); outbound, destination_principal is
  the upstream certificate's URI SAN and source_principal our own (policy `unknown`).
- `record()` costs one tuple and one dict lookup per stream once a label set has been seen;
  labels are computed on the first sighting only. Distinct label sets are capped
  (MAX_LABEL_SETS) so a client inventing Host headers cannot grow memory without bound.
"""

from __future__ import annotations

from typing import Any

from pysidecar.common.stream_info import StreamInfo
from pysidecar.common.workload import UNKNOWN, WorkloadMetadata
from pysidecar.model import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER_IPV4,
    INBOUND_PASSTHROUGH_CLUSTER_IPV6,
    PASSTHROUGH_CLUSTER,
)
from pysidecar.observe.stats import IstioHttpStats, IstioTcpStats, StatsStore

HTTP_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
TCP_LABELS: tuple[str, ...] = tuple(
    x for x in HTTP_LABELS if x not in ("response_code", "grpc_response_status")
)

# Beyond this many label sets per worker, the Host header no longer makes a new one.
MAX_LABEL_SETS = 10_000
_CATCH_ALLS = (PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER_IPV4, INBOUND_PASSTHROUGH_CLUSTER_IPV6)


def destination_service(cluster: str | None, authority: str | None) -> tuple[str, str, str]:
    """(destination_service, _service_name, _service_namespace) as Istio derives them from
    the cluster `outbound|80||httpbin.foo.svc.cluster.local` (or the Host on a catch-all)."""
    if cluster in _CATCH_ALLS:
        host = authority.rsplit(":", 1)[0] if authority and not authority.startswith("[") else authority
        return (host or UNKNOWN, str(cluster), UNKNOWN)
    if cluster is None or cluster.count("|") != 3:
        return (UNKNOWN, cluster or UNKNOWN, UNKNOWN)
    fqdn = cluster.split("|")[3]
    if not fqdn:
        return (UNKNOWN, UNKNOWN, UNKNOWN)
    parts = fqdn.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return (fqdn, parts[0], parts[1])
    return (fqdn, fqdn, UNKNOWN)


def _workload(side: str, meta: WorkloadMetadata | None) -> dict[str, str]:
    m = meta or WorkloadMetadata()
    return {
        f"{side}_workload": m.workload,
        f"{side}_workload_namespace": m.namespace,
        f"{side}_canonical_service": m.canonical_service,
        f"{side}_canonical_revision": m.canonical_revision,
        f"{side}_principal": m.principal,
        f"{side}_app": m.app,
        f"{side}_version": m.version,
        f"{side}_cluster": m.cluster,
    }


def _principals(info: StreamInfo, inbound: bool, own: str | None) -> dict[str, str]:
    tls = info.downstream_tls
    if inbound:
        mutual = tls is not None and tls.mutual
        return {
            "source_principal": (tls.peer_uri if mutual else None) or UNKNOWN,
            "destination_principal": (tls.local_uri if mutual else None) or UNKNOWN,
            "connection_security_policy": "mutual_tls" if mutual else "none",
        }
    peer = info.upstream_peer_uri_san
    return {
        "source_principal": (own if peer else None) or UNKNOWN,
        "destination_principal": peer or UNKNOWN,
        "connection_security_policy": UNKNOWN,
    }


def labels_for(
    meta: WorkloadMetadata, inbound: bool, info: StreamInfo, names: tuple[str, ...], own: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Istio's labels for one finished stream, in Istio's order (`names`); `own`: our SPIFFE
    identity, when we have one."""
    service, service_name, service_ns = destination_service(info.upstream_cluster, info.authority)
    values: dict[str, str] = {
        "reporter": "destination" if inbound else "source",
        **_workload("source", None if inbound else meta),
        **_workload("destination", meta if inbound else None),
        "destination_service": service,
        "destination_service_name": service_name,
        "destination_service_namespace": service_ns,
        "request_protocol": "tcp" if info.protocol is None else "grpc" if info.grpc else "http",
        "response_code": str(info.response_code),
        "grpc_response_status": "" if info.grpc_status is None else str(info.grpc_status),
        "response_flags": info.response_flags_text,
        **_principals(info, inbound, own),
    }
    return tuple((k, values[k]) for k in names)


def encode_scope(labels: tuple[tuple[str, str], ...]) -> str:
    # `;.;` ends a value, so a value cannot carry it; `;` alone is harmless.
    return "".join(f"{k}=.={v.replace(';.;', ';_;')};.;" for k, v in labels)


class IstioRecorder:
    """Per worker: finished streams → Istio's standard metrics in `stats`."""

    def __init__(self, stats: StatsStore, meta: WorkloadMetadata) -> None:
        self.stats = stats
        self.meta = meta
        self._http: dict[tuple[Any, ...], IstioHttpStats] = {}
        self._tcp: dict[tuple[Any, ...], IstioTcpStats] = {}
        # Our SPIFFE identity (the config's workload certificate), set by the worker per config.
        self.own: str | None = None

    def _peers(self, info: StreamInfo) -> tuple[str | None, str | None, str | None]:
        """What of the stream's TLS changes its labels (part of the label-set key)."""
        tls = info.downstream_tls
        if tls is None:
            return (None, None, info.upstream_peer_uri_san)
        return (tls.peer_uri if tls.mutual else "", tls.local_uri, info.upstream_peer_uri_san)

    def set_identity(self, spiffe_id: str | None) -> None:
        """Our identity for the principals; label sets computed under another are dropped."""
        if spiffe_id != self.own:
            self.own = spiffe_id
            self._http.clear()
            self._tcp.clear()

    def record(self, info: StreamInfo, inbound: bool) -> None:
        flags = info.response_flags
        if info.protocol is None:
            key: tuple[Any, ...] = (inbound, info.upstream_cluster, tuple(flags), *self._peers(info))
            tcp = self._tcp.get(key)
            if tcp is None:
                tcp = self._tcp[key] = self.stats.block(
                    IstioTcpStats, encode_scope(labels_for(self.meta, inbound, info, TCP_LABELS, self.own))
                )
            tcp.istio_tcp_connections_opened_total += 1
            tcp.istio_tcp_connections_closed_total += 1
            tcp.istio_tcp_received_bytes_total += info.bytes_received
            tcp.istio_tcp_sent_bytes_total += info.bytes_sent
            return
        authority = info.authority if len(self._http) < MAX_LABEL_SETS else None
        key = (
            inbound, info.upstream_cluster, authority, info.response_code, tuple(flags),
            info.grpc, info.grpc_status, *self._peers(info),
        )  # fmt: skip
        http = self._http.get(key)
        if http is None:
            labels = labels_for(self.meta, inbound, info, HTTP_LABELS, self.own)
            if authority is None and info.upstream_cluster in _CATCH_ALLS:
                labels = tuple((k, UNKNOWN if k == "destination_service" else v) for k, v in labels)
            http = self._http[key] = self.stats.block(IstioHttpStats, encode_scope(labels))
        http.istio_requests_total += 1
        duration = info.duration_ms
        if duration is not None:
            http.istio_request_duration_milliseconds.record(duration)
        http.istio_request_bytes.record(info.bytes_received)
        http.istio_response_bytes.record(info.bytes_sent)
