"""Hostile request heads through pysidecar and real Envoy 1.40 (scenarios/hardening.yaml), with
a raw-socket upstream (upstream_spy.py) that records every byte each proxy forwards.

For each hostile HTTP/2 header block and HTTP/1 head: both proxies answer the same way (Envoy's
verdict is measured each run, and the expected one is written down too), nothing of a refused
request reaches the upstream, and the next request, which the pool sends on the same upstream
connection, gets its own response (a smuggled second request would answer it instead).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.harness import Response, Stack, envoy_binary, read_response, running, same
from tests.conformance.test_http2 import raw_h2
from tests.conformance.upstream_spy import UpstreamSpy

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Stack, UpstreamSpy]]:
    with running("hardening.yaml", ENVOY) as s:
        spy = UpstreamSpy(s.ports["dead"])
        try:
            yield s, spy
        finally:
            spy.close()


def h1(port: int, raw: bytes) -> Response | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        return read_response(s)


def next_request_gets_its_own_answer(port: int, spy: UpstreamSpy, tag: str) -> None:
    """A plain request after the hostile one: its answer is its own (the pool is not poisoned),
    and it is the only request the upstream saw since."""
    snap = spy.snapshot()
    path = f"/next/{tag}"
    r = h1(port, f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
    assert r is not None and r.status == 200, r
    assert r.header("x-echo-path") == path and r.body == b"answer for " + path.encode()
    assert spy.targets_since(snap) == [path.encode()]


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok"), (b":authority", b"a.test")]
SMUGGLE = b"/ok HTTP/1.1\r\nhost: a.test\r\n\r\nGET /smuggled"


def pseudo(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, value if n == name else v) for n, v in BASE]


CLOSED = "closed"
# Each verdict measured on Envoy 1.40: a malformed block ends the connection (GOAWAY).
H2_CASES: dict[str, tuple[list[tuple[bytes, bytes]], str]] = {
    ":path CRLF (smuggling)": (pseudo(b":path", SMUGGLE), CLOSED),
    ":path LF": (pseudo(b":path", b"/a\nGET /smuggled"), CLOSED),
    ":path space": (pseudo(b":path", b"/a HTTP/1.1"), CLOSED),
    ":path NUL": (pseudo(b":path", b"/a\x00"), CLOSED),
    ":path control": (pseudo(b":path", b"/a\x01"), CLOSED),
    ":path DEL": (pseudo(b":path", b"/a\x7f"), CLOSED),
    ":path fragment": (pseudo(b":path", b"/a#b"), "status 400"),
    ":path obs-text": (pseudo(b":path", b"/ok\xe9"), "status 200"),
    ":method CRLF": (pseudo(b":method", b"GET /smuggled HTTP/1.1\r\nx:"), CLOSED),
    ":method space": (pseudo(b":method", b"GE T"), CLOSED),
    ":method empty": (pseudo(b":method", b""), CLOSED),
    ":method non-token": (pseudo(b":method", b"FO(O"), CLOSED),
    ":authority CRLF": (pseudo(b":authority", b"a.test\r\nx-injected: 1"), CLOSED),
    ":authority space": (pseudo(b":authority", b"a test"), CLOSED),
    ":authority slash": (pseudo(b":authority", b"a.test/x"), CLOSED),
    ":authority userinfo": (pseudo(b":authority", b"u@a.test"), CLOSED),
    ":authority NUL": (pseudo(b":authority", b"a.test\x00"), CLOSED),
    ":authority empty": (pseudo(b":authority", b""), CLOSED),
    ":scheme space": (pseudo(b":scheme", b"ht tp"), CLOSED),
    "name space": ([*BASE, (b"x a", b"1")], CLOSED),
    "name colon": ([*BASE, (b"x:a", b"1")], CLOSED),
    "name CRLF": ([*BASE, (b"x\r\nx-injected", b"1")], CLOSED),
    "name NUL": ([*BASE, (b"x\x00", b"1")], CLOSED),
    "name obs-text": ([*BASE, (b"x\xe9", b"1")], CLOSED),
    "value CRLF": ([*BASE, (b"x-a", b"1\r\nx-injected: 2")], CLOSED),
    "value LF": ([*BASE, (b"x-a", b"1\nx-injected: 2")], CLOSED),
    "value CR": ([*BASE, (b"x-a", b"1\rx")], CLOSED),
    "value NUL": ([*BASE, (b"x-a", b"1\x00")], CLOSED),
    "value control": ([*BASE, (b"x-a", b"1\x01")], CLOSED),
    "value DEL": ([*BASE, (b"x-a", b"1\x7f")], CLOSED),
    "value HTAB": ([*BASE, (b"x-a", b"1\t2")], "status 200"),
    "host space (no :authority)": ([*BASE[:3], (b"host", b"a test")], CLOSED),
    "host CRLF (no :authority)": ([*BASE[:3], (b"host", b"a.test\r\nx: y")], CLOSED),
    "host space beside :authority": ([*BASE, (b"host", b"a b")], CLOSED),
}


@pytest.mark.parametrize("case", list(H2_CASES))
def test_h2_hostile_header_block(stack: tuple[Stack, UpstreamSpy], case: str) -> None:
    s, spy = stack
    headers, expected = H2_CASES[case]
    for kind, port in s.proxies.items():
        snap = spy.snapshot()
        assert raw_h2(port, headers) == expected, kind
        time.sleep(0.05)
        forwarded = spy.targets_since(snap)
        if expected == CLOSED or expected == "status 400":
            assert forwarded == [], (kind, forwarded)
        else:
            assert len(forwarded) == 1, (kind, forwarded)
        assert b"smuggled" not in b"".join(spy.since(snap)), kind
        assert b"x-injected" not in b"".join(spy.since(snap)), kind
        next_request_gets_its_own_answer(port, spy, f"{kind}-h2")


# (raw request, expected status, Envoy 1.40's response code details, measured).
H1_CASES: dict[str, tuple[bytes, int, str]] = {
    "Host with a space": (b"GET /a HTTP/1.1\r\nHost: x y\r\n\r\n", 400, "http.invalid_authority"),
    "Host with a slash": (b"GET /a HTTP/1.1\r\nHost: x/y\r\n\r\n", 400, "http.invalid_authority"),
    "Host with a quote": (b"GET /a HTTP/1.1\r\nHost: x\"y\r\n\r\n", 400, "http.invalid_authority"),
    "HTTP/2.0 over HTTP/1": (b"GET /c HTTP/2.0\r\nHost: x\r\n\r\n", 426, "low_version"),
    "HTTP/1.2": (b"GET /c HTTP/1.2\r\nHost: x\r\n\r\n", 426, "low_version"),
    "HTTP/3.0": (b"GET /c HTTP/3.0\r\nHost: x\r\n\r\n", 426, "low_version"),
    "HTTP/0.9": (b"GET /c\r\n\r\n", 426, "low_version"),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "path_normalization_failed"),
    "* for GET": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "http1.invalid_url"),
    "* for OPTIONS": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404, "absolute_path_rejected"),
    "NUL in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nx-a: 1\x002\r\n\r\n", 400, "http1.invalid_characters"),
    "control in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nx-a: 1\x012\r\n\r\n", 400, "http1.invalid_characters"),
    "space in a name": (b"GET /a HTTP/1.1\r\nHost: x\r\nx a: 1\r\n\r\n", 400, "http1.codec_error"),
    "absolute-form with a space": (b"GET http://x y/a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "http1.codec_error"),
    "userinfo in Host (taken)": (b"GET /ok HTTP/1.1\r\nHost: u@x\r\n\r\n", 200, "via_upstream"),
}


@pytest.mark.parametrize("case", list(H1_CASES))
def test_h1_hostile_head(stack: tuple[Stack, UpstreamSpy], case: str) -> None:
    s, spy = stack
    raw, status, _ = H1_CASES[case]
    results = {}
    for kind, port in s.proxies.items():
        snap = spy.snapshot()
        r = h1(port, raw)
        assert r is not None, kind
        results[kind] = r
        time.sleep(0.05)
        assert len(spy.targets_since(snap)) == (1 if status == 200 else 0), kind
        next_request_gets_its_own_answer(port, spy, f"{kind}-h1")
    for r in results.values():
        r.headers = [(n, v) for n, v in r.headers if n != "x-echo-path"]
    assert same(results).status == status


def test_h1_details_as_envoy(stack: tuple[Stack, UpstreamSpy]) -> None:
    """The access log's %RESPONSE_CODE_DETAILS% for each refused head: the written-down value,
    and Envoy's (when it ran) the same."""
    s, _ = stack
    time.sleep(1.5)  # earlier tests' lines are flushed (pysidecar flushes its log once a second)
    marks = {kind: len(_access(s, kind)) for kind in s.proxies}
    for raw, _, _ in H1_CASES.values():
        for port in s.proxies.values():
            h1(port, raw)
    expected = [(str(status), details) for _, status, details in H1_CASES.values()]
    deadline = time.monotonic() + 5  # pysidecar flushes its log once a second
    got: dict[str, list[tuple[str, str]]] = {}
    while time.monotonic() < deadline:
        got = {kind: [(ln[2], ln[4]) for ln in _access(s, kind)[marks[kind] :]] for kind in s.proxies}
        if all(len(v) >= len(expected) for v in got.values()):
            break
        time.sleep(0.2)
    for kind, lines in got.items():
        assert lines == expected, kind


