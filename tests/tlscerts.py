"""Certificates for the TLS tests, made at test time with `openssl` the way seed 001 makes them:
a root `example.com` CA, server certificates for httpbin / helloworld-v1 / nginx .example.com
and a client certificate, all signed by it. The server names are also given as
subjectAltName (curl and Python's ssl check names only there)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    key: Path
    crt: Path

    def key_text(self) -> str:
        return self.key.read_text()

    def crt_text(self) -> str:
        return self.crt.read_text()


def make_ca(d: Path, name: str = "example.com") -> Pair:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl(
        "req", "-x509", "-sha256", "-nodes", "-days", "2", "-newkey", "rsa:2048",
        "-subj", f"/O=example Inc./CN={name}", "-keyout", str(key), "-out", str(crt),
    )  # fmt: skip
    return Pair(key, crt)


def issue(d: Path, ca: Pair, cn: str, org: str, serial: int) -> Pair:
    key, csr, crt = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.crt"
    _openssl(
        "req", "-out", str(csr), "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
        "-subj", f"/CN={cn}/O={org}", "-addext", f"subjectAltName=DNS:{cn}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-sha256", "-days", "2", "-CA", str(ca.crt), "-CAkey", str(ca.key),
        "-set_serial", str(serial), "-in", str(csr), "-out", str(crt), "-copy_extensions", "copy",
    )  # fmt: skip
    return Pair(key, crt)


@dataclass(frozen=True)
class SeedCerts:
    dir: Path
    ca: Pair
    httpbin: Pair
    helloworld: Pair
    nginx: Pair
    client: Pair


def seed_certs(d: Path) -> SeedCerts:
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d)
    return SeedCerts(
        dir=d,
        ca=ca,
        httpbin=issue(d, ca, "httpbin.example.com", "httpbin organization", 0),
        helloworld=issue(d, ca, "helloworld-v1.example.com", "helloworld organization", 1),
        nginx=issue(d, ca, "nginx.example.com", "some organization", 2),
        client=issue(d, ca, "client.example.com", "client organization", 3),
    )


def tls_secret(name: str, pair: Pair, namespace: str = "istio-system", ca: Pair | None = None, generic: bool = False) -> str:
    """A Secret as `kubectl create secret tls` (or `generic --from-file=...`) writes it."""
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    keys = ("cert", "key", "cacert") if generic else ("tls.crt", "tls.key", "ca.crt")
    data = {keys[0]: b64(pair.crt), keys[1]: b64(pair.key)}
    if ca is not None:
        data[keys[2]] = b64(ca.crt)
    kind = "Opaque" if generic or ca is not None else "kubernetes.io/tls"
    lines = "".join(f"  {k}: {v}\n" for k, v in data.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: {kind}\ndata:\n{lines}"
