"""The admin / stats / readiness server (observe/http_server) under hostile clients, over real
loopback sockets: the limits an HCM has (header size, an endless header line, the request
headers timeout), Connection: close honoured, pipelining served in order without reading ahead,
and admin's `/stats?filter=` matched with RE2 (a backtracking bomb returns at once)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pysidecar.observe import http_server
from pysidecar.observe.http_server import Request, Response, serve


async def _hello(req: Request) -> Response:
    return Response(200, f"hello {req.path}\n")


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(http_server, "HEADERS_TIMEOUT_S", 0.5)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(serve("127.0.0.1", 0, {"/a": _hello, "/b": _hello}))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:

        async def shutdown() -> None:
            server.close()
            await asyncio.sleep(0.1)  # the connections' tasks see their close

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def talk(port: int, data: bytes, wait: float = 2.0) -> tuple[bytes, bool]:
    """(everything read, whether the server closed) after sending `data`."""
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        try:
            while d := s.recv(65536):
                buf += d
        except TimeoutError:
            return buf, False
        except ConnectionResetError:
            pass
    return buf, True


def test_header_over_60k_is_431_and_close(port: int) -> None:
    buf, closed = talk(port, b"GET /a HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert buf.startswith(b"HTTP/1.1 431") and closed


def test_endless_header_line_is_cut(port: int) -> None:
    """No CRLF ever: counted by the bytes that arrive, not held until it ends."""
    buf, closed = talk(port, b"GET /a HTTP/1.1\r\nx-big: " + b"a" * 200_000)
    assert buf.startswith(b"HTTP/1.1 431") and closed


def test_slow_head_is_408_after_the_headers_timeout(port: int) -> None:
    started = time.monotonic()
    buf, closed = talk(port, b"GET /a HTTP/1.1\r\nx-a: 1\r\n", wait=3.0)
    assert buf.startswith(b"HTTP/1.1 408") and closed
    assert time.monotonic() - started < 2.0


def test_connection_close_is_honoured(port: int) -> None:
    buf, closed = talk(port, b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert closed and buf.count(b"HTTP/1.1 200") == 1 and b"connection: close" in buf


def test_keep_alive_stays_open(port: int) -> None:
    buf, closed = talk(port, b"GET /a HTTP/1.1\r\n\r\n", wait=1.0)
    assert not closed and buf.startswith(b"HTTP/1.1 200")


def test_pipelined_requests_answered_in_order(port: int) -> None:
    reqs = b"".join(b"GET /%s HTTP/1.1\r\n\r\n" % (b"a" if i % 2 else b"b") for i in range(200))
    buf, _ = talk(port, reqs + b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\n", wait=5.0)
    bodies = re.findall(rb"hello (/[ab])", buf)
    assert len(bodies) == 201
    assert bodies[:4] == [b"/b", b"/a", b"/b", b"/a"]
