"""HTTP/2 header rules for what the proxy sends upstream (RFC 9113 section 8.2), as pure functions.

Promises:
- `request_block(method, scheme, target, headers)` is an HTTP/2 request header block:
  pseudo-headers first (`:method`, `:scheme`, `:authority` from `host`, `:path`), names
  lower-case, and none of the connection-specific headers HTTP/2 forbids (`connection`,
  `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`, `host`), `te` only as
  `trailers`, as Envoy's HTTP/2 codec sends it.
- `request_problem(block)` is the downstream HTTP/2 codec's own check
  (header_validation.h2_request_problem): the upstream codec refuses to send a block it names,
  so what is refused downstream is never produced upstream.
- `response_status(headers)` reads `:status` (None when missing or not three digits);
  `strip_pseudo(headers)` leaves the regular headers.
- `trailer_block(headers)` drops pseudo-headers and connection-specific names from trailers.
"""

from __future__ import annotations

from pysidecar.proxy.http.header_validation import CONNECTION_SPECIFIC as _HOP
from pysidecar.proxy.http.header_validation import Headers
from pysidecar.proxy.http.header_validation import h2_request_problem as request_problem

__all__ = ["CONNECTION_SPECIFIC", "Headers", "request_block", "request_problem", "response_status"]

# RFC 9113 8.2.2's connection-specific headers, and `host` (sent as :authority).
CONNECTION_SPECIFIC = _HOP | {b"host"}


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
