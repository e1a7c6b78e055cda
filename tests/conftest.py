"""Fixtures every test package may use: seed 001's certificates, made once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tlscerts import SeedCerts, seed_certs


@pytest.fixture(scope="session")
def certs() -> Iterator[SeedCerts]:
    """CA, httpbin / helloworld-v1 / nginx server and client certificates (openssl, at test
    time), in a directory the proxy's uid can read; removed after the session."""
    d = Path(tempfile.mkdtemp(prefix="pysidecar-certs-"))
    try:
        made = seed_certs(d / "certs")
        os.chmod(d, 0o755)
        for p in (made.dir, *made.dir.iterdir()):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        yield made
    finally:
        shutil.rmtree(d, ignore_errors=True)
