"""The HTTP/2 server sessions (http2/session.py) against a real HTTP/2 client (the h2 library,
client side): both `NgHttp2Session` (libnghttp2, when the compiled build carries it) and
`H2Session` (h2) keep the same contract: events in wire order, DATA within the peer's windows,
trailers after the data, one GOAWAY, HPACK errors answered COMPRESSION_ERROR, request blocks
bounded past the HCM's limits."""

from __future__ import annotations

import os

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from pysidecar import native
from pysidecar.proxy.http.http2 import nghttp2_lib
from pysidecar.proxy.http.http2.h2_session import H2Session
from pysidecar.proxy.http.http2.session import ServerSession, SessionError, new_server_session

KINDS = ["h2", "nghttp2"]
REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a.test")]


def session(kind: str, header_limit: int = 60 * 1024, count_limit: int = 100) -> ServerSession:
    if kind == "h2":
        return H2Session(header_limit)
    if nghttp2_lib.load() is None:
        pytest.skip(nghttp2_lib.why())
    from pysidecar.proxy.http.http2.nghttp2_session import NgHttp2Session

    return NgHttp2Session(header_limit, count_limit)


def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    return c


def pair(kind: str, window: int = 1 << 20, **limits: int) -> tuple[ServerSession, h2.connection.H2Connection]:
    s = session(kind, **limits)
    s.initiate(100, window, 4 << 20, 60 * 1024)
    c = client()
    exchange(s, c)
    return s, c


def exchange(s: ServerSession, c: h2.connection.H2Connection) -> tuple[list[h2.events.Event], list[h2.events.Event]]:
    """Bytes both ways until quiet: (server events, client events)."""
    server_events: list[h2.events.Event] = []
    client_events: list[h2.events.Event] = []
    for _ in range(20):
        up, down = c.data_to_send(), s.data_to_send()
        if not up and not down:
            break
        if up:
            server_events += s.receive_data(up)
        if down:
            client_events += c.receive_data(down)
    return server_events, client_events


@pytest.mark.parametrize("kind", KINDS)
def test_request_events_in_wire_order(kind: str) -> None:
    s, c = pair(kind)
    c.send_headers(1, REQ)
    c.send_data(1, b"hello")
    c.send_data(1, b" world", end_stream=True)
    c.send_headers(3, [(b":method", b"GET"), *REQ[1:]], end_stream=True)
    events, _ = exchange(s, c)
    shapes = [(type(e).__name__, e.stream_id) for e in events if not isinstance(e, h2.events.WindowUpdated)]
    assert shapes == [
        ("RequestReceived", 1), ("DataReceived", 1), ("DataReceived", 1), ("StreamEnded", 1),
        ("RequestReceived", 3), ("StreamEnded", 3),
    ]  # fmt: skip
    first = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert list(first.headers) == REQ and first.stream_ended is None
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == b"hello world"
    assert sum(e.flow_controlled_length for e in events if isinstance(e, h2.events.DataReceived)) == 11


def get_with_window(kind: str, window: int) -> tuple[ServerSession, h2.connection.H2Connection]:
    """A session with GET on stream 1 received, the client's stream window `window`."""
    s, c = pair(kind)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    c.send_headers(1, [(b":method", b"GET"), *REQ[1:]], end_stream=True)
    exchange(s, c)
    return s, c


@pytest.mark.parametrize("kind", KINDS)
def test_response_within_windows_then_trailers(kind: str) -> None:
    s, c = get_with_window(kind, 1000)
    s.send_headers(1, [(b":status", b"200"), (b"Connection", b"close"), (b"X-A", b"b")])
    sent = b""
    body = b"x" * 5000
    while len(sent) < 1000:
        w = s.send_window(1)
        assert w > 0
        s.send_data(1, body[len(sent) : len(sent) + w])
        sent += body[len(sent) : len(sent) + w]
    assert s.send_window(1) <= 0  # queued, not yet framed: counted against the window
    s.send_trailers(1, [(b"grpc-status", b"0")])
    _, events = exchange(s, c)
    head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert list(head.headers) == [(b":status", b"200"), (b"x-a", b"b")]  # lower-cased, no Connection
    got = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert got == b"x" * 1000
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [list(t.headers) for t in trailers] == [[(b"grpc-status", b"0")]]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert not s.stream_open(1)


