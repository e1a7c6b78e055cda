"""MeshConfig's access log settings: compiled into every listener's HCM and tcp_proxy
`access_log` (so reloads apply them and the export carries them); a bad format is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pysidecar.config import watch
from pysidecar.config.export import to_envoy
from pysidecar.config.istio.compile import with_access_log
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.config.watch import ConfigWatcher
from pysidecar.model import AccessLogConfig, Bootstrap, NetworkFilter, TcpProxy
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy.worker import Worker
from tests.unit.test_export import assert_envoy_accepts, needs_envoy
from tests.unit.test_reload import _bump


def test_access_log_settings_are_kept(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n")
    mesh = load([str(f)]).mesh
    assert (mesh.access_log_file, mesh.access_log_encoding, mesh.access_log_format) == ("/dev/stdout", "JSON", "")


def test_bad_access_log_format_names_the_field(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text('accessLogFile: /dev/stdout\naccessLogFormat: "%NOT_AN_OPERATOR%"\n')
    with pytest.raises(ConfigError) as err:
        load([str(f)])
    assert err.value.path == "accessLogFormat"
    assert err.value.file == str(f)


SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
"""


def _filters(b: Bootstrap) -> list[NetworkFilter]:
    out: list[NetworkFilter] = []
    for lis in b.listeners:
        chains = [*lis.filter_chains, *([lis.default_filter_chain] if lis.default_filter_chain else [])]
        out += [f for c in chains for f in c.filters]
    return out


def _write(tmp_path: Path, mesh: str) -> str:
    (tmp_path / "mesh.yaml").write_text(mesh)
    (tmp_path / "se.yaml").write_text(SE)
    return str(tmp_path)


def test_mesh_access_log_is_on_every_listener_filter(tmp_path: Path) -> None:
    b = load([_write(tmp_path, "accessLogFile: /tmp/a.log\naccessLogEncoding: JSON\n")])
    want = (AccessLogConfig("/tmp/a.log", "JSON", None),)
    filters = _filters(b)
    assert {type(f) for f in filters} == {TcpProxy, HttpConnectionManager}
    assert all(f.access_log == want for f in filters)
    assert {lis.name for lis in b.listeners} >= {"virtualOutbound", "virtualInbound", "0.0.0.0_80", "0.0.0.0_5432"}


def test_no_mesh_access_log_or_the_flag_wins(tmp_path: Path) -> None:
    assert all(not f.access_log for f in _filters(load([_write(tmp_path, "accessLogFile: ''\n")])))
    path = _write(tmp_path, "accessLogFile: /dev/stdout\n")
    assert all(not f.access_log for f in _filters(load([path], mesh_access_log=False)))


def test_export_carries_the_mesh_access_log(tmp_path: Path) -> None:
    b = load([_write(tmp_path, 'accessLogFile: /dev/stdout\naccessLogFormat: "%RESPONSE_CODE%"\n')])
    ours = {lis.name for lis in b.listeners}  # the export adds the stats and readiness listeners
    for lis in to_envoy(b)["static_resources"]["listeners"]:
        if lis["name"] not in ours:
            continue
        for chain in lis["filter_chains"]:
            logs = chain["filters"][0]["typed_config"]["access_log"]
            assert logs[0]["typed_config"]["path"] == "/dev/stdout"
            assert logs[0]["typed_config"]["log_format"] == {"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_the_mesh_access_log(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    b = load([_write(tmp_path / "cfg", "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n")])
    assert_envoy_accepts(tmp_path, b)


def test_a_reload_turns_the_mesh_access_log_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "SETTLE_TIME", 0.0)
    path = _write(tmp_path, "accessLogFile: ''\n")
    applied: list[Bootstrap] = []

    async def apply(b: Bootstrap) -> None:
        applied.append(b)

    w = ConfigWatcher([path], load([path]), apply)

    async def scenario() -> None:
        (tmp_path / "mesh.yaml").write_text("accessLogFile: /tmp/after.log\n")
        _bump(tmp_path / "mesh.yaml")
        assert await w.check()

    asyncio.run(scenario())
    assert all(f.access_log == (AccessLogConfig("/tmp/after.log"),) for f in _filters(applied[-1]))


def test_a_log_that_cannot_be_opened_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        w = Worker(standard_sidecar(), 0, 0.1)
        good = AccessLogConfig("/dev/null")
        w._open_filter_logs(with_access_log(standard_sidecar(), AccessLogConfig("/nonexistent/dir/a.log")))
        assert w.filter_logs == {}
        w._open_filter_logs(with_access_log(standard_sidecar(), good))
        assert set(w.filter_logs) == {"virtualOutbound", "virtualInbound"}
        await w.drain()

    asyncio.run(scenario())
    assert "access log /nonexistent/dir/a.log cannot be opened" in caplog.text
