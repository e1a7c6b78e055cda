"""Header lists and the operations Envoy performs on them, as pure functions.

Promises:
- A header list is `list[tuple[bytes, bytes]]` with lower-case names, in wire order: what the
  codec hands over and what it writes. HTTP/1 names are case-insensitive and Envoy's HTTP/1
  codec writes them lower-case, so we do too.
- `compile_ops(levels)` flattens header mutations (route, virtual host, route config, most
  specific first, as Envoy applies them) into ready-to-run tuples once per config;
  `apply_ops` runs them: each level removes, then adds with its append_action.
- `strip_request` / `strip_response` drop hop-by-hop headers and the x-envoy-* control
  headers a client must not be able to set.
- `scan_request` / `scan_response` are the data path's versions of those: one pass over the
  list that strips, and notes the few headers the connection manager decides on, so a request
  does not walk its headers once per question (`get` after `get` was a profile hot spot).
- `http_date()` is the IMF-fixdate of the current second, computed at most once per second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate

from pysidecar.model.http import HeaderAppendAction, HeaderMutations, HeaderValueOption

Headers = list[tuple[bytes, bytes]]
# One operation: (op, name, value); op is one of the constants below.
HeaderOp = tuple[int, bytes, bytes]
HeaderOps = tuple[HeaderOp, ...]

REMOVE, APPEND, ADD_IF_ABSENT, OVERWRITE_OR_ADD, OVERWRITE_IF_EXISTS = range(5)
_ACTION = {
    HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD: APPEND,
    HeaderAppendAction.ADD_IF_ABSENT: ADD_IF_ABSENT,
    HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD: OVERWRITE_OR_ADD,
    HeaderAppendAction.OVERWRITE_IF_EXISTS: OVERWRITE_IF_EXISTS,
}

# RFC 9110 §7.6.1 connection-specific headers, never forwarded (upgrade is re-added for
# upgrade requests by the connection manager).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
    }
)
# Envoy's internal control headers: honoured only from trusted callers, which a sidecar's
# application is not; stripped from requests before routing.
ENVOY_CONTROL = frozenset(
    {
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-force-trace",
        b"x-envoy-hedge-on-per-try-timeout",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-internal",
        b"x-envoy-ip-tags",
    }
)
# Envoy's headers a client may send that Envoy overwrites in place when it sets them (and
# otherwise forwards): scan_request keeps and notes them.
ENVOY_SET_IN_PLACE = (b"x-envoy-original-path", b"x-envoy-decorator-operation", b"x-envoy-attempt-count")
# The response headers Envoy computes itself; an upstream's copies are replaced.
RESPONSE_OWN = frozenset({b"x-envoy-upstream-service-time"})


def compile_ops(levels: Iterable[HeaderMutations]) -> tuple[HeaderOps, HeaderOps]:
    req: list[HeaderOp] = []
    resp: list[HeaderOp] = []
    for m in levels:
        req += _level_ops(m.request_headers_to_remove, m.request_headers_to_add)
        resp += _level_ops(m.response_headers_to_remove, m.response_headers_to_add)
    return tuple(req), tuple(resp)


def _level_ops(remove: Iterable[str], add: Iterable[HeaderValueOption]) -> list[HeaderOp]:
    """One level's operations in Envoy's HeaderParser order: removes, then the overwrites,
    then the additions, each group in config order (checked on Envoy 1.40)."""
    ops = [(REMOVE, n.encode("latin-1"), b"") for n in remove]
    adds = [(_ACTION[h.append_action], h.key.encode("latin-1"), h.value.encode("latin-1")) for h in add]
    ops += [o for o in adds if o[0] in _OVERWRITES]
    ops += [o for o in adds if o[0] not in _OVERWRITES]
    return ops


_OVERWRITES = frozenset({OVERWRITE_OR_ADD, OVERWRITE_IF_EXISTS})


def apply_ops(headers: Headers, ops: HeaderOps) -> Headers:
    """Run header operations in order; returns the (possibly new) list."""
    for op, name, value in ops:
        if op == APPEND:
            headers.append((name, value))
            continue
        present = any(n == name for n, _ in headers)
        if op == REMOVE:
            if present:
                headers = [h for h in headers if h[0] != name]
        elif op == ADD_IF_ABSENT:
            if not present:
                headers.append((name, value))
        elif op == OVERWRITE_OR_ADD or (op == OVERWRITE_IF_EXISTS and present):
            # Envoy's setCopy: every copy removed, the new value added at the end (1.40).
            if present:
                headers = [h for h in headers if h[0] != name]
            headers.append((name, value))
    return headers


def replace_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Every `name` header replaced by one `name: value`, at the first one's position."""
    out: Headers = []
    done = False
    for h in headers:
        if h[0] == name:
            if not done:
                out.append((name, value))
                done = True
        else:
            out.append(h)
    if not done:
        out.append((name, value))
    return out