def _access(s: Stack, kind: str) -> list[list[str]]:
    text = (Path(s.dir) / f"{kind}.log").read_text(errors="replace")
    return [ln.split() for ln in text.splitlines() if re.match(r"ACCESS HTTP/", ln)]


def test_no_traceback_in_the_log(stack: tuple[Stack, UpstreamSpy]) -> None:
    s, _ = stack
    text = (Path(s.dir) / "ours.log").read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


# (raw bytes, the statuses answered in order before the close), measured on Envoy 1.40.
H1_AFTER_A_GOOD_REQUEST: dict[str, tuple[bytes, list[int]]] = {
    "a request, then garbage": (b"GET /ok1 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\x01\r\n\r\n", [200, 400]),
    "a request, then a bad head": (b"GET /ok2 HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nx a: b\r\n\r\n", [200, 400]),
    "Connection: close, then stray bytes": (b"GET /ok3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGARBAGE", [200]),
    "Connection: close, then a request": (
        b"GET /ok4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /ok5 HTTP/1.1\r\nHost: a\r\n\r\n",
        [200],
    ),
}


@pytest.mark.parametrize("case", list(H1_AFTER_A_GOOD_REQUEST))
def test_h1_request_answered_before_the_bad_bytes_after_it(stack: tuple[Stack, UpstreamSpy], case: str) -> None:
    """The complete request gets its own response first; then the 400 (or, after Connection:
    close, nothing) and the close."""
    s, _ = stack
    raw, expected = H1_AFTER_A_GOOD_REQUEST[case]
    seen = {}
    for kind, port in s.proxies.items():
        statuses = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(raw)
            while (r := read_response(c)) is not None:
                statuses.append(r.status)
        seen[kind] = statuses
    assert seen["ours"] == expected
    if "envoy" in seen:
        assert seen["envoy"] == expected


