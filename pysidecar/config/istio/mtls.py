"""Mutual TLS between sidecars as istiod builds it: outbound transport sockets, inbound chains.

Promises (istiod's cluster_tls.go, filterchain_options.go, authn/utils.go, as of 1.24+):
- Outbound, `cluster_tls(cluster, svc, port, tls, identity, mesh)`:
  - no DestinationRule tls, mesh `enableAutoMtls` (default true), a workload identity and a
    cluster that is not ORIGINAL_DST: `transport_socket_matches` `tlsMode-istio` (endpoints
    whose pod carries `security.istio.io/tlsMode: istio` get metadata tlsMode=istio) with the
    ISTIO_MUTUAL context, then `tlsMode-disabled` (raw_buffer) for the rest;
  - ISTIO_MUTUAL: that context as the cluster's transport_socket for every endpoint: the
    workload certificate, the root as trusted CA, SANs = the rule's subjectAltNames or the
    service's accounts (`spiffe://<trust domain>/ns/<ns>/sa/<sa>` of its endpoints, plus a
    ServiceEntry's subjectAltNames), SNI = the rule's sni or the cluster name
    (`outbound_.<port>_.<subset>_.<host>` as Envoy's SNI form of it), ALPN
    `istio-peer-exchange, istio` (istiod's ALPNInMeshWithMxc; the HTTP path overrides it
    with `istio-http/1.1`, as Istio's istio.alpn filter does);
  - SIMPLE / MUTUAL: TLS origination with the rule's files; trusted CA caCertificates, else
    the system bundle; insecureSkipVerify: no verification; SANs as given (ServiceEntry's for
    an external service when the rule gives none); MUTUAL adds the client certificate;
  - DISABLE: plaintext.
  ISTIO_MUTUAL without a workload identity is an error naming the rule.
- Inbound, `inbound_chains(...)`: per PeerAuthentication mode the chains istiod's
  getFilterChainMatchOptions lists (PERMISSIVE: mTLS chains with Istio's ALPNs beside the
  plaintext ones; STRICT: TLS only; DISABLE: plaintext only), the TLS ones terminating with
  the workload certificate, the client certificate required and verified against the root,
  ALPN `h2, http/1.1` (HTTP) or `istio-peer-exchange, h2, http/1.1` (TCP).
- Pure: identity and config are inputs.
"""

from __future__ import annotations

from dataclasses import replace

from pysidecar.config.istio.destination_rule import ClientTls
from pysidecar.config.istio.registry import Service
from pysidecar.config.node import ConfigError
from pysidecar.model import Cluster, ClusterType, MeshConfig
from pysidecar.model.tls import (
    TLS_MODE_ISTIO,
    TLS_MODE_KEY,
    DataSource,
    DownstreamTlsContext,
    TlsCertificate,
    TransportSocketMatch,
    UpstreamTlsContext,
    WorkloadIdentity,
)

# istiod's util.ALPNInMeshWithMxc: what a sidecar offers another for mutual TLS.
ALPN_IN_MESH_WITH_MXC = ("istio-peer-exchange", "istio")
# Istio's istio.alpn filter: HTTP/1.1 upstream over mTLS says so (istio-http/1.0, istio-h2).
ALPN_ISTIO_HTTP11 = "istio-http/1.1"
# listener.go: the inbound chains' application_protocols.
MTLS_HTTP_ALPNS = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
ALL_ISTIO_MTLS_ALPNS = (
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
)
MTLS_TCP_WITH_MXC_ALPNS = ("istio-peer-exchange", "istio")
# authn utils BuildInboundTLS: what the server side offers (ALPNHttp / ALPNDownstreamWithMxc).
DOWNSTREAM_ALPN_HTTP = ("h2", "http/1.1")
DOWNSTREAM_ALPN_TCP = ("istio-peer-exchange", "h2", "http/1.1")
# filter_chain_match.transport_protocol of a TLS connection (tls_inspector).
TLS_TRANSPORT = "tls"
# Where Debian keeps the system's trusted roots: istiod's "system" CA for SIMPLE / MUTUAL.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def sni_for(cluster_name: str) -> str:
    """istiod's BuildDNSSrvSubsetKey of an outbound cluster, its SNI for ISTIO_MUTUAL
    (`outbound|80||web.ns.svc.cluster.local` → `outbound_.80_._.web.ns.svc.cluster.local`)."""
    direction, port, subset, host = cluster_name.split("|", 3)
    return f"{direction}_.{port}_.{subset}_.{host}"


