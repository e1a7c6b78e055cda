"""`/explain?n=N` and `pysidecar explain --live N` on a running pysidecar (seed 002's config):
the last requests with what was observed and the decision trace, which agree."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conformance.harness import ROOT, Stack, get, running


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("seed002.yaml", None) as s:
        yield s


def test_the_last_requests_with_their_traces(stack: Stack) -> None:
    port, admin = stack.proxies["ours"], stack.ports["a1"]
    assert get(port, "/abc/index").status == 200
    assert get(port, "/nope", host="nowhere.test").status == 404
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/explain?n=2", timeout=5) as r:
        traces = json.loads(r.read())
    assert [t["observed"]["path"] for t in traces] == ["/abc/index", "/nope"]
    first, second = (dict(map(tuple, t["steps"])) for t in traces)
    assert traces[0]["observed"]["cluster"] == "v1" and first["route action"].startswith("cluster v1")
    assert first["virtual host"].startswith("myhost (domains abc.com)")
    assert traces[1]["observed"]["response_flags"] == "NR" and second["local reply"] == "404 NR (route_not_found)"
    out = subprocess.run(
        [sys.executable, "-m", "pysidecar", "explain", "--live", "2", "--admin", f"127.0.0.1:{admin}"],
        capture_output=True, text=True, timeout=30, cwd=str(ROOT), check=True,
    ).stdout  # fmt: skip
    assert "== GET abc.com/abc/index to 127.0.0.1:" in out and "   route action: cluster v1" in out
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/explain?n=0", timeout=5)
    assert e.value.code == 400
