"""Retry decisions and backoff: Envoy's router retry state as pure functions.

Promises:
- `retriable_reset(policy, reason)` / `retriable_status(policy, status)` answer whether an
  attempt that ended that way may be retried under `retry_on` (Envoy's semantics: `5xx` and
  `gateway-error` and `reset` cover resets, connect failures and per-try timeouts;
  `connect-failure` only connect failures; `retriable-status-codes` the listed codes;
  `retriable-4xx` 409). Whether retries are left is the caller's count against num_retries.
- `backoff(retry, policy, rng)` is Envoy's fully jittered exponential backoff: a uniform draw
  from [0, min((2^retry - 1) * base, max)) seconds, retry counted from 1.
- `other_host(choose, host, tried, attempts)` is the previous_hosts retry predicate: a host
  already tried is picked again up to `attempts` times; the last pick stands.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container
from typing import TypeVar

from pysidecar.model.http import RetryPolicy

H = TypeVar("H")

# Why an attempt ended without a response (Envoy's stream reset reasons we can produce).
CONNECT_FAILURE = "connect_failure"
CONNECT_TIMEOUT = "connect_timeout"
CONNECTION_TERMINATION = "connection_termination"
PER_TRY_TIMEOUT = "per_try_timeout"
# A circuit breaker refused the request (Envoy's Overflow reset reason): never retried.
OVERFLOW = "overflow"
# The upstream's bytes broke the codec (an HTTP/1 parse error, an HTTP/2 connection error):
# Envoy's 502 `protocol error`, flag UPE.
PROTOCOL_ERROR = "protocol_error"

_CONNECT = frozenset({CONNECT_FAILURE, CONNECT_TIMEOUT})


def other_host(
    choose: Callable[[], H | None],
    host: H,
    tried: Container[object],
    attempts: int,
    key: Callable[[H], object] = lambda h: h,
) -> H:
    """Envoy's previous_hosts predicate: pick again (at most `attempts` times) while the pick's
    `key` is among the hosts already tried."""
    for _ in range(attempts):
        if key(host) not in tried:
            break
        again = choose()
        if again is None:
            break
        host = again
    return host


def retriable_reset(policy: RetryPolicy, reason: str) -> bool:
    if reason == OVERFLOW:
        return False  # Envoy never retries a circuit breaker's refusal
    on = policy.retry_on
    if "5xx" in on or "gateway-error" in on or "reset" in on:
        return True
    if reason in _CONNECT and ("connect-failure" in on or "reset-before-request" in on):
        # No request byte left us on a connect failure: "before request" holds (Istio's
        # inbound routes retry on exactly this).
        return True
    # refused-stream is HTTP/2's REFUSED_STREAM: a request the upstream never started. An
    # HTTP/1.1 connect failure is the same situation, and Istio's default policy relies on it.
    return reason in _CONNECT and "refused-stream" in on


def retriable_status(policy: RetryPolicy, status: int) -> bool:
    on = policy.retry_on
    if status >= 500 and "5xx" in on:
        return True
    if status in (502, 503, 504) and "gateway-error" in on:
        return True
    if status == 409 and "retriable-4xx" in on:
        return True
    return "retriable-status-codes" in on and status in policy.retriable_status_codes


def backoff(retry: int, policy: RetryPolicy, rng: random.Random) -> float:
    ceiling = min((2**retry - 1) * policy.base_interval, policy.max_backoff)
    return float(rng.random() * ceiling)
