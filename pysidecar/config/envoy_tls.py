"""A filter chain's `transport_socket` (envoy.transport_sockets.tls) in Envoy YAML → the model.

Promises:
- Accepts a DownstreamTlsContext with `common_tls_context` (`tls_certificates[]` with
  `certificate_chain` / `private_key` as `filename` or `inline_string`,
  `validation_context.trusted_ca`, `alpn_protocols`) and `require_client_certificate`. Any
  other field is a ConfigError naming the file and YAML path.
- The context is built once at load (`common/tls_context.server_context`): a certificate or key
  that is missing, unreadable, not PEM or not matching is an error naming the YAML path and the
  certificate file, before anything is bound.
"""

from __future__ import annotations

from pysidecar.common.tls_context import TlsContextError, server_context
from pysidecar.config.node import Node
from pysidecar.model.tls import (
    DOWNSTREAM_TLS_CONTEXT,
    TLS_TRANSPORT_SOCKET,
    DataSource,
    DownstreamTlsContext,
    TlsCertificate,
)


def data_source(node: Node) -> DataSource:
    f = node.fields("filename", "inline_string", "inline_bytes", "environment_variable")
    given = [k for k in ("filename", "inline_string") if k in f]
    if len(given) != 1 or len(list(f)) != 1:
        node.fail("expected exactly one of filename, inline_string")
    if "filename" in f:
        return DataSource(filename=f.require("filename").string())
    return DataSource(inline_string=f.require("inline_string").string())


def _certificate(node: Node) -> TlsCertificate:
    f = node.fields("certificate_chain", "private_key")
    return TlsCertificate(data_source(f.require("certificate_chain")), data_source(f.require("private_key")))


def downstream_tls_context(node: Node) -> DownstreamTlsContext:
    f = node.fields("@type", "common_tls_context", "require_client_certificate")
    cf = f.require("common_tls_context").fields("tls_certificates", "validation_context", "alpn_protocols")
    trusted: DataSource | None = None
    if (vc := cf.get("validation_context")) is not None:
        trusted = vc.fields("trusted_ca").opt("trusted_ca", data_source, None)
    ctx = DownstreamTlsContext(
        tls_certificates=tuple(_certificate(n) for n in cf.list("tls_certificates")),
        trusted_ca=trusted,
        require_client_certificate=f.opt("require_client_certificate", Node.boolean, False),
        alpn_protocols=tuple(n.string() for n in cf.list("alpn_protocols")),
    )
    try:
        server_context(ctx)
    except TlsContextError as e:
        common = f.require("common_tls_context")
        where = {
            "certificate_chain": f"{common.path}.tls_certificates[{e.index}].certificate_chain",
            "private_key": f"{common.path}.tls_certificates[{e.index}].private_key",
            "trusted_ca": f"{common.path}.validation_context.trusted_ca",
            "tls_certificates": f"{common.path}.tls_certificates",
        }[e.part]
        Node(None, node.file, where).fail(f"{e.source}: {e.message}")
    return ctx


def transport_socket(node: Node) -> DownstreamTlsContext:
    f = node.fields("name", "typed_config")
    name = f.require("name").string()
    tc = f.get("typed_config")
    if name not in (TLS_TRANSPORT_SOCKET, "tls") or tc is None:
        node.fail(f"only the {TLS_TRANSPORT_SOCKET} transport socket with a typed_config is supported")
    if tc.type_url() != DOWNSTREAM_TLS_CONTEXT:
        tc.fail(f"expected @type {DOWNSTREAM_TLS_CONTEXT}, got {tc.type_url()}")
    return downstream_tls_context(tc)
