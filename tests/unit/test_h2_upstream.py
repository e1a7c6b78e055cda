"""The HTTP/2 upstream codec and pool (proxy/http/http2/client_codec.py, http2/conn_pool.py) against real
HTTP/2 servers on loopback: a grpcio server (a real gRPC call with trailers, multiplexed) and a
scriptable h2 server (SETTINGS_MAX_CONCURRENT_STREAMS, GOAWAY, RST_STREAM mid-response, a
window that never opens, garbage frames), plus the circuit breakers and flow control."""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from pysidecar.model import CircuitBreakers, Cluster, ClusterType, LbEndpoint, SocketAddress
from pysidecar.model.http import Http2Options
from pysidecar.observe.stats import StatsStore
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http.http2.client_codec import REMOTE_REFUSED, REMOTE_RESET, H2UpstreamStream
from pysidecar.proxy.http.http2.conn_pool import Http2HostPool, PendingRequest
from pysidecar.proxy.http.http2.request_headers import request_block
from pysidecar.proxy.http.retry import (
    CONNECT_FAILURE,
    CONNECTION_TERMINATION,
    OVERFLOW,
    PROTOCOL_ERROR,
)


class Client:
    """A router-side stream: records what it hears, can pause its downstream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.events: list[str] = []
        self.reset_reason: str | None = None
        self.up: H2UpstreamStream | None = None
        self.connecting: Any = None  # the pool's PendingRequest while waiting
        self.done = loop.create_future()

    def _end(self, what: str) -> None:
        if not self.done.done():
            self.done.set_result(what)

    def upstream_ready(self, up: H2UpstreamStream) -> None:
        self.up = up
        self.events.append("ready")

    def upstream_connect_failed(self, reason: str, failure: str | None) -> None:
        self.events.append(f"failed:{reason}:{failure}")
        self.reset_reason = reason
        self._end("failed")

    def upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    def upstream_continue(self) -> None:
        self.events.append("100")

    def upstream_body(self, data: bytes) -> None:
        self.body += data

    def upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = trailers

    def upstream_read_done(self) -> None:
        self.events.append("read")

    def upstream_complete(self) -> None:
        self._end("complete")

    def upstream_reset(self, reason: str, failure: str | None) -> None:
        self.reset_reason = reason
        self._end("reset")

    def upstream_pause_writing(self) -> None:
        self.events.append("pause")

    def upstream_resume_writing(self) -> None:
        self.events.append("resume")


def _pool(
    loop: asyncio.AbstractEventLoop, port: int, limits: CircuitBreakers | None = None, **cluster: Any
) -> tuple[Http2HostPool, StatsStore]:
    store = StatsStore()
    c = Cluster(
        "h2", ClusterType.STATIC, endpoints=(LbEndpoint(SocketAddress("127.0.0.1", port)),),
        circuit_breakers=limits or CircuitBreakers(), **cluster,
    )  # fmt: skip
    rt = ClusterRuntime(c, store.cluster("h2"), store)
    return Http2HostPool(loop, rt, store.cluster_http("h2"), ("127.0.0.1", port), 1 << 20), store


async def _start(pool: Http2HostPool, client: Client) -> None:
    got = pool.acquire(client)
    if got is not None:
        client.upstream_ready(got)
    elif client.connecting is None:  # refused
        return
    for _ in range(200):
        if client.up is not None or client.done.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never ready")


def _send(client: Client, path: str, body: bytes = b"", extra: list[tuple[bytes, bytes]] | None = None) -> None:
    assert client.up is not None
    headers = [(b"host", b"up.test"), *(extra or [])]
    client.up.send_headers(request_block(b"POST" if body else b"GET", b"http", path.encode(), headers), end_stream=not body)
    if body:
        client.up.send_data(body, end_stream=True)


# -- a scriptable HTTP/2 server -------------------------------------------------------------------


class H2Server(asyncio.Protocol):
    """Answers by path: /echo (body back, trailer x-t), /big/<n>, /hold (until released),
    /rst-mid (headers, 10 bytes, RST_STREAM INTERNAL_ERROR), /garbage (bytes that are not HTTP/2)."""

    def __init__(self, shared: dict[str, Any]) -> None:
        self.shared = shared
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: shared.get("max_streams", 100)}
        if "window" in shared:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = shared["window"]
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.bodies: dict[int, bytes] = {}
        self.paths: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.shared.setdefault("conns", []).append(self)
        self.h2.initiate_connection()
        self.t.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.paths[ev.stream_id] = dict(ev.headers)[b":path"]
                self.shared.setdefault("requests", []).append(ev.stream_id)
                goaway = self.shared.get("goaway_after")
                if goaway is not None and len(self.shared["requests"]) == goaway:
                    first = self.shared["requests"][0]
                    # GOAWAY written raw: h2 would refuse to answer `first` after its own.
                    self.t.write(self.h2.data_to_send() + struct.pack(">I", 8)[1:] + b"\x07\x00" + b"\x00" * 4 + struct.pack(">II", first, 0))
                    self.release(first)
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] = self.bodies.get(ev.stream_id, b"") + ev.data
                if not self.shared.get("no_window_updates"):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self._answer(ev.stream_id)
        self.t.write(self.h2.data_to_send())

    def _answer(self, sid: int) -> None:
        path = self.paths.get(sid, b"")
        if path == b"/hold":
            self.shared.setdefault("held", []).append((self, sid))
            return
        if path == b"/garbage":
            self.t.write(b"\x00\x00\x04\x01\x05\x00\x00\x00" + bytes([sid]) + b"\xff" * 4)  # HEADERS, bad HPACK
            return
        if path.startswith(b"/big/"):
            n = int(path[5:])
            self.h2.send_headers(sid, [(b":status", b"200")])
            self.shared["big_left"] = n
            self._more(sid)
            return
        self.h2.send_headers(sid, [(b":status", b"200"), (b"x-served", b"1")])
        if path == b"/rst-mid":
            self.h2.send_data(sid, b"0123456789")
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        self.h2.send_data(sid, self.bodies.get(sid, b"") or b"hello")
        self.h2.send_headers(sid, [(b"x-t", b"1")], end_stream=True)

    def _more(self, sid: int) -> None:
        left = self.shared["big_left"]
        while left:
            n = min(left, self.h2.local_flow_control_window(sid), 16384)
            if n <= 0:
                break
            self.h2.send_data(sid, b"x" * n, end_stream=n == left)
            left -= n
        self.shared["big_left"] = left
        self.t.write(self.h2.data_to_send())

    def release(self, sid: int) -> None:
        self.h2.send_headers(sid, [(b":status", b"200")], end_stream=True)
        self.t.write(self.h2.data_to_send())


async def _serve(shared: dict[str, Any]) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: H2Server(shared), "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 20))


# -- the tests ------------------------------------------------------------------------------------


def test_request_body_response_trailers_and_stats() -> None:
    async def main() -> None:
        srv, port = await _serve({})
        pool, store = _pool(asyncio.get_running_loop(), port)
        c = Client(asyncio.get_running_loop())
        await _start(pool, c)
        _send(c, "/echo", b"ping" * 1000)
        assert await c.done == "complete"
        assert (c.status, bytes(c.body), c.trailers) == (200, b"ping" * 1000, [(b"x-t", b"1")])
        assert (b"x-served", b"1") in c.headers and not any(n.startswith(b":") for n, _ in c.headers)
        rq = store.cluster_http("h2")
        assert rq.upstream_cx_http2_total == 1 and pool.breaker.rq == 0 and pool.breaker.cx == 1
        srv.close()

    run(main)


def test_streams_share_a_connection_up_to_the_peers_max_concurrent_streams() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {"max_streams": 2}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port)
        first = Client(loop)
        await _start(pool, first)  # the connection and its SETTINGS
        _send(first, "/hold")
        await asyncio.sleep(0.05)
        clients = [Client(loop) for _ in range(4)]
        for c in clients:
            await _start(pool, c)
            _send(c, "/hold")
        await asyncio.sleep(0.1)
        # 5 streams at most 2 per connection: 3 connections, none opened before the last filled.
        assert len(shared["conns"]) == 3 and store.cluster_http("h2").upstream_cx_http2_total == 3
        assert sorted(len(c.streams) for c in pool.conns) == [1, 2, 2]
        for server, sid in shared["held"]:
            server.release(sid)
        for c in [first, *clients]:
            assert await c.done == "complete" and c.status == 200
        assert pool.breaker.rq == 0 and store.cluster_http("h2").upstream_rq_pending_active == 0
        srv.close()

    run(main)


def test_cluster_max_concurrent_streams_and_max_requests_per_connection() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port, max_requests_per_connection=2)
        pool.options = Http2Options(max_concurrent_streams=1)
        for _ in range(3):
            c = Client(loop)
            await _start(pool, c)
            _send(c, "/echo")
            assert await c.done == "complete"
        # one stream at a time, two per connection: the third request opened a second one
        assert len(shared["conns"]) == 2 and store.cluster_http("h2").upstream_cx_max_requests == 1
        srv.close()

    run(main)


def test_goaway_refuses_streams_above_last_stream_id_and_finishes_the_rest() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {"goaway_after": 2}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, _ = _pool(loop, port)
        a, b = Client(loop), Client(loop)
        await _start(pool, a)
        _send(a, "/hold")
        await _start(pool, b)
        _send(b, "/hold")
        assert await a.done == "complete" and a.status == 200
        assert await b.done == "reset" and b.reset_reason == REMOTE_REFUSED
        # The drained connection takes no new stream: the next request gets a new connection.
        c = Client(loop)
        await _start(pool, c)
        _send(c, "/echo")
        assert await c.done == "complete" and len(shared["conns"]) == 2
        assert pool.breaker.rq == 0
        srv.close()

    run(main)


def test_rst_stream_mid_response_and_garbage_frames() -> None:
    async def main() -> None:
        srv, port = await _serve({})
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port)
        a = Client(loop)
        await _start(pool, a)
        _send(a, "/rst-mid")
        assert await a.done == "reset" and a.reset_reason == REMOTE_RESET
        assert a.status == 200 and bytes(a.body) == b"0123456789"
        assert store.cluster_http("h2").upstream_rq_rx_reset == 1
        b = Client(loop)
        await _start(pool, b)
        _send(b, "/garbage")
        assert await b.done == "reset" and b.reset_reason == PROTOCOL_ERROR
        assert store.cluster_http("h2").upstream_cx_protocol_error == 1
        await asyncio.sleep(0.05)
        assert pool.conns == [] and pool.breaker.rq == 0 and pool.breaker.cx == 0
        assert store.cluster("h2").upstream_cx_active == 0
        srv.close()

    run(main)


def test_a_window_that_never_opens_pauses_the_downstream_and_leaks_nothing() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {"window": 65535, "no_window_updates": True}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port)
        c = Client(loop)
        await _start(pool, c)
        assert c.up is not None
        c.up.send_headers(request_block(b"POST", b"http", b"/echo", [(b"host", b"x")]), end_stream=False)
        chunk = b"y" * 65536
        for _ in range(40):  # 2.5 MiB offered against a 64 KiB window
            c.up.send_data(chunk)
        await asyncio.sleep(0.1)
        assert "pause" in c.events  # the router is told to stop reading its downstream
        assert c.up.outbox_bytes <= 40 * 65536 - 65535 and c.up.outbox_bytes > 1 << 20
        c.up.reset()  # the route timeout gives up
        await asyncio.sleep(0.05)
        assert pool.breaker.rq == 0 and all(not conn.streams for conn in pool.conns)
        assert store.cluster_http("h2").upstream_rq_tx_reset == 1
        srv.close()

    run(main)


def test_response_window_follows_the_downstream() -> None:
    """A paused downstream holds the upstream to its window (1 MiB by default): the rest of a
    4 MiB answer comes only after resume_reading."""

    async def main() -> None:
        shared: dict[str, Any] = {}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, _ = _pool(loop, port, http2_options=Http2Options(initial_stream_window_size=65535))
        c = Client(loop)
        await _start(pool, c)
        assert c.up is not None
        c.up.pause_reading()
        _send(c, f"/big/{4 << 20}")
        await asyncio.sleep(0.2)
        assert len(c.body) == 65535 and not c.done.done()
        c.up.resume_reading()
        for _ in range(100):
            if shared["big_left"] == 0:
                break
            for server in shared["conns"]:
                for sid in server.paths:
                    server._more(sid)
            await asyncio.sleep(0.01)
        assert await c.done == "complete" and len(c.body) == 4 << 20
        srv.close()

    run(main)


def test_circuit_breakers_count_streams_and_pending_requests() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port, CircuitBreakers(max_connections=1, max_pending_requests=1, max_requests=1))
        a = Client(loop)
        await _start(pool, a)
        _send(a, "/hold")
        b = Client(loop)
        assert pool.acquire(b) is None and b.reset_reason == OVERFLOW  # max_requests 1
        assert store.cluster_http("h2").upstream_rq_pending_overflow == 1
        await asyncio.sleep(0.05)
        for server, sid in shared["held"]:
            server.release(sid)
        assert await a.done == "complete"
        c = Client(loop)
        await _start(pool, c)
        assert c.up is not None and pool.breaker.rq == 1
        c.up.reset()
        assert pool.breaker.rq == 0
        srv.close()

    run(main)


def test_connect_refused_fails_the_waiting_request_and_cancel_frees_its_slot() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        probe = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        pool, store = _pool(loop, port)
        a = Client(loop)
        assert pool.acquire(a) is None and isinstance(a.connecting, PendingRequest)
        assert await a.done == "failed" and a.events == [f"failed:{CONNECT_FAILURE}:delayed connect error: 111"]
        assert store.cluster("h2").upstream_cx_connect_fail == 1 and pool.breaker.pending == 0
        b = Client(loop)
        assert pool.acquire(b) is None and isinstance(b.connecting, PendingRequest)
        b.connecting.cancel()
        assert pool.breaker.pending == 0 and store.cluster_http("h2").upstream_rq_pending_active == 0
        await asyncio.sleep(0.05)
        assert b.events == []  # a cancelled request hears nothing

    run(main)


def test_upstream_closing_ends_open_streams_as_connection_termination() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {}
        srv, port = await _serve(shared)
        loop = asyncio.get_running_loop()
        pool, store = _pool(loop, port)
        c = Client(loop)
        await _start(pool, c)
        _send(c, "/hold")
        await asyncio.sleep(0.05)
        shared["conns"][0].t.close()
        assert await c.done == "reset" and c.reset_reason == CONNECTION_TERMINATION
        assert pool.breaker.rq == 0 and store.cluster("h2").upstream_cx_active == 0
        srv.close()

    run(main)


@pytest.mark.skipif("grpc" not in sys.modules and __import__("importlib").util.find_spec("grpc") is None, reason="grpcio")
def test_a_real_grpc_call_through_the_codec() -> None:
    from tests import grpc_app

    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = grpc_app.server("127.0.0.1", port, "up")
    server.start()
    try:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            pool, store = _pool(loop, port)
            clients = [Client(loop) for _ in range(5)]
            for i, c in enumerate(clients):
                await _start(pool, c)
                msg = b"m%d" % i
                frame = b"\x00" + struct.pack(">I", len(msg)) + msg
                extra = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
                _send(c, "/lab.Echo/Unary", frame, extra)
            for i, c in enumerate(clients):
                assert await c.done == "complete"
                assert c.status == 200 and bytes(c.body)[5:] == b"m%d" % i
                assert dict(c.trailers)[b"grpc-status"] == b"0" and dict(c.trailers)[b"x-trailer"] == b"done"
            assert store.cluster_http("h2").upstream_cx_http2_total == 1

        run(main)
    finally:
        server.stop(0)


def test_streams_opened_in_one_turn_get_ids_in_the_order_their_heads_go_out() -> None:
    """Many requests in one loop turn (an HTTP/2 client's burst): each stream's id is taken when
    its HEADERS go out, so heads sent in any order never collide or go backwards (h2 refuses a
    lower id after a higher one)."""

    async def main() -> None:
        srv, port = await _serve({})
        loop = asyncio.get_running_loop()
        pool, _ = _pool(loop, port)
        warm = Client(loop)
        await _start(pool, warm)  # the connection is up
        clients = [Client(loop) for _ in range(20)]
        for c in clients:
            got = pool.acquire(c)
            assert got is not None
            c.upstream_ready(got)
            assert c.up is not None
            c.up.encode_headers(b"POST", b"/echo", [(b"host", b"x")], [b"body-%d" % id(c)], False)
        for c in reversed(clients):  # the last opened finishes first
            assert c.up is not None
            c.up.encode_end()
        for c in clients:
            assert await c.done == "complete" and bytes(c.body) == b"body-%d" % id(c)
        assert pool.breaker.rq == 1  # only `warm` left open
        assert warm.up is not None
        warm.up.reset()
        srv.close()

    run(main)