def get(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def strip_request(headers: Headers) -> Headers:
    return [h for h in headers if h[0] not in HOP_BY_HOP and h[0] not in ENVOY_CONTROL]


def strip_response(headers: Headers) -> Headers:
    return [h for h in headers if h[0] not in HOP_BY_HOP and h[0] not in RESPONSE_OWN]


def connection_tokens(headers: Headers) -> set[bytes]:
    """The lower-case tokens of every Connection header (`close`, `keep-alive`, `upgrade`)."""
    out: set[bytes] = set()
    for n, v in headers:
        if n == b"connection":
            out.update(t.strip().lower() for t in v.split(b","))
    return out


# -- one-pass scans for the data path ------------------------------------------------------------
# What a scan does with a header, by name; names not in the table are forwarded untouched
# (the common case costs one dict miss).
_DROP, _NOTE, _NOTE_DROP = 0, 1, 2
# Request headers the connection manager asks about. host is noted and left out: the upstream
# head puts its own host first.
_REQUEST_SCAN: dict[bytes, int] = {n: _DROP for n in HOP_BY_HOP | ENVOY_CONTROL}
_REQUEST_SCAN.update(
    {
        b"user-agent": _NOTE,
        b"x-request-id": _NOTE,
        b"x-forwarded-proto": _NOTE,
        b"content-length": _NOTE,
        b"host": _NOTE_DROP,
        # Kept and noted: the connection manager drops expect (unless proxied) and keeps only
        # `te: trailers` (strip_hop_by_hop_rare).
        b"expect": _NOTE,
        b"te": _NOTE,
        b"connection": _NOTE_DROP,
        **dict.fromkeys(ENVOY_SET_IN_PLACE, _NOTE),
        b"upgrade": _NOTE_DROP,
        b"transfer-encoding": _NOTE_DROP,
    }
)


def scan_request(headers: Headers) -> tuple[Headers, dict[bytes, bytes]]:
    """(forwardable headers without host, {noted name: value}).

    A noted value is the first one sent, except Connection, whose values are joined with ","
    so that its tokens can all be read (`connection_tokens` semantics)."""
    kept: Headers = []
    noted: dict[bytes, bytes] = {}
    scan = _REQUEST_SCAN
    for h in headers:
        what = scan.get(h[0])
        if what is None:
            kept.append(h)
            continue
        if what == _DROP:
            continue
        name = h[0]
        if name not in noted:
            noted[name] = h[1]
        elif name == b"connection":
            noted[name] += b"," + h[1]
        if what == _NOTE:
            kept.append(h)
    return kept, noted


def tokens(value: bytes | None) -> set[bytes]:
    """The lower-case tokens of a comma-separated header value (None: no tokens)."""
    if value is None:
        return set()
    return {t.strip().lower() for t in value.split(b",")}


# Response headers: hop-by-hop and Envoy's own are dropped; server is replaced in place.
# scan_response's flags: which of the noted headers the upstream sent.
HAS_LENGTH, HAS_DATE, HAS_SERVER = 1, 2, 4
_RESPONSE_SCAN: dict[bytes, int] = {n: _DROP for n in HOP_BY_HOP | RESPONSE_OWN}
_RESPONSE_SCAN.update({b"server": _NOTE_DROP, b"content-length": _NOTE, b"date": _NOTE})
# Names whose presence or position `scan_response`'s caller relies on: header operations
# touching one of them take the general (re-scanning) path.
RESPONSE_NOTED = frozenset(_RESPONSE_SCAN)


def scan_response(headers: Headers, server: tuple[bytes, bytes]) -> tuple[Headers, int]:
    """(headers with hop-by-hop and Envoy's own stripped and every `server` replaced by one
    `server` at the first one's place, flags): HAS_LENGTH, HAS_DATE, HAS_SERVER.

    The same result as strip_response then replace_header(server), in one pass."""
    out: Headers = []
    flags = 0
    scan = _RESPONSE_SCAN
    for h in headers:
        what = scan.get(h[0])
        if what is None:
            out.append(h)
        elif what == _NOTE:
            flags |= HAS_LENGTH if h[0] == b"content-length" else HAS_DATE
            out.append(h)
        elif what == _NOTE_DROP and not flags & HAS_SERVER:
            flags |= HAS_SERVER
            out.append(server)
    return out, flags


def touches(ops: HeaderOps, names: frozenset[bytes]) -> bool:
    """Whether any operation names one of `names`."""
    return any(op[1] in names for op in ops)


def set_in_place(up: Headers, noted: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """Envoy's inline header set: the client's copy (kept by the scan) is overwritten in its
    place, else the header goes at the end."""
    if name in noted:
        up[:] = replace_header(up, name, value)
    else:
        up.append((name, value))


def strip_hop_by_hop_rare(up: Headers, nominated: set[bytes], keep_expect: bool) -> Headers:
    """The hop-by-hop cases Envoy handles header by header (rare: a list rebuilt): `te` goes
    on only as `te: trailers`, headers the Connection header nominates are dropped, `expect`
    goes upstream only under proxy_100_continue."""
    drop = set(nominated)
    if not keep_expect:
        drop.add(b"expect")
    out: Headers = []
    for n, v in up:
        if n == b"te":
            if b"trailers" in tokens(v):
                out.append((n, b"trailers"))
        elif n not in drop:
            out.append((n, v))
    return out


def as_dict(headers: Headers) -> dict[str, str]:
    """Header matchers see one value per name; repeated headers join with ',' as in Envoy."""
    out: dict[str, str] = {}
    for n, v in headers:
        name = n.decode("latin-1")
        value = v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


_date_cache: list[object] = [0, b""]


def http_date() -> bytes:
    """The IMF-fixdate of the current second (the Date header), computed at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value
