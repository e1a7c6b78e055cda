"""The HTTP/1.1 data path under pysidecar and under real Envoy 1.40 (scenarios/http1.yaml):
request limits, Expect: 100-continue, framing, upstream pool reuse and the request headers each
proxy sends upstream. Responses are compared with the harness's `same()` (status, headers in
order with volatile values by presence, body); what Envoy answers was measured on it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conformance.harness import Response, Stack, envoy_binary, read_response, running, same

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
