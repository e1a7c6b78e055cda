"""HTTP/2 downstream (h2c, prior knowledge) under pysidecar and under real Envoy 1.40
(scenarios/http2.yaml), driven by real HTTP/2 clients: curl --http2-prior-knowledge for each
answer (status, headers in order with volatile values by presence, body, compared with the
harness's `same()`), h2load for many concurrent streams on one connection, and a raw h2
client (the `h2` library, its checks off) for malformed header blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.conformance.harness import Response, Stack, envoy_binary, running, same

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(shutil.which("curl") is None or shutil.which("h2load") is None, reason="curl and h2load needed"),
]

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("http2.yaml", ENVOY) as s:
        yield s


def curl(port: int, path: str, *args: str, host: str = "lab.test") -> Response:
    """One request with curl --http2-prior-knowledge; the response as the harness parses it."""
    with tempfile.TemporaryDirectory() as d:
        head, body = os.path.join(d, "head"), os.path.join(d, "body")
        subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "-H", f"host: {host}", "-D", head, "-o", body,
             *args, f"http://127.0.0.1:{port}{path}"],
            check=True, timeout=20,
        )  # fmt: skip
        lines = Path(head).read_text("latin-1").splitlines()
        status = lines[0].split(" ")
        assert status[0] == "HTTP/2", lines[0]
        headers = [(k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)]
        return Response(int(status[1]), headers, Path(body).read_bytes(), "")


def on_both(stack: Stack, path: str, *args: str, host: str = "lab.test") -> Response:
    return same({kind: curl(port, path, *args, host=host) for kind, port in stack.proxies.items()})


def stats(stack: Stack, kind: str) -> dict[str, int]:
    admin = stack.ports["a1" if kind == "ours" else "a2"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=^http\\.h2\\.", timeout=5) as r:
        text = r.read().decode()
    return {k: int(v) for k, v in re.findall(r"^(\S+): (\d+)$", text, re.M)}


def test_routed_200(stack: Stack) -> None:
    r = on_both(stack, "/status/201")
    assert r.status == 201 and r.header("server") == "envoy"


def test_no_route_404(stack: Stack) -> None:
    r = on_both(stack, "/status/200", host="nowhere.test")
    assert r.status == 404 and r.body == b""


def test_direct_response(stack: Stack) -> None:
    r = on_both(stack, "/direct")
    assert (r.status, r.body) == (200, b"direct answer")


def test_connect_failure_503_envoy_body(stack: Stack) -> None:
    r = on_both(stack, "/dead")
    assert r.status == 503
    assert r.body == (
        b"upstream connect error or disconnect/reset before headers. "
        b"reset reason: remote connection failure"
    )


def test_response_headers_to_add_and_request_headers(stack: Stack) -> None:
    """:authority goes upstream as host, first; cookies are joined; the route's header added."""
    results = {k: curl(p, "/mut", "-H", "cookie: a=1", "-H", "cookie: b=2") for k, p in stack.proxies.items()}
    seen = {}
    for kind, r in results.items():
        body = json.loads(r.body)
        seen[kind] = [h for h in body["headers"] if h[0] != "x-request-id"]
        r.body = b""
    same(results)
    assert results["ours"].header("x-resp-added") == "route"
    if "envoy" in seen:
        assert seen["ours"] == seen["envoy"]
    assert seen["ours"][0] == ["host", "lab.test"]
    assert ["cookie", "a=1; b=2"] in seen["ours"]


