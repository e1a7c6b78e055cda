"""gRPC rules of the router and connection manager (proxy/http/grpc.py), as measured on Envoy
1.40 (see tests/conformance/test_grpc.py for the same against the binary)."""

from __future__ import annotations

import pytest

from pysidecar.proxy.http import grpc


@pytest.mark.parametrize(
    ("ct", "want"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"Application/GRPC", True),
        (b"application/grpc-web", False),  # Envoy 1.40: a plain 404 to grpc-web without its filter
        (b"application/json", False),
        (None, False),
    ],
)
def test_is_grpc(ct: bytes | None, want: bool) -> None:
    assert grpc.is_grpc(ct) is want


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2), (418, 2)],
)
def test_http_to_grpc_status_is_envoys(status: int, code: int) -> None:
    assert grpc.http_to_grpc_status(status) == code


def test_local_reply_is_trailers_only_in_envoys_order() -> None:
    # Recorded from Envoy 1.40 (route to a refused port, gRPC request):
    # :status 200, content-type, grpc-status 14, grpc-message, date, server.
    body = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    got = grpc.local_reply_headers(503, body, b"D", b"envoy")
    assert got == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
        (b"grpc-message", body), (b"date", b"D"), (b"server", b"envoy"),
    ]  # fmt: skip
    # No route: grpc-status 12 and no grpc-message for the empty body.
    assert grpc.local_reply_headers(404, b"", b"D", b"envoy") == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
        (b"date", b"D"), (b"server", b"envoy"),
    ]  # fmt: skip


def test_grpc_message_percent_encoding() -> None:
    assert grpc.percent_encode(b"plain text: ok") == b"plain text: ok"
    assert grpc.percent_encode(b"100% \xe2\x9c\x93\n") == b"100%25 %E2%9C%93%0A"


def test_retry_on_grpc_conditions() -> None:
    unavailable = [(b":status", b"200"), (b"grpc-status", b"14")]
    assert grpc.retriable_grpc(("unavailable",), unavailable)
    assert not grpc.retriable_grpc(("cancelled", "5xx"), unavailable)
    assert grpc.retriable_grpc(("resource-exhausted",), [(b"grpc-status", b"8")])
    assert not grpc.retriable_grpc(("unavailable",), [(b":status", b"200")])  # no status: not trailers-only


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"100m", 0.1), (b"2S", 2.0), (b"1H", 3600.0), (b"5u", 5e-6), (b"123456789S", None), (b"10x", None), (b"m", None)],
)
def test_grpc_timeout(value: bytes, seconds: float | None) -> None:
    got = grpc.grpc_timeout(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None
