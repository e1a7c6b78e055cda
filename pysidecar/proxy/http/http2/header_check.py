"""HTTP/2 request header blocks as Envoy 1.40 checks them, as a pure function (h2's own checks
are off: they refuse a host differing from :authority, which Envoy takes).

Promises: `malformed(headers)` names what is wrong with a request header block, or None; the
HTTP/2 codec ends the connection for each of these (GOAWAY PROTOCOL_ERROR), as Envoy does
with `override_stream_error_on_invalid_http_message` false.
"""

from __future__ import annotations

_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
# Connection-specific headers (RFC 9113 8.2.2); `te` is allowed as `trailers` only.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def malformed(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request header block is malformed, or None. Envoy 1.40 (checked) ends the
    connection for each of these: a missing, repeated, unknown or late pseudo-header, an
    empty :path or one not starting with `/` (`*` for OPTIONS), neither :authority nor host,
    an upper-case name, a connection-specific header, `te` other than `trailers`."""
    seen: dict[bytes, bytes] = {}
    regular = False
    host = False
    for n, v in headers:
        if n[:1] == b":":
            if regular:
                return f"pseudo-header {n!r} after a regular header"
            if n not in _PSEUDO:
                return f"unknown pseudo-header {n!r}"
            if n in seen:
                return f"repeated pseudo-header {n!r}"
            seen[n] = v
            continue
        regular = True
        if n != n.lower():
            return f"upper-case header name {n!r}"
        if n in _CONNECTION_SPECIFIC:
            return f"connection-specific header {n!r}"
        if n == b"te" and v.strip().lower() != b"trailers":
            return "te other than trailers"
        if n == b"host":
            host = True
    method = seen.get(b":method")
    if method is None:
        return "no :method"
    if method == b"CONNECT":
        return None if b":authority" in seen and b":path" not in seen else "malformed CONNECT"
    path = seen.get(b":path")
    if path is None or b":scheme" not in seen:
        return "no :path or :scheme"
    if not path.startswith(b"/") and not (path == b"*" and method == b"OPTIONS"):
        return "a :path that is not absolute"
    if b":authority" not in seen and not host:
        return "neither :authority nor host"
    return None
