"""A gRPC test service and its client calls, over grpcio with bytes in and out (no codegen).

`python -m tests.grpc_app serve --host H --port P [--name N]` runs service `lab.Echo`:
- `Unary`: the request back, or a command in the request: `sleep:<s>` answers after s
  seconds, `size:<n>` answers n bytes, `status:<code>` fails with that gRPC status code (a
  trailers-only response), `fail-once:<key>` fails UNAVAILABLE the first time a key is seen.
- `ServerStream`: `<n>x<size>` → n messages of size bytes; `ClientStream`: the total length of
  the messages received, as text; `Bidi`: each message back as it arrives.
Every answer carries initial metadata `x-served-by: <name>` and trailing metadata
`x-trailer: done`, so trailers are seen to pass both ways.

`channel(port)` and the `unary` / `server_stream` / `client_stream` / `bidi` helpers are the
client side the tests use (grpcio's generic calls: serializers None mean raw bytes);
`python -m tests.grpc_app call --host H --port P [--authority A] [--method M] [--data D]`
makes one call from a lab pod and prints its outcome as JSON.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "lab.Echo"
# Let 4 MiB messages through both ways (grpcio's default receive limit is 4 MiB exactly).
MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


class _Echo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[bytes] = set()
        self.lock = threading.Lock()

    def _meta(self, ctx: grpc.ServicerContext) -> None:
        ctx.send_initial_metadata((("x-served-by", self.name),))
        ctx.set_trailing_metadata((("x-trailer", "done"),))

    def unary(self, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        cmd, _, arg = req.partition(b":")
        if cmd == b"status":
            # Before any metadata goes out: a trailers-only response.
            ctx.abort(grpc.StatusCode(_code(int(arg))), f"asked for {int(arg)}")
        if cmd == b"fail-once":
            with self.lock:
                first = arg not in self.seen
                self.seen.add(arg)
            if first:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "first try fails")
        if cmd == b"sleep":  # before any metadata: a proxy's timeout can still answer
            time.sleep(float(arg))
        self._meta(ctx)
        if cmd == b"sleep":
            return b"slept"
        if cmd == b"size":
            return b"x" * int(arg)
        return req

    def server_stream(self, req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        self._meta(ctx)
        n, _, size = req.partition(b"x")
        for i in range(int(n)):
            yield bytes([65 + i % 26]) * int(size)

    def client_stream(self, reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        self._meta(ctx)
        return str(sum(len(r) for r in reqs)).encode()

    def bidi(self, reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        self._meta(ctx)
        yield from reqs


def _code(value: int) -> tuple[int, str]:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c.value  # type: ignore[no-any-return]
    raise ValueError(value)


def server(host: str, port: int, name: str) -> grpc.Server:
    echo = _Echo(name)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    s.add_insecure_port(f"{host}:{port}")
    return s


def channel(port: int, host: str = "127.0.0.1", authority: str | None = None) -> grpc.Channel:
    opts = list(OPTIONS)
    if authority is not None:
        opts.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(f"{host}:{port}", options=opts)


def unary(ch: grpc.Channel, req: bytes, timeout: float | None = 10, method: str = "Unary", service: str = SERVICE) -> tuple[bytes, grpc.Call]:
    call = ch.unary_unary(f"/{service}/{method}")
    resp, c = call.with_call(req, timeout=timeout)
    return resp, c


def server_stream(ch: grpc.Channel, req: bytes, timeout: float = 20) -> list[bytes]:
    return list(ch.unary_stream(f"/{SERVICE}/ServerStream")(req, timeout=timeout))


def client_stream(ch: grpc.Channel, reqs: list[bytes], timeout: float = 20) -> bytes:
    resp: bytes = ch.stream_unary(f"/{SERVICE}/ClientStream")(iter(reqs), timeout=timeout)
    return resp


def bidi(ch: grpc.Channel, reqs: list[bytes], timeout: float = 20) -> list[bytes]:
    return list(ch.stream_stream(f"/{SERVICE}/Bidi")(iter(reqs), timeout=timeout))


def call(host: str, port: int, authority: str | None, method: str, data: bytes, timeout: float) -> dict[str, object]:
    """One call, as JSON-able facts: code, details, response sizes, metadata, trailers."""
    ch = channel(port, host, authority)
    try:
        if method == "ServerStream":
            got = server_stream(ch, data, timeout)
            return {"code": "OK", "sizes": [len(m) for m in got]}
        resp, c = unary(ch, data, timeout, method=method)
        return {
            "code": "OK",
            "sizes": [len(resp)],
            "initial": {m.key: m.value for m in c.initial_metadata() or ()},
            "trailing": {m.key: m.value for m in c.trailing_metadata() or ()},
        }
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    finally:
        ch.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.grpc_app")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", default="grpc")
    c = sub.add_parser("call", help="one call; prints its outcome as JSON")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--authority")
    c.add_argument("--method", default="Unary")
    c.add_argument("--data", default="hello")
    c.add_argument("--timeout", type=float, default=10)
    a = p.parse_args()
    if a.cmd == "call":
        print(json.dumps(call(a.host, a.port, a.authority, a.method, a.data.encode(), a.timeout)))
        return
    srv = server(a.host, a.port, a.name)
    srv.start()
    srv.wait_for_termination()


if __name__ == "__main__":
    main()
