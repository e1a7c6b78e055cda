"""gRPC rules of the router and connection manager (proxy/http/grpc.py), as measured on Envoy
1.40 (see tests/conformance/test_grpc.py for the same against the binary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.node import ConfigError
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy.http import grpc


@pytest.mark.parametrize(
    ("ct", "want"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"Application/GRPC", True),
        (b"application/grpc-web", False),  # Envoy 1.40: a plain 404 to grpc-web without its filter
        (b"application/json", False),
        (None, False),
    ],
)
def test_is_grpc(ct: bytes | None, want: bool) -> None:
    assert grpc.is_grpc(ct) is want


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2), (418, 2)],
)
def test_http_to_grpc_status_is_envoys(status: int, code: int) -> None:
    assert grpc.http_to_grpc_status(status) == code


def test_local_reply_is_trailers_only_in_envoys_order() -> None:
    # Recorded from Envoy 1.40 (route to a refused port, gRPC request):
    # :status 200, content-type, grpc-status 14, grpc-message, date, server.
    body = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    got = grpc.local_reply_headers(grpc.http_to_grpc_status(503), body, b"D", b"envoy")
    assert got == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
        (b"grpc-message", body), (b"date", b"D"), (b"server", b"envoy"),
    ]  # fmt: skip
    # No route: grpc-status 12 and no grpc-message for the empty body.
    assert grpc.local_reply_headers(grpc.http_to_grpc_status(404), b"", b"D", b"envoy") == [
        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
        (b"date", b"D"), (b"server", b"envoy"),
    ]  # fmt: skip


def test_grpc_message_percent_encoding() -> None:
    assert grpc.percent_encode(b"plain text: ok") == b"plain text: ok"
    assert grpc.percent_encode(b"100% \xe2\x9c\x93\n") == b"100%25 %E2%9C%93%0A"


def test_retry_on_grpc_conditions() -> None:
    unavailable = [(b":status", b"200"), (b"grpc-status", b"14")]
    assert grpc.retriable_grpc(("unavailable",), unavailable)
    assert not grpc.retriable_grpc(("cancelled", "5xx"), unavailable)
    assert grpc.retriable_grpc(("resource-exhausted",), [(b"grpc-status", b"8")])
    assert not grpc.retriable_grpc(("unavailable",), [(b":status", b"200")])  # no status: not trailers-only


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"100m", 0.1), (b"2S", 2.0), (b"1H", 3600.0), (b"5u", 5e-6), (b"123456789S", None), (b"10x", None), (b"m", None)],
)
def test_grpc_timeout(value: bytes, seconds: float | None) -> None:
    got = grpc.grpc_timeout(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize(
    ("route_max", "header_max", "header", "want"),
    [
        (0.0, None, b"100m", 0.0),  # grpc-timeout unused without grpc_timeout_header_max
        (0.0, 0.0, b"200m", 0.2),  # used, uncapped
        (0.0, 0.3, b"5S", 0.3),  # capped
        (2.0, 0.0, None, 2.0),  # no header: the route's max_stream_duration
        (2.0, 0.0, b"bogus", 2.0),
        (0.0, 0.0, None, 0.0),
    ],
)
def test_stream_duration(route_max: float, header_max: float | None, header: bytes | None, want: float) -> None:
    assert grpc.stream_duration(route_max, header_max, header) == pytest.approx(want)


_ROUTE_DOC = """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: c, ROUTE_EXTRA}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: c
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
"""


def test_route_max_stream_duration_is_read_exported_and_max_grpc_timeout_refused(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text(_ROUTE_DOC.replace("ROUTE_EXTRA", "max_stream_duration: {max_stream_duration: 9s, grpc_timeout_header_max: 0.5s}"))
    b = load_file(str(p))
    (out := tmp_path / "x.yaml").write_text(yaml.safe_dump(to_envoy(b)))
    for boot in (b, load_file(str(out))):
        hcm = boot.listeners[0].filter_chains[0].filters[0]
        assert isinstance(hcm, HttpConnectionManager)
        action = hcm.route_config.virtual_hosts[0].routes[0].route
        assert action is not None and (action.max_stream_duration, action.grpc_timeout_header_max) == (9.0, 0.5)
    p.write_text(_ROUTE_DOC.replace("ROUTE_EXTRA", "max_grpc_timeout: 1s"))
    with pytest.raises(ConfigError) as e:
        load_file(str(p))
    assert e.value.path.endswith("route.max_grpc_timeout") and "grpc_timeout_header_max" in e.value.message
