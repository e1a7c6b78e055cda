"""Listener filters http_inspector and tls_inspector: pure functions over a connection's first bytes.

Promises:
- `inspect_tls(data)` answers NEED_MORE while the bytes could still be the start of a TLS
  ClientHello, None when they cannot be one, else a `TlsHello` with the SNI host name
  (lower-case) and the ALPN protocol list, read from a ClientHello that may span several
  handshake records. A hello longer than MAX_CLIENT_HELLO is `TOO_LARGE` (Envoy's
  client_hello_too_large; the connection continues as not-TLS).
- `inspect_http(data)` answers NEED_MORE while the first request line is incomplete but
  plausible, None when the bytes are not HTTP/1.x or the h2c preface, else the protocol:
  "http/1.0", "http/1.1" or "h2c" (the HTTP/2 prior-knowledge preface).
- `decide(data, tls, http, eof)` combines both as Envoy runs them (TLS first; HTTP only on a
  connection that is not TLS) into the ConnectionInfo fields, or None while more bytes are
  needed and could still change the answer.
- No I/O, no state: the listener glue feeds the bytes read so far and acts on the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

# Envoy's tls_inspector accepts ClientHellos up to 64 KiB; http_inspector reads the first line.
MAX_CLIENT_HELLO: Final = 64 * 1024
MAX_REQUEST_LINE: Final = 8 * 1024
H2C_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

NEED_MORE: Final = "need-more"
TOO_LARGE: Final = "too-large"

# Request methods llhttp knows (Envoy's http_inspector uses the same parser).
_METHODS = (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
    b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"BIND", b"REBIND", b"UNBIND",
    b"ACL", b"QUERY",
)  # fmt: skip
_REQUEST_LINE = re.compile(rb"^([A-Z-]+) (\S+) HTTP/1\.([01])\r?\n")


@dataclass(frozen=True, slots=True)
class TlsHello:
    server_name: str
    alpn: tuple[str, ...]


TlsAnswer = TlsHello | None | Literal["need-more", "too-large"]
HttpAnswer = Literal["http/1.0", "http/1.1", "h2c", "need-more"] | None


def inspect_tls(data: bytes) -> TlsAnswer:
    if not data:
        return NEED_MORE
    # Record header: type 22 (handshake), version 3.x; then a ClientHello (handshake type 1).
    if data[0] != 0x16:
        return None
    if len(data) >= 2 and data[1] != 0x03:
        return None
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return NEED_MORE
        if data[pos] != 0x16:
            return None
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            return None
        if len(data) < pos + 5 + length:
            return NEED_MORE if pos + 5 + length <= MAX_CLIENT_HELLO + 5 else TOO_LARGE
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if handshake[0] != 0x01:
            return None
        if len(handshake) >= 4:
            body_len = int.from_bytes(handshake[1:4], "big")
            if body_len > MAX_CLIENT_HELLO:
                return TOO_LARGE
            if len(handshake) >= 4 + body_len:
                return _parse_client_hello(bytes(handshake[4 : 4 + body_len]))


def _parse_client_hello(body: bytes) -> TlsHello | None:
    try:
        p = 2 + 32  # client_version, random
        p += 1 + body[p]  # session_id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher_suites
        p += 1 + body[p]  # compression_methods
        if p >= len(body):
            return TlsHello("", ())  # no extensions at all
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        p += 2
        sni = ""
        alpn: list[str] = []
        while p + 4 <= end:
            ext_type = int.from_bytes(body[p : p + 2], "big")
            ext_len = int.from_bytes(body[p + 2 : p + 4], "big")
            ext = body[p + 4 : p + 4 + ext_len]
            p += 4 + ext_len
            if ext_type == 0:  # server_name: list of (type, len, name); host_name is type 0
                q = 2
                while q + 3 <= len(ext):
                    kind, n = ext[q], int.from_bytes(ext[q + 1 : q + 3], "big")
                    if kind == 0:
                        sni = ext[q + 3 : q + 3 + n].decode("ascii", "replace").lower()
                        break
                    q += 3 + n
            elif ext_type == 16:  # application_layer_protocol_negotiation
                q = 2
                while q < len(ext):
                    n = ext[q]
                    alpn.append(ext[q + 1 : q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
        return TlsHello(sni, tuple(alpn))
    except IndexError:
        return None


def inspect_http(data: bytes) -> HttpAnswer:
    if not data:
        return NEED_MORE
    if data.startswith(H2C_PREFACE):
        return "h2c"
    if H2C_PREFACE.startswith(data):
        return NEED_MORE
    m = _REQUEST_LINE.match(data)
    if m is not None:
        if m.group(1) not in _METHODS:
            return None
        return "http/1.1" if m.group(3) == b"1" else "http/1.0"
    line_end = data.find(b"\n")
    if line_end != -1 or len(data) > MAX_REQUEST_LINE:
        return None
    # Incomplete first line: plausible while it starts with (a prefix of) a known method.
    first = data.split(b" ", 1)
    method = first[0]
    if len(first) == 1:
        return NEED_MORE if any(m.startswith(method) for m in _METHODS) else None
    if method not in _METHODS:
        return None
    return NEED_MORE


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the listener filters concluded; `http`/`tls` say what each one found, for stats."""

    transport_protocol: str = "raw_buffer"
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()
    tls: TlsAnswer = None
    http: HttpAnswer = None


def decide(data: bytes, tls: bool, http: bool, eof: bool = False) -> Inspection | None:
    """Run the configured inspectors over `data`; None means "read more first"."""
    tls_answer: TlsAnswer = None
    if tls:
        tls_answer = inspect_tls(data)
        if tls_answer == NEED_MORE and not eof:
            return None
        if isinstance(tls_answer, TlsHello):
            return Inspection("tls", tls_answer.server_name, tls_answer.alpn, tls_answer, None)
        if tls_answer == NEED_MORE:
            tls_answer = None
    http_answer: HttpAnswer = None
    if http:
        http_answer = inspect_http(data)
        if http_answer == NEED_MORE:
            if not eof:
                return None
            http_answer = None
    protocols: tuple[str, ...] = (http_answer,) if http_answer is not None else ()
    return Inspection("raw_buffer", "", protocols, tls_answer, http_answer)
