"""HTTP/2 header rules for what the proxy sends upstream (RFC 9113 section 8.2), as pure functions.

Promises:
- `request_block(method, scheme, target, headers)` is a valid HTTP/2 request header block:
  pseudo-headers first (`:method`, `:scheme`, `:authority` from `host`, `:path`), names
  lower-case, and none of the connection-specific headers HTTP/2 forbids (`connection`,
  `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`, `host`), `te` only as
  `trailers`, as Envoy's HTTP/2 codec sends it. What a downstream HTTP/2 codec refuses is
  therefore never produced upstream.
- `response_status(headers)` reads `:status` (None when missing or not three digits);
  `strip_pseudo(headers)` leaves the regular headers.
- `trailer_block(headers)` drops pseudo-headers and connection-specific names from trailers.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

# RFC 9113 8.2.2: these make an HTTP/2 message malformed.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


def request_block(method: bytes, scheme: bytes, target: bytes, headers: Headers) -> Headers:
    authority = b""
    rest: Headers = []
    for name, value in headers:
        n = name.lower()
        if n == b"host":
            authority = value
        elif n == b"te":
            if value.lower() == b"trailers":
                rest.append((n, b"trailers"))
        elif n not in CONNECTION_SPECIFIC:
            rest.append((n, value))
    block: Headers = [(b":method", method), (b":scheme", scheme)]
    if authority:
        block.append((b":authority", authority))
    block.append((b":path", target))
    block.extend(rest)
    return block


def response_status(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b":status":
            return int(value) if len(value) == 3 and value.isdigit() else None
    return None


def strip_pseudo(headers: Headers) -> Headers:
    return [(n, v) for n, v in headers if not n.startswith(b":")]


def trailer_block(headers: Headers) -> Headers:
    return [(n.lower(), v) for n, v in headers if not n.startswith(b":") and n.lower() not in CONNECTION_SPECIFIC]
