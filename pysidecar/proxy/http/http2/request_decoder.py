"""Where an HTTP/2 request header block becomes the request `ActiveStream` knows (the decoding
half of Envoy's Http2::ServerConnectionImpl), as pure functions over the block.

Promises:
- `over_limits(block, cfg)`: more headers than max_headers_count (pseudo-headers count), more
  bytes than max_request_headers_kb (names and values), or an underscore in a name under
  REJECT_REQUEST: Envoy 1.40 (checked) resets that stream and keeps the connection.
- `request_head(block, ended)`: (:method, :path as the URL, the HTTP/1-shaped header list):
  `:authority` (else `host`) becomes the first header, `host`; a `host` the client also sent is
  dropped, as Envoy keeps one authority; a body without content-length (`ended` false) is
  marked chunked, as Envoy's HTTP/1 upstream codec sends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pysidecar.proxy.http.compiled import CompiledHcm
    from pysidecar.proxy.http.headers import Headers


def over_limits(block: Headers, cfg: CompiledHcm) -> bool:
    return (
        len(block) > cfg.header_count_limit
        or sum(len(n) + len(v) for n, v in block) > cfg.header_limit
        or (cfg.underscores == 1 and any(b"_" in n for n, _ in block))
    )


def request_head(block: Headers, ended: bool) -> tuple[bytes, bytes, Headers]:
    method = url = authority = b""
    headers: Headers = []
    host: bytes | None = None
    length = False
    for n, v in block:
        if n[:1] == b":":
            if n == b":method":
                method = v
            elif n == b":path":
                url = v
            elif n == b":authority":
                authority = v
        elif n == b"host":
            host = v
        else:
            if n == b"content-length":
                length = True
            headers.append((n, v))
    authority = authority or host or b""
    if authority:
        headers.insert(0, (b"host", authority))
    if not ended and not length:
        headers.append((b"transfer-encoding", b"chunked"))  # a body without a length
    return method, url, headers
