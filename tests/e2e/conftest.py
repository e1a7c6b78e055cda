"""Fixtures for end-to-end tests: a fresh `Lab` per test, always closed; skipped unless root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pysidecar.lab import Lab, cleanup_stale


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="e2e tests need root (network namespaces, iptables)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _stale_labs() -> None:
    """Remove labs left by crashed runs (only those whose owner process is gone)."""
    if os.geteuid() == 0:
        cleanup_stale()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A Lab closed after the test, pass or fail; its process logs are printed on failure."""
    lab = Lab()
    try:
        yield lab
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n=== lab {lab.prefix} logs ({lab.logdir}) ===\n{lab.logs()}")
        lab.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    # Remember the call phase's report so the `lab` fixture can tell a failed test.
    if call.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
