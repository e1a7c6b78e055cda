"""x-forwarded-client-cert: the HCM's forward_client_cert_details / set_current_client_cert_details.

Promises (Envoy's semantics):
- SANITIZE (Envoy's default): the header is removed from every request.
- FORWARD_ONLY, ALWAYS_FORWARD_ONLY: forwarded as the client sent it.
- APPEND_FORWARD (Istio's sidecar inbound): on a mutual-TLS connection our element is
  appended (`,` after what the client sent); otherwise forwarded as sent.
- SANITIZE_SET: on mutual TLS the header is our element alone; otherwise removed.
- The element: `By=<our URI SAN>;Hash=<sha256 of the client certificate>` then, as
  set_current_client_cert_details asks, `Subject="<subject>"`, `URI=<client URI SAN>`,
  `DNS=<each DNS SAN>` in Envoy's order (Istio asks for Subject, URI and DNS).
- Pure: headers in, headers out.
"""

from __future__ import annotations

from pysidecar.proxy.http.headers import Headers
from pysidecar.proxy.peer_tls import DownstreamTls

XFCC = b"x-forwarded-client-cert"


def element(tls: DownstreamTls, details: tuple[str, ...]) -> bytes:
    parts = []
    if tls.local_uri:
        parts.append(f"By={tls.local_uri}")
    parts.append(f"Hash={tls.peer_hash}")
    if "subject" in details:
        parts.append(f'Subject="{tls.peer_subject}"')
    if "uri" in details and tls.peer_uri:
        parts.append(f"URI={tls.peer_uri}")
    if "dns" in details:
        parts.extend(f"DNS={d}" for d in tls.peer_dns)
    return ";".join(parts).encode("latin-1")


def forward_client_cert(clean: Headers, mode: str, details: tuple[str, ...], tls: DownstreamTls | None) -> Headers:
    if mode in ("FORWARD_ONLY", "ALWAYS_FORWARD_ONLY"):
        return clean
    mutual = tls is not None and tls.mutual
    if mode == "APPEND_FORWARD" and not mutual:
        return clean
    sent = [v for n, v in clean if n == XFCC]
    if not sent and not mutual:
        return clean  # SANITIZE / SANITIZE_SET with nothing to remove
    out = [h for h in clean if h[0] != XFCC] if sent else list(clean)
    if not mutual:
        return out
    assert tls is not None
    mine = element(tls, details)
    value = b",".join([*sent, mine]) if mode == "APPEND_FORWARD" else mine
    out.append((XFCC, value))
    return out
