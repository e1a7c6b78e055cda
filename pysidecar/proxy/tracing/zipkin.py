"""Envoy's zipkin tracer: B3 context in, a span per request, B3 headers out, Zipkin v2 JSON.

Promises:
- `extract(headers)` reads the B3 multi-header context (x-b3-traceid 16 or 32 hex digits,
  x-b3-spanid, x-b3-parentspanid, x-b3-sampled `1`/`0`/`true`/`false`, x-b3-flags `1` =
  sampled) or the single `b3` header (`traceid-spanid[-sampled[-parentspanid]]`); malformed
  ids mean no context, as Envoy treats them (a new root span).
- `start_span(...)` is Tracer::startSpan: with no context a root span whose span id is also
  the low 64 bits of its trace id (plus 64 random high bits when trace_id_128bit), as seed 000
  shows (`X-B3-Traceid: bc397a11008e6de989d9ab0cf76ad263`, `X-B3-Spanid: 89d9ab0cf76ad263`);
  with a context, egress (outbound listeners) makes a CLIENT span that is the context's child,
  ingress a SERVER span that is its child too, or shares its id with shared_span_context.
  Sampled is the context's `x-b3-sampled` when given, else the connection manager's decision.
- `inject(span)` are the headers the router sends upstream: x-b3-traceid, x-b3-spanid,
  x-b3-parentspanid (when the span has a parent), x-b3-sampled `1` / `0`.
- `to_json(span, tags)` is Envoy's HTTP_JSON (v2) serialisation of one finished span:
  traceId, parentId, id, kind, name, timestamp and duration (µs), the closing annotation
  (`cr` / `ss`), localEndpoint (serviceName, ipv4, port 0), tags;
  `"shared": true` on a SERVER span sharing its client's id.
- Pure over the random source given: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[bytes, bytes]]
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class SpanContext:
    trace_id_high: int
    trace_id: int
    span_id: int
    parent_id: int
    sampled: bool | None
    trace_id_128: bool


@dataclass(slots=True)
class Span:
    name: str
    kind: str  # CLIENT (egress) | SERVER (ingress)
    trace_id_high: int
    trace_id: int
    span_id: int
    parent_id: int
    sampled: bool
    start_us: int
    trace_id_128: bool
    shared: bool = False
    duration_us: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id_high:016x}{self.trace_id:016x}" if self.trace_id_128 else f"{self.trace_id:016x}"


def _hex_id(value: bytes | None, sizes: tuple[int, ...] = (16,)) -> int | None:
    if value is None or len(value) not in sizes or not set(value) <= _HEX:
        return None
    return int(value, 16)


def _sampled(value: bytes | None) -> bool | None:
    if value is None:
        return None
    v = value.lower()
    if v in (b"1", b"true", b"d"):
        return True
    if v in (b"0", b"false"):
        return False
    return None


def extract(headers: Headers) -> SpanContext | bool | None:
    """The B3 context; None when there is none; a bare bool when only a sampling flag is given."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name.startswith(b"x-b3-") or name == b"b3":
            found.setdefault(name, value)
    if not found:
        return None
    if (single := found.get(b"b3")) is not None:
        parts = single.split(b"-")
        if len(parts) == 1:
            sampled = _sampled(parts[0])
            return sampled if sampled is not None else None
        trace, span = parts[0], parts[1]
        sampled = _sampled(parts[2]) if len(parts) > 2 else None
        parent = _hex_id(parts[3]) if len(parts) > 3 else 0
        return _context(trace, span, parent or 0, sampled)
    sampled = _sampled(found.get(b"x-b3-sampled"))
    if found.get(b"x-b3-flags") == b"1":
        sampled = True
    trace_b, span_b = found.get(b"x-b3-traceid"), found.get(b"x-b3-spanid")
    if trace_b is None or span_b is None:
        return sampled
    parent_b = found.get(b"x-b3-parentspanid")
    parent = _hex_id(parent_b) if parent_b is not None else 0
    if parent is None:
        return None
    return _context(trace_b, span_b, parent, sampled)


def _context(trace: bytes, span: bytes, parent: int, sampled: bool | None) -> SpanContext | None:
    trace_id = _hex_id(trace, (16, 32))
    span_id = _hex_id(span)
    if trace_id is None or span_id is None:
        return None
    wide = len(trace) == 32
    return SpanContext(trace_id >> 64 if wide else 0, trace_id & (2**64 - 1), span_id, parent, sampled, wide)


def start_span(
    name: str, egress: bool, context: SpanContext | bool | None, decision: bool, now_us: int,
    trace_id_128bit: bool, shared_span_context: bool, rand64: Callable[[], int],
) -> Span:  # fmt: skip
    kind = "CLIENT" if egress else "SERVER"
    if isinstance(context, SpanContext):
        sampled = context.sampled if context.sampled is not None else decision
        if not egress and shared_span_context:
            return Span(name, kind, context.trace_id_high, context.trace_id, context.span_id, context.parent_id,
                        sampled, now_us, context.trace_id_128, shared=True)  # fmt: skip
        return Span(name, kind, context.trace_id_high, context.trace_id, rand64(), context.span_id, sampled, now_us,
                    context.trace_id_128)  # fmt: skip
    sampled = context if isinstance(context, bool) else decision
    span_id = rand64()
    high = rand64() if trace_id_128bit else 0
    return Span(name, kind, high, span_id, span_id, 0, sampled, now_us, trace_id_128bit)


def inject(span: Span) -> Headers:
    out: Headers = [
        (b"x-b3-traceid", span.trace_id_hex.encode()),
        (b"x-b3-spanid", b"%016x" % span.span_id),
    ]
    if span.parent_id:
        out.append((b"x-b3-parentspanid", b"%016x" % span.parent_id))
    out.append((b"x-b3-sampled", b"1" if span.sampled else b"0"))
    return out


def to_json(span: Span, service_name: str, ipv4: str) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id_hex}
    if span.parent_id:
        out["parentId"] = f"{span.parent_id:016x}"
    out["id"] = f"{span.span_id:016x}"
    out["kind"] = span.kind
    out["name"] = span.name
    out["timestamp"] = span.start_us
    out["duration"] = span.duration_us
    # Envoy keeps the span's closing annotation (cr / ss) at its end.
    out["annotations"] = [{"timestamp": span.start_us + span.duration_us, "value": "cr" if span.kind == "CLIENT" else "ss"}]
    endpoint: dict[str, Any] = {"serviceName": service_name}
    if ipv4:
        endpoint["ipv4"] = ipv4
    endpoint["port"] = 0
    out["localEndpoint"] = endpoint
    if span.shared:
        out["shared"] = True
    if span.tags:
        out["tags"] = dict(span.tags)
    return out
