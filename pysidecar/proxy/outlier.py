"""Outlier detection: consecutive-error ejection of a cluster's hosts, Envoy's way, per worker.

What for: a DestinationRule's outlierDetection (Envoy's cluster outlier_detection) takes a
failing host out of load balancing for a while, so requests go to the healthy ones.

Promises:
- Results are HTTP status codes per host; locally originated failures (connect failure,
  connect timeout, reset before the response) are reported as 503, as Envoy does when
  split_external_local_origin_errors is false: they count as 5xx and as gateway errors.
  A non-5xx result resets both counters. Circuit-breaker overflows are never reported.
- Reaching consecutive_5xx (or consecutive_gateway_failure) ejects the host at once, if not
  already ejected, with probability enforcing_*/100, and only while the ejected share of
  hosts is below max_ejection_percent (Envoy: `100 * active / hosts < max`, so one host of two
  can go even at 10 %); refused ejections count `ejections_overflow`. Counters reset after a
  detection.
- The host comes back on the first `sweep()` (the `interval` timer) at least
  min(base_ejection_time x ejections, max_ejection_time) after it left; a host that stays
  healthy for base_ejection_time after coming back has its ejection multiplier lowered by one.
- `lb_hosts` is what the balancer picks from: the non-ejected hosts, or every host in panic
  (healthy share below healthy_panic_threshold; Istio sets 0 with outlierDetection, so
  there is no panic and all-ejected means "no healthy upstream").
- Per worker, like the circuit breakers: Envoy aggregates results across its threads; each
  pysidecar worker process sees only its own requests, so it ejects on its own evidence.
- The clock and the random source are injected; nothing here touches the event loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from pysidecar.model import OutlierDetection
from pysidecar.observe.stats import OutlierDetectionStats

HostKey = tuple[str, int]
H = TypeVar("H")


class HostMonitor:
    """One host's consecutive-error counts and ejection state."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_at", "ejections", "returned_at")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejections = 0  # the backoff multiplier of the ejection time
        self.ejected_at: float | None = None
        self.returned_at: float | None = None


def may_eject(active: int, total: int, max_percent: int) -> bool:
    """Envoy's ejectHost check: the share already ejected must be below the maximum."""
    return total > 0 and 100.0 * active / total < min(max_percent, 100)


def ejection_over(m: HostMonitor, now: float, cfg: OutlierDetection) -> bool:
    assert m.ejected_at is not None
    return now - m.ejected_at >= min(cfg.base_ejection_time * m.ejections, cfg.max_ejection_time)


def lb_hosts(hosts: Sequence[H], healthy: Sequence[H], panic_threshold: float) -> Sequence[H]:
    """The hosts to balance over: the healthy ones, or all of them in panic mode."""
    if hosts and 100.0 * len(healthy) / len(hosts) < panic_threshold:
        return hosts
    return healthy


class OutlierDetector:
    __slots__ = ("clock", "config", "monitors", "on_change", "rng", "stats")

    def __init__(
        self,
        config: OutlierDetection,
        stats: OutlierDetectionStats,
        clock: Callable[[], float],
        on_change: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.clock = clock
        self.on_change = on_change  # the cluster recomputes its balancing set
        self.rng = rng or random.Random()
        self.monitors: dict[HostKey, HostMonitor] = {}

    def set_hosts(self, keys: Iterable[HostKey]) -> None:
        """The cluster's hosts changed (DNS): keep known hosts' state, forget removed ones."""
        old = self.monitors
        self.monitors = {k: old.get(k) or HostMonitor() for k in keys}
        self.stats.ejections_active = sum(1 for m in self.monitors.values() if m.ejected_at is not None)

    def is_ejected(self, key: HostKey) -> bool:
        m = self.monitors.get(key)
        return m is not None and m.ejected_at is not None

    def put_result(self, key: HostKey, status: int) -> None:
        m = self.monitors.get(key)
        if m is None:
            return
        if status < 500:
            m.consecutive_5xx = 0
            m.consecutive_gateway = 0
            return
        cfg = self.config
        if status in (502, 503, 504):
            m.consecutive_gateway += 1
            if m.consecutive_gateway == cfg.consecutive_gateway_failure:
                self.stats.ejections_detected_consecutive_gateway_failure += 1
                self._detected(key, m, cfg.enforcing_consecutive_gateway_failure, gateway=True)
                m.consecutive_gateway = 0
        else:
            m.consecutive_gateway = 0
        m.consecutive_5xx += 1
        if m.consecutive_5xx == cfg.consecutive_5xx:
            self.stats.ejections_detected_consecutive_5xx += 1
            self._detected(key, m, cfg.enforcing_consecutive_5xx, gateway=False)
            m.consecutive_5xx = 0

    def _detected(self, key: HostKey, m: HostMonitor, enforcing: int, gateway: bool) -> None:
        if m.ejected_at is not None:
            return
        stats = self.stats
        if not may_eject(stats.ejections_active, len(self.monitors), self.config.max_ejection_percent):
            stats.ejections_overflow += 1
            return
        if not gateway:
            stats.ejections_total += 1  # Envoy's deprecated counter, 5xx ejections only
        if enforcing < 100 and self.rng.random() * 100 >= enforcing:
            return
        stats.ejections_active += 1
        stats.ejections_enforced_total += 1
        if gateway:
            stats.ejections_enforced_consecutive_gateway_failure += 1
        else:
            stats.ejections_enforced_consecutive_5xx += 1
        m.ejections += 1
        m.ejected_at = self.clock()
        self.on_change()

    def sweep(self) -> None:
        """The interval timer: bring back hosts whose ejection time is over."""
        now = self.clock()
        cfg = self.config
        changed = False
        for m in self.monitors.values():
            if m.ejected_at is None:
                if m.ejections > 0 and m.returned_at is not None and now - m.returned_at >= cfg.base_ejection_time:
                    m.ejections -= 1
                    m.returned_at = now
                continue
            if ejection_over(m, now, cfg):
                m.ejected_at = None
                m.returned_at = now
                # As Envoy: fresh counters, so a host is not re-ejected on one new error.
                m.consecutive_5xx = m.consecutive_gateway = 0
                self.stats.ejections_active -= 1
                changed = True
        if changed:
            self.on_change()
