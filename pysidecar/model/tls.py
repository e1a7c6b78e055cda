"""The downstream TLS transport socket: envoy.transport_sockets.tls with a DownstreamTlsContext.

Promises:
- Plain frozen dataclasses named as Envoy's API names them (`common_tls_context.tls_certificates[]
  .certificate_chain / private_key`, `validation_context.trusted_ca`,
  `require_client_certificate`, `alpn_protocols`); no I/O. A filter chain with one terminates
  TLS before its network filter sees a byte.
- A `DataSource` is a file name or an inline string, as Envoy's config.core.v3.DataSource.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


UPSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True, slots=True)
class UpstreamTlsContext:
    """A cluster's TLS origination: envoy.transport_sockets.tls with an UpstreamTlsContext."""

    tls_certificates: tuple[TlsCertificate, ...] = ()
    # validation_context.trusted_ca; None with `verify` False: no verification
    # (DestinationRule insecureSkipVerify, or SIMPLE without caCertificates).
    trusted_ca: DataSource | None = None
    # validation_context.match_subject_alt_names: exact URI or DNS SANs, any one must match.
    match_subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    alpn_protocols: tuple[str, ...] = ()


# Istio's endpoint metadata key (filter_metadata envoy.transport_socket_match) and value that
# select the mutual-TLS transport socket of a cluster's transport_socket_matches.
TLS_MODE_KEY = "tlsMode"
TLS_MODE_ISTIO = "istio"
# The Kubernetes label the injector puts on a pod that has a sidecar.
TLS_MODE_LABEL = "security.istio.io/tlsMode"


@dataclass(frozen=True, slots=True)
class TransportSocketMatch:
    """cluster.transport_socket_matches[]: endpoints whose envoy.transport_socket_match
    metadata carries every (key, value) of `match` use `transport_socket` (None: raw_buffer).
    The first match wins; an empty `match` matches every endpoint."""

    name: str
    match: tuple[tuple[str, str], ...]
    transport_socket: UpstreamTlsContext | None


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """The workload's X.509 SVID as Istio's file-mounted certificates give it.

    The PEM texts are the files' contents when the config was loaded: a rotated certificate
    makes a different config, so a reload hands it to the workers, and every TLS context of
    that config is built from these texts (never from a file read later, half-written)."""

    cert_chain_file: str
    private_key_file: str
    root_cert_file: str
    spiffe_id: str  # spiffe://<trust domain>/ns/<ns>/sa/<sa>
    cert_chain: str = field(repr=False, default="")
    private_key: str = field(repr=False, default="")
    root_cert: str = field(repr=False, default="")

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]

    def snapshot(self) -> dict[str, str]:
        """File name → the text loaded from it."""
        return {
            self.cert_chain_file: self.cert_chain,
            self.private_key_file: self.private_key,
            self.root_cert_file: self.root_cert,
        }

    def certificate(self) -> TlsCertificate:
        return TlsCertificate(DataSource(filename=self.cert_chain_file), DataSource(filename=self.private_key_file))

    def root(self) -> DataSource:
        return DataSource(filename=self.root_cert_file)
