"""Local replies: the responses the proxy writes itself, byte for byte as Envoy does.

Promises:
- `local_reply(status, body, server, extra)` is a whole HTTP/1.1 response: status line with
  the standard reason phrase, `content-length`, `content-type: text/plain` when there is a
  body, `date`, `server`, then any extra headers (`connection: close`, `x-envoy-overloaded`).
- The bodies and response code details of each case (no route, no healthy upstream, connect
  failure, timeout, ...) are the constants below, copied from Envoy's behaviour.
"""

from __future__ import annotations

from pysidecar.proxy.http.codec import encode_head, http_date

# Envoy's local reply bodies.
UPSTREAM_TIMEOUT_BODY = b"upstream request timeout"
NO_HEALTHY_UPSTREAM_BODY = b"no healthy upstream"
RESET_BODY_PREFIX = "upstream connect error or disconnect/reset before headers. "

# Response flags (access log spelling).
UH, UF, UO, NR, URX, NC, UT, UC, DPE, DC, LR = (
    "UH", "UF", "UO", "NR", "URX", "NC", "UT", "UC", "DPE", "DC", "LR",
)  # fmt: skip

# Envoy's reset reason words, by our reset reason.
RESET_WORDS = {
    "connect_failure": "remote connection failure",
    "connect_timeout": "connection timeout",
    "connection_termination": "connection termination",
    "per_try_timeout": "connection timeout",
}


def reset_body(reason: str, transport_failure: str | None, retried: bool) -> bytes:
    """`upstream connect error or disconnect/reset before headers. reset reason: ...`."""
    words = RESET_WORDS.get(reason, reason)
    text = RESET_BODY_PREFIX + (
        "retried and the latest reset reason: " if retried else "reset reason: "
    )
    text += words
    if transport_failure:
        text += f", transport failure reason: {transport_failure}"
    return text.encode()


def reset_details(reason: str, transport_failure: str | None) -> str:
    """Envoy's %RESPONSE_CODE_DETAILS% for a reset before the response started."""
    words = RESET_WORDS.get(reason, reason).replace(" ", "_")
    if transport_failure:
        return f"upstream_reset_before_response_started{{{words},{transport_failure.replace(' ', '_')}}}"
    return f"upstream_reset_before_response_started{{{words}}}"


def local_reply(
    status: int,
    body: bytes,
    server: bytes,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    head_only: bool = False,
) -> bytes:
    headers: list[tuple[bytes, bytes]] = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"text/plain"))
    headers.append((b"date", http_date()))
    headers.append((b"server", server))
    headers.extend(extra)
    head = encode_head(status, headers)
    return head if head_only else head + body
