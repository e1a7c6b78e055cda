"""Prometheus text exposition of a merged stats snapshot, shaped like Envoy's /stats/prometheus.

Promises:
- `SnapshotCollector(snapshot)` is a prometheus-client Collector: one `Metric` family per
  Prometheus name (after Istio's tag extraction, `observe.tags`), counters typed `counter`,
  gauges `gauge`, histograms `histogram` with cumulative `_bucket{le=...}`, `_sum`, `_count`.
- `render(snapshot)` writes those families in the Prometheus text format 0.0.4 the way Envoy
  does: `# TYPE` lines, braces even around no labels (`envoy_http_inspector_http11_found{} 3`),
  no `_total` added to counters (prometheus-client's own writer would add
  it and sort labels), labels in extraction order, integers without a decimal point.
  The output parses with prometheus-client's parser and `promtool check metrics`.
- A Prometheus name reached by stats of two different kinds keeps the first kind; the others
  are left out rather than making the exposition invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client import utils
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pysidecar.observe.stats import HistogramState, Kind
from pysidecar.observe.tags import extract

Snapshot = Mapping[str, tuple[Kind, object]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Go's float spelling (`+Inf`, `1e+06`), which Prometheus' own tools print; untyped upstream.
floatToGoString = cast(Callable[[float], str], utils.floatToGoString)


def _bound(bound: float) -> str:
    """A bucket bound as Envoy prints it: `0.5`, `1`, `600000`, `3.6e+06`."""
    text = floatToGoString(float(bound))
    return text[:-2] if text.endswith(".0") else text


def _histogram_samples(metric: Metric, labels: dict[str, str], state: HistogramState) -> None:
    bounds, counts, n, total = state
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        metric.add_sample(metric.name + "_bucket", {**labels, "le": _bound(bound)}, running)
    metric.add_sample(metric.name + "_bucket", {**labels, "le": "+Inf"}, n)
    metric.add_sample(metric.name + "_sum", labels, total)
    metric.add_sample(metric.name + "_count", labels, n)


class SnapshotCollector(Collector):
    """The merged snapshot as prometheus-client metric families, sorted by name."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for stat in sorted(self.snapshot):
            kind, value = self.snapshot[stat]
            name, tags = extract(stat)
            metric = families.get(name)
            if metric is None:
                metric = families[name] = Metric(name, "", kind)
            elif metric.type != kind:
                continue
            labels = dict(tags)
            if kind == "histogram":
                _histogram_samples(metric, labels, cast(HistogramState, value))
            else:
                metric.add_sample(name, labels, cast(float, value))
        for name in sorted(families):
            yield families[name]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return floatToGoString(value)


def render(snapshot: Snapshot) -> str:
    out: list[str] = []
    for metric in SnapshotCollector(snapshot).collect():
        out.append(f"# TYPE {metric.name} {metric.type}\n")
        for s in metric.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
            out.append(f"{s.name}{{{labels}}} {_number(s.value)}\n")
    return "".join(out)
