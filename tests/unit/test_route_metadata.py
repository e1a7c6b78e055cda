"""A route compiled from a VirtualService remembers it: istioctl's VIRTUAL SERVICE column."""

from __future__ import annotations

from pathlib import Path

import yaml

from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.observe import proxy_config_tables as t
from pysidecar.observe.config_dump import config_dump
from tests.unit.test_istio_routes import SE, compile_docs

VS = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route:
    - destination: {host: httpbin.org}
"""


def test_virtual_service_column_names_the_resource(tmp_path: Path) -> None:
    b = compile_docs(tmp_path, SE, VS)
    rows = t.route_rows(config_dump(b, 0.0), name="80")
    assert ("80", "httpbin.org:80", "httpbin.org + 1 more...", "/*", "httpbin-ext.default") in rows
    assert any(r[1] in ("allow_any", "block_all") and r[4] == "" for r in rows)


def test_route_metadata_survives_export_and_reload(tmp_path: Path) -> None:
    b = compile_docs(tmp_path, SE, VS)
    exported = tmp_path / "out" / "envoy.yaml"
    exported.parent.mkdir()
    exported.write_text(yaml.safe_dump(to_envoy(b)))
    again = load([str(exported)])
    rows = t.route_rows(config_dump(again, 0.0), name="80")
    assert any(r[4] == "httpbin-ext.default" for r in rows)
