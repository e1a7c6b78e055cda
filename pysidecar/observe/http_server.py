"""A small HTTP/1.1 server for the admin, stats and readiness ports (not the data path).

Promises: one request at a time per connection, keep-alive, bodies up to 1 MiB, a handler per
exact path; unknown paths get 404, malformed requests 400 and a close. Handlers are coroutines
returning a `Response`; an exception in one becomes a 500 and the server keeps serving.
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


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(Response(400, "bad request\n").encode(keep_alive=False))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.put_nowait(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) <= MAX_BODY:
            self._body += body

    def on_message_complete(self) -> None:
        parts = urlsplit(self._url.decode("latin-1"))
        method = self.parser.get_method().decode()
        self._queue.put_nowait(
            Request(method, parts.path, parse_qs(parts.query, keep_blank_values=True), self._headers, bytes(self._body))
        )

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
            keep = self.parser.should_keep_alive()
            self.transport.write(resp.encode(keep))
            if not keep:
                self.transport.close()
                return


async def serve(host: str, port: int, routes: dict[str, Handler]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(routes), host, port, reuse_address=True)
