"""The HTTP/1.1 data path under pysidecar and under real Envoy 1.40 (scenarios/http1.yaml):
request limits, Expect: 100-continue, framing, upstream pool reuse and the request headers each
proxy sends upstream. Responses are compared with the harness's `same()` (status, headers in
order with volatile values by presence, body); what Envoy answers was measured on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance import harness
from tests.conformance.harness import (
    Response,
    Stack,
    envoy_binary,
    exchange,
    read_response,
    running,
    same,
)

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("http1.yaml", ENVOY) as s:
        yield s


def on_both(ports: dict[str, int], fn: Callable[[socket.socket], Response]) -> Response:
    """`fn` on a fresh connection to each proxy; the answers must be the same."""
    results = {}
    for kind, port in ports.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            results[kind] = fn(s)
    return same(results)


def read(s: socket.socket, head_request: bool = False) -> Response:
    r = read_response(s, head_request)
    assert r is not None, "connection closed without a response"
    return r


def closed(s: socket.socket, within: float = 3.0) -> bool:
    """Whether the peer closes (EOF or reset) within `within` seconds, reading what is left."""
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def send_until_error(s: socket.socket, data: bytes, times: int) -> None:
    for _ in range(times):
        try:
            s.sendall(data)
        except OSError:
            return
        time.sleep(0.005)


# == A, B: request head limits ==================================================================


def test_header_value_without_crlf_is_431_as_it_grows(stack: Stack) -> None:
    """One header value sent in 8 KiB pieces, never ended: 431 once past 60 KiB, not a wait
    for the headers timeout while the value is buffered."""

    def run(s: socket.socket) -> Response:
        start = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: lab.test\r\nx-big: ")
        send_until_error(s, b"a" * 8192, 200)  # 1.6 MB if nobody stops it
        r = read(s)
        assert time.monotonic() - start < 5
        return r

    r = on_both(stack.proxies, run)
    assert (r.status, r.body) == (431, b"Request Header Fields Too Large")


@pytest.mark.parametrize(("count", "status"), [(99, 200), (100, 431)])
def test_max_headers_count_100_host_included(stack: Stack, count: int, status: int) -> None:
    raw = (
        b"GET /status/200 HTTP/1.1\r\nHost: lab.test\r\n"
        + b"".join(b"x-h%d: v\r\n" % i for i in range(count))
        + b"\r\n"
    )

    def run(s: socket.socket) -> Response:
        s.sendall(raw)
        return read(s)

    r = on_both(stack.proxies, run)
    assert r.status == status
    if status == 431:
        assert r.body == b"Request Header Fields Too Large"


# == C: Expect: 100-continue ====================================================================

VOLATILE_LINES = ("date:", "x-request-id:", "x-envoy-upstream-service-time:")


def curl_expect(port: int, host: str, path: str, body_file: str) -> tuple[list[str], bytes]:
    """curl -H 'Expect: 100-continue' --data-binary @file: the response lines curl saw (the
    interim 100 included; volatile values blanked) and the body."""
    out = subprocess.run(
        ["curl", "-sv", "--expect100-timeout", "3", "-H", "Expect: 100-continue",
         "--data-binary", f"@{body_file}", "-H", f"Host: {host}",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    lines = []
    for line in out.stderr.decode("latin-1").splitlines():
        if line.startswith("< "):
            text = line[2:].strip()
            lines.append(text.split(":")[0] + ": <v>" if text.lower().startswith(VOLATILE_LINES) else text)
    return lines, out.stdout


@pytest.mark.parametrize(
    ("host", "path", "status"),
    [("nowhere.test", "/x", 404), ("lab.test", "/direct", 200), ("lab.test", "/fault", 418),
     ("lab.test", "/status/201", 201)],
)  # fmt: skip
def test_expect_100_continue_is_answered_before_routing(
    stack: Stack, tmp_path: Path, host: str, path: str, status: int
) -> None:
    """Envoy sends `100 Continue` on the request head, before any route or local reply."""
    body = tmp_path / "body"
    body.write_bytes(b"x" * 100_000)
    seen = {k: curl_expect(p, host, path, str(body)) for k, p in stack.proxies.items()}
    ours = seen["ours"]
    assert ours[0][0] == "HTTP/1.1 100 Continue", ours
    assert ours[0][1].startswith(f"HTTP/1.1 {status} "), ours
    if "envoy" in seen:
        assert ours == seen["envoy"]


def test_local_reply_before_the_body_closes_the_connection(stack: Stack) -> None:
    """A reply while the request body is unread says `connection: close` and closes: the bytes
    that follow are not parsed as the old request's body (nor as a new request)."""

    def run(s: socket.socket) -> Response:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 5\r\n\r\n")
        r = read(s)
        with contextlib.suppress(OSError):
            s.sendall(b"hello" + b"GET /status/200 HTTP/1.1\r\nHost: lab.test\r\n\r\n")
        assert closed(s)
        return r

    r = on_both(stack.proxies, run)
    assert (r.status, r.header("connection")) == (404, "close")


