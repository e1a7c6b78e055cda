"""Envoy's trace decision (ConnectionManagerUtility::mutateTracingRequestHeader), kept in x-request-id.

Promises:
- The reason lives in the UUID's version character (index 14), as Envoy's UUID request-id
  extension keeps it: `4` not traced, `9` sampled, `b` client (x-client-trace-id), `a` forced
  (x-envoy-force-trace). `trace_reason(rid)` reads it; `with_reason(rid, reason)` writes it.
- `decide(rid, tracing, client_trace_id, force_trace, rand)` is Envoy 1.40's order: a request
  already carrying a reason keeps it (the previous hop decided); otherwise client sampling when
  x-client-trace-id is present, forced when x-envoy-force-trace is, else random sampling
  decided on the request id (`int(rid[:8], 16) % 10000 < percent * 100`, Envoy's
  use_request_id_for_trace_sampling, so every hop of one request agrees); overall sampling
  last can take it back. A request id that is not a UUID is left alone and not traced.
- Pure: `rand` supplies the one random draw Envoy makes (client sampling), for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pysidecar.model.http import Tracing

NOT_TRACED: Final = "4"
SAMPLED: Final = "9"
CLIENT: Final = "b"
FORCED: Final = "a"
_REASONS = frozenset((NOT_TRACED, SAMPLED, CLIENT, FORCED))


def _is_uuid(rid: bytes) -> bool:
    return len(rid) == 36 and rid[8:9] == rid[13:14] == rid[18:19] == rid[23:24] == b"-"


def trace_reason(rid: bytes) -> str:
    if not _is_uuid(rid):
        return NOT_TRACED
    reason = chr(rid[14])
    return reason if reason in _REASONS else NOT_TRACED


def with_reason(rid: bytes, reason: str) -> bytes:
    return rid[:14] + reason.encode() + rid[15:]


def _enabled(percent: float, value: int) -> bool:
    """Envoy's featureEnabled over a FractionalPercent of 10000: value % 10000 < percent * 100."""
    return value % 10000 < round(percent * 100)


def decide(
    rid: bytes, tracing: Tracing, client_trace_id: bool, force_trace: bool, rand: Callable[[], int]
) -> tuple[bytes, bool]:
    """The (possibly re-marked) request id and whether the request is traced."""
    if not _is_uuid(rid):
        return rid, False
    try:
        value = int(rid[:8], 16)
    except ValueError:
        return rid, False
    reason = trace_reason(rid)
    if reason == NOT_TRACED:
        if client_trace_id and _enabled(tracing.client_sampling, rand()):
            reason = CLIENT
        elif force_trace:
            reason = FORCED
        elif _enabled(tracing.random_sampling, value):
            reason = SAMPLED
    if not _enabled(tracing.overall_sampling, value):
        reason = NOT_TRACED
    marked = with_reason(rid, reason) if chr(rid[14]) != reason else rid
    return marked, reason != NOT_TRACED
