"""Header field validation shared by every codec: what may enter the proxy and what may leave it.

One module, so that the HTTP/2 downstream codec, the HTTP/1 downstream codec and the HTTP/1
upstream encoder apply the same rules (RFC 9110 §5.1/§5.5, RFC 9113 §8.2.1 and §8.3.1, and
the character classes nghttp2 / Envoy check):

- A field name is a token (tchar+); HTTP/2 names are lower-case besides.
- A field value holds no NUL, CR, LF nor any other control character but HTAB (obs-text, the
  bytes 0x80-0xff, is allowed as RFC 9110 §5.5 allows it).
- `:method` is a token; `:scheme` is ALPHA *(ALPHA / DIGIT / "+" / "-" / ".");
  `:path` is printable ASCII or obs-text without spaces, starting with `/` (or `*` for
  OPTIONS); `:authority` and Host are reg-name / IP-literal characters and an optional port.

Promises:
- Pure functions over bytes: nothing here keeps state or logs.
- `h2_request_problem(headers)` says why an HTTP/2 request header block is malformed (then the
  codec ends the connection as Envoy does), or None.
- `h1_request_problem(...)` is what an HTTP/1 head llhttp accepted still fails (a version
  other than 1.x, `*` for a method other than OPTIONS, a Host with bad characters), with
  Envoy's status and details; `hcm_path_reply(path)` the connection manager's own refusals
  (a fragment, `*`) for every codec.
- `upstream_head_problem(...)` is the last line of defence of the HTTP/1 upstream encoder:
  nothing that could frame a second request (CR, LF, NUL, a non-token name or method, a space in
  the target) is ever written into an upstream head, whatever filter or bug produced it.
"""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §5.6.2 tchar.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TCHAR_LOWER = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# A value's forbidden bytes: every control but HTAB, and DEL (nghttp2's VALID_HD_VALUE_CHARS).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# :path: VCHAR and obs-text; no space, no control (nghttp2_check_path).
_BAD_PATH = re.compile(rb"[\x00-\x20\x7f]")
# :authority / Host: RFC 3986 reg-name (unreserved, pct-encoded, sub-delims), IP-literal
# brackets, ':' for the port and '@' for userinfo (Envoy's HCM check, HTTP/1 Host: checked on
# 1.40). HTTP/2's codec is stricter, without '@' (nghttp2_check_authority; checked on 1.40).
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:@\[\]]*\Z")
_AUTHORITY_H2 = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*\Z")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*\Z")

_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
# Connection-specific headers (RFC 9113 §8.2.2); `te` is allowed as `trailers` only.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def is_token(value: bytes) -> bool:
    """RFC 9110 token: one or more tchar."""
    return bool(value) and not value.translate(None, _TCHAR)


def name_problem(name: bytes, lower_only: bool) -> str | None:
    """Why a field name is invalid (not a token; upper-case where `lower_only`), or None."""
    if not name:
        return "an empty header name"
    if name.translate(None, _TCHAR_LOWER if lower_only else _TCHAR):
        if lower_only and not name.lower().translate(None, _TCHAR_LOWER):
            return f"upper-case header name {name!r}"
        return f"invalid character in header name {name!r}"
    return None


def value_ok(value: bytes) -> bool:
    return _BAD_VALUE.search(value) is None


def path_problem(path: bytes, method: bytes) -> str | None:
    """Why a request target (origin-form, or `*` for OPTIONS) is invalid, or None."""
    if not path:
        return "an empty :path"
    if _BAD_PATH.search(path) is not None:
        return "invalid character in :path"
    if path[:1] == b"/" or (path == b"*" and method == b"OPTIONS"):
        return None
    return "a :path that is not absolute"


def authority_problem(value: bytes, h2: bool = False) -> str | None:
    """Why an :authority / Host value is invalid, or None (RFC 3986 authority characters;
    `h2`: the HTTP/2 codec's stricter set, without userinfo)."""
    if not value:
        return "an empty authority"
    if (_AUTHORITY_H2 if h2 else _AUTHORITY).match(value) is None:
        return "invalid character in authority"
    return None


# HTTP/1 versions the codec serves; any other parsed version is Envoy's 426.
_H1_VERSIONS = frozenset({"1.0", "1.1"})


