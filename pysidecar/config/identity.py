"""The workload identity: Istio's file-mounted certificates read into a `WorkloadIdentity`.

Promises:
- `load_identity(cert_dir, required)` reads `cert-chain.pem`, `key.pem` and `root-cert.pem`
  from `cert_dir` (Istio's file-mounted layout, default /etc/certs), as istio-agent reads them
  when they are mounted: the leaf certificate must carry a URI SAN `spiffe://<trust domain>/
  ns/<ns>/sa/<sa>`, the key must be its key, and the chain must be signed by the root.
- Any of them missing, unreadable, not PEM, not matching, expired or not yet valid is a
  `ConfigError` naming the file, so `run` exits 2 at start and a reload keeps the old identity
  serving (the reload error path reports it).
- No file at all and `required` False: None (no identity, no mutual TLS: the plaintext
  sidecar of before). `required` True (the directory was named explicitly): missing is an error.
- `files(cert_dir)` lists the three paths, for the config watcher.
"""

from __future__ import annotations

import datetime
import itertools
import os
from typing import TYPE_CHECKING

from pysidecar.config.node import ConfigError
from pysidecar.model.tls import WorkloadIdentity

# cryptography (~10 MB resident: its OpenSSL bindings) is imported by the functions that read
# certificates, so a proxy without a workload identity never loads it.
if TYPE_CHECKING:
    from cryptography import x509

# Istio's file-mounted certificate directory and names (pilot-agent's OUTPUT_CERTS layout,
# security.DefaultCertChainFilePath & co).
DEFAULT_CERT_DIR = "/etc/certs"
CERT_CHAIN = "cert-chain.pem"
PRIVATE_KEY = "key.pem"
ROOT_CERT = "root-cert.pem"


def files(cert_dir: str) -> tuple[str, str, str]:
    return (
        os.path.join(cert_dir, CERT_CHAIN),
        os.path.join(cert_dir, PRIVATE_KEY),
        os.path.join(cert_dir, ROOT_CERT),
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ConfigError(
            path, "", "workload certificate file not found (Istio's file-mounted certificates)"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"cannot read: {getattr(e, 'strerror', None) or e}") from e


def _certificates(path: str, text: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError as e:
        raise ConfigError(path, "", f"not a PEM certificate: {e}") from e
    if not certs:
        raise ConfigError(path, "", "no PEM certificate found")
    return certs


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    ]


def load_identity(
    cert_dir: str, required: bool, now: datetime.datetime | None = None
) -> WorkloadIdentity | None:
    chain_file, key_file, root_file = files(cert_dir)
    if not required and not any(os.path.exists(p) for p in (chain_file, key_file, root_file)):
        return None
    chain_pem, key_pem, root_pem = _read(chain_file), _read(key_file), _read(root_file)
    chain = _certificates(chain_file, chain_pem)
    roots = _certificates(root_file, root_pem)
    leaf = chain[0]
    when = now or datetime.datetime.now(datetime.UTC)
    for where, cert in [(chain_file, c) for c in chain] + [(root_file, r) for r in roots]:
        if when < cert.not_valid_before_utc or when > cert.not_valid_after_utc:
            raise ConfigError(
                where, "", f"certificate {cert.subject.rfc4514_string() or cert.serial_number} is not valid now "
                f"(valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})",
            )  # fmt: skip
    ids = spiffe_ids(leaf)
    if not ids:
        raise ConfigError(
            chain_file, "", "the certificate has no URI SAN spiffe://<trust domain>/ns/<ns>/sa/<sa>"
        )
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(key_file, "", f"not an unencrypted PEM private key: {e}") from e
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
        raise ConfigError(
            key_file, "", f"the private key does not match the certificate in {chain_file}"
        )
    # The chain up to one of the roots: each certificate signed by the next, the last by a root.
    if not any(_signed_by(chain[-1], r) for r in roots) or not all(
        _signed_by(a, b) for a, b in itertools.pairwise(chain)
    ):
        raise ConfigError(
            chain_file, "", f"the certificate chain is not signed by the root in {root_file}"
        )
    return WorkloadIdentity(chain_file, key_file, root_file, ids[0], chain_pem, key_pem, root_pem)
