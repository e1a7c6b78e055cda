"""Envoy JSON for a cluster's TLS origination: transport_socket, transport_socket_matches and
the endpoint metadata that picks them (what `envoy-config` exports and /config_dump shows).

Promises:
- An UpstreamTlsContext renders as Envoy v3 reads it: `common_tls_context` (certificates as
  file paths, `validation_context.trusted_ca`, `match_typed_subject_alt_names` with san_type URI
  for `spiffe://` names and DNS otherwise, exact), `alpn_protocols`, and `sni`.
- A match with no transport socket is Envoy's raw_buffer, as istiod writes `tlsMode-disabled`.
"""

from __future__ import annotations

from typing import Any

from pysidecar.model import Cluster, LbEndpoint
from pysidecar.model.tls import (
    TLS_TRANSPORT_SOCKET,
    UPSTREAM_TLS_CONTEXT,
    DataSource,
    UpstreamTlsContext,
)

T = "type.googleapis.com/"
RAW_BUFFER = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {"@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
}
# The filter_metadata namespace Envoy's transport_socket_matches look at.
MATCH_METADATA = "envoy.transport_socket_match"


def _source(d: DataSource) -> dict[str, Any]:
    return {"filename": d.filename} if d.filename is not None else {"inline_string": d.inline_string}


def upstream_transport_socket(t: UpstreamTlsContext | None) -> dict[str, Any]:
    if t is None:
        return RAW_BUFFER
    common: dict[str, Any] = {}
    if t.tls_certificates:
        common["tls_certificates"] = [
            {"certificate_chain": _source(c.certificate_chain), "private_key": _source(c.private_key)}
            for c in t.tls_certificates
        ]
    if t.trusted_ca is not None:
        vc: dict[str, Any] = {"trusted_ca": _source(t.trusted_ca)}
        if t.match_subject_alt_names:
            vc["match_typed_subject_alt_names"] = [
                {"san_type": "URI" if s.startswith("spiffe://") else "DNS", "matcher": {"exact": s}}
                for s in t.match_subject_alt_names
            ]
        common["validation_context"] = vc
    if t.alpn_protocols:
        common["alpn_protocols"] = list(t.alpn_protocols)
    cfg: dict[str, Any] = {"@type": T + UPSTREAM_TLS_CONTEXT, "common_tls_context": common}
    if t.sni:
        cfg["sni"] = t.sni
    return {"name": TLS_TRANSPORT_SOCKET, "typed_config": cfg}


def cluster_tls(c: Cluster) -> dict[str, Any]:
    """The cluster fields for its TLS (none when plaintext)."""
    out: dict[str, Any] = {}
    if c.transport_socket is not None:
        out["transport_socket"] = upstream_transport_socket(c.transport_socket)
    if c.transport_socket_matches:
        out["transport_socket_matches"] = [
            {"name": m.name, "match": dict(m.match), "transport_socket": upstream_transport_socket(m.transport_socket)}
            for m in c.transport_socket_matches
        ]
    return out


def endpoint_metadata(e: LbEndpoint) -> dict[str, Any]:
    if not e.transport_socket_match:
        return {}
    return {"metadata": {"filter_metadata": {MATCH_METADATA: dict(e.transport_socket_match)}}}
