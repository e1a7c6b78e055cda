"""Upstream faults through pysidecar and real Envoy 1.40 (scenarios/hardening.yaml): a
raw-socket upstream (upstream_spy.py) answers each request with scripted bytes, then closes.
Both proxies must answer the client the same way and log the same %RESPONSE_CODE%,
%RESPONSE_FLAGS% and %RESPONSE_CODE_DETAILS% (the expected values were measured on Envoy).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import Stack, envoy_binary, running
from tests.conformance.upstream_spy import UpstreamSpy

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()
BEFORE = "upstream_reset_before_response_started{protocol_error}"
AFTER = "upstream_reset_after_response_started{protocol_error}"
OK = b"content-length: 2\r\n\r\nok"


def head(*lines: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines)


# name: (bytes the upstream sends, then closes; expected (status, flags, details)).
FAULTS: dict[str, tuple[bytes, tuple[str, str, str]]] = {
    "headers of 79 KiB (under Envoy's 80)": (head(b"x-big: " + b"a" * 79 * 1024) + OK, ("200", "-", "via_upstream")),
    "headers of 81 KiB": (head(b"x-big: " + b"a" * 81 * 1024) + OK, ("502", "UPE", BEFORE)),
    "an endless header (2 MB)": (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 2_000_000, ("502", "UPE", BEFORE)),
    "100 headers": (head(*(b"x-h%d: v" % i for i in range(99))) + OK, ("200", "-", "via_upstream")),
    "101 headers": (head(*(b"x-h%d: v" % i for i in range(100))) + OK, ("502", "UPE", BEFORE)),
    "malformed status line": (b"HTTP/1.1 abc OK\r\n" + OK, ("502", "UPE", BEFORE)),
    "garbage": (b"hello world\r\n\r\n", ("502", "UPE", BEFORE)),
    "HTTP/0.9 (a body, no head)": (b"just a body\n", ("502", "UPE", BEFORE)),
    "bad content-length": (head(b"content-length: abc") + b"\r\nok", ("502", "UPE", BEFORE)),
    "two content-lengths": (head(b"content-length: 2") + b"content-length: 3\r\n\r\nok", ("502", "UPE", BEFORE)),
    "content-length and chunked": (
        head(b"content-length: 2", b"transfer-encoding: chunked") + b"\r\n2\r\nok\r\n0\r\n\r\n",
        ("502", "UPE", BEFORE),
    ),
    "transfer-encoding gzip": (head(b"transfer-encoding: gzip") + b"\r\nok", ("502", "UPE", BEFORE)),
    "partial head, then close": (b"HTTP/1.1 200 OK\r\ncontent-le", ("502", "UPE", BEFORE)),
    "close before any byte": (b"", ("503", "UC", "upstream_reset_before_response_started{connection_termination}")),
    "short body, then close": (head(b"content-length: 100") + b"\r\n0123456789", ("200", "UPE", AFTER)),
    "bad chunk size": (head(b"transfer-encoding: chunked") + b"\r\nzz\r\nok\r\n0\r\n\r\n", ("200", "UPE", AFTER)),
    "HTTP/1.0 body until close": (b"HTTP/1.0 200 OK\r\n\r\nbody until close", ("200", "-", "via_upstream")),
}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Stack, UpstreamSpy]]:
    with running("hardening.yaml", ENVOY) as s:
        spy = UpstreamSpy(s.ports["dead"])
        for i, (raw, _) in enumerate(FAULTS.values()):
            spy.script[b"/fault/%d" % i] = raw
        try:
            yield s, spy
        finally:
            spy.close()


def fetch(port: int, path: str) -> bytes:
    """Everything the proxy sends for one request until it closes (or 3 s pass: a kept-alive
    connection after a complete response)."""
    time.sleep(0.2)  # the previous fault's close reaches the pool first (not a race on reuse)
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        try:
            while d := s.recv(65536):
                buf += d
                if _complete(buf):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return buf


def _complete(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"\ncontent-length: (\d+)", head.lower())
    return bool(sep) and m is not None and len(body) >= int(m.group(1))


def comparable(raw: bytes) -> tuple[bytes, bytes]:
    """The status line and the body (headers differ in dates, ids and times)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize("case", list(FAULTS))
def test_upstream_fault_answered_as_envoy(stack: tuple[Stack, UpstreamSpy], case: str) -> None:
    s, _ = stack
    i = list(FAULTS).index(case)
    expected = FAULTS[case][1]
    got = {kind: comparable(fetch(port, f"/fault/{i}")) for kind, port in s.proxies.items()}
    if "envoy" in got:
        assert got["ours"] == got["envoy"]
    assert got["ours"][0].split(b" ")[1].decode() == expected[0]


def test_access_log_flags_and_details_as_envoy(stack: tuple[Stack, UpstreamSpy]) -> None:
    """Each fault's %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%: as written down,
    and Envoy's the same."""
    s, _ = stack
    time.sleep(1.5)  # earlier lines flushed (pysidecar flushes its log once a second)
    deadline = time.monotonic() + 5
    want = {f"/fault/{i}": exp for i, (_, exp) in enumerate(FAULTS.values())}
    got: dict[str, dict[str, tuple[str, str, str]]] = {}
    while time.monotonic() < deadline:
        got = {kind: _logged(s, kind) for kind in s.proxies}
        if all(len(v) >= len(want) for v in got.values()):
            break
        time.sleep(0.2)
    for kind, seen in got.items():
        assert seen == want, kind


def _logged(s: Stack, kind: str) -> dict[str, tuple[str, str, str]]:
    out = {}
    for line in (Path(s.dir) / f"{kind}.log").read_text(errors="replace").splitlines():
        f = line.split()
        if line.startswith("ACCESS ") and len(f) == 6 and f[5].startswith("/fault/"):
            out[f[5]] = (f[2], f[3], f[4])
    return out


def test_no_traceback(stack: tuple[Stack, UpstreamSpy]) -> None:
    s, _ = stack
    text = (Path(s.dir) / "ours.log").read_text(errors="replace")
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
