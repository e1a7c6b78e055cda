"""envoy.filters.http.fault: the pure decisions (whether this request is delayed, aborted) and
the filter that applies them.

What for: a route's fault injection (VirtualService `fault`, Envoy's per-route HTTPFault)
applied before the router, as Envoy's fault filter sits before it in the HTTP filter chain.

Promises:
- `FaultFilter.decode_headers` holds a request for a drawn delay (flag DI,
  `fault.delays_injected`), then resumes the chain; a drawn abort answers with the configured
  status and `fault filter abort` (flag FI, `fault.aborts_injected`). A route without a fault
  costs one attribute test.
- `percent_hit(p, rng)` is one draw: true for p % of draws (100 always, 0 never), as Envoy's
  fractional percent evaluation; the percentages are the model's (0..100, any fraction).
- `fault_delay` / `fault_abort` decide separately: the delay first; the abort is drawn only
  once the delay (if any) is over, so both can apply to one request, as in Envoy.
- The abort's local reply is Envoy's: the configured status, body `fault filter abort`,
  response flag FI, details `fault_filter_abort`; a delay marks DI.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pysidecar.model.http import FaultInjection
from pysidecar.observe.stats import FaultStats
from pysidecar.proxy.http.filters.base import PassThroughFilter

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream

ABORT_BODY = b"fault filter abort"
ABORT_DETAILS = "fault_filter_abort"
DELAY_FLAG = "DI"
ABORT_FLAG = "FI"


def percent_hit(percent: float, rng: random.Random) -> bool:
    if percent >= 100.0:
        return True
    return percent > 0.0 and rng.random() * 100.0 < percent


def fault_delay(f: FaultInjection, rng: random.Random) -> float | None:
    """Seconds to hold the request, or None."""
    if f.delay is None or not percent_hit(f.delay_percent, rng):
        return None
    return f.delay


def fault_abort(f: FaultInjection, rng: random.Random) -> int | None:
    """The status to answer with instead of routing, or None."""
    if f.abort_status is None or not percent_hit(f.abort_percent, rng):
        return None
    return f.abort_status


class FaultFilter(PassThroughFilter):
    """The chain's fault filter: the route's fault, drawn per request."""

    __slots__ = ()

    def decode_headers(self, stream: ActiveStream) -> bool:
        route = stream.route
        fault = route.route.fault if route is not None else None
        if fault is None:
            return True
        conn = stream.conn
        rng = conn.worker.rng
        delay = fault_delay(fault, rng)
        if delay is not None:
            _stats(stream).delays_injected += 1
            stream.info.response_flags.append(DELAY_FLAG)
            stream.filter_timer = conn.loop.call_later(delay, _delay_over, stream, fault)
            return False
        return _abort(stream, fault)


def _abort(stream: ActiveStream, fault: FaultInjection) -> bool:
    status = fault_abort(fault, stream.conn.worker.rng)
    if status is None:
        return True
    _stats(stream).aborts_injected += 1
    stream.local_reply(status, ABORT_BODY, (ABORT_FLAG,), ABORT_DETAILS)
    return False


def _delay_over(stream: ActiveStream, fault: FaultInjection) -> None:
    """The delay is over: the abort is drawn now, then the rest of the chain runs."""
    stream.filter_timer = None
    if stream.response_done:
        return
    if _abort(stream, fault):
        stream.continue_decoding()


def _stats(stream: ActiveStream) -> FaultStats:
    conn = stream.conn
    return conn.worker.stats.block(FaultStats, conn.stats.scope + "fault.")
