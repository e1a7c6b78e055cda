"""A small mesh CA for the lab, the demo and the tests: Istio-shaped workload certificates.

Promises:
- `MeshCA.create(trust_domain)` makes a self-signed root (ECDSA P-256, `O=<trust domain>`, as
  istiod's self-signed CA names itself) in memory.
- `ca.issue(namespace, service_account)` gives an X.509 SVID as istiod's CA signs it: no
  subject, a critical SAN with the one URI `spiffe://<trust domain>/ns/<ns>/sa/<sa>`, key usage
  digitalSignature + keyEncipherment, extended key usage serverAuth + clientAuth, 24 h validity
  unless told (negative `hours_ago` makes an already expired one for the tests).
- `write(dir)` writes Istio's file-mounted layout (`cert-chain.pem`, `key.pem`,
  `root-cert.pem`), mode 0644 for the certificates and 0640 for the key, group-readable by the
  proxy's gid 1337; files are replaced with a rename so a reader never sees half a file.
- `secret(name, namespace)` is the Kubernetes Secret `pysidecar inject` mounts at /etc/certs
  (keys are the three file names), and `cacerts_secret()` Istio's `cacerts` layout
  (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) for the same CA.
"""

from __future__ import annotations

import base64
import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pysidecar.config.identity import CERT_CHAIN, PRIVATE_KEY, ROOT_CERT

DEFAULT_TRUST_DOMAIN = "cluster.local"
PROXY_GID = 1337


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class WorkloadCert:
    """One workload's certificate, its key and the root that signed it, as PEM."""

    spiffe_id: str
    cert_chain: str
    key: str
    root: str

    def write(self, d: str) -> None:
        os.makedirs(d, exist_ok=True)
        for name, text, mode in (
            (ROOT_CERT, self.root, 0o644),
            (CERT_CHAIN, self.cert_chain, 0o644),
            (PRIVATE_KEY, self.key, 0o640),
        ):
            tmp = os.path.join(d, f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, mode)
            if os.geteuid() == 0:
                os.chown(tmp, 0, PROXY_GID)
            os.replace(tmp, os.path.join(d, name))

    def secret(self, name: str, namespace: str) -> str:
        """The Secret `pysidecar inject` mounts at /etc/certs (--cert-secret)."""
        data = {CERT_CHAIN: self.cert_chain, PRIVATE_KEY: self.key, ROOT_CERT: self.root}
        lines = "".join(
            f"  {k}: {base64.b64encode(v.encode()).decode()}\n" for k, v in data.items()
        )
        return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: Opaque\ndata:\n{lines}"


@dataclass(frozen=True)
class MeshCA:
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN, days: int = 30) -> MeshCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, key, cert)

    @property
    def root_pem(self) -> str:
        return _pem(self.cert)

    def issue(
        self, namespace: str, service_account: str, hours: float = 24.0, hours_ago: float = 0.0
    ) -> WorkloadCert:
        uri = spiffe_id(self.trust_domain, namespace, service_account)
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=hours_ago, minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(hours=hours))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
            )
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return WorkloadCert(uri, _pem(cert), _key_pem(key), self.root_pem)

    def cacerts_secret(self, namespace: str = "istio-system") -> str:
        """Istio's `cacerts` Secret (plug-in CA) for this root: what istiod would sign with."""
        data = {
            "ca-cert.pem": self.root_pem,
            "ca-key.pem": _key_pem(self.key),
            "root-cert.pem": self.root_pem,
            "cert-chain.pem": self.root_pem,
        }
        lines = "".join(
            f"  {k}: {base64.b64encode(v.encode()).decode()}\n" for k, v in data.items()
        )
        return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: cacerts, namespace: {namespace}}}\ntype: Opaque\ndata:\n{lines}"
