"""MeshConfig's access log settings reach the proxy; a bad format is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError


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
