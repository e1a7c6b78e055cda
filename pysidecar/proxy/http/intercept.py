"""The stream's rare branches, kept out of `stream.py`'s hot path: fault injection, redirects,
and the circuit breaker's say on retries.

What for: `ActiveStream.start()` checks one precomputed flag (`CompiledRoute.intercepts`) and
only then calls `intercept`; `_retry` calls `retry_admitted` once per request that retries.
Requests on routes without faults or redirects pay one attribute test and nothing else.

Promises:
- `intercept` runs Envoy's fault filter (before the router): a drawn delay holds the request
  (flag DI, `fault.delays_injected`) and runs `start` again afterwards; then a drawn abort
  answers with the configured status and `fault filter abort` (flag FI,
  `fault.aborts_injected`). Then the router's redirect: the route's status (301 by default),
  `location` from `router.redirect_location`, empty body, details `direct_response`,
  `rq_direct_response` counted, as Envoy's router does for a redirect route.
- `retry_admitted` holds one of the cluster's max_retries slots for the rest of the request
  (released in `_finish`), or refuses: upstream_rq_retry_overflow and flag UO, as Envoy's
  RetryStatus::NoOverflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.observe.stats import FaultStats
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.fault import (
    ABORT_BODY,
    ABORT_DETAILS,
    ABORT_FLAG,
    DELAY_FLAG,
    fault_abort,
    fault_delay,
)
from pysidecar.proxy.http.headers import APPEND, get
from pysidecar.proxy.http.router import CompiledRoute, redirect_location

if TYPE_CHECKING:
    from pysidecar.proxy.http.stream import ActiveStream

# Envoy's header on a circuit breaker's 503 (after the route's response headers).
OVERLOADED = (APPEND, b"x-envoy-overloaded", b"true")


def _fault_stats(stream: ActiveStream) -> FaultStats:
    conn = stream.conn
    return conn.worker.stats.block(FaultStats, conn.stats.scope + "fault.")


def intercept(stream: ActiveStream, route: CompiledRoute, host: str, path: str, fault_done: bool) -> bool:
    """True when the request was taken over (delayed, aborted, redirected)."""
    conn = stream.conn
    fault = route.route.fault
    if fault is not None:
        rng = conn.worker.rng
        if not fault_done:
            delay = fault_delay(fault, rng)
            if delay is not None:
                _fault_stats(stream).delays_injected += 1
                stream.info.response_flags.append(DELAY_FLAG)
                # retry_timer: the handle drop_upstream and _finish already cancel.
                stream.retry_timer = conn.loop.call_later(delay, _delay_over, stream)
                return True
        status = fault_abort(fault, rng)
        if status is not None:
            _fault_stats(stream).aborts_injected += 1
            stream._local(status, ABORT_BODY, ABORT_FLAG, ABORT_DETAILS)
            return True
    redirect = route.route.redirect
    if redirect is not None:
        conn.stats.rq_direct_response += 1
        proto = get(stream.headers, b"x-forwarded-proto")
        scheme = (proto if proto is not None else conn.scheme).decode("latin-1").lower()
        location = redirect_location(redirect, host, path, scheme, route.rewrite_path(path))
        stream.response_ops = (*stream.response_ops, (APPEND, b"location", location.encode("latin-1")))
        stream._local(redirect.response_code, b"", None, "direct_response")
        return True
    return False


def _delay_over(stream: ActiveStream) -> None:
    stream.retry_timer = None
    if stream.response_done:
        return
    stream.start(True)
    # The route timeout runs from the end of the request as the router sees it: after the delay.
    if stream.request_done:
        stream.arm_route_timer()


def retry_admitted(stream: ActiveStream) -> bool:
    cluster = stream.cluster
    assert cluster is not None and stream.rq_stats is not None
    breaker = cluster.breaker
    if not breaker.can_retry():
        stream.rq_stats.upstream_rq_retry_overflow += 1
        stream.info.response_flags.append(lr.UO)
        return False
    breaker.retries += 1
    return True