@pytest.mark.parametrize("kind", KINDS)
def test_data_waits_for_window_update(kind: str) -> None:
    s, c = get_with_window(kind, 100)
    s.send_headers(1, [(b":status", b"200")])
    s.send_data(1, b"y" * s.send_window(1))
    _, events = exchange(s, c)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 100
    assert s.send_window(1) == 0
    c.increment_flow_control_window(50, stream_id=1)
    server_events, _ = exchange(s, c)
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1 for e in server_events)
    assert s.send_window(1) == 50
    s.send_data(1, b"z" * 50)
    s.end_stream(1)
    _, events = exchange(s, c)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"z" * 50
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_and_one_goaway(kind: str) -> None:
    s, c = pair(kind)
    c.send_headers(1, [(b":method", b"GET"), *REQ[1:]], end_stream=True)
    c.send_headers(3, [(b":method", b"GET"), *REQ[1:]], end_stream=False)
    exchange(s, c)
    c.reset_stream(3, 8)
    server_events, _ = exchange(s, c)
    assert [(type(e).__name__, e.stream_id) for e in server_events] == [("StreamReset", 3)]
    s.reset_stream(1, 2)
    s.goaway(0)
    s.goaway(11)  # a second one is not sent
    _, events = exchange(s, c)
    assert [type(e).__name__ for e in events] == ["StreamReset", "ConnectionTerminated"]
    assert events[0].error_code == 2
    assert events[1].error_code == 0 and events[1].last_stream_id == 3


@pytest.mark.parametrize("kind", KINDS)
def test_goaway_code_after_hpack_error(kind: str) -> None:
    s, c = pair(kind)
    with pytest.raises(SessionError):
        s.receive_data(b"\x00\x00\x07\x01\x05\x00\x00\x00\x01" + b"\xff" * 7)
    s.goaway(1)
    events = c.receive_data(s.data_to_send())
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in terminated] == [9]  # COMPRESSION_ERROR, once


def test_nghttp2_keeps_a_request_block_only_past_the_limits() -> None:
    """A block of 1,000 fields is kept to one past max_headers_count (so the codec's
    over_limits still says so), however the peer's HPACK makes it."""
    s, c = pair("nghttp2", count_limit=10)
    extra = [(b"x-%d" % i, b"v") for i in range(1000)]
    c.send_headers(1, [*REQ, *extra], end_stream=True)
    events, _ = exchange(s, c)
    req = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert len(req.headers) == 11


@pytest.mark.parametrize("kind", KINDS)
def test_continuation_flood_is_overflow(kind: str) -> None:
    s, _ = pair(kind)
    enc = hpack.Encoder()
    data = b"\x00\x00\x00\x01\x00\x00\x00\x00\x01"  # HEADERS without END_HEADERS, empty
    for i in range(200):
        block = enc.encode([(b"x-c%d" % i, b"v")])
        data += len(block).to_bytes(3) + b"\x09\x00\x00\x00\x00\x01" + block
    with pytest.raises(SessionError) as e:
        s.receive_data(data)
    assert e.value.overflow


@pytest.mark.parametrize("kind", KINDS)
def test_cookie_fields_are_joined(kind: str) -> None:
    s, c = pair(kind)
    c.send_headers(1, [*REQ, (b"cookie", b"a=1"), (b"x-b", b"c"), (b"cookie", b"b=2")], end_stream=True)
    events, _ = exchange(s, c)
    req = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    block = list(req.headers)
    assert [v for n, v in block if n == b"cookie"] == [b"a=1; b=2"]
    assert (b"x-b", b"c") in block


def test_the_session_follows_the_build() -> None:
    """libnghttp2 exactly when the process runs the compiled build and it holds the binding;
    h2 under PYSIDECAR_PURE=1 (the plain-Python pass of scripts/test.sh covers h2 this way)."""
    chosen = type(new_server_session(60 * 1024, 100)).__name__
    if os.environ.get("PYSIDECAR_PURE", "") not in ("", "0") or native.fresh_build() is None:
        assert chosen == "H2Session" and nghttp2_lib.why().startswith("h2: ")
    else:
        assert chosen == ("NgHttp2Session" if nghttp2_lib.load() is not None else "H2Session")
        assert (chosen == "NgHttp2Session") == (nghttp2_lib.why() == "nghttp2")