@pytest.mark.parametrize(
    ("mode", "args", "framing"),
    [
        ("content-length", ("--data-binary", "@-"), "content-length"),
        ("chunked", ("-T", "-"), "transfer-encoding"),  # curl -T - streams stdin: no length
        ("empty-post", ("-X", "POST"), "content-length"),
    ],
)
def test_request_body_streamed_upstream(stack: Stack, mode: str, args: tuple[str, ...], framing: str) -> None:
    """A body with a length goes upstream with it; without one, chunked (as Envoy's HTTP/1
    upstream codec sends it); a POST without a body gets `content-length: 0`."""
    data = b"" if mode == "empty-post" else os.urandom(300_000)
    seen = {}
    for kind, port in stack.proxies.items():
        p = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "-H", "host: lab.test", *args,
             f"http://127.0.0.1:{port}/anything"],
            input=data, capture_output=True, check=True, timeout=20,
        )  # fmt: skip
        body = json.loads(p.stdout)
        body["headers"] = [h for h in body["headers"] if h[0] != "x-request-id"]
        seen[kind] = body
    ours = seen["ours"]
    if "envoy" in seen:
        assert ours == seen["envoy"]
    assert ours["body_length"] == len(data)
    assert ours["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert framing in [h[0] for h in ours["headers"]]


def test_many_streams_on_one_connection(stack: Stack) -> None:
    """h2load: 200 requests, 4 connections, 10 streams each at a time; all answered, counted."""
    for kind, port in stack.proxies.items():
        before = stats(stack, kind)
        p = subprocess.run(
            ["h2load", "-n", "200", "-c", "4", "-m", "10", "-H", ":authority: lab.test",
             f"http://127.0.0.1:{port}/status/200"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert "200 succeeded, 0 failed, 0 errored" in p.stdout, p.stdout
        assert "status codes: 200 2xx" in p.stdout, p.stdout
        after = stats(stack, kind)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert delta["http.h2.downstream_cx_http2_total"] == 4, kind
        assert delta["http.h2.downstream_rq_total"] == 200, kind
        assert delta["http.h2.downstream_rq_2xx"] == 200, kind


def test_large_response_through_small_windows(stack: Stack) -> None:
    """Flow control: 3 MB answers through a 16 KiB stream window, 64 KiB connection window."""
    for port in stack.proxies.values():
        p = subprocess.run(
            ["h2load", "-n", "10", "-c", "1", "-m", "5", "-w", "14", "-W", "16",
             "-H", ":authority: lab.test", f"http://127.0.0.1:{port}/bytes/3000000"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert "10 succeeded" in p.stdout and "(30000000) data" in p.stdout, p.stdout


def raw_h2(port: int, headers: list[tuple[bytes, bytes]]) -> str:
    """What a proxy does with one header block: `status <code>`, `reset <code>` (the stream's
    RST_STREAM) or `closed` (the connection)."""
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        )
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        c.initiate_connection()
        c.send_headers(1, headers, end_stream=True)
        s.sendall(c.data_to_send())
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return "closed"
            if not data:
                return "closed"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    return "status " + dict(ev.headers or [])[b":status"].decode()
                if isinstance(ev, h2.events.StreamReset):
                    return f"reset {h2.errors.ErrorCodes(ev.error_code or 0).name}"
                if isinstance(ev, h2.events.ConnectionTerminated):
                    return "closed"
            s.sendall(c.data_to_send())


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/status/200"), (b":authority", b"lab.test")]
MALFORMED = {
    "host differs from :authority": ([*BASE, (b"host", b"other.test")], "status 200"),
    "host without :authority": ([*BASE[:3], (b"host", b"lab.test")], "status 200"),
    "no :path": ([h for h in BASE if h[0] != b":path"], "closed"),
    "no :authority nor host": ([h for h in BASE if h[0] != b":authority"], "closed"),
    "upper-case name": ([*BASE, (b"X-Up", b"1")], "closed"),
    "connection header": ([*BASE, (b"connection", b"keep-alive")], "closed"),
    "te gzip": ([*BASE, (b"te", b"gzip")], "closed"),
    "repeated :path": ([*BASE, (b":path", b"/x")], "closed"),
    "pseudo-header after a regular one": ([*BASE[:2], (b"x-a", b"1"), *BASE[2:]], "closed"),
    "path without a slash": ([*BASE[:2], (b":path", b"abc"), BASE[3]], "closed"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_headers(stack: Stack, case: str) -> None:
    headers, expected = MALFORMED[case]
    for kind, port in stack.proxies.items():
        assert raw_h2(port, headers) == expected, kind


RESET = "reset INTERNAL_ERROR"
# The header block's names and values: 55 bytes of pseudo-headers, then x-big (5) and its value.
LIMITS = {
    "100 headers (pseudo-headers count)": ([*BASE, *((b"x-h%d" % i, b"v") for i in range(96))], "status 200"),
    "101 headers": ([*BASE, *((b"x-h%d" % i, b"v") for i in range(97))], RESET),
    "60 KiB of names and values": ([*BASE, (b"x-big", b"a" * (61440 - 60))], "status 200"),
    "one byte more": ([*BASE, (b"x-big", b"a" * (61440 - 59))], RESET),
    "70 KB": ([*BASE, (b"x-big", b"a" * 70000)], RESET),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_header_limits_reset_the_stream_only(stack: Stack, case: str) -> None:
    """max_headers_count and max_request_headers_kb: RST_STREAM, as Envoy 1.40, counted."""
    headers, expected = LIMITS[case]
    for kind, port in stack.proxies.items():
        before = stats(stack, kind)
        assert raw_h2(port, headers) == expected, kind
        after = stats(stack, kind)
        assert after["http.h2.downstream_rq_total"] - before["http.h2.downstream_rq_total"] == 1, kind
        if expected == RESET:
            assert after["http.h2.downstream_rq_rx_reset"] - before.get("http.h2.downstream_rq_rx_reset", 0) == 1


def test_underscore_rejected_by_stream_reset(stack: Stack) -> None:
    """headers_with_underscores_action REJECT_REQUEST (the second listener): HTTP/2 resets."""
    for kind, port in stack.extra["_b"].items():
        assert raw_h2(port, [*BASE, (b"x_a", b"v")]) == RESET, kind
        assert raw_h2(port, [*BASE, (b"x-a", b"v")]) == "status 200", kind


def test_codec_http2_only_listener(stack: Stack) -> None:
    """codec_type HTTP2: h2c answers; an HTTP/1.1 request is not understood (no response)."""
    for kind, port in stack.extra["_b"].items():
        assert curl(port, "/status/202").status == 202, kind
        p = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/status/202"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert p.returncode != 0 and p.stdout == "000", (kind, p.stdout)


def test_access_log_says_http2(stack: Stack) -> None:
    for port in stack.extra["_b"].values():
        curl(port, "/anything/logged", "--data-binary", "abc", host="log.test")
    lines: dict[str, list[str]] = {}
    deadline = time.monotonic() + 5  # pysidecar flushes its log once a second, Envoy here 0.2 s
    while time.monotonic() < deadline:
        lines = {
            kind: [ln for ln in (Path(stack.dir) / f"{kind}.log").read_text(errors="replace").splitlines()
                   if ln.startswith("ACCESS ") and "/anything/logged" in ln]
            for kind in stack.proxies
        }  # fmt: skip
        if all(lines.values()):
            break
        time.sleep(0.1)
    ours = lines["ours"]
    assert len(ours) == 1, lines
    assert ours[0].split()[:8] == ["ACCESS", "HTTP/2", "POST", "/anything/logged", "log.test", "200", "-", "3"]
    if ENVOY:
        # Bytes sent differ by the JSON echo's request id only in value, not length.
        assert lines["envoy"] == ours


def test_route_timeout_504(stack: Stack) -> None:
    started = time.monotonic()
    r = on_both(stack, "/slow")  # timeout 1s to a 3 s answer, on each proxy in turn
    assert (r.status, r.body) == (504, b"upstream request timeout")
    assert time.monotonic() - started < 2 * 1.5


def test_stream_idle_timeout_504(stack: Stack) -> None:
    """stream_idle_timeout 1s (the second listener): no response for 1 s is Envoy's 504."""
    for kind, port in stack.extra["_b"].items():
        started = time.monotonic()
        r = curl(port, "/delay/3")
        assert (r.status, r.body) == (504, b"stream timeout"), kind
        assert 0.9 < time.monotonic() - started < 1.6, kind


def test_streams_over_max_concurrent_streams_are_refused(stack: Stack) -> None:
    """102 requests sent at once, before the proxy's SETTINGS (max_concurrent_streams 100) are
    read: the first 100 are answered, the 2 after them get RST_STREAM REFUSED_STREAM."""
    for kind, port in stack.proxies.items():
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        results: dict[int, str] = {}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            c.initiate_connection()
            for i in range(102):
                c.send_headers(1 + 2 * i, [*BASE[:2], (b":path", b"/delay/0.3"), BASE[3]], end_stream=True)
            s.sendall(c.data_to_send())
            while len(results) < 102:
                data = s.recv(65536)
                assert data, f"{kind}: closed after {len(results)} answers"
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        results[ev.stream_id or 0] = dict(ev.headers or [])[b":status"].decode()
                    elif isinstance(ev, h2.events.StreamReset):
                        results[ev.stream_id or 0] = h2.errors.ErrorCodes(ev.error_code or 0).name
                s.sendall(c.data_to_send())
        assert [results[1 + 2 * i] for i in range(102)] == ["200"] * 100 + ["REFUSED_STREAM"] * 2, kind


def test_request_trailers_are_dropped_and_the_body_ends_once(stack: Stack) -> None:
    """HEADERS, DATA, then trailers: the HTTP/1.1 upstream gets the chunked body once, without
    the trailers (Envoy's HTTP/1 codec sends none unless enable_trailers)."""
    seen = {}
    for kind, port in stack.proxies.items():
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        body = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            c.initiate_connection()
            c.send_headers(1, [(b":method", b"POST"), *BASE[1:2], (b":path", b"/anything"), BASE[3]])
            c.send_data(1, b"x" * 1000)
            c.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)
            s.sendall(c.data_to_send())
            done = False
            while not done:
                data = s.recv(65536)
                assert data, kind
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        body += ev.data or b""
                        c.acknowledge_received_data(ev.flow_controlled_length or 0, 1)
                    done = done or isinstance(ev, h2.events.StreamEnded)
                s.sendall(c.data_to_send())
        answer = json.loads(body)
        seen[kind] = ([h for h in answer["headers"] if h[0] != "x-request-id"], answer["body_length"])
    assert seen["ours"][1] == 1000
    assert "x-trailer" not in dict(seen["ours"][0])
    if "envoy" in seen:
        assert seen["ours"] == seen["envoy"]
