"""Pure parts of the bench: reading load generators' output and the ratio/median arithmetic.

Promises:
- No I/O, no processes: every function takes text or numbers and returns numbers, so the
  unit tests (tests/unit/test_bench_parse.py) pin them without running anything.
- `parse_wrk` reads wrk's plain report (requests, req/s, bytes/s, errors); `parse_iperf3`
  reads `iperf3 -J`; `parse_h2load_log` reads h2load's `--log-file` (start µs, status,
  latency µs per request); `parse_proc_stat` reads the CPU ticks out of /proc/<pid>/stat.
- `median` of nothing is None, and every ratio involving None or a zero denominator is None:
  a missing measurement never turns into a number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}
_BYTE_UNITS = {"B": 1.0, "KB": 1024.0, "MB": 1024.0**2, "GB": 1024.0**3, "TB": 1024.0**4}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    bytes_per_s: float
    errors: int  # socket errors (connect/read/write/timeout) plus non-2xx/3xx responses


def _scaled(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """wrk's report: `N requests in 5.00s, ...`, `Requests/sec: ...`, `Transfer/sec: ...`."""
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", text)
    if m is None:
        raise ValueError("no 'N requests in T' line in wrk output")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = float(rps_m.group(1)) if rps_m else (requests / seconds if seconds else 0.0)
    tr = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", text)
    bps = float(tr.group(1)) * _BYTE_UNITS[tr.group(2)] if tr else 0.0
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors += sum(int(g) for g in se.groups())
    nx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if nx:
        errors += int(nx.group(1))
    return WrkResult(requests, seconds, rps, bps, errors)


def parse_h2load(text: str) -> WrkResult:
    """h2load's summary: `finished in 2.00s, 12345.67 req/s, 15.2MB/s` and `requests: N total,
    N started, N done, S succeeded, F failed, E errored, T timeout`."""
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", text)
    r = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", text)
    if m is None or r is None:
        raise ValueError("no 'finished in' / 'requests:' lines in h2load output")
    seconds = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    bps = float(m.group(4)) * _BYTE_UNITS[m.group(5)]
    total, done, ok = int(r.group(1)), int(r.group(2)), int(r.group(3))
    return WrkResult(done, seconds, float(m.group(3)), bps, total - ok)


@dataclass(frozen=True, slots=True)
class IperfResult:
    bits_per_s: float  # as received by the server
    bytes: int
    seconds: float


def parse_iperf3(text: str) -> IperfResult:
    """`iperf3 -J`: the receiver's side of end.sum_received (what actually got through)."""
    doc = json.loads(text)
    if "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    rx = doc["end"]["sum_received"]
    return IperfResult(float(rx["bits_per_second"]), int(rx["bytes"]), float(rx["seconds"]))


@dataclass(frozen=True, slots=True)
class LatencyResult:
    count: int
    errors: int  # requests whose status was not 2xx (h2load logs -1 for a failed request)
    p50_ms: float
    p99_ms: float
    p999_ms: float
    samples_ms: tuple[float, ...]  # every successful request's latency, sorted (for the plot)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    # The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) from skipping a rank.
    rank = math.ceil(q * len(sorted_values) / 100.0 - 1e-9)
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def parse_h2load_log(text: str, skip_first_us: int = 0) -> LatencyResult:
    """h2load `--log-file`: `start_us<TAB>status<TAB>latency_us` per request.

    Requests that started within `skip_first_us` of the first one are a warm-up (connection
    set-up lands in them) and are left out.
    """
    rows: list[tuple[int, int, int]] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if rows and skip_first_us:
        first = min(r[0] for r in rows)
        rows = [r for r in rows if r[0] - first >= skip_first_us]
    ok = sorted(r[2] / 1000.0 for r in rows if 200 <= r[1] < 300)
    return LatencyResult(
        count=len(rows),
        errors=len(rows) - len(ok),
        p50_ms=percentile(ok, 50),
        p99_ms=percentile(ok, 99),
        p999_ms=percentile(ok, 99.9),
        samples_ms=tuple(ok),
    )


def parse_proc_stat(text: str) -> float:
    """utime + stime, in clock ticks, from the text of /proc/<pid>/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return float(int(rest[11]) + int(rest[12]))


def parse_rss_kb(status_text: str) -> int:
    """VmRSS in kB from the text of /proc/<pid>/status (0 for a zombie without one)."""
    m = re.search(r"^VmRSS:\s+(\d+) kB", status_text, re.MULTILINE)
    return int(m.group(1)) if m else 0


def parse_pss_kb(smaps_rollup_text: str) -> int:
    """Pss in kB from the text of /proc/<pid>/smaps_rollup (0 when absent)."""
    m = re.search(r"^Pss:\s+(\d+) kB", smaps_rollup_text, re.MULTILINE)
    return int(m.group(1)) if m else 0


def parse_strace_c(text: str) -> dict[str, int]:
    """`strace -c` summary → {syscall: calls}, with "total"."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] name
        if len(parts) >= 5 and parts[0].replace(".", "", 1).isdigit() and parts[3].isdigit():
            out[parts[-1]] = int(parts[3])
    return out


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are numbers (None and NaN are skipped); None if none are."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def added(value: float | None, baseline: float | None) -> float | None:
    """What a proxy adds over the direct path (latency): value - baseline, never below 0."""
    if value is None or baseline is None:
        return None
    return max(0.0, value - baseline)


def _function(frame: str) -> str:
    """`data_received (pysidecar/proxy/tcp_proxy.py:210)` → `data_received (tcp_proxy.py)`:
    samples of one function aggregate over its lines."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path.rsplit('/', 1)[-1]})" if path else name


def top_frames(collapsed: str, n: int) -> list[tuple[str, float, float]]:
    """From py-spy's raw (collapsed stack) output: the n functions with the most self samples,
    as (function, self %, inclusive %) over all samples."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        for f in set(frames):
            incl_count[f] = incl_count.get(f, 0) + count
    if not total:
        return []
    ranked = sorted(self_count.items(), key=lambda kv: -kv[1])[:n]
    return [(f, 100.0 * c / total, 100.0 * incl_count[f] / total) for f, c in ranked]
