"""Load balancers and the stats store."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pysidecar.model import WeightedCluster
from pysidecar.observe.stats import StatsStore, merge
from pysidecar.proxy.lb import Host, LeastRequest, Random, RoundRobin
from pysidecar.proxy.tcp_proxy import pick_weighted


def test_round_robin_rotates_and_weights_smoothly() -> None:
    hosts = [Host("a", 1), Host("b", 1), Host("c", 1)]
    rr = RoundRobin()
    assert [rr.choose(hosts).address for _ in range(6)] == list("abcabc")  # type: ignore[union-attr]
    weighted = [Host("a", 1, 3), Host("b", 1, 1)]
    rr = RoundRobin()
    picks = "".join(rr.choose(weighted).address for _ in range(8))  # type: ignore[union-attr]
    assert picks.count("a") == 6 and "aaaa" not in picks


def test_empty_cluster_has_no_host() -> None:
    for lb in (RoundRobin(), Random(), LeastRequest()):
        assert lb.choose([]) is None


def test_least_request_prefers_the_idle_host() -> None:
    busy, idle = Host("busy", 1), Host("idle", 1)
    busy.active = 10
    lb = LeastRequest(random.Random(1))
    assert {lb.choose([busy, idle]).address for _ in range(20)} == {"idle"}  # type: ignore[union-attr]


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5).filter(lambda w: sum(w) > 0))
def test_weighted_pick_never_picks_zero_weight(weights: list[int]) -> None:
    clusters = tuple(WeightedCluster(f"c{i}", w) for i, w in enumerate(weights))
    rng = random.Random(0)
    for _ in range(50):
        name = pick_weighted(clusters, rng)
        assert weights[int(name[1:])] > 0


def test_weighted_pick_follows_weights() -> None:
    clusters = (WeightedCluster("v1", 40), WeightedCluster("v2", 60))
    rng = random.Random(42)
    counts = Counter(pick_weighted(clusters, rng) for _ in range(10000))
    assert 3700 < counts["v1"] < 4300


def test_stats_blocks_snapshot_and_merge() -> None:
    a, b = StatsStore(), StatsStore()
    a.cluster("x").upstream_cx_total += 2
    b.cluster("x").upstream_cx_total += 3
    a.cluster("x").upstream_cx_connect_ms.record(3.0)
    b.cluster("x").upstream_cx_connect_ms.record(700.0)
    merged = merge([a.snapshot(), b.snapshot()])
    assert merged["cluster.x.upstream_cx_total"] == ("counter", 5)
    kind, (_buckets, counts, n, total) = merged["cluster.x.upstream_cx_connect_ms"]  # type: ignore[misc]
    assert kind == "histogram" and n == 2 and total == 703.0 and sum(counts) == 2
    a.reset_counters()
    assert a.snapshot()["cluster.x.upstream_cx_total"] == ("counter", 0)


def test_membership_is_merged_by_max_not_summed() -> None:
    a, b = StatsStore(), StatsStore()
    a.cluster("x").membership_total = 3
    b.cluster("x").membership_total = 3
    a.cluster("x").upstream_cx_active = 1
    b.cluster("x").upstream_cx_active = 2
    merged = merge([a.snapshot(), b.snapshot()])
    assert merged["cluster.x.membership_total"] == ("gauge", 3)
    assert merged["cluster.x.upstream_cx_active"] == ("gauge", 3)
