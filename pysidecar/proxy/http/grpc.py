"""gRPC as Envoy's router and connection manager see it: pure functions over headers.

Promises (each checked against Envoy 1.40, tests/conformance/test_grpc.py):
- `is_grpc(content_type)`: `application/grpc` or `application/grpc+<codec>` (not grpc-web:
  Envoy answers grpc-web requests with plain HTTP local replies without the grpc_web filter).
- `http_to_grpc_status(status)`: Envoy's Grpc::Utility::httpToGrpcStatus: 400 INTERNAL,
  401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE,
  anything else UNKNOWN.
- `local_reply_headers(grpc_status, body, date, server)`: a local reply to a gRPC request is a
  trailers-only response: `:status 200` (the caller sends the head with END_STREAM),
  `content-type: application/grpc`, `grpc-status`, `grpc-message` (the body, percent-encoded
  as gRPC wants; absent for an empty body), then `date` and `server`: Envoy's order.
- `grpc_status(headers)`: the `grpc-status` of a header block (a trailers-only response) or
  None; `retriable_grpc(retry_on, headers)`: whether a retry_on list's gRPC conditions
  (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable) match it.
- `grpc_timeout(value)`: the `grpc-timeout` header in seconds (None when malformed).
"""

from __future__ import annotations

from collections.abc import Collection

Headers = list[tuple[bytes, bytes]]

# google.rpc.Code values Envoy maps to and retries on.
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 8, 12, 13, 14, 16

_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}  # fmt: skip

# Envoy's retry_on gRPC conditions (router/retry_state_impl.cc), by the status they match.
RETRY_ON_GRPC = {
    "cancelled": CANCELLED,
    "deadline-exceeded": DEADLINE_EXCEEDED,
    "internal": INTERNAL,
    "resource-exhausted": RESOURCE_EXHAUSTED,
    "unavailable": UNAVAILABLE,
}

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    ct = content_type.lower()
    return ct == b"application/grpc" or ct.startswith(b"application/grpc+") or ct.startswith(b"application/grpc;")


def http_to_grpc_status(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def percent_encode(message: bytes) -> bytes:
    """gRPC's grpc-message encoding: bytes outside printable ASCII, and '%', as %XX."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in message):
        return message
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message)


def local_reply_headers(grpc_status: int, body: bytes, date: bytes, server: bytes) -> Headers:
    out: Headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % grpc_status),
    ]
    if body:
        out.append((b"grpc-message", percent_encode(body)))
    out += [(b"date", date), (b"server", server)]
    return out


def grpc_status(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else None
    return None


def retriable_grpc(retry_on: Collection[str], headers: Headers) -> bool:
    status = grpc_status(headers)
    return status is not None and any(RETRY_ON_GRPC.get(on) == status for on in retry_on)


def stream_duration(max_stream_duration: float, header_max: float | None, timeout_header: bytes | None) -> float:
    """The stream's duration limit (0: none), as Envoy's router derives it: the route's
    max_stream_duration, replaced for a gRPC request by its grpc-timeout when the route sets
    grpc_timeout_header_max (capped by it when it is above 0)."""
    limit = max_stream_duration
    if header_max is not None and timeout_header is not None:
        t = grpc_timeout(timeout_header)
        if t is not None and t > 0:
            limit = min(t, header_max) if header_max > 0 else t
    return limit


def grpc_timeout(value: bytes) -> float | None:
    """`grpc-timeout: 100m` → 0.1: at most 8 digits and a unit (H M S m u n)."""
    digits, unit = value[:-1], value[-1:]
    if not digits or len(digits) > 8 or not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]
