"""Local replies: the responses the proxy writes itself, byte for byte as Envoy does.

Promises:
- `local_reply(...)` is a whole HTTP/1.1 response in Envoy's header order: status line with
  the standard reason phrase, the route's response headers, `content-length` and
  `content-type: text/plain` when there is a body, the filters' additions, `date`, `server`.
- The bodies and response code details of each case (no route, no healthy upstream, connect
  failure, timeout, ...) are the constants below, copied from Envoy's behaviour.
"""

from __future__ import annotations

from pysidecar.proxy.http.codec import encode_head, http_date
from pysidecar.proxy.http.headers import HeaderOps, apply_ops

# Envoy's local reply bodies.
UPSTREAM_TIMEOUT_BODY = b"upstream request timeout"
NO_HEALTHY_UPSTREAM_BODY = b"no healthy upstream"
STREAM_TIMEOUT_BODY = b"stream timeout"
RESET_BODY_PREFIX = "upstream connect error or disconnect/reset before headers. "

# Response flags (access log spelling).
UH, UF, UO, NR, URX, NC, UT, UC, DPE, DC, LR, SI, UPE, UR = (
    "UH", "UF", "UO", "NR", "URX", "NC", "UT", "UC", "DPE", "DC", "LR", "SI", "UPE", "UR",
)  # fmt: skip

# Envoy's reset reason words, by our reset reason.
RESET_WORDS = {
    "connect_failure": "remote connection failure",
    "connect_timeout": "connection timeout",
    "connection_termination": "connection termination",
    "per_try_timeout": "connection timeout",
    "protocol_error": "protocol error",
    "remote_reset": "remote reset",
    "remote_refused_stream_reset": "remote refused stream reset",
}


def reset_body(reason: str, retried: bool) -> bytes:
    """`upstream connect error or disconnect/reset before headers. reset reason: ...`.

    Envoy 1.40 (the oracle) ends the body at the reset reason; the transport failure reason
    (`delayed connect error: 111`) that older Istio proxies appended stays in the details.
    """
    lead = "retried and the latest reset reason: " if retried else "reset reason: "
    return (RESET_BODY_PREFIX + lead + RESET_WORDS.get(reason, reason)).encode()


def reset_details(reason: str, transport_failure: str | None) -> str:
    """Envoy's %RESPONSE_CODE_DETAILS% for a reset before the response started."""
    words = RESET_WORDS.get(reason, reason).replace(" ", "_")
    if transport_failure:
        return f"upstream_reset_before_response_started{{{words},{transport_failure.replace(' ', '_')}}}"
    return f"upstream_reset_before_response_started{{{words}}}"


def local_reply_headers(
    status: int, body: bytes, server: bytes, route_ops: HeaderOps = (), filter_ops: HeaderOps = ()
) -> list[tuple[bytes, bytes]]:
    """A local reply's headers, any protocol, in Envoy 1.40's order (checked against it): the
    route's response headers, content-length and content-type when there is a body, the HTTP
    filters' additions, date, server."""
    headers: list[tuple[bytes, bytes]] = apply_ops([], route_ops) if route_ops else []
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"content-type", b"text/plain"))
    if filter_ops:
        headers = apply_ops(headers, filter_ops)
    headers.append((b"date", http_date()))
    headers.append((b"server", server))
    return headers


def local_reply(
    status: int,
    body: bytes,
    server: bytes,
    route_ops: HeaderOps = (),
    filter_ops: HeaderOps = (),
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    """A whole HTTP/1.1 local reply: `local_reply_headers`, then `connection: close`, then
    `content-length: 0` for an empty body (for HEAD, Envoy announces an empty body as chunked
    instead)."""
    headers = local_reply_headers(status, body, server, route_ops, filter_ops)
    if close:
        headers.append((b"connection", b"close"))
    if not body:
        headers.append(
            (b"transfer-encoding", b"chunked") if head_only else (b"content-length", b"0")
        )
    head = encode_head(status, headers)
    return head if head_only else head + body
