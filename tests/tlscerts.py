"""Certificates for the TLS tests, made at test time with `openssl` the way seed 001 makes them
(pysidecar.lab.certs): a root `example.com` CA, server certificates for httpbin / helloworld-v1 /
nginx .example.com and a client certificate, all signed by it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pysidecar.lab.certs import Pair, issue, make_ca, tls_secret

__all__ = ["Pair", "SeedCerts", "issue", "make_ca", "seed_certs", "tls_secret"]


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
