"""A DownstreamTlsContext made into Python's `ssl.SSLContext`: once per filter chain per config.

Promises:
- `server_context(ctx)` loads every certificate chain and key, the trusted CA, the client
  certificate policy and ALPN. Envoy's semantics: with a trusted CA the client is asked for a
  certificate and one it sends must verify; `require_client_certificate` makes it mandatory.
  TLS 1.2 is the minimum, as Envoy's default for downstream connections.
- A part that does not load raises `TlsContextError` naming the part (`certificate_chain`,
  `private_key`, `trusted_ca`), its index and the file, so the config front ends can turn it
  into a ConfigError at load time: the data path never meets a context it cannot build.
- Inline strings are written to a private temporary file only while they are loaded (Python's
  ssl reads certificate chains and keys from files only) and removed at once.
- `contexts_for(chains, files)` builds each distinct context of a config once; the worker calls it
  when a config is loaded (so a reload re-reads certificate files), never per connection.
  `files` (file name → text: the workload identity loaded with the config) is used instead of
  reading those files again, so a context is built from exactly what the config validated.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping

from pysidecar.model import FilterChain
from pysidecar.model.tls import DataSource, DownstreamTlsContext, TlsCertificate

# Envoy's default for downstream TLS (tls_minimum_protocol_version unset): TLS 1.2.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsContextError(Exception):
    def __init__(self, part: str, index: int, source: DataSource, message: str) -> None:
        super().__init__(f"{part} ({source}): {message}")
        self.part = part
        self.index = index
        self.source = source
        self.message = message


NO_FILES: Mapping[str, str] = {}


def _read(source: DataSource, part: str, index: int, files: Mapping[str, str] = NO_FILES) -> str:
    if source.inline_string is not None:
        return source.inline_string
    assert source.filename is not None
    if (known := files.get(source.filename)) is not None:
        return known
    try:
        with open(source.filename, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TlsContextError(part, index, source, f"cannot read: {getattr(e, 'strerror', None) or e}") from e


def _check_certificates(pem: str, part: str, index: int, source: DataSource) -> None:
    """Parse the PEM certificates (a throw-away verify store does the parsing)."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise TlsContextError(part, index, source, "no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem)
    except ssl.SSLError as e:
        raise TlsContextError(part, index, source, f"not a valid PEM certificate: {e.reason or e}") from e


@contextlib.contextmanager
def _as_files(texts: Iterable[str]) -> Iterator[list[str]]:
    with tempfile.TemporaryDirectory(prefix="pysidecar-tls-") as d:  # mode 0700
        paths = []
        for i, text in enumerate(texts):
            path = os.path.join(d, str(i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        yield paths


def load_certificate(out: ssl.SSLContext, cert: TlsCertificate, i: int, files: Mapping[str, str] = NO_FILES) -> None:
    """Load one certificate chain and its key into `out`, checked."""
    chain = _read(cert.certificate_chain, "certificate_chain", i, files)
    _check_certificates(chain, "certificate_chain", i, cert.certificate_chain)
    key = _read(cert.private_key, "private_key", i, files)
    if "PRIVATE KEY-----" not in key:
        raise TlsContextError("private_key", i, cert.private_key, "no PEM private key found")
    with _as_files((chain, key)) as (chain_file, key_file):
        try:
            out.load_cert_chain(chain_file, key_file)
        except ssl.SSLError as e:
            raise TlsContextError(
                "private_key", i, cert.private_key, f"does not load or does not match the certificate: {e.reason or e}"
            ) from e


def load_trusted_ca(out: ssl.SSLContext, source: DataSource, files: Mapping[str, str] = NO_FILES) -> None:
    ca = _read(source, "trusted_ca", 0, files)
    _check_certificates(ca, "trusted_ca", 0, source)
    out.load_verify_locations(cadata=ca)


def server_context(ctx: DownstreamTlsContext, files: Mapping[str, str] = NO_FILES) -> ssl.SSLContext:
    if not ctx.tls_certificates:
        raise TlsContextError("tls_certificates", 0, DataSource(), "a server needs at least one certificate")
    out = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    out.minimum_version = MINIMUM_VERSION
    for i, cert in enumerate(ctx.tls_certificates):
        load_certificate(out, cert, i, files)
    if ctx.trusted_ca is not None:
        load_trusted_ca(out, ctx.trusted_ca, files)
        out.verify_mode = ssl.CERT_REQUIRED if ctx.require_client_certificate else ssl.CERT_OPTIONAL
    elif ctx.require_client_certificate:
        raise TlsContextError("trusted_ca", 0, DataSource(), "require_client_certificate needs a validation_context.trusted_ca")
    if ctx.alpn_protocols:
        out.set_alpn_protocols(list(ctx.alpn_protocols))
    return out


def contexts_for(
    chains: Iterable[FilterChain], files: Mapping[str, str] = NO_FILES
) -> dict[DownstreamTlsContext, ssl.SSLContext]:
    """One SSLContext per distinct transport socket of `chains`, built now (at config load)."""
    out: dict[DownstreamTlsContext, ssl.SSLContext] = {}
    for chain in chains:
        ts = chain.transport_socket
        if ts is not None and ts not in out:
            out[ts] = server_context(ts, files)
    return out
