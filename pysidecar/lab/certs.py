"""Certificates made with `openssl` the way seed 001 makes them: a root CA (`/O=example Inc./CN=
example.com`), server certificates signed by it, and the Kubernetes Secrets that carry them to
a gateway (`credentialName`). Used by the TLS tests and the demo.

Promises:
- The server name is also the certificate's subjectAltName (curl and Python's ssl check names
  only there); certificates are valid for 2 days, keys RSA 2048, as the seed's.
- `show`, when given, is called with each openssl command line before it runs (the demo prints
  them); a failing openssl raises CalledProcessError.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Show = Callable[[list[str]], None]


def _openssl(show: Show | None, *args: str) -> None:
    argv = ["openssl", *args]
    if show is not None:
        show(argv)
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    key: Path
    crt: Path

    def key_text(self) -> str:
        return self.key.read_text()

    def crt_text(self) -> str:
        return self.crt.read_text()


def make_ca(d: Path, name: str = "example.com", show: Show | None = None) -> Pair:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl(
        show, "req", "-x509", "-sha256", "-nodes", "-days", "2", "-newkey", "rsa:2048",
        "-subj", f"/O=example Inc./CN={name}", "-keyout", str(key), "-out", str(crt),
    )  # fmt: skip
    return Pair(key, crt)


def issue(d: Path, ca: Pair, cn: str, org: str, serial: int, show: Show | None = None) -> Pair:
    key, csr, crt = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.crt"
    _openssl(
        show, "req", "-out", str(csr), "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
        "-subj", f"/CN={cn}/O={org}", "-addext", f"subjectAltName=DNS:{cn}",
    )  # fmt: skip
    _openssl(
        show, "x509", "-req", "-sha256", "-days", "2", "-CA", str(ca.crt), "-CAkey", str(ca.key),
        "-set_serial", str(serial), "-in", str(csr), "-out", str(crt), "-copy_extensions", "copy",
    )  # fmt: skip
    return Pair(key, crt)


def tls_secret(name: str, pair: Pair, namespace: str = "istio-system", ca: Pair | None = None, generic: bool = False) -> str:
    """A Secret as `kubectl create secret tls` (or `generic --from-file=...`) writes it."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    keys = ("cert", "key", "cacert") if generic else ("tls.crt", "tls.key", "ca.crt")
    data = {keys[0]: b64(pair.crt), keys[1]: b64(pair.key)}
    if ca is not None:
        data[keys[2]] = b64(ca.crt)
    kind = "Opaque" if generic or ca is not None else "kubernetes.io/tls"
    lines = "".join(f"  {k}: {v}\n" for k, v in data.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: {kind}\ndata:\n{lines}"
