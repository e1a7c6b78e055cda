"""Outlier detection with an injected clock: consecutive 5xx / gateway ejection, the ejection
percentage cap, timed return on the sweep, panic mode, and the cluster's balancing set."""

from __future__ import annotations

from pysidecar.model import (
    Cluster,
    ClusterType,
    LbEndpoint,
    LbPolicy,
    OutlierDetection,
    SocketAddress,
)
from pysidecar.observe.stats import OutlierDetectionStats, StatsStore
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.outlier import OutlierDetector, lb_hosts, may_eject

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _detector(cfg: OutlierDetection, hosts: tuple[tuple[str, int], ...] = (A, B)) -> tuple[OutlierDetector, Clock, list[int]]:
    clock = Clock()
    changes: list[int] = []
    od = OutlierDetector(cfg, OutlierDetectionStats("cluster.c.outlier_detection."), clock, lambda: changes.append(1))
    od.set_hosts(hosts)
    return od, clock, changes


def test_consecutive_5xx_ejects_and_a_success_resets_the_count() -> None:
    od, _, changes = _detector(OutlierDetection(consecutive_5xx=2, max_ejection_percent=100))
    od.put_result(B, 500)
    od.put_result(B, 200)
    od.put_result(B, 500)
    assert not od.is_ejected(B)
    od.put_result(B, 500)
    assert od.is_ejected(B) and changes == [1]
    s = od.stats
    assert (s.ejections_active, s.ejections_enforced_total, s.ejections_enforced_consecutive_5xx) == (1, 1, 1)
    assert s.ejections_detected_consecutive_5xx == 1


def test_gateway_errors_are_counted_but_enforced_only_when_configured() -> None:
    od, _, _ = _detector(OutlierDetection(consecutive_5xx=100, consecutive_gateway_failure=2, max_ejection_percent=100))
    od.put_result(A, 503)
    od.put_result(A, 502)
    assert not od.is_ejected(A)  # Envoy's default enforcing_consecutive_gateway_failure is 0
    assert od.stats.ejections_detected_consecutive_gateway_failure == 1
    od2, _, _ = _detector(
        OutlierDetection(consecutive_5xx=100, consecutive_gateway_failure=2, enforcing_consecutive_gateway_failure=100, max_ejection_percent=100)
    )
    od2.put_result(A, 503)  # a connect failure is reported as 503: a gateway error
    od2.put_result(A, 504)
    assert od2.is_ejected(A) and od2.stats.ejections_enforced_consecutive_gateway_failure == 1


def test_max_ejection_percent_is_envoys_strictly_below_check() -> None:
    # 0 of 2 ejected is 0 % < 10 %: one host can go even at the default 10 %; a second cannot.
    assert may_eject(0, 2, 10) and not may_eject(1, 2, 10) and may_eject(1, 2, 100)
    od, _, _ = _detector(OutlierDetection(consecutive_5xx=1))
    od.put_result(A, 500)
    od.put_result(B, 500)
    assert od.is_ejected(A) and not od.is_ejected(B)
    assert od.stats.ejections_overflow == 1


def test_ejection_lasts_base_time_times_ejections_and_ends_on_the_sweep() -> None:
    od, clock, _ = _detector(OutlierDetection(consecutive_5xx=1, base_ejection_time=30, max_ejection_percent=100))
    od.put_result(A, 500)
    clock.now += 29.9
    od.sweep()
    assert od.is_ejected(A)
    clock.now += 0.1
    od.sweep()
    assert not od.is_ejected(A) and od.stats.ejections_active == 0
    od.put_result(A, 500)  # second ejection: twice as long
    clock.now += 59
    od.sweep()
    assert od.is_ejected(A)
    clock.now += 1
    od.sweep()
    assert not od.is_ejected(A)
    # Healthy for a base time: the multiplier comes down one step.
    clock.now += 30
    od.sweep()
    assert od.monitors[A].ejections == 1


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    od, clock, _ = _detector(OutlierDetection(consecutive_5xx=1, base_ejection_time=30, max_ejection_time=40, max_ejection_percent=100))
    od.monitors[A].ejections = 5
    od.put_result(A, 500)
    clock.now += 40
    od.sweep()
    assert not od.is_ejected(A)


def test_panic_mode_uses_every_host_below_the_threshold() -> None:
    hosts, healthy = [1, 2, 3, 4], [1]
    assert lb_hosts(hosts, healthy, 50.0) == hosts  # 25 % healthy < 50 %: panic
    assert lb_hosts(hosts, [1, 2], 50.0) == [1, 2]  # 50 % is not below 50 %
    assert lb_hosts(hosts, [], 0.0) == []  # Istio's 0: no panic, no healthy upstream


def test_the_cluster_balances_over_non_ejected_hosts() -> None:
    store = StatsStore()
    cfg = Cluster(
        "c",
        ClusterType.STATIC,
        lb_policy=LbPolicy.ROUND_ROBIN,
        endpoints=tuple(LbEndpoint(SocketAddress(*h)) for h in (A, B, C)),
        outlier_detection=OutlierDetection(consecutive_5xx=1, max_ejection_percent=100),
        healthy_panic_threshold=0.0,
    )
    rt = ClusterRuntime(cfg, store.cluster("c"), store, clock=Clock())
    assert rt.outlier is not None
    rt.outlier.put_result(B, 500)
    picks = {h.key for _ in range(9) if (h := rt.choose_host(None)) is not None}
    assert picks == {A, C}
    assert store.cluster("c").membership_healthy == 2
    assert store.snapshot()["cluster.c.outlier_detection.ejections_active"] == ("gauge", 1)
    rt.outlier.put_result(A, 500)
    rt.outlier.put_result(C, 500)
    assert rt.choose_host(None) is None  # all ejected, panic threshold 0: no healthy upstream


def test_unconfigured_clusters_have_no_detector() -> None:
    store = StatsStore()
    rt = ClusterRuntime(Cluster("c", endpoints=(LbEndpoint(SocketAddress(*A)),)), store.cluster("c"), store)
    assert rt.outlier is None and rt.lb_hosts is rt.hosts
