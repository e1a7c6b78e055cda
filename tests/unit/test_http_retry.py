"""Retry decisions and backoff (Envoy's retry state), as pure functions."""

from __future__ import annotations

import random

from pysidecar.model.http import RetryPolicy
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.retry import (
    CONNECT_FAILURE,
    CONNECTION_TERMINATION,
    PER_TRY_TIMEOUT,
    backoff,
    other_host,
    retriable_reset,
    retriable_status,
)


def test_reset_conditions() -> None:
    assert retriable_reset(RetryPolicy(("5xx",)), CONNECTION_TERMINATION)
    assert retriable_reset(RetryPolicy(("gateway-error",)), PER_TRY_TIMEOUT)
    assert retriable_reset(RetryPolicy(("connect-failure",)), CONNECT_FAILURE)
    assert not retriable_reset(RetryPolicy(("connect-failure",)), CONNECTION_TERMINATION)
    assert retriable_reset(RetryPolicy(("refused-stream",)), CONNECT_FAILURE)
    assert not retriable_reset(RetryPolicy(("retriable-status-codes",)), CONNECT_FAILURE)


def test_status_conditions() -> None:
    assert retriable_status(RetryPolicy(("5xx",)), 500)
    assert not retriable_status(RetryPolicy(("gateway-error",)), 500)
    assert retriable_status(RetryPolicy(("gateway-error",)), 503)
    assert retriable_status(RetryPolicy(("retriable-4xx",)), 409)
    istio = RetryPolicy(
        ("connect-failure", "retriable-status-codes"), 2, retriable_status_codes=(503,)
    )
    assert retriable_status(istio, 503) and not retriable_status(istio, 502)


def test_backoff_is_fully_jittered_and_capped() -> None:
    p = RetryPolicy(("5xx",))
    rng = random.Random(3)
    first = [backoff(1, p, rng) for _ in range(2000)]
    assert min(first) >= 0 and max(first) < 0.025
    later = [backoff(10, p, rng) for _ in range(2000)]
    assert max(later) < 0.25 and max(later) > 0.2
    assert RetryPolicy(("5xx",), base_interval=0.1).max_backoff == 1.0


def test_reset_bodies_and_details() -> None:
    assert lr.reset_body("connect_failure", False) == (
        b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    )
    assert lr.reset_body("connect_failure", True).endswith(
        b"retried and the latest reset reason: remote connection failure"
    )
    assert (
        lr.reset_details("connect_failure", "delayed connect error: 111")
        == "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_111}"
    )


def test_reset_before_request_retries_connect_failures_only() -> None:
    from pysidecar.model.http import RetryPolicy
    from pysidecar.proxy.http.retry import CONNECT_FAILURE, CONNECTION_TERMINATION, retriable_reset

    policy = RetryPolicy(retry_on=("reset-before-request",), num_retries=2)
    assert retriable_reset(policy, CONNECT_FAILURE)
    assert not retriable_reset(policy, CONNECTION_TERMINATION)


def test_previous_hosts_picks_again_while_the_pick_was_tried() -> None:
    picks = iter(["a", "a", "b", "c"])
    assert other_host(lambda: next(picks), "a", ("a",), 5) == "b"
    picks = iter(["a", "a"])
    assert other_host(lambda: next(picks), "a", ("a",), 2) == "a"  # attempts spent: last pick
    assert other_host(lambda: None, "a", ("a",), 5) == "a"
    assert other_host(lambda: "z", "b", ("a",), 5) == "b"  # not tried: no new pick
