"""Small, exact servers for lab pods: `python -m pysidecar.lab.servers KIND --port N [...]`.

Kinds and what each promises (tests rely on these byte for byte):
- echo:   returns every byte it receives, in order; after the client's EOF it finishes echoing,
          then shuts down its write side (half-close honoured both ways).
- sink:   reads to EOF, then answers b"<count> <sha256 hex>\\n" and closes.
- source: writes `source_bytes(N)` (`--bytes N`), shuts down its write side, waits for the
          client's EOF (so closing never resets unread data), closes.
- http:   HTTP/1.1 with keep-alive and Content-Length responses, httpbin-like endpoints:
          GET / and /hello       --body text (default "hello from <name>\\n")
              /status/<code>     that status, empty body
              /delay/<secs>      waits (at most 60 s), then JSON {"delay": secs}
              /headers           JSON {"headers": {Title-Case: value}, "raw": [[name, value]...]}
              /bytes/<n>         n bytes of `source_bytes(n)`
              /ip                JSON {"origin": peer ip, "port": peer port, "local": [ip, port]}
              /anything[/...]    any method: JSON method, path, headers, body length + sha256
              /chunked/<n>       n lines "chunk <i>\\n", each its own chunk (transfer-encoding:
                                 chunked, no content-length)
              /upgrade           `101 Switching Protocols` (upgrade: the request's), then echoes
                                 every byte until the client's EOF
          HEAD works everywhere; request bodies may be Content-Length or chunked;
          `Expect: 100-continue` is answered; `--name` adds an `x-served-by` header.
Every server listens on all addresses (IPv4 and IPv6) unless --host is given, and prints
"ready <kind> <port>" to stderr once listening. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from http import HTTPStatus
from typing import NamedTuple

READ_SIZE = 64 * 1024
SOURCE_PERIOD = 65521  # prime: a lost or repeated chunk of any power-of-two size shows up
MAX_HEAD = 64 * 1024  # request line + headers
MAX_DELAY = 60.0
LINGER = 30.0  # how long source/sink wait for the client's EOF before closing anyway


# -- deterministic payloads ------------------------------------------------------------


def _period(n: int) -> bytes:
    return random.Random(n).randbytes(SOURCE_PERIOD)


def iter_source_bytes(n: int, chunk: int = READ_SIZE) -> Iterator[bytes]:
    """`source_bytes(n)` in pieces of at most `chunk` bytes, without building it whole."""
    period = _period(n) * 2  # any window of length <= SOURCE_PERIOD is one slice
    offset = 0
    while offset < n:
        size = min(chunk, n - offset, SOURCE_PERIOD)
        start = offset % SOURCE_PERIOD
        yield period[start : start + size]
        offset += size


def source_bytes(n: int) -> bytes:
    """The n bytes `source --bytes n` and `/bytes/n` send: a pseudo-random block seeded by n,
    repeated with a prime period."""
    return b"".join(iter_source_bytes(n))


# -- raw TCP kinds ---------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
    """Read and drop until EOF (or LINGER), so our close never turns into a reset."""
    try:
        async with asyncio.timeout(LINGER):
            while await reader.read(READ_SIZE):
                pass
    except (TimeoutError, ConnectionError):
        pass


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()  # back-pressure: stop reading while the client is not reading
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


async def handle_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    count = 0
    try:
        while data := await reader.read(READ_SIZE):
            digest.update(data)
            count += len(data)
        writer.write(f"{count} {digest.hexdigest()}\n".encode())
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


def make_source(n: int) -> Handler:
    async def handle_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for piece in iter_source_bytes(n):
                writer.write(piece)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
            await _drain_until_eof(reader)
        except ConnectionError:
            pass
        finally:
            await _close(writer)

    return handle_source


# -- http ------------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Request:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Parse one request head from `reader`; None on a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest(400, "truncated request head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    while lines and not lines[0]:  # tolerate stray CRLFs between requests (RFC 9112 2.2)
        lines.pop(0)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(400, f"bad request line {lines[0] if lines else ''!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return Request(parts[0], parts[1], parts[2], headers)


async def read_body(
    req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    te = (req.header("transfer-encoding") or "").lower()
    length = req.header("content-length")
    if not te and length is None:
        return b""
    if (req.header("expect") or "").lower() == "100-continue" and req.version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if te:
        if te != "chunked":
            raise BadRequest(501, f"transfer-encoding {te!r} not supported")
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest(400, "chunk not followed by CRLF")
    assert length is not None
    if not length.isdigit():
        raise BadRequest(400, f"bad content-length {length!r}")
    return await reader.readexactly(int(length))


class Streamed(NamedTuple):
    """A response body sent piece by piece; `length` None: sent chunked."""

    length: int | None
    chunks: Iterator[bytes]


UPGRADE = object()  # respond()'s body for /upgrade: the connection becomes an echo


class HttpApp:
    """The endpoints; `respond` returns (status, headers, body) for one request."""

    def __init__(self, name: str | None, body: str | None) -> None:
        self.name = name
        default = f"hello from {name}\n" if name else "hello\n"
        self.body = (body if body is not None else default).encode()

    async def respond(
        self, req: Request, peer: tuple[str, int], local: tuple[str, int]
    ) -> tuple[int, list[tuple[str, str]], bytes | Streamed | object]:
        path = req.target.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        text = [("content-type", "text/plain")]
        if not parts or parts == ["hello"]:  # /hello: istio's helloworld sample answers there
            return 200, text, self.body
        head, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        if head == "status" and arg.isdigit() and 200 <= int(arg) <= 599:
            return int(arg), [], b""
        if head == "delay":
            try:
                secs = min(float(arg), MAX_DELAY)
            except ValueError:
                return 400, text, b"bad delay\n"
            await asyncio.sleep(secs)
            return 200, *_json({"delay": secs})
        if head == "headers":
            titled: dict[str, str] = {}
            for k, v in req.headers:
                key = "-".join(w.capitalize() for w in k.split("-"))
                titled[key] = f"{titled[key]},{v}" if key in titled else v
            return 200, *_json({"headers": titled, "raw": [list(h) for h in req.headers]})
        if head == "bytes" and arg.isdigit():
            n = int(arg)  # streamed: /bytes/1000000000 must not need a GiB of memory
            return (
                200,
                [("content-type", "application/octet-stream")],
                Streamed(n, iter_source_bytes(n)),
            )
        if head == "chunked" and arg.isdigit():
            lines = (f"chunk {i}\n".encode() for i in range(int(arg)))
            return 200, text, Streamed(None, lines)
        if head == "upgrade":
            return 101, [("connection", "upgrade"), ("upgrade", req.header("upgrade") or "")], UPGRADE
        if head == "ip":
            return 200, *_json({"origin": peer[0], "port": peer[1], "local": list(local)})
        if head == "anything":
            return 200, *_json(
                {
                    "method": req.method,
                    "path": req.target,
                    "headers": [list(h) for h in req.headers],
                    "body_length": len(req.body),
                    "body_sha256": hashlib.sha256(req.body).hexdigest(),
                }
            )
        return 404, text, b"not found\n"

    def head_bytes(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", "server: pysidecar-lab"]
        if self.name:
            lines.append(f"x-served-by: {self.name}")
        lines += [f"{k}: {v}" for k, v in headers]
        if length is not None:
            lines.append(f"content-length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[:2]
        local = writer.get_extra_info("sockname")[:2]
        try:
            while True:
                try:
                    req = await read_request(reader)
                    if req is None:
                        break
                    req.body = await read_body(req, reader, writer)
                except BadRequest as e:
                    writer.write(self.head_bytes(e.status, [("connection", "close")], 0))
                    await writer.drain()
                    break
                status, headers, body = await self.respond(req, peer, local)
                keep = req.keep_alive()
                if not keep:
                    headers = [*headers, ("connection", "close")]
                elif req.version == "HTTP/1.0":
                    headers = [*headers, ("connection", "keep-alive")]
                if body is UPGRADE:
                    writer.write(self.head_bytes(status, headers, None))
                    await handle_echo(reader, writer)
                    return
                no_body = status in (204, 304) or 100 <= status < 200
                assert isinstance(body, (bytes, Streamed))
                length = body.length if isinstance(body, Streamed) else len(body)
                chunked = length is None and status != 204
                if chunked:
                    headers = [*headers, ("transfer-encoding", "chunked")]
                writer.write(self.head_bytes(status, headers, None if status == 204 else length))
                if req.method != "HEAD" and not no_body:
                    if isinstance(body, Streamed):
                        for piece in body.chunks:
                            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                            await writer.drain()
                        if chunked:
                            writer.write(b"0\r\n\r\n")
                    else:
                        writer.write(body)
                await writer.drain()
                if not keep:
                    break
            writer.write_eof()
            await writer.drain()
            await _drain_until_eof(reader)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            await _close(writer)


def _json(obj: object) -> tuple[list[tuple[str, str]], bytes]:
    return [("content-type", "application/json")], (json.dumps(obj, indent=1) + "\n").encode()


# -- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pysidecar.lab.servers", description=__doc__.splitlines()[0]
    )
    p.add_argument("kind", choices=["echo", "sink", "source", "http"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=None, help="address to bind (default: all, IPv4 and IPv6)")
    p.add_argument("--bytes", type=int, default=0, help="source: how many bytes to send")
    p.add_argument("--body", default=None, help="http: body of GET /")
    p.add_argument("--name", default=None, help="http: value of the x-served-by header")
    return p


def handler_for(args: argparse.Namespace) -> Handler:
    if args.kind == "echo":
        return handle_echo
    if args.kind == "sink":
        return handle_sink
    if args.kind == "source":
        return make_source(args.bytes)
    return HttpApp(args.name, args.body).handle


async def serve(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(handler_for(args), args.host, args.port, limit=MAX_HEAD)
    print(f"ready {args.kind} {args.port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
