"""`access_log` on tcp_proxy and the HTTP connection manager: parsed, checked, exported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.node import ConfigError
from pysidecar.model import AccessLogConfig, TcpProxy

CONFIG = """
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 7000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: front
          cluster: up
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: /tmp/tcp.log
              log_format:
                text_format_source: {inline_string: "%UPSTREAM_HOST% %BYTES_SENT%\\n"}
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                json_format: {code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%"}
  clusters:
  - name: up
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
"""


def _load(tmp_path: Path, text: str) -> object:
    p = tmp_path / "envoy.yaml"
    p.write_text(textwrap.dedent(text))
    return load_file(str(p))


def test_file_and_stdout_loggers_are_parsed(tmp_path: Path) -> None:
    b = _load(tmp_path, CONFIG)
    tcp = b.listeners[0].filter_chains[0].filters[0]  # type: ignore[attr-defined]
    assert isinstance(tcp, TcpProxy)
    assert tcp.access_log == (
        AccessLogConfig("/tmp/tcp.log", "TEXT", "%UPSTREAM_HOST% %BYTES_SENT%\n"),
        AccessLogConfig("/dev/stdout", "JSON", '{"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%"}'),
    )


def test_export_round_trips(tmp_path: Path) -> None:
    b = _load(tmp_path, CONFIG)
    again = _load(tmp_path, yaml.safe_dump(to_envoy(b)))  # type: ignore[arg-type]
    assert again.listeners[0].filter_chains[0].filters[0].access_log[0] == b.listeners[0].filter_chains[0].filters[0].access_log[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("%BYTES_SENT%", "%BYTES_SNET%", "BYTES_SNET"),
        ("- name: envoy.access_loggers.file\n", "- name: envoy.access_loggers.file\n            filter: {}\n", "filters are not supported"),
        ("file.v3.FileAccessLog", "grpc.v3.HttpGrpcAccessLogConfig", "unsupported access logger"),
    ],
)
def test_bad_access_logs_are_refused_with_the_path(tmp_path: Path, old: str, new: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, CONFIG.replace(old, new, 1))
    assert words in str(err.value)
    assert "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[0]" in err.value.path