def service_accounts(svc: Service, trust_domain: str) -> tuple[str, ...]:
    """istiod's ServiceAccounts of a service: its endpoints' SPIFFE identities (and a
    ServiceEntry's subjectAltNames), sorted."""
    found = {
        f"spiffe://{trust_domain}/ns/{svc.namespace}/sa/{e.service_account}"
        for e in svc.endpoints
        if e.service_account
    }
    return tuple(sorted(found | set(svc.subject_alt_names)))


def istio_mutual(identity: WorkloadIdentity, sans: tuple[str, ...], sni: str) -> UpstreamTlsContext:
    return UpstreamTlsContext(
        tls_certificates=(identity.certificate(),),
        trusted_ca=identity.root(),
        match_subject_alt_names=sans,
        sni=sni,
        alpn_protocols=ALPN_IN_MESH_WITH_MXC,
    )


def _origination(tls: ClientTls, svc: Service) -> UpstreamTlsContext:
    certs: tuple[TlsCertificate, ...] = ()
    if tls.mode == "MUTUAL":
        certs = (
            TlsCertificate(
                DataSource(filename=tls.client_certificate), DataSource(filename=tls.private_key)
            ),
        )
    trusted = (
        None
        if tls.insecure_skip_verify
        else DataSource(filename=tls.ca_certificates or SYSTEM_CA_BUNDLE)
    )
    sans = tls.subject_alt_names or (svc.subject_alt_names if svc.mesh_external else ())
    return UpstreamTlsContext(certs, trusted, sans if trusted is not None else (), tls.sni)


def cluster_tls(
    c: Cluster,
    svc: Service,
    tls: ClientTls | None,
    identity: WorkloadIdentity | None,
    mesh: MeshConfig,
) -> Cluster:
    if tls is None:
        if not mesh.enable_auto_mtls or identity is None or c.type is ClusterType.ORIGINAL_DST:
            return c
        ctx = istio_mutual(identity, service_accounts(svc, mesh.trust_domain), sni_for(c.name))
        matches = (
            TransportSocketMatch(
                f"tlsMode-{TLS_MODE_ISTIO}", ((TLS_MODE_KEY, TLS_MODE_ISTIO),), ctx
            ),
            TransportSocketMatch("tlsMode-disabled", (), None),
        )
        return replace(c, transport_socket_matches=matches)
    if tls.mode == "DISABLE":
        return c
    if tls.mode == "ISTIO_MUTUAL":
        if identity is None:
            file, _, path = tls.where.partition(": ")
            raise ConfigError(
                file, path, "tls mode ISTIO_MUTUAL needs the workload certificate (cert-chain.pem, key.pem, "
                "root-cert.pem in --cert-dir, default /etc/certs), and none was found",
            )  # fmt: skip
        sans = tls.subject_alt_names or service_accounts(svc, mesh.trust_domain)
        return replace(c, transport_socket=istio_mutual(identity, sans, tls.sni or sni_for(c.name)))
    return replace(c, transport_socket=_origination(tls, svc))


# -- inbound ----------------------------------------------------------------------------------


def downstream_context(identity: WorkloadIdentity, http: bool) -> DownstreamTlsContext:
    """authn utils BuildInboundTLS: the workload certificate, client certificates required and
    verified against the root."""
    return DownstreamTlsContext(
        tls_certificates=(identity.certificate(),),
        trusted_ca=identity.root(),
        require_client_certificate=True,
        alpn_protocols=DOWNSTREAM_ALPN_HTTP if http else DOWNSTREAM_ALPN_TCP,
    )
