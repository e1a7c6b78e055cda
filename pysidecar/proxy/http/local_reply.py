"""Local replies: the responses the proxy writes itself, and which one each case gets, as Envoy
1.40 answers them.

Promises:
- The table: each case's status, response flags, body and response code details
  (`LocalReply`, frozen), from the constants below (no route → 404 NR, no healthy upstream →
  503 UH, missing host → 400, ...), and the pure functions that pick the dynamic ones: a reset
  before the response (`reset_reply`: 503 UF / UC / UO, URX once retries ran out), the route
  timeout (504 UT), the stream idle timeout (504 / 408), a missing cluster, a direct response.
- `local_reply_head(body, route_ops)` is the start of a local reply's headers in Envoy's
  order: the route's response headers, then `content-length` and `content-type: text/plain`
  when there is a body. The stream adds the encoder filters' additions, date and server
  (`ActiveStream.local_reply_headers`), the codec its framing (`http1.response_encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pysidecar.proxy.http.headers import HeaderOps, Headers, apply_ops

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
_CONNECT_REASONS = ("connect_failure", "connect_timeout")
_OVERFLOW = "overflow"  # retry.OVERFLOW: a circuit breaker refused the request
_PROTOCOL_ERROR = "protocol_error"  # retry.PROTOCOL_ERROR: the upstream's bytes broke the codec
_REMOTE_RESETS = ("remote_reset", "remote_refused_stream_reset")  # an HTTP/2 upstream's RST_STREAM


@dataclass(frozen=True, slots=True)
class LocalReply:
    """One local reply: what the client gets and what the access log says."""

    status: int
    body: bytes = b""
    flags: tuple[str, ...] = ()
    details: str = ""
    grpc_status: int | None = None  # to a gRPC request, instead of the status's mapping


# The fixed cases.
MISSING_HOST = LocalReply(400, b"", (), "missing_host_header")
NO_ROUTE = LocalReply(404, b"", (NR,), "route_not_found")
UPGRADE_FAILED = LocalReply(403, b"", (), "upgrade_failed")
NO_HEALTHY_UPSTREAM = LocalReply(503, NO_HEALTHY_UPSTREAM_BODY, (UH,), "no_healthy_upstream")
# require_tls ALL and a redirect route: the status and the location are the route's.
REDIRECT_DETAILS = "direct_response"
TLS_REDIRECT = LocalReply(301, b"", (), REDIRECT_DETAILS)
ROUTE_TIMEOUT = LocalReply(504, UPSTREAM_TIMEOUT_BODY, (), "response_timeout")
# The stream's max duration (route max_stream_duration, or grpc-timeout under
# grpc_timeout_header_max): Envoy's 408 DT, DEADLINE_EXCEEDED to gRPC (checked on 1.40).
DURATION_TIMEOUT = LocalReply(408, b"downstream duration timeout", ("DT",), "max_duration_timeout", 4)
INTERNAL_ERROR = LocalReply(500, b"Internal Server Error", (), "internal_error")
# A filter buffering a request body past the buffer limit (Envoy's decoder buffer overflow).
PAYLOAD_TOO_LARGE = LocalReply(413, b"Payload Too Large", (), "request_payload_too_large")


def cluster_not_found(status: int) -> LocalReply:
    """The route's cluster is unknown: its cluster_not_found_response_code (503 by default)."""
    return LocalReply(status, b"", (NC,), "cluster_not_found")


def direct_response(status: int, body: bytes) -> LocalReply:
    return LocalReply(status, body, (), "direct_response")


def redirect(status: int) -> LocalReply:
    return LocalReply(status, b"", (), REDIRECT_DETAILS)


def invalid_upstream_request(problem: str) -> LocalReply:
    """The upstream codec refused to write the request head (header_validation): 503."""
    return LocalReply(503, b"", (), "invalid_upstream_request{" + problem.replace(" ", "_") + "}")


def stream_idle_reply(request_done: bool) -> LocalReply:
    """The stream idle timeout before a response: 504 once the request is in, 408 while it is
    still arriving (the SI flag is the stream's, whatever the ending)."""
    return LocalReply(504 if request_done else 408, STREAM_TIMEOUT_BODY, (), "stream_idle_timeout")


def reset_reply(reason: str, failure: str | None, retriable: bool, retried: bool) -> LocalReply:
    """An attempt ended without a response and is not retried: 503 with Envoy's body. Flags:
    UO for a circuit breaker's refusal, UF for a connect failure or timeout, UR for a stream the
    upstream reset, UC otherwise;
    URX when it was retriable and retries ran out. A protocol error is Envoy's 502 UPE."""
    status = 503
    if reason == _OVERFLOW:
        flags: tuple[str, ...] = (UO,)
    elif reason == _PROTOCOL_ERROR:
        flags, status = (UPE,), 502
    else:
        flags = (UF,) if reason in _CONNECT_REASONS else (reset_flag(reason),)
    if retriable and retried:
        flags = (*flags, URX)
    return LocalReply(status, reset_body(reason, retried), flags, reset_details(reason, failure))


def reset_flag(reason: str) -> str:
    """UR for a stream the upstream reset (HTTP/2 RST_STREAM, REFUSED_STREAM), UPE for a
    protocol error (a short body, a bad chunk size: checked on 1.40), UC for a connection that
    ended (Envoy 1.40's UpstreamRemoteReset / UpstreamProtocolError / UpstreamConnectionTermination)."""
    if reason == _PROTOCOL_ERROR:
        return UPE
    return UR if reason in _REMOTE_RESETS else UC


def after_start_details(reason: str) -> str:
    """%RESPONSE_CODE_DETAILS% of a reset once the response started (checked on 1.40)."""
    words = RESET_WORDS.get(reason, reason).replace(" ", "_")
    return f"upstream_reset_after_response_started{{{words}}}"


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


def local_reply_head(body: bytes, route_ops: HeaderOps = ()) -> Headers:
    """A local reply's first headers, any protocol, in Envoy 1.40's order (checked against it):
    the route's response headers, content-length and content-type when there is a body."""
    headers: Headers = apply_ops([], route_ops) if route_ops else []
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"content-type", b"text/plain"))
    return headers
