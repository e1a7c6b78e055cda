"""ConfigWatcher: a change is compiled and applied; a bad one is refused, counted and kept for
the admin while the old config keeps serving. Driven by `check()`, no timing assertions."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pysidecar.config import watch
from pysidecar.config.loader import load
from pysidecar.config.watch import ConfigWatcher
from pysidecar.model import Bootstrap

SE = """
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "SETTLE_TIME", 0.0)


def _bump(path: Path) -> None:
    """Make a rewrite visible even within one mtime tick."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _watcher(tmp_path: Path, applied: list[Bootstrap]) -> ConfigWatcher:
    async def apply(b: Bootstrap) -> None:
        applied.append(b)

    return ConfigWatcher([str(tmp_path)], load([str(tmp_path)]), apply)


def test_new_file_in_directory_is_applied(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
    applied: list[Bootstrap] = []
    w = _watcher(tmp_path, applied)

    async def scenario() -> None:
        assert not await w.check()  # nothing changed
        (tmp_path / "se.yaml").write_text(SE)
        assert await w.check()

    asyncio.run(scenario())
    assert applied and applied[-1].cluster("outbound|80||httpbin.org") is not None
    assert w.state.successes == 1 and w.state.rejected == 0


def test_bad_file_keeps_old_config_and_reports(tmp_path: Path) -> None:
    se = tmp_path / "se.yaml"
    se.write_text(SE)
    applied: list[Bootstrap] = []
    w = _watcher(tmp_path, applied)
    before = w.current

    async def scenario() -> None:
        se.write_text(SE.replace("resolution: DNS", "resolution: SOMETIMES"))
        _bump(se)
        assert not await w.check()
        assert not await w.check()  # the same bad files are not reloaded again

    asyncio.run(scenario())
    assert not applied and w.current is before
    assert w.state.rejected == 1 and w.state.attempts == 1
    assert w.state.last_error is not None
    assert str(se) in w.state.last_error and "spec.resolution" in w.state.last_error
    assert "ServiceEntry default/httpbin-ext" in w.state.last_error
    stats = w.state.stats()
    assert stats["listener_manager.lds.update_rejected"] == ("counter", 1)
    assert stats["pysidecar.config_reload_rejected"] == ("counter", 1)
    # The admin's /config_dump entry: the counters and the rejection, located.
    dump = w.state.dump()
    assert dump["@type"] == "type.googleapis.com/pysidecar.admin.v1.ReloadConfigDump"
    assert (dump["update_attempt"], dump["update_success"], dump["update_rejected"]) == (1, 0, 1)
    rejected = dump["last_rejected_config"]
    assert isinstance(rejected, dict)
    assert rejected["file"] == str(se) and rejected["yaml_path"] == "spec.resolution"
    assert "ServiceEntry default/httpbin-ext" in rejected["details"] and "SOMETIMES" in rejected["details"]
    assert str(rejected["last_update_attempt"]).endswith("Z") and rejected["superseded"] is False

    async def fix() -> None:
        se.write_text(SE.replace("httpbin.org", "example.org"))
        _bump(se)
        assert await w.check()

    asyncio.run(fix())
    assert w.state.last_error is None and applied[-1].cluster("outbound|80||example.org") is not None
    # The rejection stays in the dump, marked as superseded by the good reload.
    later = w.state.dump()
    assert later["last_rejected_config"] == {**rejected, "superseded": True} and "last_update_success" in later


def test_unchanged_result_is_not_sent(tmp_path: Path) -> None:
    se = tmp_path / "se.yaml"
    se.write_text(SE)
    applied: list[Bootstrap] = []
    w = _watcher(tmp_path, applied)

    async def scenario() -> None:
        se.write_text(SE + "\n# a comment\n")
        _bump(se)
        assert not await w.check()

    asyncio.run(scenario())
    assert not applied and w.state.successes == 1


def test_envoy_lds_file_is_watched(tmp_path: Path) -> None:
    lds = tmp_path / "xds" / "lds.yaml"
    lds.parent.mkdir()
    listener = """
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{socket_address: {{address: 127.0.0.1, port_value: 18080}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: x
        cluster: c
"""
    lds.write_text(listener.format(name="one"))
    boot = tmp_path / "envoy.yaml"
    boot.write_text(
        f"dynamic_resources:\n  lds_config: {{path_config_source: {{path: {lds}}}}}\n"
        "static_resources:\n  clusters: [{name: c, type: STATIC}]\n"
    )
    applied: list[Bootstrap] = []

    async def apply(b: Bootstrap) -> None:
        applied.append(b)

    w = ConfigWatcher([str(boot)], load([str(boot)]), apply)

    async def scenario() -> None:
        lds.write_text(listener.format(name="two"))
        _bump(lds)
        assert await w.check()

    asyncio.run(scenario())
    assert [x.name for x in applied[-1].listeners] == ["two"]
