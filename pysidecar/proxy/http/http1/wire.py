"""HTTP/1.1 wire encoding: status lines, header blocks, chunk framing.

Promises:
- `encode_head` / `encode_request_head` build a whole head in one bytes object (one write).
- Status lines carry Envoy's reason phrase for the code, whatever the upstream sent, as
  Envoy's codec does; unknown codes get "Unknown".
"""

from __future__ import annotations

from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

# Where Envoy's reason phrases (CodeUtility::toString) differ from Python's, measured on
# Envoy 1.40 for every code 200-599 proxied from an upstream.
_ENVOY_PHRASES = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    418: "Unknown",
    451: "Unknown",
    599: "Last Unassigned Server Error Code",
}
_STATUS_LINES: dict[int, bytes] = {}
for _s in HTTPStatus:
    _STATUS_LINES[_s.value] = f"HTTP/1.1 {_s.value} {_s.phrase}\r\n".encode()
for _code, _phrase in _ENVOY_PHRASES.items():
    _STATUS_LINES[_code] = f"HTTP/1.1 {_code} {_phrase}\r\n".encode()

CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} Unknown\r\n".encode()
    return line


def encode_head(status: int, headers: Headers) -> bytes:
    parts = [status_line(status)]
    for n, v in headers:
        parts += (n, b": ", v, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


def encode_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for n, v in headers:
        parts += (n, b": ", v, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for writelines (no copy of the data)."""
    return [b"%x\r\n" % len(data), data, CRLF]
