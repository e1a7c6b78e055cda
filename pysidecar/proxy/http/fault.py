"""envoy.filters.http.fault as pure decisions: whether this request is delayed, aborted.

What for: a route's fault injection (VirtualService `fault`, Envoy's per-route HTTPFault)
applied before the router, as Envoy's fault filter sits before it in the HTTP filter chain.

Promises:
- `percent_hit(p, rng)` is one draw: true for p % of draws (100 always, 0 never), as Envoy's
  fractional percent evaluation; the percentages are the model's (0..100, any fraction).
- `fault_delay` / `fault_abort` decide separately: the delay first; the abort is drawn only
  once the delay (if any) is over, so both can apply to one request, as in Envoy.
- The abort's local reply is Envoy's: the configured status, body `fault filter abort`,
  response flag FI, details `fault_filter_abort`; a delay marks DI.
"""

from __future__ import annotations

import random

from pysidecar.model.http import FaultInjection

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