def test_bodyless_local_reply_keeps_the_connection(stack: Stack) -> None:
    def run(s: socket.socket) -> Response:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 0\r\n\r\n")
        first = read(s)
        assert first.header("connection") is None
        s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: lab.test\r\n\r\n")
        return read(s)

    assert on_both(stack.proxies, run).status == 200


def test_proxy_100_continue_passes_on_the_upstreams_100(stack: Stack) -> None:
    """With proxy_100_continue, Expect goes upstream and the upstream's 100 comes back."""

    def run(s: socket.socket) -> Response:
        s.sendall(
            b"POST /status/200 HTTP/1.1\r\nHost: lab.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        interim = read(s)  # before the body is sent: only the upstream can have sent it
        assert interim.status == 100
        s.sendall(b"hello")
        return read(s)

    assert on_both(stack.extra["_b"], run).status == 200


# == G: transfer codings ========================================================================


@pytest.mark.parametrize(
    ("te", "status"),
    [(b"gzip, chunked", 501), (b"deflate,chunked", 501), (b"gzip", 501), (b"identity", 501),
     (b"chunked, gzip", 501), (b"gzip\r\nTransfer-Encoding: chunked", 501), (b"Chunked", 200)],
)  # fmt: skip
def test_transfer_encoding_other_than_chunked_is_501(stack: Stack, te: bytes, status: int) -> None:
    """Envoy implements only the chunked transfer coding: anything else is 501 and a close."""

    def run(s: socket.socket) -> Response:
        s.sendall(
            b"POST /status/200 HTTP/1.1\r\nHost: lab.test\r\nTransfer-Encoding: " + te
            + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )  # fmt: skip
        return read(s)

    r = on_both(stack.proxies, run)
    assert r.status == status
    if status == 501:
        assert (r.body, r.header("connection")) == (b"Not Implemented", "close")


def test_reason_phrases_are_envoys(stack: Stack) -> None:
    """Every status 200-599 from the upstream, on one connection: Envoy's status line (its
    phrase table differs from Python's: 413 Payload Too Large, 418 Unknown, ...)."""

    def run(s: socket.socket) -> list[tuple[str, list[tuple[str, str]], bytes]]:
        out = []
        for code in range(200, 600):
            s.sendall(b"GET /status/%d HTTP/1.1\r\nHost: lab.test\r\n\r\n" % code)
            out.append(read(s).comparable())
        return out

    seen = {}
    for kind, port in stack.proxies.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            seen[kind] = run(s)
    if "envoy" in seen:
        assert seen["ours"] == seen["envoy"]


# == E: the request headers each proxy sends upstream ===========================================

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CONTROL = (
    b"x-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 3\r\nx-envoy-upstream-rq-timeout-ms: 10\r\n"
    b"x-envoy-expected-rq-timeout-ms: 5\r\nx-envoy-attempt-count: 9\r\nx-envoy-original-path: /zz\r\n"
    b"x-envoy-force-trace: 1\r\nx-envoy-internal: true\r\nx-envoy-foo: bar\r\n"
    b"x-envoy-decorator-operation: q\r\nx-envoy-retriable-status-codes: 500\r\n"
    b"x-envoy-upstream-rq-per-try-timeout-ms: 4\r\nx-envoy-hedge-on-per-try-timeout: true\r\n"
    b"x-envoy-ip-tags: a\r\nx-forwarded-for: 1.2.3.4\r\n"
)
UPSTREAM_CASES = {
    "plain": b"GET /anything HTTP/1.1\r\nHost: lab.test\r\n\r\n",
    "request_id_kept": b"GET /anything HTTP/1.1\r\nHost: lab.test\r\nx-request-id: abc\r\n"
    b"x-forwarded-proto: https\r\n\r\n",
    "route_timeout_and_mutations": b"GET /mut HTTP/1.1\r\nHost: lab.test\r\n"
    b"x-envoy-original-path: /zz\r\n\r\n",
    "control_headers": b"GET /anything HTTP/1.1\r\nHost: lab.test\r\n" + CONTROL + b"\r\n",
    "chunked_with_route_timeout": b"POST /mut HTTP/1.1\r\nHost: lab.test\r\n"
    b"Transfer-Encoding: chunked\r\nx-request-id: r1\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    "hop_by_hop": b"GET /anything HTTP/1.1\r\nHost: lab.test\r\nTE: trailers, gzip\r\n"
    b"Connection: x-hop, keep-alive\r\nx-hop: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n"
    b"x-other: 2\r\n\r\n",
    "absolute_form": b"GET http://lab.test/anything HTTP/1.1\r\nHost: other\r\n\r\n",
}


def upstream_view(port: int, parts: list[bytes]) -> tuple[object, ...]:
    """Send a request in pieces (a pause between them) and return what the upstream received
    (the lab's /anything echo) with the response head; x-request-id by format: a UUID4 when
    the proxy made it, else the client's."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.02)
            s.sendall(part)
        r = read(s)
    assert r.status == 200, r
    echo = json.loads(r.body)
    headers = echo["headers"]
    for h in headers:
        if h[0] == "x-request-id":
            assert UUID4.match(h[1]) or h[1] in ("abc", "r1"), h
            h[1] = "<uuid4>" if UUID4.match(h[1]) else h[1]
    head = r.comparable()[:2]
    return head, echo["method"], echo["path"], headers, echo["body_length"], echo["body_sha256"]


def same_upstream_view(stack: Stack, parts: list[bytes]) -> tuple[object, ...]:
    seen = {kind: upstream_view(port, parts) for kind, port in stack.proxies.items()}
    if "envoy" in seen:
        assert seen["ours"] == seen["envoy"]
    return seen["ours"]


@pytest.mark.parametrize("case", sorted(UPSTREAM_CASES))
def test_upstream_request_headers_are_envoys(stack: Stack, case: str) -> None:
    ours = same_upstream_view(stack, [UPSTREAM_CASES[case]])
    names = [h[0] for h in ours[3]]  # type: ignore[attr-defined]
    assert names.count("x-request-id") == 1 and "x-forwarded-proto" in names
    assert not {"x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-ip-tags", "x-hop"} & set(names)


def test_expected_timeout_and_attempt_count(stack: Stack) -> None:
    r = exchange(stack.proxies["ours"], UPSTREAM_CASES["route_timeout_and_mutations"])
    assert r is not None
    got = dict(json.loads(r.body)["headers"])
    assert got["x-envoy-expected-rq-timeout-ms"] == "7000"
    assert got["x-envoy-attempt-count"] == "1"
    assert got["x-envoy-original-path"] == "/mut"  # the client's /zz overwritten in place


# == D: streaming and framing ===================================================================


def test_chunked_request_streams_upstream_as_chunked(stack: Stack) -> None:
    """A chunked request body sent in pieces reaches the upstream re-framed, whole."""
    pieces = [b"%x\r\n%s\r\n" % (len(c), c) for c in (b"a" * 1000, b"b" * 70000, b"c")]
    head = b"POST /anything HTTP/1.1\r\nHost: lab.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    view = same_upstream_view(stack, [head, *pieces, b"0\r\n\r\n"])
    assert view[4] == 71001
    assert view[5] == hashlib.sha256(b"a" * 1000 + b"b" * 70000 + b"c").hexdigest()
    assert ["transfer-encoding", "chunked"] in view[3]  # type: ignore[operator]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_chunked_response(stack: Stack, method: str) -> None:
    """An upstream body without a length goes on chunked (HEAD: the header, no body)."""

    def run(s: socket.socket) -> Response:
        s.sendall(f"{method} /chunked/2000 HTTP/1.1\r\nHost: lab.test\r\n\r\n".encode())
        return read(s, head_request=method == "HEAD")

    r = on_both(stack.proxies, run)
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == (b"".join(b"chunk %d\n" % i for i in range(2000)) if method == "GET" else b"")


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses_keep_the_connection(stack: Stack, code: int) -> None:
    def run(s: socket.socket) -> Response:
        s.sendall(b"GET /status/%d HTTP/1.1\r\nHost: lab.test\r\n\r\n" % code)
        first = read(s)
        assert first.body == b""
        s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: lab.test\r\n\r\n")
        assert read(s).status == 200  # nothing was left between the two responses
        return first

    assert on_both(stack.proxies, run).status == code


def test_upgrade_is_a_byte_tunnel_both_ways(stack: Stack) -> None:
    """websocket upgrade (allowed by upgrade_configs): the 101 goes back, then bytes flow both
    ways (those sent with the request head included) until the client's half-close."""

    def run(s: socket.socket) -> Response:
        s.sendall(
            b"GET /upgrade HTTP/1.1\r\nHost: lab.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nearly"
        )
        r = read(s)
        got = harness.take_leftover(s)  # tunnel bytes that came with the 101
        # Sent from a thread while this one reads: the echo would stall a sender that does
        # not read (flow control all the way back), whichever proxy is in between.
        sender = threading.Thread(target=s.sendall, args=(b"ping" + b"x" * 200_000,))
        sender.start()
        want = b"early" + b"ping" + b"x" * 200_000
        while len(got) < len(want):
            chunk = s.recv(65536)
            assert chunk, got[:40]
            got += chunk
        sender.join()
        assert got == want
        s.shutdown(socket.SHUT_WR)
        assert closed(s)
        return r

    assert on_both(stack.proxies, run).status == 101


@pytest.mark.parametrize(("ports", "upgrade"), [("main", "foo"), ("b", "websocket")])
def test_upgrade_not_configured_is_403(stack: Stack, ports: str, upgrade: str) -> None:
    def run(s: socket.socket) -> Response:
        s.sendall(
            b"GET /upgrade HTTP/1.1\r\nHost: lab.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: " + upgrade.encode() + b"\r\n\r\n"
        )
        return read(s)

    r = on_both(stack.proxies if ports == "main" else stack.extra["_b"], run)
    assert (r.status, r.header("connection")) == (403, "close")


def admin_stat(port: int, name: str) -> int:
    """One counter from the admin's text /stats (the same format on both proxies)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter=^{re.escape(name)}$") as f:
        text = f.read().decode()
    values = [line.split(": ")[1] for line in text.splitlines() if line.startswith(name + ": ")]
    assert len(values) == 1, text
    return int(values[0])


def test_upstream_pool_reuse(stack: Stack) -> None:
    """Requests one after another, on one downstream connection and then on a new connection
    each: one upstream connection serves them all."""
    admins = {"ours": stack.ports["a1"], "envoy": stack.ports["a2"]}
    for kind, port in stack.proxies.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(10):
                s.sendall(b"GET /pool HTTP/1.1\r\nHost: lab.test\r\n\r\n")
                assert read(s).status == 200
        for _ in range(10):
            r = exchange(port, b"GET /pool HTTP/1.1\r\nHost: lab.test\r\nConnection: close\r\n\r\n")
            assert r is not None and r.status == 200
        assert admin_stat(admins[kind], "cluster.lab_pool.upstream_cx_total") == 1, kind
        assert admin_stat(admins[kind], "cluster.lab_pool.upstream_rq_total") == 20, kind


# == F: timeouts and HTTP/1 options (listener_c: stream_idle_timeout 1s, underscores rejected,
# HTTP/1.0 accepted; route /route_idle with idle_timeout 0.5s) =================================


def timed_on_both(ports: dict[str, int], raw: bytes, within: tuple[float, float]) -> Response:
    def run(s: socket.socket) -> Response:
        start = time.monotonic()
        s.sendall(raw)
        r = read(s)
        elapsed = time.monotonic() - start
        assert within[0] <= elapsed <= within[1], elapsed
        return r

    return on_both(ports, run)


def test_stream_idle_timeout_waiting_for_the_upstream_is_504(stack: Stack) -> None:
    r = timed_on_both(
        stack.extra["_c"], b"GET /delay/3 HTTP/1.1\r\nHost: x\r\n\r\n", (0.7, 1.3)
    )
    assert (r.status, r.body, r.header("connection")) == (504, b"stream timeout", None)


def test_route_idle_timeout_overrides_the_stream_idle_timeout(stack: Stack) -> None:
    r = timed_on_both(stack.extra["_c"], b"GET /route_idle HTTP/1.1\r\nHost: x\r\n\r\n", (0.3, 0.8))
    assert (r.status, r.body) == (504, b"stream timeout")


def test_stream_idle_timeout_with_the_body_unfinished_is_408_and_close(stack: Stack) -> None:
    raw = b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
    r = timed_on_both(stack.extra["_c"], raw, (0.7, 1.3))
    assert (r.status, r.body, r.header("connection")) == (408, b"stream timeout", "close")


def test_headers_with_underscores_rejected(stack: Stack) -> None:
    def run(s: socket.socket) -> Response:
        s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nx_under: 1\r\n\r\n")
        return read(s)

    r = on_both(stack.extra["_c"], run)
    assert (r.status, r.body, r.header("connection")) == (400, b"Bad Request", "close")


@pytest.mark.parametrize(
    ("listener", "raw", "status"),
    [("main", b"GET /status/200 HTTP/1.0\r\nHost: lab.test\r\n\r\n", 426),
     ("_c", b"GET /status/200 HTTP/1.0\r\nHost: x\r\n\r\n", 200),
     ("_c", b"GET /status/200 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", 200),
     ("_c", b"GET /status/200 HTTP/1.0\r\n\r\n", 400),
     ("main", b"GET /status/200 HTTP/1.1\r\n\r\n", 400)],
)  # fmt: skip
def test_http10_and_missing_host(stack: Stack, listener: str, raw: bytes, status: int) -> None:
    """accept_http_10 false (Envoy's default): 426; accepted: answered as HTTP/1.0 (status
    line, connection: close or keep-alive); no Host: 400."""

    def run(s: socket.socket) -> Response:
        s.sendall(raw)
        return read(s)

    r = on_both(stack.proxies if listener == "main" else stack.extra[listener], run)
    assert r.status == status


def test_upstream_idle_connections_are_closed(stack: Stack) -> None:
    """lab_idle's HttpProtocolOptions idle_timeout 0.5s: the idle upstream connection goes."""
    name = "cluster.lab_idle.upstream_cx_idle_timeout"
    admins = {"ours": stack.ports["a1"], "envoy": stack.ports["a2"]}
    for kind, port in stack.extra["_c"].items():
        before = admin_stat(admins[kind], name)
        r = exchange(port, b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert r is not None and r.status == 200
        time.sleep(1.2)
        assert admin_stat(admins[kind], name) == before + 1, kind


def test_retry_picks_a_host_not_tried(stack: Stack) -> None:
    """previous_hosts: a connect-failure retry never goes back to the refusing host (30
    requests with one retry each; without the predicate about a quarter would fail)."""
    for port in stack.proxies.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(30):
                s.sendall(b"GET /flaky HTTP/1.1\r\nHost: lab.test\r\n\r\n")
                assert read(s).status == 200


def test_upstream_service_time_counts_from_the_end_of_the_request(stack: Stack) -> None:
    """A body sent 0.5 s after the head: Envoy's x-envoy-upstream-service-time (and
    upstream_rq_time) start when the request is complete, not when the upstream was picked."""
    for port in stack.proxies.values():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /status/200 HTTP/1.1\r\nHost: lab.test\r\nContent-Length: 5\r\n\r\n")
            time.sleep(0.5)
            s.sendall(b"hello")
            r = read(s)
        assert r.status == 200 and int(r.header("x-envoy-upstream-service-time") or "-1") < 250, r



@pytest.mark.parametrize("listener", ["main", "_b"])
def test_h2c_upgrade_is_proxied_as_a_plain_request(stack: Stack, listener: str) -> None:
    """Envoy drops an HTTP/1.1 h2c upgrade (with or without upgrade_configs): Upgrade,
    HTTP2-Settings and the Connection tokens never reach the upstream, the answer is the plain
    response and the connection goes on (a second request, pipelined, is answered too)."""
    h2c = (
        b"GET /anything HTTP/1.1\r\nHost: lab.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    ports = stack.proxies if listener == "main" else stack.extra[listener]
    view = {kind: upstream_view(port, [h2c]) for kind, port in ports.items()}
    names = [h[0] for h in view["ours"][3]]  # type: ignore[attr-defined]
    assert not {"upgrade", "http2-settings", "connection"} & set(names), names
    if "envoy" in view:
        assert view["ours"] == view["envoy"]

    def run(s: socket.socket) -> Response:
        s.sendall(h2c + b"GET /status/201 HTTP/1.1\r\nHost: lab.test\r\n\r\n")
        assert read(s).status == 200
        return read(s)

    assert on_both(ports, run).status == 201


def test_stream_idle_timeout_closes_an_idle_tunnel(stack: Stack) -> None:
    """An upgraded stream that moves stays up past the stream idle timeout (1 s); once idle it
    is closed (Envoy 1.40: EOF 2 s after the last byte, its delayed close included; ours at
    the timeout, our side shut at once)."""
    for kind, port in stack.extra["_c"].items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            assert read(s).status == 101
            for _ in range(3):  # 1.8 s of traffic: no timeout while bytes move
                time.sleep(0.6)
                s.sendall(b"x")
                assert s.recv(10) == b"x", kind
            last = time.monotonic()
            assert closed(s, within=4)
            assert 0.9 <= time.monotonic() - last <= 2.5, kind

# == J: admin readiness (the last tests of the module: /drain_listeners stops the listeners) ==


def admin_call(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req) as f:
            return f.status, f.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_zz_ready_after_healthcheck_fail_and_drain_listeners(stack: Stack) -> None:
    """Measured on Envoy 1.40: /healthcheck/fail → /ready `DRAINING` 503 and server.live 0;
    /healthcheck/ok → LIVE; /drain_listeners stops the listeners and /ready stays LIVE 200."""
    admins = {"ours": stack.ports["a1"], "envoy": stack.ports["a2"]}
    seen: dict[str, list[object]] = {}
    for kind, port in admins.items():
        got: list[object] = [admin_call(port, "/ready")]
        admin_call(port, "/healthcheck/fail", "POST")
        got += [admin_call(port, "/ready"), admin_stat(port, "server.live"), admin_stat(port, "server.state")]
        admin_call(port, "/healthcheck/ok", "POST")
        got.append(admin_call(port, "/ready"))
        admin_call(port, "/drain_listeners", "POST")
        got += [admin_call(port, "/ready"), admin_stat(port, "server.live")]
        seen[kind] = got
    assert seen["ours"] == [
        (200, "LIVE\n"), (503, "DRAINING\n"), 0, 0, (200, "LIVE\n"), (200, "LIVE\n"), 1,
    ]  # fmt: skip
    if "envoy" in seen:
        assert seen["envoy"] == seen["ours"]

