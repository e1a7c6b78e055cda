"""Fault injection decisions with a seeded random source, and the config round trip."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.node import ConfigError
from pysidecar.model.http import FaultInjection
from pysidecar.proxy.http.filters.fault import fault_abort, fault_delay, percent_hit


def test_percentages() -> None:
    rng = random.Random(7)
    assert all(percent_hit(100.0, rng) for _ in range(100))
    assert not any(percent_hit(0.0, rng) for _ in range(100))
    hits = sum(percent_hit(25.0, random.Random(i)) for i in range(4000))
    assert 800 < hits < 1200


def test_delay_and_abort_draw_separately() -> None:
    f = FaultInjection(delay=1.5, delay_percent=100.0, abort_status=418, abort_percent=100.0)
    rng = random.Random(1)
    assert fault_delay(f, rng) == 1.5 and fault_abort(f, rng) == 418
    assert fault_delay(FaultInjection(abort_status=503), rng) is None
    assert fault_abort(FaultInjection(delay=1.0), rng) is None
    half = FaultInjection(abort_status=500, abort_percent=50.0)
    assert {fault_abort(half, random.Random(s)) for s in range(20)} == {None, 500}


BOOTSTRAP = """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 18080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: c}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: {fixed_delay: 0.5s, percentage: {numerator: 25, denominator: HUNDRED}}
                    abort: {http_status: 418, percentage: {numerator: 5000, denominator: TEN_THOUSAND}}
          http_filters:
          __FILTERS__
  clusters:
  - name: c
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
"""
FAULT_FILTER = """- name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
          """
ROUTER = """- name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"""


def _route_fault(path: str) -> FaultInjection | None:
    b = load_file(path)
    hcm = b.listeners[0].filter_chains[0].filters[0]
    return hcm.route_config.virtual_hosts[0].routes[0].fault  # type: ignore[union-attr]


def test_envoy_yaml_per_route_fault_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "b.yaml"
    p.write_text(BOOTSTRAP.replace("__FILTERS__", FAULT_FILTER + ROUTER))
    f = _route_fault(str(p))
    assert f == FaultInjection(delay=0.5, delay_percent=25.0, abort_status=418, abort_percent=50.0)
    out = tmp_path / "out.yaml"
    out.write_text(yaml.safe_dump(to_envoy(load_file(str(p)))))
    assert _route_fault(str(out)) == f


def test_per_route_fault_needs_the_fault_filter(tmp_path: Path) -> None:
    p = tmp_path / "b.yaml"
    p.write_text(BOOTSTRAP.replace("__FILTERS__", ROUTER))
    with pytest.raises(ConfigError, match=r"fault is not in http_filters"):
        load_file(str(p))
