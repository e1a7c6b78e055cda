"""The bench's pure parts: load generators' output parsing and the ratio/median arithmetic."""

from __future__ import annotations

import json
import math

import pytest

from bench.parse import (
    added,
    median,
    parse_h2load_log,
    parse_iperf3,
    parse_proc_stat,
    parse_pss_kb,
    parse_rss_kb,
    parse_strace_c,
    parse_wrk,
    percentile,
    ratio,
    top_frames,
)

WRK = """Running 5s test @ http://127.0.0.1:10080/1k
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.38ms  210.15us   5.02ms   90.12%
    Req/Sec    36.47k     1.02k   38.11k    72.00%
  181473 requests in 5.00s, 220.48MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  36289.61
Transfer/sec:     44.09MB
"""


def test_wrk_report() -> None:
    w = parse_wrk(WRK)
    assert w.requests == 181473
    assert w.seconds == 5.0
    assert w.rps == pytest.approx(36289.61)
    assert w.bytes_per_s == pytest.approx(44.09 * 1024 * 1024)
    assert w.errors == 7


def test_wrk_without_report_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:10080 Connection refused")


def test_iperf3_json_uses_the_receiver() -> None:
    doc = {
        "end": {
            "sum_sent": {"bits_per_second": 9e9},
            "sum_received": {"bits_per_second": 8.5e9, "bytes": 5312500000, "seconds": 5.0},
        }
    }
    r = parse_iperf3(json.dumps(doc))
    assert r.bits_per_s == 8.5e9 and r.bytes == 5312500000 and r.seconds == 5.0
    with pytest.raises(ValueError, match="refused"):
        parse_iperf3(json.dumps({"error": "unable to connect: Connection refused"}))


def test_h2load_log_percentiles_skip_warmup_and_count_errors() -> None:
    start = 1_700_000_000_000_000
    lines = [f"{start}\t200\t50000"]  # a slow first request, inside the warm-up window
    lines += [f"{start + 600_000 + i * 1000}\t200\t{(i + 1) * 10}" for i in range(1000)]
    lines += [f"{start + 700_000}\t-1\t0", f"{start + 700_001}\t503\t100"]
    lat = parse_h2load_log("\n".join(lines) + "\n", skip_first_us=500_000)
    assert lat.count == 1002 and lat.errors == 2
    assert lat.p50_ms == pytest.approx(5.0)  # 500th of 10..10000 µs
    assert lat.p99_ms == pytest.approx(9.9)
    assert lat.p999_ms == pytest.approx(9.99)
    assert len(lat.samples_ms) == 1000 and lat.samples_ms == tuple(sorted(lat.samples_ms))


def test_percentile_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99.9) == 7.0
    assert math.isnan(percentile([], 50))


def test_proc_stat_with_spaces_and_parens_in_the_name() -> None:
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "0", "0", "150", "25"]
    text = "1234 (python3 (worker) x) " + " ".join(fields) + " 0 0 20 0 1 0\n"
    assert parse_proc_stat(text) == 175.0


def test_rss_from_status() -> None:
    assert parse_rss_kb("Name:\tenvoy\nVmRSS:\t   66120 kB\nRssAnon:\t1 kB\n") == 66120
    assert parse_rss_kb("Name:\tzombie\n") == 0


def test_median_and_ratios_treat_missing_as_missing() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([None, 5.0, math.nan]) == 5.0
    assert median([None]) is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None and ratio(math.nan, 1.0) is None
    assert added(1.5, 1.0) == 0.5
    assert added(0.9, 1.0) == 0.0  # a proxy cannot be faster than the direct path: noise
    assert added(None, 1.0) is None


def test_top_frames_from_collapsed_stacks() -> None:
    raw = (
        "run (uvloop/__init__.py:1);readable (pysidecar/proxy/splice.py:150) 6\n"
        "run (uvloop/__init__.py:1);readable (pysidecar/proxy/splice.py:160);flush (pysidecar/proxy/splice.py:190) 3\n"
        "run (uvloop/__init__.py:1) 1\n"
    )
    top = top_frames(raw, 2)
    assert top[0] == ("readable (splice.py)", 60.0, 90.0)
    assert top[1] == ("flush (splice.py)", 30.0, 30.0)


def test_pss_from_smaps_rollup() -> None:
    text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:   36228 kB\nPss:   22533 kB\nPss_Dirty:  21132 kB\n"
    assert parse_pss_kb(text) == 22533
    assert parse_pss_kb("") == 0


def test_strace_summary_calls_per_syscall() -> None:
    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 61.20    0.412000          51      8000           writev
 30.10    0.202000          25      8000      4000 read
  0.00    0.000000           0         7           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.614000          38     16007      4000 total
"""
    assert parse_strace_c(text) == {"writev": 8000, "read": 8000, "epoll_wait": 7, "total": 16007}