def h1_request_problem(method: bytes, url: bytes, version: str, headers: Headers) -> tuple[int, str] | None:
    """(status, Envoy's response code details) for an HTTP/1 request head llhttp parsed but
    Envoy 1.40 refuses (each checked on it), or None; the connection closes after the reply:
    - a version other than 1.0 / 1.1 (`HTTP/2.0`): 426 `low_version`;
    - `*` as the target of a method other than OPTIONS: 400 `http1.invalid_url`;
    - a Host (or absolute-form authority) outside the authority characters: 400
      `http.invalid_authority` (llhttp itself refuses CR, LF, NUL and controls)."""
    if version not in _H1_VERSIONS:
        return 426, "low_version"
    if url == b"*" and method != b"OPTIONS":
        return 400, "http1.invalid_url"
    for n, v in headers:
        if n == b"host" and v and _AUTHORITY.match(v) is None:
            return 400, "http.invalid_authority"
    if url[:7].lower() == b"http://":
        authority = url[7:].split(b"/", 1)[0]
        if authority and _AUTHORITY.match(authority) is None:
            return 400, "http.invalid_authority"
    return None


def hcm_path_reply(path: bytes) -> tuple[int, str] | None:
    """The connection manager's own answer to a request target, whatever the codec (Envoy 1.40,
    checked on HTTP/1 and HTTP/2): a fragment is 400 `path_normalization_failed` (Envoy's
    path_with_fragment handling rejects it), `*` (OPTIONS) is 404 `absolute_path_rejected`."""
    if b"#" in path:
        return 400, "path_normalization_failed"
    if path == b"*":
        return 404, "absolute_path_rejected"
    return None


def h2_request_problem(headers: Headers) -> str | None:
    """Why an HTTP/2 request header block is malformed (RFC 9113 §8.2 and §8.3.1), or None.

    Envoy 1.40 (checked) ends the connection for each of these: a missing, repeated, unknown or
    late pseudo-header; a name that is not a lower-case token; a value with NUL, CR, LF or another
    control byte; an invalid :method, :scheme, :path or :authority; neither :authority nor host;
    a connection-specific header; `te` other than `trailers`."""
    seen: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for n, v in headers:
        if _BAD_VALUE.search(v) is not None:
            return f"invalid character in the value of {n!r}"
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
        problem = name_problem(n, lower_only=True)
        if problem is not None:
            return problem
        if n in CONNECTION_SPECIFIC:
            return f"connection-specific header {n!r}"
        if n == b"te" and v.strip().lower() != b"trailers":
            return "te other than trailers"
        if n == b"host":
            host = v
    method = seen.get(b":method")
    if method is None:
        return "no :method"
    if not is_token(method):
        return "invalid :method"
    authority = seen.get(b":authority")
    for value in (authority, host):
        if value is not None and authority_problem(value, h2=True) is not None:
            return "invalid :authority or host"
    if method == b"CONNECT":
        return None if authority is not None and b":path" not in seen else "malformed CONNECT"
    path = seen.get(b":path")
    scheme = seen.get(b":scheme")
    if path is None or scheme is None:
        return "no :path or :scheme"
    if _SCHEME.match(scheme) is None:
        return "invalid :scheme"
    problem = path_problem(path, method)
    if problem is not None:
        return problem
    if authority is None and host is None:
        return "neither :authority nor host"
    return None


def upstream_head_problem(method: bytes, target: bytes, headers: Headers, head: bytes) -> str | None:
    """Why an encoded HTTP/1 request head must not be written, or None.

    `head` is `encode_request_head(method, target, headers)`: it is sound when its only CR and
    LF are the line ends of its len(headers) + 2 lines, it holds no NUL, the method is a token,
    the target has no space or control, and every name is a token (so no `:` inside a name
    moves the line's split). Counting bytes of the whole head keeps this to a few C-level scans."""
    lines = len(headers) + 2
    if head.count(b"\r\n") != lines or head.count(b"\n") != lines or head.count(b"\r") != lines:
        return "CR or LF in the request head"
    if b"\x00" in head:
        return "NUL in the request head"
    if not is_token(method):
        return "invalid method"
    if _BAD_PATH.search(target) is not None:
        return "invalid request target"
    if b"".join(n for n, _ in headers).translate(None, _TCHAR) or any(not n for n, _ in headers):
        return "invalid header name"
    if _BAD_VALUE.search(b"".join(v for _, v in headers)) is not None:
        return "invalid header value"
    return None
