"""A small HTTP/1.1 server for the admin, stats and readiness ports (not the data path).

Promises: one request at a time per connection, keep-alive, bodies up to 1 MiB, a handler per
exact path; unknown paths get 404, malformed requests 400 and a close. Handlers are coroutines
returning a `Response`; an exception in one becomes a 500 and the server keeps serving.

The limits of an HCM, since these ports face the network too: a request head over 60 KiB
(Envoy's max_request_headers_kb, counted as bytes arrive, an endless header line included) is
431 and a close; a head not complete within 10 s (pysidecar's request-headers timeout) is 408
and a close; `Connection: close` (or HTTP/1.0 without keep-alive) closes after the answer; a
client that pipelines is read no further while its requests wait (the queue holds at most
what one read brought).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, urlsplit

import httptools

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_HEAD = 60 * 1024
HEADERS_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def encode(self, keep_alive: bool) -> bytes:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        reason = HTTPStatus(self.status).phrase if self.status in HTTPStatus._value2member_map_ else ""
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"content-type: {self.content_type}",
            f"content-length: {len(body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(asyncio.Protocol):
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._head = -1  # bytes of the request head in progress; -1: none in progress
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # answered a refusal or a close: nothing more is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._refuse(431, "request header too large\n")
            return
        except httptools.HttpParserError:
            if not self._done:  # (bytes after a `Connection: close` request are ignored)
                self._refuse(400, "bad request\n")
            return
        if self._head >= 0:  # a read ended inside a head: count it whole (partial lines too)
            self._head += len(data)
            if self._head > MAX_HEAD:
                self._refuse(431, "request header too large\n")

    def _refuse(self, status: int, body: str) -> None:
        self._done = True
        assert self.transport is not None
        self.transport.write(Response(status, body).encode(keep_alive=False))
        self.transport.close()

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HEADERS_TIMEOUT_S, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._head >= 0:  # a head still arriving 10 s after it began (slowloris)
            self._refuse(408, "request header timeout\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._queue.put_nowait(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, bytearray()
        self._head = 0
        if self._timer is not None:  # the timeout runs from the start of this head
            self._timer.cancel()
            self._timer = None
        self._arm_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count(len(name) + len(value) + 4)

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD:
            raise ValueError("request header too large")

    def on_headers_complete(self) -> None:
        self._head = -1

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) <= MAX_BODY:
            self._body += body

    def on_message_complete(self) -> None:
        parts = urlsplit(self._url.decode("latin-1"))
        method = self.parser.get_method().decode()
        keep = self.parser.should_keep_alive()  # this request's, before the next is parsed
        self._queue.put_nowait(
            Request(method, parts.path, parse_qs(parts.query, keep_blank_values=True), self._headers, bytes(self._body), keep)
        )
        if self.transport is not None:
            self.transport.pause_reading()  # pipelining: read on once the queue is served
        if not keep:
            self._done = True  # Connection: close: what follows is not read

    async def _serve(self) -> None:
        while True:
            req = await self._queue.get()
            if req is None or self.transport is None or self.transport.is_closing():
                return
            handler = self.routes.get(req.path)
            try:
                resp = await handler(req) if handler else Response(404, "invalid path\n")
            except Exception:
                log.exception("admin handler for %s failed", req.path)
                resp = Response(500, "internal error\n")
            keep = req.keep_alive
            self.transport.write(resp.encode(keep))
            if not keep:
                self.transport.close()
                return
            if self._queue.empty() and not self.transport.is_closing():
                self.transport.resume_reading()


async def serve(host: str, port: int, routes: dict[str, Handler]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(routes), host, port, reuse_address=True)
