"""The downstream TLS transport socket: envoy.transport_sockets.tls with a DownstreamTlsContext.

Promises:
- Plain frozen dataclasses named as Envoy's API names them (`common_tls_context.tls_certificates[]
  .certificate_chain / private_key`, `validation_context.trusted_ca`,
  `require_client_certificate`, `alpn_protocols`); no I/O. A filter chain with one terminates
  TLS before its network filter sees a byte.
- A `DataSource` is a file name or an inline string, as Envoy's config.core.v3.DataSource.
"""

from __future__ import annotations

from dataclasses import dataclass

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
DOWNSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass(frozen=True, slots=True)
class DataSource:
    filename: str | None = None
    inline_string: str | None = None

    def __str__(self) -> str:
        """How errors name it: the file, or that it was inline."""
        return self.filename if self.filename is not None else "<inline_string>"


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    certificate_chain: DataSource
    private_key: DataSource


@dataclass(frozen=True, slots=True)
class DownstreamTlsContext:
    tls_certificates: tuple[TlsCertificate, ...]
    # validation_context.trusted_ca: the CA client certificates are verified against.
    trusted_ca: DataSource | None = None
    require_client_certificate: bool = False
    alpn_protocols: tuple[str, ...] = ()
