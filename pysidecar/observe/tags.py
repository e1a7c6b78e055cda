"""Istio's tag extraction: an Envoy stat name becomes a Prometheus metric name plus labels.

Promises:
- `extract(stat_name)` is a pure function: `cluster.outbound|80||httpbin.org;.upstream_rq_200`
  → (`envoy_cluster_upstream_rq`, (("response_code", "200"), ("cluster_name",
  "outbound|80||httpbin.org"))). No I/O, cached (stat names repeat on every scrape).
- The rules are Istio's bootstrap `stats_tags` (label names `cluster_name`, `tcp_prefix`,
  `response_code`, `response_code_class`, `http_conn_manager_prefix`, `listener_address`) with
  the `;` delimiter Istio's alt_stat_name adds; a name without the delimiter falls back to
  Envoy's default extractor for that family (`source/common/config/well_known_names.cc`), so
  `cluster.PassthroughCluster.upstream_cx_total` still gets `cluster_name="PassthroughCluster"`,
  except for clusters, where Istio's bootstrap regex keeps a `.svc.cluster.local` host whole.
- Istio's own metrics carry their labels in the name, `key=.=value;.;` pairs before the metric
  (`reporter=.=source;.;...;.;istio_requests_total`); they come out as labels in that order.
- Application order is Envoy's: extractors without a name prefix (response code, Istio pairs)
  first, then the one for the name's first token; so labels read `response_code`, then
  `cluster_name`, as Envoy prints them. Extracting a tag removes its first regex group from the
  name; the value is the last group.
- The Prometheus name is `envoy_` + the rest with every character outside [a-zA-Z0-9_] turned
  into `_` (no `_total` appended); names starting with `istio_` keep no prefix (Istio registers
  `istio` as a custom stat namespace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

Labels = tuple[tuple[str, str], ...]

# `[:digit:]` in Envoy's (std::regex) patterns is `\d` here.
_ADDRESS = r"(?:[_.\d]*|[_\[\]aAbBcCdDeEfF\d]*)"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_ISTIO_PAIR = re.compile(r"(\w+)=\.=(.*?);\.;")


@dataclass(frozen=True, slots=True)
class TagRule:
    """One extractor: `regex` group 1 is cut from the name, the last group is the value.
    `first_token` limits it to names in one family (Envoy's prefix optimisation)."""

    tag: str
    regex: re.Pattern[str]
    first_token: str | None = None


def _rule(tag: str, pattern: str, first_token: str | None = None) -> TagRule:
    return TagRule(tag, re.compile(pattern), first_token)


# Without a first token: tried on every name, before the family rules.
_ANY_NAME: tuple[TagRule, ...] = (
    _rule("response_code", r"_rq(_(\d{3}))$"),
    _rule("response_code_class", r"_rq(_(\dxx))$"),
)

# Per family; for each tag the `;`-delimited form (Istio) is tried before Envoy's default.
_BY_FAMILY: tuple[TagRule, ...] = (
    _rule("cluster_name", r"^cluster\.((.+?);\.)", "cluster"),
    # Istio's bootstrap regex, not Envoy's: a Kubernetes host (`...svc.cluster.local`) stays
    # whole in the label, so `outbound|80||web.ns.svc.cluster.local` is one cluster_name.
    _rule("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)", "cluster"),
    _rule("tcp_prefix", r"^tcp\.((.+?);\.)", "tcp"),
    _rule("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$", "tcp"),
    _rule("http_conn_manager_listener_prefix", r"^listener(?=\.).*?\.http\.((.+?);\.)", "listener"),
    _rule("http_conn_manager_listener_prefix", r"^listener(?=\.).*?\.http\.((.*?)\.)", "listener"),
    _rule("http_conn_manager_prefix", r"^http\.((.+?);\.)", "http"),
    _rule("http_conn_manager_prefix", r"^http\.((.*?)\.)", "http"),
    _rule("listener_address", rf"^listener\.(({_ADDRESS})\.)", "listener"),
)


def _apply(rule: TagRule, name: str) -> tuple[str, str] | None:
    """(name without the tag, value), or None when the rule does not match."""
    m = rule.regex.search(name)
    if m is None:
        return None
    start, end = m.span(1)
    return name[:start] + name[end:], m.group(2 if rule.regex.groups >= 2 else 1)


def prometheus_name(name: str) -> str:
    clean = _UNSAFE.sub("_", name)
    return clean if clean.startswith("istio_") else "envoy_" + clean


@lru_cache(maxsize=65536)
def extract(stat_name: str) -> tuple[str, Labels]:
    """Envoy stat name → (Prometheus metric name, labels in Envoy's order)."""
    name = stat_name
    labels: list[tuple[str, str]] = []
    if "=.=" in name:
        labels.extend((m.group(1), m.group(2)) for m in _ISTIO_PAIR.finditer(name))
        name = _ISTIO_PAIR.sub("", name)
    for rule in _ANY_NAME:
        hit = _apply(rule, name)
        if hit is not None:
            name, value = hit
            labels.append((rule.tag, value))
    first = name.split(".", 1)[0]
    done: set[str] = set()
    for rule in _BY_FAMILY:
        if rule.first_token != first or rule.tag in done:
            continue
        hit = _apply(rule, name)
        if hit is not None:
            name, value = hit
            labels.append((rule.tag, value))
            done.add(rule.tag)
    return prometheus_name(name), tuple(labels)
