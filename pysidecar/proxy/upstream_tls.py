"""Upstream TLS: the one place that opens a connection to an upstream, plaintext or TLS.

Promises:
- `client_contexts(contexts, files)` builds an `UpstreamTls` per distinct UpstreamTlsContext
  of a config, once per config load in each worker (a rotated workload certificate is a new
  config, so new connections use it; open ones keep theirs). Python's ssl client context:
  TLS 1.2 minimum (Envoy's client default), the certificate and key, the trusted CA (none:
  CERT_NONE, as Envoy without a validation context), the ALPN list. Hostname checking is off:
  Envoy verifies SANs only when told (match_subject_alt_names), which `open_connection` does.
- `open_connection(loop, factory, host, bind, tls, http)` is a drop-in for
  `loop.create_connection` used by tcp_proxy and the HTTP pool: with `tls` None it is exactly
  that; otherwise it connects, handshakes (SNI from the context), checks that the upstream's
  certificate carries one of the expected SANs (URI or DNS, exact), and only then hands the
  TLS transport to the protocol `factory` made (so nothing is written before the peer is
  verified). `http` "1.1" / "2" offers `istio-http/1.1` / `istio-h2` instead of `istio` +
  `istio-peer-exchange` when the context is Istio's mTLS: what Istio's istio.alpn filter does.
- Failures raise `UpstreamTlsError` (an OSError, so callers count a connect failure) with
  Envoy's cluster ssl stat name (`fail_verify_san`, `fail_verify_error`, `connection_error`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pysidecar.common.tls_context import (
    MINIMUM_VERSION,
    NO_FILES,
    load_certificate,
    load_trusted_ca,
)
from pysidecar.model.tls import UpstreamTlsContext

# How long an upstream may take over the handshake (the cluster's connect timeout covers the
# TCP connect and this together: the caller cancels the whole opening).
HANDSHAKE_TIMEOUT = 60.0
ISTIO_ALPN = "istio"
# Istio's istio.alpn filter: the upstream HTTP version over mTLS.
ISTIO_HTTP_ALPNS = {"1.1": "istio-http/1.1", "2": "istio-h2"}

P = TypeVar("P", bound=asyncio.BaseProtocol)


class UpstreamTlsError(OSError):
    def __init__(self, stat: str, message: str) -> None:
        super().__init__(message)
        self.stat = stat


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    config: UpstreamTlsContext
    context: ssl.SSLContext
    # The same with ALPN [istio-http/1.1] / [istio-h2] per HTTP version, over Istio mTLS
    # (empty: not Istio's context).
    http_contexts: Mapping[str, ssl.SSLContext]

    def for_http(self, http: str | None) -> ssl.SSLContext:
        return self.http_contexts.get(http or "", self.context)


def _client(
    ctx: UpstreamTlsContext, alpn: tuple[str, ...], files: Mapping[str, str]
) -> ssl.SSLContext:
    out = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    out.minimum_version = MINIMUM_VERSION
    out.check_hostname = False
    for i, cert in enumerate(ctx.tls_certificates):
        load_certificate(out, cert, i, files)
    if ctx.trusted_ca is not None:
        load_trusted_ca(out, ctx.trusted_ca, files)
        out.verify_mode = ssl.CERT_REQUIRED
    else:
        out.verify_mode = ssl.CERT_NONE
    if alpn:
        out.set_alpn_protocols(list(alpn))
    return out


def client_context(ctx: UpstreamTlsContext, files: Mapping[str, str] = NO_FILES) -> UpstreamTls:
    http = {v: _client(ctx, (alpn,), files) for v, alpn in ISTIO_HTTP_ALPNS.items()} if ISTIO_ALPN in ctx.alpn_protocols else {}
    return UpstreamTls(ctx, _client(ctx, ctx.alpn_protocols, files), http)


def client_contexts(
    contexts: Iterable[UpstreamTlsContext], files: Mapping[str, str] = NO_FILES
) -> dict[UpstreamTlsContext, UpstreamTls]:
    out: dict[UpstreamTlsContext, UpstreamTls] = {}
    for ctx in contexts:
        if ctx not in out:
            out[ctx] = client_context(ctx, files)
    return out


class _Handshaking(asyncio.Protocol):
    """Holds the connection until the handshake and the SAN check are done."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True


def peer_sans(transport: asyncio.BaseTransport) -> list[str]:
    cert = transport.get_extra_info("peercert") or {}
    return [str(v) for k, v in cert.get("subjectAltName", ()) if k in ("URI", "DNS")]


def _failure_stat(exc: BaseException) -> str:
    if (
        isinstance(exc, ssl.SSLCertVerificationError)
        or getattr(exc, "reason", "") == "CERTIFICATE_VERIFY_FAILED"
    ):
        return "fail_verify_error"
    return "connection_error"


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    host: tuple[str, int],
    bind: str | None,
    tls: UpstreamTls | None,
    http: str | None = None,
) -> tuple[asyncio.Transport, P]:
    local = (bind, 0) if bind else None
    if tls is None:
        transport, protocol = await loop.create_connection(
            factory, host[0], host[1], local_addr=local
        )
        return transport, protocol
    raw, holder = await loop.create_connection(_Handshaking, host[0], host[1], local_addr=local)
    try:
        secure: Any = await loop.start_tls(
            raw, holder, tls.for_http(http), server_side=False,
            server_hostname=tls.config.sni or None, ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )  # fmt: skip
    except asyncio.CancelledError:
        raw.abort()
        raise
    except Exception as e:  # whatever the handshake raised, this connection is over
        raw.abort()
        raise UpstreamTlsError(_failure_stat(e), f"upstream TLS handshake failed: {e}") from e
    wanted = tls.config.match_subject_alt_names
    if wanted and not set(wanted) & set(peer_sans(secure)):
        secure.abort()
        raise UpstreamTlsError(
            "fail_verify_san",
            f"upstream certificate SANs {peer_sans(secure)} match none of {list(wanted)}",
        )
    protocol = factory()
    secure.set_protocol(protocol)
    protocol.connection_made(secure)
    if holder.data and isinstance(protocol, asyncio.Protocol):
        protocol.data_received(b"".join(holder.data))
    if holder.eof and isinstance(protocol, asyncio.Protocol):
        protocol.eof_received()
    return secure, protocol
