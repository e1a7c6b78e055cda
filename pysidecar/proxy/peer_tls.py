"""What a finished TLS handshake tells the rest of the data path about the peer.

Promises:
- `DownstreamTls.of(transport, local_uri)` reads the verified client certificate of a
  terminated downstream connection once per connection: its first URI SAN (the SPIFFE
  identity), DNS SANs, subject (RFC 2253, as Envoy prints it; "" for an SVID, which has none)
  and the SHA-256 of its DER (XFCC's Hash); `local_uri` is our own certificate's URI SAN.
  `mutual` is True when the peer presented a certificate (connection_security_policy
  mutual_tls).
- `uri_san(transport)` is the first URI SAN of a TLS transport's peer (the upstream's), or None.
- Pure reads of the ssl object; nothing here writes to a connection.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any


def _sans(cert: dict[str, Any], kind: str) -> tuple[str, ...]:
    return tuple(str(v) for k, v in cert.get("subjectAltName", ()) if k == kind)


def _subject(cert: dict[str, Any]) -> str:
    # getpeercert(): ((("commonName", "x"),), (("organizationName", "y"),)); RFC 2253 prints the
    # most specific RDN first.
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST"}  # fmt: skip
    parts = [f"{short.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(reversed(parts))


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    local_uri: str | None
    peer_uri: str | None
    peer_dns: tuple[str, ...] = ()
    peer_subject: str = ""
    peer_hash: str = ""
    mutual: bool = False

    @classmethod
    def of(cls, transport: asyncio.BaseTransport, local_uri: str | None) -> DownstreamTls:
        ssl_object = transport.get_extra_info("ssl_object")
        cert = transport.get_extra_info("peercert") or {}
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        uris = _sans(cert, "URI")
        return cls(
            local_uri=local_uri,
            peer_uri=uris[0] if uris else None,
            peer_dns=_sans(cert, "DNS"),
            peer_subject=_subject(cert),
            peer_hash=hashlib.sha256(der).hexdigest() if der else "",
            mutual=bool(der),
        )


def uri_san(transport: asyncio.BaseTransport | None) -> str | None:
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert") or {}
    uris = _sans(cert, "URI")
    return uris[0] if uris else None