def test_h1_pipelining_flood_answered_in_order_with_a_bounded_queue(stack: tuple[Stack, UpstreamSpy]) -> None:
    """3000 pipelined requests in one send (~90 KB, several slices of a read): each answered,
    in order, by both proxies (pysidecar parses no further than 32 waiting requests ahead)."""
    s, _ = stack
    n = 3000
    raw = b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(n))
    for kind, port in s.proxies.items():
        got = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(raw + b"GET /pipe/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while (r := read_response(c)) is not None:
                got.append(r.header("x-echo-path"))
        assert got == [f"/pipe/{i}" for i in range(n)] + ["/pipe/last"], (kind, len(got))


def _mutants(seed: int, n: int) -> list[bytes]:
    """Seeded mutations of pipelined requests: bytes flipped, cut, duplicated, CR/LF/NUL put in."""
    import random

    rnd = random.Random(seed)
    base = [
        b"GET /f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /f HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ]
    out = []
    for _ in range(n):
        data = bytearray(b"".join(rnd.choice(base) for _ in range(rnd.randint(1, 4))))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(data))
            op = rnd.randrange(4)
            if op == 0:
                data[i] = rnd.randrange(256)
            elif op == 1:
                data[i:i] = rnd.choice([b"\r\n", b"\n", b"\x00", b" ", b":", b"\r"])
            elif op == 2:
                del data[i : i + rnd.randint(1, 8)]
            else:
                data[i:i] = data[i : i + rnd.randint(1, 30)]
        out.append(bytes(data))
    return out


def test_h1_seeded_fuzz_never_breaks_a_worker(stack: tuple[Stack, UpstreamSpy]) -> None:
    """400 seeded mutants of pipelined requests, each on its own connection, half of them
    closed by the client mid-answer: pysidecar answers or closes, never logs a traceback
    (`write() after write_eof()` included), and serves a plain request afterwards."""
    s, spy = stack
    port = s.proxies["ours"]
    for i, raw in enumerate(_mutants(12, 400)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(raw)
            if i % 2:
                c.shutdown(socket.SHUT_WR)
            c.settimeout(0.3)
            try:
                while c.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
    next_request_gets_its_own_answer(port, spy, "after-fuzz")
    time.sleep(1.2)
    text = (Path(s.dir) / "ours.log").read_text(errors="replace")
    assert "Traceback" not in text and "write_eof" not in text, text[-3000:]
